#!/usr/bin/env python3
"""A SentencePiece vocabulary in a GGUF file (`tokenizer.ggml.model = "llama"`, byte fallback),
and the token ids transformers gives for a corpus of texts with the tokenizer it builds from
that file: the data that worker/tests/gguf.rs checks the worker's own GGUF tokenizer against.

    python3 ci/reference/spm_tokenizer.py

No trained SentencePiece model is within reach of these machines, so one is trained here:
sentencepiece's BPE trainer on the corpus below, 512 pieces (the fixtures' vocabulary size),
with byte fallback, two control tokens and one user-defined token. Its pieces, scores and types
are written to two GGUF files as llama.cpp's converter writes them, one of the llama
architecture and one of phi3 (for which transformers builds the tokenizer otherwise: the `▁`
comes from a normalizer, before every piece of text between special tokens); transformers then
reads each (`AutoTokenizer.from_pretrained(folder, gguf_file=...)`). transformers 5.23 ignores
`tokenizer.ggml.add_space_prefix`, so the files leave it out: it defaults to true.

Writes golden/reference/tokenizer-spm-fixture.json. Not run in CI: it installs sentencepiece
and transformers into their own virtualenvs under target/ci-venvs/ (pinned_venv.py).
"""

import json
import sys
from pathlib import Path

from gguf_tokenizer import GGUF_PACKAGES, corpus
from pinned_venv import NUMPY, ROOT, TARGET, run_in_venv

SPM_PACKAGES = ["sentencepiece==0.2.1", "gguf==0.19.0", NUMPY]
WORK = TARGET / "spm-fixture"
OUT = ROOT / "golden" / "reference" / "tokenizer-spm-fixture.json"
VOCAB_SIZE = 512
CONTROL = ["<|im_start|>", "<|im_end|>"]
USER_DEFINED = ["<think>"]

# llama.cpp's token types (gguf.TokenType).
NORMAL, UNKNOWN, CONTROL_TYPE, USER_DEFINED_TYPE, UNUSED, BYTE = 1, 2, 3, 4, 5, 6

# Texts that SentencePiece vocabularies treat specially: the markers written in text, leading
# and repeated spaces (the prefix `▁`), characters outside the vocabulary (byte fallback).
EXTRA = [
    "<s>",
    "</s>",
    "<unk>",
    "<s> hello </s>",
    "a<think>b</think>c",
    "<|im_start|>assistant\n<think>\nfine",
    "▁ already has the marker",
    "\u2581\u2581two markers",
    "x" * 40,
    " " * 17,
]


def texts() -> list[str]:
    return corpus() + EXTRA


def train() -> None:
    """Trains the vocabulary and writes the two GGUF files (prefix space on and off)."""
    import gguf
    import sentencepiece as spm

    WORK.mkdir(parents=True, exist_ok=True)
    training = WORK / "training.txt"
    # Sentences to learn merges from: the corpus, and English that repeats its common words.
    lines = [t.replace("\n", " ") for t in corpus()] + [
        "the model reads the text and writes the next token of the text",
        "a tokenizer splits words into pieces and pieces into bytes",
    ] * 20
    training.write_text("\n".join(lines) + "\n")
    spm.SentencePieceTrainer.train(
        input=str(training),
        model_prefix=str(WORK / "spm"),
        model_type="bpe",
        vocab_size=VOCAB_SIZE,
        byte_fallback=True,
        character_coverage=0.99,
        control_symbols=CONTROL,
        user_defined_symbols=USER_DEFINED,
        num_threads=1,
        minloglevel=2,
    )
    processor = spm.SentencePieceProcessor(model_file=str(WORK / "spm.model"))
    tokens, scores, types = [], [], []
    for i in range(processor.vocab_size()):
        tokens.append(processor.id_to_piece(i))
        scores.append(processor.get_score(i))
        if processor.is_unknown(i):
            types.append(UNKNOWN)
        elif processor.is_control(i):
            types.append(CONTROL_TYPE)
        elif processor.is_byte(i):
            types.append(BYTE)
        elif processor.is_unused(i):
            types.append(UNUSED)
        elif tokens[-1] in USER_DEFINED:
            types.append(USER_DEFINED_TYPE)
        else:
            types.append(NORMAL)
    vocab = {
        "tokens": tokens,
        "scores": scores,
        "token_types": types,
        "bos_token_id": processor.bos_id(),
        "eos_token_id": processor.eos_id(),
        "unknown_token_id": processor.unk_id(),
    }
    (WORK / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False))
    for architecture in ("llama", "phi3"):
        folder = WORK / architecture
        folder.mkdir(exist_ok=True)
        writer = gguf.GGUFWriter(str(folder / "model.gguf"), architecture)
        writer.add_context_length(64)
        writer.add_embedding_length(64)
        writer.add_block_count(1)
        writer.add_feed_forward_length(128)
        writer.add_head_count(4)
        writer.add_head_count_kv(4)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_tokenizer_model("llama")
        writer.add_tokenizer_pre("default")
        writer.add_token_list(tokens)
        writer.add_token_scores(scores)
        writer.add_token_types(types)
        writer.add_bos_token_id(vocab["bos_token_id"])
        writer.add_eos_token_id(vocab["eos_token_id"])
        writer.add_unk_token_id(vocab["unknown_token_id"])
        writer.add_add_bos_token(True)
        writer.add_add_eos_token(False)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
    print(f"trained {len(tokens)} pieces; wrote {WORK}/{{llama,phi3}}/model.gguf")


def encode() -> None:
    """transformers' ids of every text with the tokenizer it builds from the file: the committed data."""
    import transformers
    from transformers import AutoTokenizer

    vocab = json.loads((WORK / "vocab.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(WORK / "llama"), gguf_file="model.gguf")
    phi3 = AutoTokenizer.from_pretrained(str(WORK / "phi3"), gguf_file="model.gguf")
    data = {
        "made_by": f"ci/reference/spm_tokenizer.py, transformers {transformers.__version__}",
        "note": "`ids` without special tokens added (add_special_tokens=False), `ids_with_specials` "
        "with them; `decoded`: the decoding of `ids` without special tokens, as generated text is shown; "
        "`ids_phi3`: the ids of the file of the phi3 architecture",
        **vocab,
        "texts": [
            {
                "text": t,
                "ids": tokenizer.encode(t, add_special_tokens=False),
                "ids_with_specials": tokenizer.encode(t),
                "ids_phi3": phi3.encode(t, add_special_tokens=False),
            }
            for t in texts()
        ],
    }
    for text in data["texts"]:
        text["decoded"] = tokenizer.decode(text["ids"], skip_special_tokens=True)
    OUT.write_text(json.dumps(data, ensure_ascii=False, indent=1) + "\n")
    bytes_used = sum(any(data["token_types"][i] == BYTE for i in t["ids"]) for t in data["texts"])
    print(f"wrote {OUT}: {len(data['texts'])} texts, {bytes_used} of them with byte tokens")


if __name__ == "__main__":
    args = sys.argv[1:]
    if args == ["_train"]:
        train()
    elif args == ["_encode"]:
        encode()
    elif args:
        sys.exit(__doc__)
    else:
        code = run_in_venv("sentencepiece", SPM_PACKAGES, __file__, ["_train"])
        if code == 0:
            code = run_in_venv("transformers-5-gguf", GGUF_PACKAGES, __file__, ["_encode"])
        sys.exit(code)
