#!/usr/bin/env python3
"""Checks the SafeTensors folder that `llm-worker-rbee synth --from-gguf` writes from a GGUF
file: transformers loads that folder and gives the same greedy tokens as its own load of the
GGUF (`from_pretrained(..., gguf_file=...)`, which dequantizes it), prompt by prompt.

    python3 ci/reference/gguf_twin_check.py [MODEL_ID]   # default: smollm2-135m-instruct-q4_1

Needs the fetched model (`cargo xtask fetch-models MODEL_ID`) and the release worker binary
(`cargo build --release -p llm-worker-rbee`); writes the folder into target/gguf-twins/. Not run
in CI: it installs torch and transformers into its own virtualenv (pinned_venv.py).
"""

import sys
from pathlib import Path

from gguf_tokenizer import GGUF_PACKAGES, models_dir
from pinned_venv import run_in_venv
from real_cases import real_cases

REAL = real_cases()
TOKENS = REAL["max_tokens"]

def greedy(model, ids):
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=TOKENS, do_sample=False)
    return out[0, len(ids):].tolist()


def check(model_id: str, twin: Path) -> int:
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    torch.set_num_threads(2)
    folder = models_dir() / model_id
    gguf = next(p.name for p in folder.iterdir() if p.suffix == ".gguf")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=gguf)
    from_gguf = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=gguf, dtype=torch.float32)
    from_twin = AutoModelForCausalLM.from_pretrained(str(twin), dtype=torch.float32)
    prompts = []
    for prompt in REAL["prompts"]:
        text = prompt.get("text") or tokenizer.apply_chat_template(
            prompt["messages"], add_generation_prompt=True, tokenize=False
        )
        prompts.append(tokenizer.encode(text, add_special_tokens=False))
    print(f"transformers {transformers.__version__}, torch {torch.__version__}; {folder / gguf} and {twin}")
    differ = 0
    for ids in prompts:
        expected, got = greedy(from_gguf, ids), greedy(from_twin, ids)
        agree = next((i for i, (a, b) in enumerate(zip(expected, got)) if a != b), len(expected))
        differ += expected != got
        text = tokenizer.decode(expected)
        print(f"{len(ids):4} prompt tokens: {agree}/{len(expected)} greedy tokens agree  {text[:60]!r}")
    return 1 if differ else 0


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["_check"]:
        sys.exit(check(args[1], Path(args[2])))
    model = args[0] if args else "smollm2-135m-instruct-q4_1"
    twin = models_dir() / f"{model}-safetensors"
    if not (twin / "model.safetensors").exists():
        sys.exit(f"no {twin}: run `cargo xtask fetch-models {model}-safetensors` first")
    sys.exit(run_in_venv("transformers-5-gguf", GGUF_PACKAGES, __file__, ["_check", model, str(twin)]))
