//! What the GGUF tokenizers share: the vocabulary's keys, its token types, and the tokens
//! matched whole in text.

use tokenizers::{AddedToken, Tokenizer};

use crate::error::Result;
use crate::gguf::format::Header;

pub const TOKENS: &str = "tokenizer.ggml.tokens";
const TOKEN_TYPE: &str = "tokenizer.ggml.token_type";

/// llama.cpp's token types (`llama_token_type`): control tokens (BOS, `<|im_start|>`, ...) and
/// tokens a user added; both are matched whole in text, before the pre-tokenizer.
const NORMAL: i32 = 1;
const CONTROL: i32 = 3;
const USER_DEFINED: i32 = 4;

/// The error for a tokenizer that cannot be built from the metadata.
pub fn missing_tokenizer(what: &str) -> String {
    format!(
        "{what}; without a tokenizer.json beside the .gguf file the tokenizer is built from the \
         file's metadata: put the model's tokenizer.json beside it"
    )
}

/// The token type of each token (`tokenizer.ggml.token_type`); all normal when absent.
pub fn token_types(header: &Header, count: usize) -> Result<Vec<i32>> {
    match header.opt_i32s(TOKEN_TYPE)? {
        Some(types) if types.len() != count => Err(header.error(
            TOKEN_TYPE,
            format!("has {} entries for {count} tokens", types.len()),
        )),
        Some(types) => Ok(types),
        None => Ok(vec![NORMAL; count]),
    }
}

/// Adds the tokens matched whole in text, before the pre-tokenizer: control tokens and those
/// at `special_ids` as special tokens, user-defined ones as plain added tokens.
pub fn add_whole_tokens(
    header: &Header,
    tokenizer: &mut Tokenizer,
    tokens: &[&str],
    types: &[i32],
    special_ids: &[usize],
) -> Result<()> {
    let of = |wanted: &dyn Fn(usize, i32) -> bool, special: bool| -> Vec<AddedToken> {
        tokens
            .iter()
            .zip(types)
            .enumerate()
            .filter(|(id, (_, kind))| wanted(*id, **kind))
            .map(|(_, (token, _))| AddedToken::from(token.to_string(), special).normalized(false))
            .collect()
    };
    let special = of(
        &|id, kind| kind == CONTROL || special_ids.contains(&id),
        true,
    );
    let user_defined = of(&|_, kind| kind == USER_DEFINED, false);
    let added = |e| header.error(TOKEN_TYPE, format!("cannot add the special tokens: {e}"));
    tokenizer.add_special_tokens(special).map_err(added)?;
    tokenizer.add_tokens(user_defined).map_err(added)?;
    Ok(())
}
