//! The `openai` transport's client: a request sent as OpenAI's clients send it, streamed, its
//! chunks read back into a generation. Written from OpenAI's documented shapes, apart from the
//! server's types, with vLLM's extensions for what OpenAI's API does not carry: `top_k`,
//! `repetition_penalty`, `ignore_eos`, `return_token_ids` and `return_tokens_as_token_ids`.

use eventsource_stream::Eventsource;
use futures::StreamExt;
use llm_worker_rbee_api::{
    Generation, GenerationTimings, Prompt, Request, StopReason, TokenLogprobs, TopLogprob,
};
use serde_json::{json, Value};

/// Runs `request` through `/v1/chat/completions` (chat prompts) or `/v1/completions`.
pub async fn generate(
    client: &reqwest::Client,
    base: &str,
    model: &str,
    request: &Request,
) -> Result<Generation, String> {
    let mut body = json!({
        "model": model,
        "max_tokens": request.max_tokens,
        // Explicit: OpenAI's default temperature is 1.
        "temperature": request.temperature,
        "top_p": request.top_p,
        "top_k": request.top_k,
        "seed": request.seed,
        "repetition_penalty": request.repeat_penalty,
        "ignore_eos": request.ignore_eos,
        "stream": true,
        "stream_options": {"include_usage": true},
        "return_token_ids": true,
    });
    if !request.stop.is_empty() {
        body["stop"] = json!(request.stop);
    }
    let chat = matches!(request.prompt, Prompt::Messages(_));
    match &request.prompt {
        Prompt::Text(text) => body["prompt"] = json!(text),
        Prompt::Ids(ids) => body["prompt"] = json!(ids),
        Prompt::Messages(messages) => body["messages"] = json!(messages),
    }
    if let Some(top) = request.logprobs {
        body["return_tokens_as_token_ids"] = json!(true);
        if chat {
            body["logprobs"] = json!(true);
            body["top_logprobs"] = json!(top);
        } else {
            body["logprobs"] = json!(top);
        }
    }
    let path = if chat {
        "/v1/chat/completions"
    } else {
        "/v1/completions"
    };
    let response = client
        .post(format!("{base}{path}"))
        .json(&body)
        .send()
        .await
        .map_err(|e| format!("POST {path}: {e}"))?;
    let status = response.status();
    if !status.is_success() {
        let text = response.text().await.unwrap_or_default();
        return Err(format!("POST {path} answered {status}: {text}"));
    }
    let mut chunks = response.bytes_stream().eventsource();
    let mut answer = Answer::default();
    while let Some(event) = chunks.next().await {
        let event = event.map_err(|e| format!("the event stream broke: {e}"))?;
        if event.data == "[DONE]" {
            return answer.finish(request);
        }
        let chunk: Value = serde_json::from_str(&event.data)
            .map_err(|e| format!("chunk {:?}: {e}", event.data))?;
        answer.read(&chunk, chat)?;
    }
    Err(format!(
        "the stream ended without `data: [DONE]`, after {} tokens",
        answer.token_ids.len()
    ))
}

/// What the chunks told so far.
#[derive(Default)]
struct Answer {
    prompt_ids: Option<Vec<u32>>,
    token_ids: Vec<u32>,
    text: String,
    logprobs: Vec<TokenLogprobs>,
    finish_reason: Option<String>,
    usage: Option<(u64, u64)>,
}

impl Answer {
    fn read(&mut self, chunk: &Value, chat: bool) -> Result<(), String> {
        if let Some(error) = chunk.get("error") {
            return Err(format!("the server's error chunk: {error}"));
        }
        if let Some(ids) = chunk.get("prompt_token_ids") {
            self.prompt_ids = Some(ids_of(ids)?);
        }
        if let Some(usage) = chunk.get("usage").filter(|u| !u.is_null()) {
            let count = |field: &str| usage[field].as_u64().ok_or(format!("usage.{field}"));
            self.usage = Some((count("prompt_tokens")?, count("completion_tokens")?));
        }
        let choices = chunk["choices"]
            .as_array()
            .ok_or("a chunk without choices")?;
        for choice in choices {
            if self.finish_reason.is_some() {
                return Err("a choice came after the finish reason".into());
            }
            let text = if chat {
                &choice["delta"]["content"]
            } else {
                &choice["text"]
            };
            self.text.push_str(text.as_str().unwrap_or_default());
            let ids = ids_of(&choice["token_ids"])?;
            let logprobs = &choice["logprobs"];
            if !logprobs.is_null() {
                let read = if chat {
                    chat_logprobs(logprobs)
                } else {
                    completion_logprobs(logprobs)
                };
                let read = read.map_err(|e| format!("logprobs {logprobs}: {e}"))?;
                if read.len() != ids.len() {
                    return Err(format!("{} tokens with {} logprobs", ids.len(), read.len()));
                }
                self.logprobs.extend(read);
            }
            self.token_ids.extend(ids);
            if let Some(reason) = choice["finish_reason"].as_str() {
                self.finish_reason = Some(reason.to_string());
            }
        }
        Ok(())
    }

    fn finish(self, request: &Request) -> Result<Generation, String> {
        let prompt_ids = self.prompt_ids.ok_or("no chunk carried prompt_token_ids")?;
        let stop_reason = match self.finish_reason.as_deref() {
            // The trials give no stop strings: `stop` is an EOS token.
            Some("stop") => StopReason::Eos,
            Some("length") => StopReason::MaxTokens,
            other => return Err(format!("finish_reason {other:?}")),
        };
        let counted = (prompt_ids.len() as u64, self.token_ids.len() as u64);
        if self.usage != Some(counted) {
            return Err(format!(
                "usage (prompt, completion tokens) is {:?}; the chunks carried {counted:?}",
                self.usage
            ));
        }
        let logprobs = request.logprobs.map(|_| self.logprobs);
        Ok(Generation {
            prompt_ids,
            token_ids: self.token_ids,
            text: self.text,
            stop_reason,
            // OpenAI's API reports no timings.
            timings: GenerationTimings {
                prefill_ms: 0.0,
                decode_ms: 0.0,
                decode_tokens_per_s: 0.0,
            },
            logprobs,
        })
    }
}

fn ids_of(value: &Value) -> Result<Vec<u32>, String> {
    serde_json::from_value(value.clone()).map_err(|e| format!("token ids {value}: {e}"))
}

/// `token_id:123`, as `return_tokens_as_token_ids` names tokens.
fn token_id(name: &str) -> Result<u32, String> {
    name.strip_prefix("token_id:")
        .and_then(|id| id.parse().ok())
        .ok_or_else(|| format!("token {name:?} is not named `token_id:N`"))
}

fn logprob(value: &Value) -> Result<f32, String> {
    value
        .as_f64()
        .map(|v| v as f32)
        .ok_or_else(|| format!("logprob {value} is not a number"))
}

/// The most likely first, the lower id first among equal ones, as the worker orders them.
fn ordered(mut top: Vec<TopLogprob>) -> Vec<TopLogprob> {
    top.sort_by(|a, b| b.logprob.total_cmp(&a.logprob).then(a.id.cmp(&b.id)));
    top
}

/// `{"content": [{"token", "logprob", "bytes", "top_logprobs": [...]}]}`.
fn chat_logprobs(value: &Value) -> Result<Vec<TokenLogprobs>, String> {
    let content = value["content"].as_array().ok_or("no content list")?;
    content
        .iter()
        .map(|entry| {
            let token = entry["token"].as_str().ok_or("a token without a name")?;
            token_id(token)?;
            let top = entry["top_logprobs"]
                .as_array()
                .ok_or("no top_logprobs list")?
                .iter()
                .map(|t| {
                    let name = t["token"].as_str().ok_or("a top token without a name")?;
                    Ok(TopLogprob {
                        id: token_id(name)?,
                        token: name.to_string(),
                        logprob: logprob(&t["logprob"])?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(TokenLogprobs {
                token: token.to_string(),
                logprob: logprob(&entry["logprob"])?,
                top: ordered(top),
            })
        })
        .collect()
}

/// `{"tokens": [...], "token_logprobs": [...], "top_logprobs": [{token: logprob}], ...}`.
fn completion_logprobs(value: &Value) -> Result<Vec<TokenLogprobs>, String> {
    let list = |field: &str| {
        value[field]
            .as_array()
            .ok_or_else(|| format!("no {field} list"))
    };
    let (tokens, logprobs, tops) = (
        list("tokens")?,
        list("token_logprobs")?,
        list("top_logprobs")?,
    );
    if tokens.len() != logprobs.len() || tokens.len() != tops.len() {
        return Err("the lists differ in length".into());
    }
    tokens
        .iter()
        .zip(logprobs)
        .zip(tops)
        .map(|((token, lp), top)| {
            let token = token.as_str().ok_or("a token that is not a string")?;
            token_id(token)?;
            let top = top
                .as_object()
                .ok_or("top_logprobs entry is not an object")?
                .iter()
                .map(|(name, lp)| {
                    Ok(TopLogprob {
                        id: token_id(name)?,
                        token: name.clone(),
                        logprob: logprob(lp)?,
                    })
                })
                .collect::<Result<Vec<_>, String>>()?;
            Ok(TokenLogprobs {
                token: token.to_string(),
                logprob: logprob(lp)?,
                top: ordered(top),
            })
        })
        .collect()
}
