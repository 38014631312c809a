#!/usr/bin/env python3
"""Writes the transformers reference of every fixture into golden/reference/.

    python3 ci/reference/reference.py          # (re)write golden/reference/
    python3 ci/reference/reference.py --check  # regenerate into target/ and compare with golden/
    python3 ci/reference/reference.py --model ID FOLDER  # one fetched model (`cargo xtask reference --model ID`)

For each model of conformance/cases.toml and each prompt, transformers (float32, eager
attention, one thread) decodes greedily with a plain forward loop over the cache: the prompt in
one pass, then one token at a time, stopping at an EOS id (unless the prompt says `ignore_eos`)
or after max_tokens; a prompt's `repeat_penalty` goes through transformers'
RepetitionPenaltyLogitsProcessor before each choice. It writes

- <model>.json: the torch and transformers versions and, per prompt, the prompt ids, the greedy
  token ids and each step's five largest logits as [id, logit];
- <model>.logits.safetensors: per prompt (tensor name = prompt id) the full logits of every step
  (the model's, before any penalty), shape [steps, vocab]. Those steps are teacher-forced on the
  reference tokens by construction.
  A real model of cases.toml's [real] group has none (its top 5 per step only) and takes that
  group's prompts (a chat rendered with the model's template) and max_tokens.

Logits are rounded to 5 decimals in both files, so a rerun writes the same bytes. The script
installs torch and transformers into its own virtualenv (pinned_venv.py); the fixtures must exist
(`cargo xtask fixtures`).
"""

import filecmp
import json
import shutil
import sys
import tomllib
from pathlib import Path

from pinned_venv import NUMPY, ROOT, SAFETENSORS, TARGET, TORCH, TRANSFORMERS_5, run_in_venv
from real_cases import is_real

CASES = ROOT / "conformance" / "cases.toml"
# The first id of a context-edge prompt (CONTEXT_EDGE_FIRST_ID, conformance/src/cases.rs).
CONTEXT_EDGE_FIRST_ID = 312
FIXTURES = TARGET / "fixtures"
GOLDEN = ROOT / "golden" / "reference"


def eos_ids(model, tokenizer) -> set[int]:
    """The worker's rule: every EOS id of config.json, generation_config.json and the tokenizer."""
    ids = set()
    for source in (model.config.eos_token_id, model.generation_config.eos_token_id, tokenizer.eos_token_id):
        if isinstance(source, int):
            ids.add(source)
        elif source is not None:
            ids.update(source)
    return ids


def context_length(config) -> int:
    """The worker's context for a model: its positions, or phi3's sliding window where that is
    shorter (candle's phi3 module cannot apply the window, so the worker stops there). The suite
    compares its prompt ids with the reference's, so a difference here fails loudly."""
    window = getattr(config, "sliding_window", None) if config.model_type == "phi3" else None
    return min(config.max_position_embeddings, window or config.max_position_embeddings)


def fixture_models(cases: dict) -> list[tuple[str, Path]]:
    """The SafeTensors fixtures; GGUF fixtures have no transformers reference."""
    return [(model_id, FIXTURES / model_id) for model_id in cases["models"]["fixtures"]]


def write_reference(out: Path, models: list[tuple[str, Path]] | None) -> None:
    import torch
    import transformers
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    cases = tomllib.loads(CASES.read_text())
    out.mkdir(parents=True, exist_ok=True)
    for model_id, folder in models or fixture_models(cases):
        if not (folder / "config.json").is_file():
            sys.exit(f"{folder / 'config.json'} is missing: run `cargo xtask fixtures` first")
        model = transformers.AutoModelForCausalLM.from_pretrained(
            folder, dtype=torch.float32, attn_implementation="eager"
        )
        model.eval()
        tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
        stop = eos_ids(model, tokenizer)
        # A real model has prompts of its own and keeps each step's top 5 only: full logits of
        # its vocabulary would put tens of MB into git.
        real = is_real(cases, model_id)
        group = cases["real"] if real else cases
        prompts, logits = {}, {}
        for prompt in group["prompts"]:
            if "refused" in prompt:
                continue  # the worker must refuse it: there is nothing to compare
            if "ids" in prompt:
                prompt_ids = prompt["ids"]
            elif "context_edge" in prompt:
                over = prompt["context_edge"] == "over"
                length = context_length(model.config) + over - group["max_tokens"]
                prompt_ids = list(range(CONTEXT_EDGE_FIRST_ID, CONTEXT_EDGE_FIRST_ID + length))
            elif "messages" in prompt:
                text = tokenizer.apply_chat_template(prompt["messages"], add_generation_prompt=True, tokenize=False)
                prompt_ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            else:
                prompt_ids = tokenizer(prompt["text"])["input_ids"]
            # The model's logits are kept; the token is chosen after the repeat penalty, over the
            # prompt and the tokens so far, as generate() applies it.
            penalty = prompt.get("repeat_penalty")
            processor = transformers.RepetitionPenaltyLogitsProcessor(penalty) if penalty else None
            steps, tokens = [], []
            with torch.no_grad():
                result = model(torch.tensor([prompt_ids]), use_cache=True)
                for _ in range(group["max_tokens"]):
                    step = result.logits[0, -1].float()
                    steps.append(step)
                    chosen = step
                    if processor is not None:
                        chosen = processor(torch.tensor([prompt_ids + tokens]), step.clone()[None])[0]
                    token = int(chosen.argmax())
                    tokens.append(token)
                    if token in stop and not prompt.get("ignore_eos", False):
                        break
                    result = model(
                        torch.tensor([[token]]), past_key_values=result.past_key_values, use_cache=True
                    )
            stacked = torch.round(torch.stack(steps), decimals=5).contiguous()
            top = [
                [[int(i), round(float(v), 5)] for v, i in zip(*torch.topk(step, 5))]
                for step in stacked
            ]
            prompts[prompt["id"]] = {"prompt_ids": prompt_ids, "token_ids": tokens, "top5": top}
            logits[prompt["id"]] = stacked
        versions = {"torch": torch.__version__, "transformers": transformers.__version__}
        document = {"model": model_id, **versions, "max_tokens": group["max_tokens"], "prompts": prompts}
        (out / f"{model_id}.json").write_text(json.dumps(document, indent=1) + "\n")
        if not real:
            # One metadata key: safetensors writes several in no fixed order.
            made_with = f"torch {torch.__version__}, transformers {transformers.__version__}"
            save_file(logits, out / f"{model_id}.logits.safetensors", metadata={"made_with": made_with})
        print(f"{out / model_id}: {len(prompts)} prompts")


def main() -> int:
    argv = sys.argv[1:]
    if argv[:1] == ["_write"]:
        models = [(pair.split("=", 1)[0], Path(pair.split("=", 1)[1])) for pair in argv[2:]]
        write_reference(Path(argv[1]), models or None)
        return 0
    packages = [TRANSFORMERS_5, TORCH, SAFETENSORS, NUMPY]
    if argv == ["--check"]:
        fresh = TARGET / "reference-check"
        shutil.rmtree(fresh, ignore_errors=True)
        code = run_in_venv("transformers-5-torch", packages, __file__, ["_write", str(fresh)])
        if code:
            return code
        # The fixtures' files only: references of fetched models (`--model`) may sit beside them.
        cases = tomllib.loads(CASES.read_text())
        names = sorted(f"{model_id}{suffix}" for model_id in cases["models"]["fixtures"]
                       for suffix in (".json", ".logits.safetensors"))
        fresh_names = sorted(p.name for p in fresh.iterdir())
        _, mismatch, errors = filecmp.cmpfiles(GOLDEN, fresh, names, shallow=False)
        if names != fresh_names or mismatch or errors:
            print(f"golden/reference differs from a fresh run: {mismatch + errors or fresh_names}")
            return 1
        print(f"golden/reference regenerates identically ({len(names)} files)")
        return 0
    if len(argv) == 3 and argv[0] == "--model":
        model = f"{argv[1]}={Path(argv[2]).resolve()}"
        return run_in_venv("transformers-5-torch", packages, __file__, ["_write", str(GOLDEN), model])
    if argv:
        print(__doc__, file=sys.stderr)
        return 2
    return run_in_venv("transformers-5-torch", packages, __file__, ["_write", str(GOLDEN)])


if __name__ == "__main__":
    sys.exit(main())
