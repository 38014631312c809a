"""The real models' cases, as conformance/cases.toml's [real] group states them: the prompts
(text, or a chat to render with the model's template) and the number of tokens to generate."""

import tomllib

from pinned_venv import ROOT


def real_cases() -> dict:
    return tomllib.loads((ROOT / "conformance" / "cases.toml").read_text())["real"]


def is_real(cases: dict, model_id: str) -> bool:
    return any(m["id"] == model_id for m in cases.get("real", {}).get("models", []))
