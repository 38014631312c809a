//! The tokenizer a GGUF file carries in its metadata (`tokenizer.ggml.*`), built as a
//! `tokenizers` tokenizer so that a lone `.gguf` runs: the vocabulary, the merges (or the scores
//! they are derived from), the token types (control tokens become special tokens) and, for
//! byte-level BPE, the pre-tokenizer that llama.cpp's converter names in `tokenizer.ggml.pre`;
//! each mapped to the tokenizer transformers builds from the same file. A `tokenizer.json`
//! beside the file is used instead, when there is one.
//!
//! Covered: `tokenizer.ggml.model = "gpt2"` (byte-level BPE, `byte_level`) with the
//! pre-tokenizers listed there, and `"llama"` (SentencePiece BPE with byte fallback,
//! `sentencepiece`). Anything else is refused with the key and value, never guessed.

mod byte_level;
mod sentencepiece;
mod vocabulary;

use tokenizers::Tokenizer;

use self::vocabulary::{missing_tokenizer, TOKENS};
use super::format::{Header, BOS, EOS};
use crate::error::Result;

const MODEL: &str = "tokenizer.ggml.model";
pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// What a GGUF's metadata says about text: its tokenizer (built only when asked for: a
/// tokenizer.json beside the file wins), its chat template and the texts of BOS and EOS, which
/// the template may render.
pub struct GgufText {
    pub tokenizer: Option<Tokenizer>,
    pub chat_template: Option<String>,
    pub bos_token: String,
    pub eos_token: String,
}

pub fn read(header: &Header, build_tokenizer: bool) -> Result<GgufText> {
    let tokenizer = build_tokenizer.then(|| build(header)).transpose()?;
    let tokens = match header.value(TOKENS) {
        Some(_) => header.strings(TOKENS)?,
        None => Vec::new(),
    };
    let text = |key: &str| -> Result<String> {
        Ok(header
            .opt_u32(key)?
            .and_then(|id| tokens.get(id))
            .map_or_else(String::new, |t| t.to_string()))
    };
    Ok(GgufText {
        tokenizer,
        chat_template: header.opt_string(CHAT_TEMPLATE)?.map(str::to_string),
        bos_token: text(BOS)?,
        eos_token: text(EOS)?,
    })
}

/// The tokenizer of `header`'s metadata.
fn build(header: &Header) -> Result<Tokenizer> {
    let model = header
        .opt_string(MODEL)?
        .ok_or_else(|| header.error(MODEL, missing_tokenizer("missing")))?;
    match model {
        "gpt2" => byte_level::build(header),
        "llama" => sentencepiece::build(header),
        other => Err(header.error(
            MODEL,
            missing_tokenizer(&format!(
                "is `{other}`; built from the metadata: `gpt2` (byte-level BPE) and `llama` \
                 (SentencePiece)"
            )),
        )),
    }
}
