//! `tokenizer.ggml.model = "llama"`: a SentencePiece BPE vocabulary with byte fallback, built as
//! transformers 5.23 builds it from the same file (`LlamaTokenizer` over the file's pieces): `▁`
//! for spaces and before the text, the merges derived from the pieces' scores (the file lists
//! none), characters outside the vocabulary as `<0xXX>` byte tokens. For phi3 files, as
//! transformers does, the `▁` comes from a normalizer instead (so also after each special
//! token). `tokenizer.ggml.add_space_prefix = false`, which transformers ignores, leaves the
//! `▁` out, as llama.cpp does.

use std::collections::HashMap;

use tokenizers::decoders::byte_fallback::ByteFallback;
use tokenizers::decoders::fuse::Fuse;
use tokenizers::decoders::sequence::Sequence;
use tokenizers::decoders::strip::Strip;
use tokenizers::models::bpe::{Vocab, BPE};
use tokenizers::normalizers::prepend::Prepend;
use tokenizers::normalizers::replace::Replace;
use tokenizers::normalizers::utils::Sequence as NormalizerSequence;
use tokenizers::pre_tokenizers::metaspace::{Metaspace, PrependScheme};
use tokenizers::{DecoderWrapper, Tokenizer};

use super::vocabulary::{add_whole_tokens, token_types, TOKENS};
use crate::error::Result;
use crate::gguf::format::{Header, ARCHITECTURE_KEY, BOS, EOS};

const SCORES: &str = "tokenizer.ggml.scores";
const UNKNOWN: &str = "tokenizer.ggml.unknown_token_id";
const PADDING: &str = "tokenizer.ggml.padding_token_id";
/// False in files whose text gets no `▁` before it (llama.cpp's converter writes it only then).
const ADD_SPACE_PREFIX: &str = "tokenizer.ggml.add_space_prefix";

/// SentencePiece's space.
const SPACE: char = '\u{2581}';

pub(super) fn build(header: &Header) -> Result<Tokenizer> {
    let tokens = header.strings(TOKENS)?;
    let scores = header.f32s(SCORES)?;
    if scores.len() != tokens.len() {
        return Err(header.error(
            SCORES,
            format!("has {} entries for {} tokens", scores.len(), tokens.len()),
        ));
    }
    if let Some(bad) = scores.iter().position(|s| !s.is_finite()) {
        return Err(header.error(
            SCORES,
            format!(
                "the score of token {bad} is {}; scores must be finite",
                scores[bad]
            ),
        ));
    }
    let types = token_types(header, tokens.len())?;
    let prefix = header.opt_bool(ADD_SPACE_PREFIX)?.unwrap_or(true);
    let ids: HashMap<&str, usize> = tokens.iter().enumerate().map(|(id, t)| (*t, id)).collect();
    let merges = merges(&tokens, &scores, &ids);
    let vocab: Vocab = ids
        .iter()
        .map(|(t, id)| (t.to_string(), *id as u32))
        .collect();
    let bpe = BPE::builder()
        .vocab_and_merges(vocab, merges)
        .fuse_unk(true)
        .byte_fallback(true)
        .build()
        .map_err(|e| header.error(TOKENS, format!("not a valid BPE vocabulary: {e}")))?;
    let mut tokenizer = Tokenizer::new(bpe);
    let replace = |from: String, to: String| {
        Replace::new(from, to)
            .map_err(|e| header.error(TOKENS, format!("cannot build the tokenizer: {e}")))
    };
    if header.opt_string(ARCHITECTURE_KEY)? == Some("phi3") {
        // transformers' `phi3_tokenizer`: Phi-3's own tokenizer.json puts the `▁` in with a
        // normalizer, which runs on each piece of text between special tokens.
        let mut normalizers = Vec::new();
        if prefix {
            normalizers.push(Prepend::new(SPACE.to_string()).into());
        }
        normalizers.push(replace(" ".into(), SPACE.to_string())?.into());
        tokenizer
            .with_normalizer(Some(NormalizerSequence::new(normalizers)))
            .map_err(|e| header.error(TOKENS, format!("cannot build the tokenizer: {e}")))?;
    } else {
        let scheme = if prefix {
            PrependScheme::First
        } else {
            PrependScheme::Never
        };
        tokenizer.with_pre_tokenizer(Some(Metaspace::new(SPACE, scheme, false)));
    }
    let mut decoders: Vec<DecoderWrapper> = vec![
        replace(SPACE.to_string(), " ".into())?.into(),
        ByteFallback::new().into(),
        Fuse::new().into(),
    ];
    if prefix {
        decoders.push(Strip::new(' ', 1, 0).into());
    }
    tokenizer.with_decoder(Some(Sequence::new(decoders)));
    // transformers adds the unknown, BOS, EOS and padding tokens as special tokens too, whatever
    // their type: "<s>" written in text is BOS. An id past the vocabulary names no token.
    let mut special_ids = Vec::new();
    for key in [UNKNOWN, BOS, EOS, PADDING] {
        special_ids.extend(header.opt_u32(key)?);
    }
    add_whole_tokens(header, &mut tokenizer, &tokens, &types, &special_ids)?;
    Ok(tokenizer)
}

/// The merges a SentencePiece BPE vocabulary implies, in transformers' order
/// (`generate_merges`): every split of a piece into two pieces of the vocabulary, the best score
/// first, then the longer left and right parts; splits of one piece by the ids of their parts.
/// Equal keys keep the order of the pieces in the file.
fn merges(tokens: &[&str], scores: &[f32], ids: &HashMap<&str, usize>) -> Vec<(String, String)> {
    // A piece spelled twice takes its first place and its last score, as a Python dict does.
    let mut score_of: HashMap<&str, f32> = HashMap::new();
    let mut pieces = Vec::new();
    for (token, score) in tokens.iter().zip(scores) {
        if score_of.insert(token, *score).is_none() {
            pieces.push(*token);
        }
    }
    let mut merges: Vec<(&str, &str, f32)> = Vec::new();
    for piece in pieces {
        let score = score_of[piece];
        let mut local: Vec<(&str, &str, f32)> = piece
            .char_indices()
            .skip(1)
            .map(|(at, _)| piece.split_at(at))
            .filter(|(left, right)| ids.contains_key(left) && ids.contains_key(right))
            .map(|(left, right)| (left, right, score))
            .collect();
        local.sort_by_key(|(left, right, _)| (ids[left], ids[right]));
        merges.extend(local);
    }
    let key = |(left, right, score): &(&str, &str, f32)| {
        (*score, left.chars().count(), right.chars().count())
    };
    merges.sort_by(|a, b| {
        let (a, b) = (key(a), key(b));
        b.0.total_cmp(&a.0).then(b.1.cmp(&a.1)).then(b.2.cmp(&a.2))
    });
    merges
        .into_iter()
        .map(|(left, right, _)| (left.to_string(), right.to_string()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_follow_transformers_order_through_equal_scores() {
        let tokens = [
            "a", "b", "c", "ab", "bc", "abc", "ca", "cab", "bca", "aa", "aaa",
        ];
        let scores = [
            0.0, 0.0, 0.0, -1.0, -1.0, -2.0, -1.0, -2.0, -2.0, -3.0, -3.0,
        ];
        let ids = tokens.iter().enumerate().map(|(id, t)| (*t, id)).collect();
        // What transformers 5.23's `generate_merges` gives for this vocabulary.
        let expected = [
            ("a", "b"),
            ("b", "c"),
            ("c", "a"),
            ("ab", "c"),
            ("ca", "b"),
            ("bc", "a"),
            ("a", "bc"),
            ("c", "ab"),
            ("b", "ca"),
            ("aa", "a"),
            ("a", "aa"),
            ("a", "a"),
        ];
        let expected: Vec<(String, String)> = expected
            .iter()
            .map(|(l, r)| (l.to_string(), r.to_string()))
            .collect();
        assert_eq!(merges(&tokens, &scores, &ids), expected);
    }
}
