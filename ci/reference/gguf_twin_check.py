#!/usr/bin/env python3
"""Checks the SafeTensors folder that `llm-worker-rbee synth --from-gguf` writes from a GGUF
file: transformers loads that folder and gives the same greedy tokens as its own load of the
GGUF (`from_pretrained(..., gguf_file=...)`, which dequantizes it), prompt by prompt.

    python3 ci/reference/gguf_twin_check.py [MODEL_ID]   # default: smollm2-135m-instruct-q4_1

Needs the fetched model (`cargo xtask fetch-models MODEL_ID`) and the release worker binary
(`cargo build --release -p llm-worker-rbee`); writes the folder into target/gguf-twins/. Not run
in CI: it installs torch and transformers into its own virtualenv (pinned_venv.py).
"""

import subprocess
import sys
from pathlib import Path

from gguf_tokenizer import GGUF_PACKAGES, models_dir
from pinned_venv import TARGET, run_in_venv

TOKENS = 32
PROMPTS = [
    "The capital of France is",
    "def fibonacci(n):\n",
    "Hi",
    "Café, naïve, 東京 and emoji 🎉 in one sentence:",
    " ".join(["Once upon a time, a small robot learned to paint the sea at dawn."] * 18),
]
CHAT = [{"role": "user", "content": "Name three colours."}]


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
    prompts = [tokenizer.encode(p, add_special_tokens=False) for p in PROMPTS]
    chat = tokenizer.apply_chat_template(CHAT, add_generation_prompt=True, tokenize=False)
    prompts.append(tokenizer.encode(chat, add_special_tokens=False))
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
    twin = TARGET / "gguf-twins" / model
    worker = TARGET / "release" / "llm-worker-rbee"
    if not worker.exists():
        sys.exit(f"no {worker}: run `cargo build --release -p llm-worker-rbee` first")
    subprocess.run([worker, "synth", "--from-gguf", model, "--out", twin], check=True)
    sys.exit(run_in_venv("transformers-5-gguf", GGUF_PACKAGES, __file__, ["_check", model, str(twin)]))
