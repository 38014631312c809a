#!/usr/bin/env python3
"""The token ids transformers gives for a corpus of texts, with the tokenizer it builds from a
GGUF file's metadata (`AutoTokenizer.from_pretrained(folder, gguf_file=...)`), and the chat
template's rendering of a few conversations: the data that worker/tests/real_model.rs checks
the worker's own GGUF tokenizer against.

    python3 ci/reference/gguf_tokenizer.py [MODEL_ID]   # default: smollm2-135m-instruct-q4_1

The model must be fetched (`cargo xtask fetch-models MODEL_ID`). Writes
golden/reference/tokenizer-MODEL_ID.json. Not run in CI: it installs transformers into its own
virtualenv under target/ci-venvs/ (versions pinned in pinned_venv.py) and re-runs itself there.
"""

import json
import os
import sys
from pathlib import Path

from pinned_venv import NUMPY, ROOT, SAFETENSORS, TORCH, TRANSFORMERS_5, run_in_venv

# transformers reads GGUF files only with torch and gguf installed, and loads their weights
# only with accelerate.
GGUF_PACKAGES = [TRANSFORMERS_5, TORCH, SAFETENSORS, NUMPY, "gguf==0.19.0", "accelerate==1.16.0"]
GOLDEN = ROOT / "golden" / "reference"


def models_dir() -> Path:
    if "LLM_WORKER_MODELS" in os.environ:
        return Path(os.environ["LLM_WORKER_MODELS"])
    if "HF_HOME" in os.environ:
        home = Path(os.environ["HF_HOME"])
    elif "XDG_CACHE_HOME" in os.environ:
        home = Path(os.environ["XDG_CACHE_HOME"]) / "huggingface"
    else:
        home = Path.home() / ".cache" / "huggingface"
    return home / "llm-worker-rbee" / "models"


# Texts a tokenizer gets wrong first: runs of spaces, tabs and newlines, digits, contractions,
# accents and other scripts, emoji, code, special tokens written in text.
BASE = [
    "Hello, world!",
    "The capital of France is",
    "hello world",
    "  two leading spaces",
    "trailing spaces   ",
    "tabs\tand\t\ttabs",
    "line one\nline two\n\nline four",
    "\n\n\n",
    " ",
    "a",
    "I'm sure you'll see it's what they'd've wanted, isn't it?",
    "DON'T SHOUT, We'Re CaSe SeNsItIvE",
    "1234567890",
    "3.14159 and 2,718 and 1e-9 and 0x1F",
    "In 2024, 12.5% of 1,000,000 users paid $3.99.",
    "phone: +1 (555) 010-9999",
    "café naïve résumé façade Ångström",
    "Straße, Größe, Übermaß",
    "Ελληνικά κείμενα και λέξεις",
    "Русский текст с цифрами 42",
    "中文文本，包含标点符号。",
    "日本語のテキストとカタカナ",
    "한국어 문장입니다.",
    "العربية من اليمين إلى اليسار",
    "हिन्दी भाषा",
    "emoji 😀🎉👍🏽 and 👨‍👩‍👧‍👦 family",
    "flags 🇫🇷🇯🇵 and symbols ™ © ® ∞ ≠ ≤",
    "def add(a, b):\n    return a + b\n",
    "for (int i = 0; i < n; ++i) { sum += x[i]; }",
    "fn main() {\n\tprintln!(\"{}\", 1 + 2);\n}",
    "SELECT id, name FROM users WHERE age >= 18 ORDER BY name;",
    "<div class=\"x\">&amp; &lt;tag&gt;</div>",
    "{\"key\": [1, 2, 3], \"nested\": {\"a\": null}}",
    "https://example.com/path?query=1&other=two#frag",
    "user@example.org",
    "snake_case_name camelCaseName kebab-case-name",
    "....!!!???,,,;;;:::",
    "---===***___",
    "a\u00a0non-breaking\u2009thin space",
    "zero\u200bwidth",
    "<|im_start|>user\nhi<|im_end|>",
    "<|endoftext|>",
    "text <|im_end|> inside",
    "<repo_name>owner/name<file_sep>path.py",
    "Once upon a time, there was a little robot who loved to paint.",
    "The quick brown fox jumps over the lazy dog. " * 3,
    "Mixed 中文 and English with 123 numbers.",
    "   \n   \n",
    "end.",
    "'quoted' \"double\" `backtick`",
]

CONVERSATIONS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [
        {"role": "system", "content": "You are terse."},
        {"role": "user", "content": "Name three colours."},
    ],
    [
        {"role": "user", "content": "Hi!"},
        {"role": "assistant", "content": "Hello! How can I help?"},
        {"role": "user", "content": "Write a haiku about the sea."},
    ],
]


def corpus() -> list[str]:
    """The base texts and variants of each: after a space, after a newline, in upper case, and
    joined with the next one."""
    texts = []
    for i, text in enumerate(BASE):
        texts += [text, " " + text, "\n" + text, text.upper(), text + " " + BASE[(i + 1) % len(BASE)]]
    seen = set()
    return [t for t in texts if not (t in seen or seen.add(t))]


def write(model_id: str) -> None:
    import transformers
    from transformers import AutoTokenizer

    folder = models_dir() / model_id
    ggufs = sorted(p.name for p in folder.iterdir() if p.suffix == ".gguf")
    if len(ggufs) != 1:
        sys.exit(f"{folder}: expected one .gguf file, found {ggufs}; run `cargo xtask fetch-models {model_id}`")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=ggufs[0])
    texts = corpus()
    chats = []
    for messages in CONVERSATIONS:
        rendered = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        chats.append({"messages": messages, "rendered": rendered})
        texts.append(rendered)
    data = {
        "model": model_id,
        "gguf": ggufs[0],
        "made_by": f"ci/reference/gguf_tokenizer.py, transformers {transformers.__version__}",
        "note": "ids without special tokens added (add_special_tokens=False)",
        "texts": [{"text": t, "ids": tokenizer.encode(t, add_special_tokens=False)} for t in texts],
        "chats": chats,
    }
    out = GOLDEN / f"tokenizer-{model_id}.json"
    out.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")
    print(f"wrote {out}: {len(data['texts'])} texts, {len(chats)} chats")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args[:1] == ["_write"]:
        write(args[1])
    else:
        model = args[0] if args else "smollm2-135m-instruct-q4_1"
        sys.exit(run_in_venv("transformers-5-gguf", GGUF_PACKAGES, __file__, ["_write", model]))
