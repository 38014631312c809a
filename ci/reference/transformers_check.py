#!/usr/bin/env python3
"""Checks the worker against Hugging Face transformers, on the fixture models.

    python3 ci/reference/transformers_check.py configs  # regenerate worker/tests/data/hf-configs/
    python3 ci/reference/transformers_check.py check    # transformers 5.x saves each fixture; the
                                                        # worker must load that folder and give
                                                        # transformers' greedy tokens

Each command installs what it needs into its own virtualenv under target/ci-venvs/ (versions
pinned in pinned_venv.py) and re-runs itself there. The fixtures must exist (`cargo xtask
fixtures`); `check` also needs the release worker binary (`cargo build --release -p
llm-worker-rbee`).
"""

import json
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

from pinned_venv import NUMPY, ROOT, SAFETENSORS, TARGET, TORCH, TRANSFORMERS_4, TRANSFORMERS_5, run_in_venv

FIXTURES = TARGET / "fixtures"
CONFIG_DATA = ROOT / "worker" / "tests" / "data" / "hf-configs"

# The files transformers does not write, copied from the fixture next to what it saved.
TOKENIZER_FILES = ["tokenizer.json", "tokenizer_config.json"]


def fixture_dirs() -> list[Path]:
    dirs = sorted(p for p in FIXTURES.iterdir() if (p / "config.json").is_file()) if FIXTURES.is_dir() else []
    if not dirs:
        sys.exit(f"no fixtures in {FIXTURES}: run `cargo xtask fixtures` first")
    return dirs


def save_configs(major: str) -> None:
    """Loads every fixture's config.json and saves it the way this transformers version does."""
    import transformers

    for fixture in fixture_dirs():
        config = transformers.AutoConfig.from_pretrained(fixture)
        out = CONFIG_DATA / fixture.name
        tmp = TARGET / "ci-tmp" / f"config-{major}-{fixture.name}"
        shutil.rmtree(tmp, ignore_errors=True)
        config.save_pretrained(tmp)
        out.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(tmp / "config.json", out / f"transformers-{major}.json")
        print(f"{out / f'transformers-{major}.json'} (transformers {transformers.__version__})")


def greedy(model, ids: list[int], max_tokens: int) -> list[int]:
    """Greedy decoding as a plain forward loop with the cache: prefill, then one token at a time."""
    import torch

    out = []
    with torch.no_grad():
        result = model(torch.tensor([ids]), use_cache=True)
        for _ in range(max_tokens):
            token = int(result.logits[0, -1].argmax())
            out.append(token)
            result = model(torch.tensor([[token]]), past_key_values=result.past_key_values, use_cache=True)
    return out


def check() -> int:
    import torch
    import transformers

    torch.manual_seed(0)
    cases = tomllib.loads((ROOT / "conformance" / "cases.toml").read_text())
    max_tokens = cases["max_tokens"]
    binary = TARGET / "release" / "llm-worker-rbee"
    if not binary.is_file():
        sys.exit(f"{binary} is missing: run `cargo build --release -p llm-worker-rbee` first")

    print(f"transformers {transformers.__version__}, torch {torch.__version__}")
    failures = 0
    report = []
    for fixture in fixture_dirs():
        saved = TARGET / "transformers-check" / fixture.name
        shutil.rmtree(saved, ignore_errors=True)
        model = transformers.AutoModelForCausalLM.from_pretrained(
            fixture, dtype=torch.float32, attn_implementation="eager"
        )
        model.eval()
        model.save_pretrained(saved)
        for name in TOKENIZER_FILES:
            shutil.copyfile(fixture / name, saved / name)
        tokenizer = transformers.AutoTokenizer.from_pretrained(saved)

        for prompt in cases["prompts"]:
            if "ids" in prompt:
                ids, hf_ids = prompt["ids"], None
            else:
                hf_ids = tokenizer(prompt["text"])["input_ids"]
                ids = hf_ids
            expected = greedy(model, ids, max_tokens)
            run = subprocess.run(
                [binary, "generate", "--model", saved, "--max-tokens", str(max_tokens), "--ignore-eos",
                 "--format", "json",
                 *(["--prompt", prompt["text"]] if "text" in prompt else ["--prompt-ids", ",".join(map(str, ids))])],
                capture_output=True, text=True,
            )
            if run.returncode != 0:
                outcome, worker_prompt, got = f"worker failed: {run.stderr.strip()}", None, None
            else:
                result = json.loads(run.stdout)
                worker_prompt, got = result["prompt_ids"], result["token_ids"]
                if hf_ids is not None and worker_prompt != hf_ids:
                    outcome = f"prompt ids differ: worker {worker_prompt}, transformers {hf_ids}"
                elif got != expected:
                    step = next(i for i, (a, b) in enumerate(zip(got, expected)) if a != b)
                    outcome = f"tokens differ from step {step}: worker {got}, transformers {expected}"
                else:
                    outcome = "same"
            failures += outcome != "same"
            report.append({"fixture": fixture.name, "prompt": prompt["id"], "outcome": outcome})
            print(f"{fixture.name:<16} {prompt['id']:<14} {outcome}")
    out = TARGET / "transformers-check" / "report.json"
    out.write_text(json.dumps({"transformers": transformers.__version__, "torch": torch.__version__,
                               "results": report}, indent=2) + "\n")
    print(f"{len(report) - failures}/{len(report)} cases give transformers' tokens; report: {out}")
    return 1 if failures else 0


def main() -> int:
    command = sys.argv[1] if len(sys.argv) > 1 else ""
    if command == "configs":
        return run_in_venv("transformers-4", [TRANSFORMERS_4], __file__, ["_save-configs", "4"]) or run_in_venv(
            "transformers-5", [TRANSFORMERS_5], __file__, ["_save-configs", "5"]
        )
    if command == "check":
        return run_in_venv("transformers-5-torch", [TRANSFORMERS_5, TORCH, SAFETENSORS, NUMPY], __file__, ["_check"])
    if command == "_save-configs":
        save_configs(sys.argv[2])
        return 0
    if command == "_check":
        return check()
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main())
