//! `tokenizer.ggml.model = "gpt2"`: byte-level BPE, with the merges the file lists and the
//! pre-tokenizer llama.cpp's converter names in `tokenizer.ggml.pre`.

use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use super::vocabulary::{add_whole_tokens, missing_tokenizer, token_types, TOKENS};
use crate::error::Result;
use crate::gguf::format::Header;

const PRE: &str = "tokenizer.ggml.pre";
const MERGES: &str = "tokenizer.ggml.merges";

/// Llama 3's split (its tokenizer.json; llama.cpp's `llama-bpe`).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
/// Qwen2's split: Llama 3's with single digits (its tokenizer.json; llama.cpp's `qwen2`).
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// The `tokenizer.ggml.pre` values this builds, for the error that lists them.
const SUPPORTED_PRE: &str = "gpt-2, smollm, starcoder, llama-bpe, qwen2";

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

pub(super) fn build(header: &Header) -> Result<Tokenizer> {
    let pre = header
        .opt_string(PRE)?
        .ok_or_else(|| header.error(PRE, missing_tokenizer("missing")))?
        .to_string();
    let (pre_tokenizer, ignore_merges) = pre_tokenizer(header, &pre)?;
    let tokens = header.strings(TOKENS)?;
    let types = token_types(header, tokens.len())?;
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
    add_whole_tokens(header, &mut tokenizer, &tokens, &types, &[])?;
    Ok(tokenizer)
}
