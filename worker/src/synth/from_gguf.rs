//! A GGUF file written back as a Hugging Face SafeTensors folder, the inverse of [`to_gguf`]:
//! every tensor dequantized to f32 under its transformers name, llama's q/k rows put back in
//! transformers' order, `config.json` from the metadata, and the tokenizer, its settings and
//! the chat template from the files beside the GGUF or else from its metadata. So the same
//! trained weights run through the SafeTensors path and through transformers.
//!
//! [`to_gguf`]: super::to_gguf

use std::collections::HashMap;
use std::fs::File;
use std::path::Path;

use candle_core::{Device, Tensor};
use serde_json::{json, Map, Value as Json};

use super::to_gguf::{rotated_heads, source_name, unpermute_for_interleaved_rope};
use crate::error::{Error, Result};
use crate::folder::{self, ModelFolder, Weights};
use crate::gguf;
use crate::gguf::format::{self, Header};
use crate::gguf::tokenizer;
use crate::model::Window;
use crate::tokens::ExplicitSpecials;

/// Writes the GGUF model at `model` (a `.gguf` file or a folder with one) into the folder `out`.
pub fn write_safetensors(model: &Path, out: &Path) -> Result<()> {
    let source = ModelFolder::open(model)?;
    let Weights::Gguf(path) = &source.weights else {
        return Err(Error::file(
            model,
            "holds SafeTensors weights, not a GGUF file",
        ));
    };
    let header = Header::read(path)?;
    let (arch, kind) = gguf::parse(&header)?;
    let name = arch.architecture.name();
    // The tokenizer first: a file without one fails before anything is written.
    let text = tokenizer::read(&header, source.tokenizer.is_none())?;
    std::fs::create_dir_all(out).map_err(|e| Error::file(out, format!("cannot create: {e}")))?;

    let content = header.content();
    let mut file = File::open(path).map_err(|e| Error::file(path, format!("cannot open: {e}")))?;
    let quirks = kind.quirks();
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for (gguf_name, _) in gguf::expected_tensors(kind, &arch.dims, arch.tie_word_embeddings) {
        let read = content
            .tensor(&mut file, &gguf_name, &Device::Cpu)
            .and_then(|q| q.dequantize(&Device::Cpu));
        let tensor = read
            .map_err(|e| Error::weights(path, format!("cannot dequantize `{gguf_name}`: {e}")))?;
        let tensor = match rotated_heads(&gguf_name, &arch.dims) {
            Some(heads) if quirks.interleaved_rope => {
                unpermute_for_interleaved_rope(&tensor, heads)?
            }
            _ => tensor,
        };
        tensors.insert(source_name(kind, &arch, &gguf_name), tensor);
    }
    let weights = out.join(folder::WEIGHTS);
    candle_core::safetensors::save(&tensors, &weights)
        .map_err(|e| Error::file(&weights, format!("cannot write: {e}")))?;

    let key = |k: &str| format!("{name}.{k}");
    let dims = &arch.dims;
    let rms_norm_eps = header
        .opt_f32(&key("attention.layer_norm_rms_epsilon"))?
        .unwrap_or(1e-5);
    let specials = header.special_tokens()?;
    let bos = header.opt_u32(format::BOS)?;
    let mut config = json!({
        "architectures": [architecture_class(name)],
        "model_type": name,
        "vocab_size": dims.vocab_size,
        "hidden_size": dims.hidden_size,
        "intermediate_size": dims.intermediate_size,
        "num_hidden_layers": dims.num_layers,
        "num_attention_heads": dims.num_heads,
        "num_key_value_heads": dims.num_kv_heads,
        "max_position_embeddings": dims.max_position_embeddings,
        "rms_norm_eps": rms_norm_eps,
        "rope_theta": arch.rope.theta,
        "hidden_act": "silu",
        "tie_word_embeddings": arch.tie_word_embeddings,
        "torch_dtype": "float32",
        "bos_token_id": bos,
        "eos_token_id": specials.eos_ids.first(),
    });
    if let Window::LimitsContext { size } = arch.window {
        config["sliding_window"] = json!(size);
        config["use_sliding_window"] = json!(true);
    }
    write_json(&out.join(folder::CONFIG), &config)?;

    let tokenizer_json = out.join(folder::TOKENIZER);
    match (&source.tokenizer, text.tokenizer) {
        (Some(beside), _) => copy(beside, &tokenizer_json)?,
        (None, built) => built
            .expect("the tokenizer is built when none is beside the file")
            .save(&tokenizer_json, true)
            .map_err(|e| Error::file(&tokenizer_json, format!("cannot write: {e}")))?,
    }
    match &source.tokenizer_config {
        Some(beside) => copy(beside, &out.join(folder::TOKENIZER_CONFIG))?,
        None => {
            let mut settings = Map::new();
            let explicit = specials.explicit.unwrap_or(ExplicitSpecials {
                bos: None,
                eos: None,
            });
            settings.insert("add_bos_token".into(), json!(explicit.bos.is_some()));
            settings.insert("add_eos_token".into(), json!(explicit.eos.is_some()));
            settings.insert("bos_token".into(), json!(text.bos_token));
            settings.insert("eos_token".into(), json!(text.eos_token));
            if let Some(template) = &text.chat_template {
                settings.insert("chat_template".into(), json!(template));
            }
            write_json(&out.join(folder::TOKENIZER_CONFIG), &Json::Object(settings))?;
        }
    }
    for name in [folder::GENERATION_CONFIG, folder::CHAT_TEMPLATE] {
        if let Some(beside) = Some(source.root.join(name)).filter(|p| p.is_file()) {
            copy(&beside, &out.join(name))?;
        }
    }
    Ok(())
}

/// transformers' class for the architecture, as `architectures[0]` names it.
fn architecture_class(name: &str) -> &'static str {
    match name {
        "qwen2" => "Qwen2ForCausalLM",
        "phi3" => "Phi3ForCausalLM",
        _ => "LlamaForCausalLM",
    }
}

fn write_json(path: &Path, value: &Json) -> Result<()> {
    let text = serde_json::to_string_pretty(value).expect("JSON values serialize");
    std::fs::write(path, text + "\n").map_err(|e| Error::file(path, format!("cannot write: {e}")))
}

fn copy(from: &Path, to: &Path) -> Result<()> {
    std::fs::copy(from, to)
        .map(|_| ())
        .map_err(|e| Error::file(from, format!("cannot copy to {}: {e}", to.display())))
}
