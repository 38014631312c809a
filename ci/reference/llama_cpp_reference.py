#!/usr/bin/env python3
"""llama.cpp's greedy tokens on a GGUF file, the peer the worker's GGUF runs are compared with.

    python3 ci/reference/llama_cpp_reference.py [MODEL_ID]   # default: smollm2-135m-instruct-q4_1

Installs llama-cpp-python 0.3.36 into its own virtualenv under target/ci-venvs/: pip builds it
from the PyPI sdist, whose vendored tree is llama.cpp 0c1e57098 (the CUDA peer of
../shared/peers/llama.cpp is the same commit), for this CPU. Loads the fetched model's GGUF and
writes golden/reference/llama.cpp-MODEL_ID.json: per prompt of conformance/cases.toml's [real]
group (a chat rendered with the file's template), llama.cpp's prompt ids (its own tokenizer,
special tokens parsed, BOS as the file says) and its greedy token ids (temperature 0, stopping at
the file's EOS token, which is kept, or after [real] max_tokens). Not run in CI (the build takes
minutes).
"""

import json
import os
import sys

from gguf_tokenizer import models_dir
from pinned_venv import ROOT, run_in_venv
from real_cases import real_cases

LLAMA_CPP_PYTHON = "llama-cpp-python==0.3.36"
LLAMA_CPP_COMMIT = "0c1e57098"


def write(model_id: str) -> None:
    import llama_cpp

    folder = models_dir() / model_id
    gguf = next(p for p in sorted(folder.iterdir()) if p.suffix == ".gguf")
    llm = llama_cpp.Llama(model_path=str(gguf), n_ctx=4096, n_threads=os.cpu_count() or 1, verbose=False)
    template = llm.metadata.get("tokenizer.chat_template")
    real = real_cases()
    prompts = []
    for prompt in real["prompts"]:
        text = prompt.get("text")
        if text is None:
            # The template as llama-cpp-python renders it (Jinja2), for a chat prompt.
            formatter = llama_cpp.llama_chat_format.Jinja2ChatFormatter(template, eos_token="", bos_token="")
            text = formatter(messages=prompt["messages"]).prompt
        # add_bos: BOS only where the file's tokenizer.ggml.add_bos_token asks for it.
        ids = llm.tokenize(text.encode(), add_bos=True, special=True)
        tokens = []
        for token in llm.generate(ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
            tokens.append(token)
            if token == llm.token_eos() or len(tokens) == real["max_tokens"]:
                break
        prompts.append({"id": prompt["id"], "text": text, "prompt_ids": ids, "token_ids": tokens})
        print(f"{len(ids):4} prompt tokens -> {llm.detokenize(tokens).decode(errors='replace')[:60]!r}")
    data = {
        "model": model_id,
        "gguf": gguf.name,
        "made_by": f"ci/reference/llama_cpp_reference.py, {LLAMA_CPP_PYTHON} (llama.cpp {LLAMA_CPP_COMMIT}), CPU",
        "note": f"greedy (temperature 0), at most {real['max_tokens']} tokens; an EOS token ends the list and is in it",
        "prompts": prompts,
    }
    out = ROOT / "golden" / "reference" / f"llama.cpp-{model_id}.json"
    out.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["_write"]:
        write(args[1])
    else:
        model = args[0] if args else "smollm2-135m-instruct-q4_1"
        sys.exit(run_in_venv("llama-cpp", [LLAMA_CPP_PYTHON], __file__, ["_write", model]))
