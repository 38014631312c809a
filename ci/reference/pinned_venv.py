"""Runs a script of this folder inside its own virtualenv, made on first use with pinned packages.

The scripts here need torch and transformers, which CI does not install: each creates what it
needs under target/ci-venvs/ and re-runs itself there.
"""

import os
import subprocess
import sys
import venv
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent.parent
TARGET = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target"))
if not TARGET.is_absolute():
    TARGET = ROOT / TARGET

TRANSFORMERS_4 = "transformers==4.57.6"
TRANSFORMERS_5 = "transformers==5.23.0"
TORCH = "torch==2.15.0"
SAFETENSORS = "safetensors==0.8.0"
NUMPY = "numpy==2.4.6"


def run_in_venv(name: str, packages: list[str], script: str, argv: list[str]) -> int:
    """Runs `script` with `argv` in the virtualenv `name`, creating it when its packages changed."""
    env_dir = TARGET / "ci-venvs" / name
    python = env_dir / "bin" / "python"
    stamp = env_dir / "installed.txt"
    wanted = "\n".join(packages)
    if not stamp.exists() or stamp.read_text() != wanted:
        print(f"setting up {env_dir} with {', '.join(packages)}", file=sys.stderr)
        venv.create(env_dir, clear=True, with_pip=True)
        subprocess.run([python, "-m", "pip", "install", "--quiet", *packages], check=True)
        stamp.write_text(wanted)
    env = dict(os.environ, HF_HUB_DISABLE_PROGRESS_BARS="1", TRANSFORMERS_VERBOSITY="error")
    return subprocess.run([python, script, *argv], env=env).returncode
