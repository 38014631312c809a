//! Text to token ids and back: special tokens as the model folder says, the EOS ids, and
//! incremental decoding for streaming.

use std::collections::BTreeSet;
use std::path::Path;

use serde_json::Value;
use tokenizers::Tokenizer;

use crate::config::token_ids;
use crate::error::{Error, Result};
use crate::folder::read_json_object;

/// The tokenizer of a model (its tokenizer.json, else a GGUF file's metadata) with the model
/// folder's rules for special tokens.
pub struct TextCodec {
    tokenizer: Tokenizer,
    /// `Some` when `tokenizer_config.json` (else the GGUF metadata) sets `add_bos_token`/
    /// `add_eos_token`: the worker then adds exactly those, as transformers (llama.cpp) does;
    /// otherwise `tokenizer.json`'s post-processor decides.
    explicit_specials: Option<ExplicitSpecials>,
    eos_ids: Vec<u32>,
}

/// The special tokens added to every text prompt, when the model folder says which.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ExplicitSpecials {
    pub bos: Option<u32>,
    pub eos: Option<u32>,
}

/// What the model's own settings say about special tokens: `config.json` for SafeTensors, the
/// metadata for GGUF. `tokenizer_config.json` and `generation_config.json` add EOS ids, and
/// `tokenizer_config.json`'s flags take precedence over `explicit`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModelSpecials {
    pub eos_ids: Vec<u32>,
    pub explicit: Option<ExplicitSpecials>,
}

impl TextCodec {
    /// A model's tokenizer.json.
    pub fn read_tokenizer(path: &Path) -> Result<Tokenizer> {
        Tokenizer::from_file(path)
            .map_err(|e| Error::file(path, format!("not a valid tokenizer.json: {e}")))
    }

    /// `tokenizer` with the rules of the folder's tokenizer_config.json (`(path, contents)`,
    /// read by the caller, which also takes the chat template from it) and of its
    /// generation_config.json.
    pub fn new(
        tokenizer: Tokenizer,
        model: &ModelSpecials,
        tokenizer_config: Option<(&Path, &serde_json::Map<String, Value>)>,
        generation_config: Option<&Path>,
    ) -> Result<Self> {
        let mut explicit_specials = model.explicit;
        let mut eos_ids: BTreeSet<u32> = model.eos_ids.iter().copied().collect();
        if let Some((path, tc)) = &tokenizer_config {
            let flag = |key: &str| -> Result<Option<bool>> {
                match tc.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(Value::Bool(b)) => Ok(Some(*b)),
                    Some(v) => Err(Error::field(
                        path,
                        key,
                        format!("expected true or false, found {v}"),
                    )),
                }
            };
            let token = |key: &str| -> Result<Option<u32>> {
                special_token_id(&tokenizer, path, key, tc.get(key))
            };
            let (add_bos, add_eos) = (flag("add_bos_token")?, flag("add_eos_token")?);
            if add_bos.is_some() || add_eos.is_some() {
                let required = |key: &str, flag_key: &str| -> Result<u32> {
                    token(key)?.ok_or_else(|| {
                        Error::field(path, key, format!("missing, but {flag_key} is true"))
                    })
                };
                explicit_specials = Some(ExplicitSpecials {
                    bos: add_bos
                        .unwrap_or(false)
                        .then(|| required("bos_token", "add_bos_token"))
                        .transpose()?,
                    eos: add_eos
                        .unwrap_or(false)
                        .then(|| required("eos_token", "add_eos_token"))
                        .transpose()?,
                });
            }
            eos_ids.extend(token("eos_token")?);
        }
        if let Some(path) = generation_config {
            let generation = read_json_object(path)?;
            let ids = token_ids(generation.get("eos_token_id"))
                .map_err(|m| Error::field(path, "eos_token_id", m))?;
            eos_ids.extend(ids);
        }
        Ok(Self {
            tokenizer,
            explicit_specials,
            eos_ids: eos_ids.into_iter().collect(),
        })
    }

    /// Token ids for `text`, with BOS/EOS added as the model folder says.
    pub fn encode(&self, text: &str) -> Result<Vec<u32>> {
        let add_special_tokens = self.explicit_specials.is_none();
        let encoding = self
            .tokenizer
            .encode(text, add_special_tokens)
            .map_err(|e| Error::request("prompt", format!("cannot be tokenized: {e}")))?;
        let mut ids = encoding.get_ids().to_vec();
        if let Some(specials) = self.explicit_specials {
            if let Some(bos) = specials.bos {
                ids.insert(0, bos);
            }
            ids.extend(specials.eos);
        }
        Ok(ids)
    }

    /// Token ids for text that already holds its special tokens (a rendered chat template), as
    /// `apply_chat_template` encodes it: nothing added.
    pub fn encode_rendered(&self, text: &str) -> Result<Vec<u32>> {
        let encoding = self
            .tokenizer
            .encode(text, false)
            .map_err(|e| Error::request("messages", format!("cannot be tokenized: {e}")))?;
        Ok(encoding.get_ids().to_vec())
    }

    /// The text of `ids`, special tokens left out.
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.tokenizer
            .decode(ids, true)
            .map_err(|e| Error::Decode(e.to_string()))
    }

    /// The text of `id` alone, special tokens included: how log-probabilities name tokens.
    pub fn token_text(&self, id: u32) -> Result<String> {
        self.tokenizer
            .decode(&[id], false)
            .map_err(|e| Error::Decode(e.to_string()))
    }

    /// Every id that ends generation: from config.json (or the GGUF metadata),
    /// generation_config.json and the tokenizer's EOS token.
    pub fn eos_ids(&self) -> &[u32] {
        &self.eos_ids
    }

    pub fn bos_id(&self) -> Option<u32> {
        self.explicit_specials.and_then(|s| s.bos)
    }

    pub fn vocab_size(&self) -> usize {
        self.tokenizer.get_vocab_size(true)
    }

    /// Whether `id` may join a run of SentencePiece byte tokens (`<0xE2>`): a ByteFallback
    /// decoder decodes a run together and shows the whole run as U+FFFD while it is not valid
    /// UTF-8, so the text of a run is known only once a token of another kind ends it. Special
    /// tokens are left out of the decode, so they do not end a run.
    fn may_join_byte_run(&self, id: u32) -> bool {
        self.tokenizer.id_to_token(id).is_some_and(|token| {
            let byte = token.len() == 6
                && token.starts_with("<0x")
                && token.ends_with('>')
                && token[3..5].chars().all(|c| c.is_ascii_hexdigit());
            byte || self
                .tokenizer
                .get_added_vocabulary()
                .is_special_token(&token)
        })
    }
}

/// A special token of `tokenizer_config.json`, given as a string or as `{"content": ...}`.
fn special_token_id(
    tokenizer: &Tokenizer,
    path: &Path,
    key: &str,
    value: Option<&Value>,
) -> Result<Option<u32>> {
    let content = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(Value::String(s)) => s.as_str(),
        Some(Value::Object(o)) => match o.get("content") {
            Some(Value::String(s)) => s.as_str(),
            _ => {
                return Err(Error::field(
                    path,
                    key,
                    "expected a string or {\"content\": ...}",
                ))
            }
        },
        Some(v) => {
            return Err(Error::field(
                path,
                key,
                format!("expected a token, found {v}"),
            ))
        }
    };
    tokenizer.token_to_id(content).map(Some).ok_or_else(|| {
        Error::field(
            path,
            key,
            format!("token `{content}` is not in the tokenizer's vocabulary"),
        )
    })
}

/// Turns a growing list of ids into text pieces that are each valid UTF-8 and that together
/// equal the decode of all the ids.
///
/// Each step decodes a window of the last ids (so a token costs the same at any length) and
/// emits what is new. A byte-level token can end inside a multi-byte character, which the
/// decoder shows as U+FFFD: trailing U+FFFD are held back until a later token completes the
/// character, or until the last token, which emits them as U+FFFD. A run of SentencePiece byte
/// tokens (and special tokens, which decode to nothing) is held back whole until a token of
/// another kind or the last token ends it: its decoder may turn the whole run, valid bytes
/// included, into U+FFFD. So bytes that never form
/// valid UTF-8 appear as U+FFFD, exactly as in the decode of all ids.
pub struct IncrementalText<'a> {
    codec: &'a TextCodec,
    ids: Vec<u32>,
    /// Where the decoded window starts: a few tokens back, so each token decodes a short window
    /// instead of the whole sequence.
    start: usize,
    /// The decode of `ids[start..]` up to the last token whose text is all emitted.
    consumed: String,
    emitted: String,
}

/// Tokens of context the window keeps behind the text emitted: decoders treat the first token
/// of a sequence apart (Metaspace drops its leading space), so the window never starts at the
/// token whose text is wanted.
const WINDOW_CONTEXT: usize = 4;

impl<'a> IncrementalText<'a> {
    pub fn new(codec: &'a TextCodec) -> Self {
        Self {
            codec,
            ids: Vec::new(),
            start: 0,
            consumed: String::new(),
            emitted: String::new(),
        }
    }

    /// Adds `id` and returns the text it completes (possibly empty). With `last`, nothing is
    /// held back.
    pub fn push(&mut self, id: u32, last: bool) -> Result<String> {
        self.ids.push(id);
        let mut end = self.ids.len();
        if !last {
            while end > self.start && self.codec.may_join_byte_run(self.ids[end - 1]) {
                end -= 1;
            }
        }
        let window = self.codec.decode(&self.ids[self.start..end])?;
        let Some(new) = window.strip_prefix(self.consumed.as_str()) else {
            // The decoders of supported tokenizers only ever extend their output; one that
            // rewrites earlier text cannot be streamed.
            return Err(Error::Decode(format!(
                "the tokenizer's decoder rewrote text already streamed ({:?} became {:?})",
                self.consumed, window
            )));
        };
        let piece = if last {
            new
        } else {
            new.trim_end_matches('\u{FFFD}')
        }
        .to_string();
        let held_back = piece.len() < new.len() || end < self.ids.len();
        self.consumed.push_str(&piece);
        self.emitted.push_str(&piece);
        // With nothing held back, the window moves up: what it drops is all streamed.
        if !held_back && self.ids.len() - self.start > 2 * WINDOW_CONTEXT {
            self.start = self.ids.len() - WINDOW_CONTEXT;
            self.consumed = self.codec.decode(&self.ids[self.start..])?;
        }
        Ok(piece)
    }

    /// The text emitted so far.
    pub fn text(&self) -> &str {
        &self.emitted
    }
}

#[cfg(all(test, feature = "synth"))]
mod tests {
    use super::*;

    #[test]
    fn the_decoded_window_moves_up_once_its_text_is_all_streamed() {
        let dir = tempfile::tempdir().unwrap();
        let spec = crate::synth::fixture("qwen2").unwrap();
        crate::synth::write_fixture(&spec, dir.path()).unwrap();
        let tokenizer = TextCodec::read_tokenizer(&dir.path().join("tokenizer.json")).unwrap();
        let codec = TextCodec::new(tokenizer, &ModelSpecials::default(), None, None).unwrap();
        // Plain text holds nothing back; a "€" split over tokens holds back up to 3 of them.
        let plain = "the quick brown fox jumps over the lazy dog while the cat sleeps on the mat";
        let euros = "a € b €€ c € dd €€€ e € f € gg € h €€ i € jjj € k €€ l € m € nn € o €";
        for (text, held) in [(plain, 0), (euros, 3)] {
            let ids = codec.encode(text).unwrap();
            assert!(ids.len() > 4 * WINDOW_CONTEXT, "{} tokens", ids.len());
            let mut streamed = IncrementalText::new(&codec);
            for (i, id) in ids.iter().enumerate() {
                streamed.push(*id, false).unwrap();
                // No token decodes more than a short window.
                let window = streamed.ids.len() - streamed.start;
                assert!(
                    window <= 2 * WINDOW_CONTEXT + held,
                    "{window} tokens after {} of {text:?}",
                    i + 1
                );
            }
            assert_eq!(streamed.text(), codec.decode(&ids).unwrap());
        }
    }
}
