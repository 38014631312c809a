//! The tokenizer a GGUF file carries in its metadata (`tokenizer.ggml.*`), built as a
//! `tokenizers` tokenizer so that a lone `.gguf` runs: the vocabulary, the merges, the token
//! types (control tokens become special tokens) and the pre-tokenizer that llama.cpp's
//! converter names in `tokenizer.ggml.pre`, each mapped to the rules of the model's own
//! tokenizer.json. A `tokenizer.json` beside the file is used instead, when there is one.
//!
//! Covered: `tokenizer.ggml.model = "gpt2"` (byte-level BPE) with the pre-tokenizers below.
//! Anything else is refused with the key and value, never guessed.

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::format::{Header, BOS, EOS};
use crate::error::Result;

pub const MODEL: &str = "tokenizer.ggml.model";
pub const PRE: &str = "tokenizer.ggml.pre";
pub const TOKENS: &str = "tokenizer.ggml.tokens";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";
const MERGES: &str = "tokenizer.ggml.merges";
pub const CHAT_TEMPLATE: &str = "tokenizer.chat_template";

/// llama.cpp's token types (`llama_token_type`): control tokens (BOS, `<|im_start|>`, ...) and
/// tokens a user added; both are matched whole in text, before the pre-tokenizer.
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// Llama 3's split (its tokenizer.json; llama.cpp's `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: Llama 3's with single digits (its tokenizer.json; llama.cpp's `qwen2`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values this builds, for the error that lists them.
const SUPPORTED_PRE: &str = "gpt-2, smollm, starcoder, llama-bpe, qwen2";

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
        "gpt2" => byte_level_bpe(header),
        other => Err(header.error(
            MODEL,
            missing_tokenizer(&format!(
                "is `{other}`; only `gpt2` (byte-level BPE) is built from the metadata"
            )),
        )),
    }
}

fn missing_tokenizer(what: &str) -> String {
    format!(
        "{what}; without a tokenizer.json beside the .gguf file the tokenizer is built from the \
         file's metadata: put the model's tokenizer.json beside it"
    )
}

/// The pre-tokenizer llama.cpp applies for `pre`, as the model's tokenizer.json writes it, and
/// whether the BPE takes a whole word that is in the vocabulary without merging (Llama 3).
fn pre_tokenizer(header: &Header, pre: &str) -> Result<(PreTokenizerWrapper, bool)> {
    let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
    let split = |pattern: &str| -> Result<PreTokenizerWrapper> {
        let regex = SplitPattern::Regex(pattern.to_string());
        Split::new(regex, SplitDelimiterBehavior::Isolated, false)
            .map(Into::into)
            .map_err(|e| header.error(PRE, format!("the split of `{pre}` is refused: {e}")))
    };
    Ok(match pre {
        "gpt-2" => (byte_level(true).into(), false),
        // Single digits, then GPT-2's split: llama.cpp's `\p{N}` and GPT-2 regexes.
        "smollm" | "starcoder" => (
            Sequence::new(vec![Digits::new(true).into(), byte_level(true).into()]).into(),
            false,
        ),
        "llama-bpe" => (
            Sequence::new(vec![split(LLAMA3_SPLIT)?, byte_level(false).into()]).into(),
            true,
        ),
        "qwen2" => (
            Sequence::new(vec![split(QWEN2_SPLIT)?, byte_level(false).into()]).into(),
            false,
        ),
        other => {
            return Err(header.error(
                PRE,
                missing_tokenizer(&format!(
                    "is `{other}`, a pre-tokenizer not built here (built: {SUPPORTED_PRE})"
                )),
            ))
        }
    })
}

fn byte_level_bpe(header: &Header) -> Result<Tokenizer> {
    let pre = header
        .opt_string(PRE)?
        .ok_or_else(|| header.error(PRE, missing_tokenizer("missing")))?
        .to_string();
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(header, &pre)?;
    let tokens = header.strings(TOKENS)?;
    let types = match header.opt_i32s(TOKEN_TYPE)? {
        Some(types) if types.len() != tokens.len() => {
            return Err(header.error(
                TOKEN_TYPE,
                format!("has {} entries for {} tokens", types.len(), tokens.len()),
            ))
        }
        Some(types) => types,
        None => vec![1; tokens.len()],
    };
    let mut vocab = Vocab::default();
    for (id, token) in tokens.iter().enumerate() {
        vocab.entry(token.to_string()).or_insert(id as u32);
    }
    let merges = header
        .strings(MERGES)?
        .into_iter()
        .map(|merge| {
            merge
                .split_once(' ')
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .ok_or_else(|| {
                    header.error(MERGES, format!("`{merge}` is not two tokens and a space"))
                })
        })
        .collect::<Result<Vec<_>>>()?;
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .ignore_merges(ignore_merges)
        .build()
        .map_err(|e| header.error(MERGES, format!("not a valid BPE vocabulary: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    if pre == "qwen2" {
        tokenizer
            .with_normalizer(Some(NFC))
            .map_err(|e| header.error(PRE, format!("cannot set NFC: {e}")))?;
    }
    tokenizer
        .with_pre_tokenizer(Some(pre_tokenizer))
        .with_decoder(Some(ByteLevel::default()));
    let of_kind = |wanted: i32| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(&types)
            .filter(|(_, kind)| **kind == wanted)
            .map(|(token, _)| {
                AddedToken::from(token.to_string(), wanted == CONTROL).normalized(false)
            })
            .collect()
    };
    let added = |e| header.error(TOKEN_TYPE, format!("cannot add the special tokens: {e}"));
    tokenizer
        .add_special_tokens(of_kind(CONTROL))
        .map_err(added)?;
    tokenizer.add_tokens(of_kind(USER_DEFINED)).map_err(added)?;
    Ok(tokenizer)
}
