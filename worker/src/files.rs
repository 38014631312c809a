//! A model folder read up to, but not including, its weights ([`ModelFiles`]), and what
//! `inspect` reports of it ([`ModelInfo`]).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::DType;
use serde::Serialize;

use crate::chat::ChatTemplate;
use crate::checkpoint::CheckpointSummary;
use crate::config::{HfConfig, Rope};
use crate::error::Error;
use crate::error::Result;
use crate::folder::{read_json_object, ModelFolder, Weights, WeightsFormat, TOKENIZER};
use crate::gguf::format::{GgufArchitecture, Header};
use crate::gguf::tokenizer::{GgufText, CHAT_TEMPLATE};
use crate::memory::LoadBytes;
use crate::model::{ArchConfig, Architecture, Dims, ModuleConfig, Window};
use crate::prompter::Prompter;
use crate::tokens::{ModelSpecials, TextCodec};
use crate::{arch, gguf, memory, weights};

/// What was detected in a model folder; `llm-worker-rbee inspect` prints it.
#[derive(Clone, Debug, Serialize)]
pub struct ModelInfo {
    pub model_dir: PathBuf,
    /// SafeTensors (settings from config.json) or GGUF (settings from the file's metadata).
    pub format: WeightsFormat,
    pub architecture: &'static dyn Architecture,
    pub dims: Dims,
    /// The longest prompt plus generation the worker runs.
    pub context_length: usize,
    pub window: Window,
    pub rope: Rope,
    pub tie_word_embeddings: bool,
    pub bos_token_id: Option<u32>,
    pub eos_token_ids: Vec<u32>,
    pub tokenizer_vocab_size: usize,
    pub checkpoint: CheckpointSummary,
    /// Keys of config.json that nothing read and that are not known to be harmless; for GGUF,
    /// the keys of the architecture's metadata namespace (`llama.*`, ...) that nothing read.
    pub unrecognized_config_keys: Vec<String>,
}

impl ModelInfo {
    /// Reads config (or GGUF metadata), tokenizer and checkpoint headers, without loading any
    /// weights.
    pub fn inspect(model_dir: &Path) -> Result<ModelInfo> {
        ModelFiles::open(model_dir).map(|files| files.info)
    }
}

/// What builds the module over the weights.
pub(crate) enum Module {
    SafeTensors(Box<dyn ModuleConfig>),
    Gguf(&'static dyn GgufArchitecture),
}

/// A model folder read up to, but not including, its weights: its settings, its tokenizer and
/// chat template (read once, shared by everything that prepares requests) and its checkpoint
/// headers. A bad folder fails here, before any weight is read.
pub struct ModelFiles {
    pub(crate) info: ModelInfo,
    pub(crate) arch: ArchConfig,
    pub(crate) module: Module,
    pub(crate) prompter: Arc<Prompter>,
    pub(crate) folder: ModelFolder,
}

impl ModelFiles {
    pub fn open(model_dir: &Path) -> Result<Self> {
        let folder = ModelFolder::open(model_dir)?;
        let (arch, module, specials, unread_keys, checkpoint, mut gguf_text) = match &folder.weights
        {
            Weights::Gguf(path) => {
                let header = Header::read(path)?;
                let (arch, gguf) = gguf::parse(&header)?;
                let specials = header.special_tokens()?;
                let text = gguf::tokenizer::read(&header, folder.tokenizer.is_none())?;
                let (unread, summary) = (header.unread_keys(), header.summary());
                (
                    arch,
                    Module::Gguf(gguf),
                    specials,
                    unread,
                    summary,
                    Some(text),
                )
            }
            _ => {
                let config = HfConfig::load(&folder.config())?;
                let parsed = arch::parse(&config)?;
                let specials = ModelSpecials {
                    eos_ids: config.token_ids("eos_token_id")?,
                    explicit: None,
                };
                let summary = weights::summarize(&folder)?;
                let module = Module::SafeTensors(parsed.module);
                (
                    parsed.config,
                    module,
                    specials,
                    config.unread_keys(),
                    summary,
                    None,
                )
            }
        };
        if let Some(problem) =
            memory::machine_memory().and_then(|bytes| memory::context_problem(&arch, bytes))
        {
            return Err(context_error(&folder, &arch, problem));
        }
        let tokenizer_config = match &folder.tokenizer_config {
            Some(path) => Some((path.as_path(), read_json_object(path)?)),
            None => None,
        };
        let tokenizer = match (
            &folder.tokenizer,
            gguf_text.as_mut().and_then(|t| t.tokenizer.take()),
        ) {
            (Some(path), _) => TextCodec::read_tokenizer(path)?,
            (None, Some(built)) => built,
            (None, None) => return Err(Error::file(&folder.root.join(TOKENIZER), "missing")),
        };
        let tokenizer_config = tokenizer_config.as_ref().map(|(path, map)| (*path, map));
        let codec = TextCodec::new(
            tokenizer,
            &specials,
            tokenizer_config,
            folder.generation_config.as_deref(),
        )?;
        let chat = chat_template(&folder, tokenizer_config, gguf_text.as_ref())?;
        let info = ModelInfo {
            model_dir: model_dir.to_path_buf(),
            format: folder.weights.format(),
            architecture: arch.architecture,
            dims: arch.dims.clone(),
            context_length: arch.context_length(),
            window: arch.window.clone(),
            rope: arch.rope.clone(),
            tie_word_embeddings: arch.tie_word_embeddings,
            bos_token_id: codec.bos_id(),
            eos_token_ids: codec.eos_ids().to_vec(),
            tokenizer_vocab_size: codec.vocab_size(),
            checkpoint,
            unrecognized_config_keys: unread_keys,
        };
        let prompter = Prompter::new(
            codec,
            chat,
            info.dims.vocab_size,
            info.context_length,
            &info.window,
            info.architecture.name(),
        );
        Ok(Self {
            info,
            arch,
            module,
            prompter: Arc::new(prompter),
            folder,
        })
    }

    pub fn info(&self) -> &ModelInfo {
        &self.info
    }

    /// What checks and tokenizes requests for this model; shared with the [`Worker`] loaded
    /// from these files.
    pub fn prompter(&self) -> &Arc<Prompter> {
        &self.prompter
    }

    pub fn folder(&self) -> &ModelFolder {
        &self.folder
    }

    pub fn arch(&self) -> &ArchConfig {
        &self.arch
    }

    /// What loading these files in `dtype` puts on a device before any request (an estimate:
    /// GGUF weights as the file stores them).
    pub fn load_bytes(&self, dtype: DType) -> LoadBytes {
        let checkpoint = &self.info.checkpoint;
        let weights = match self.module {
            Module::Gguf(_) => checkpoint.file_bytes as u128,
            Module::SafeTensors(_) => checkpoint.parameters as u128 * dtype.size_in_bytes() as u128,
        };
        LoadBytes {
            weights,
            rotary_tables: memory::rotary_table_bytes(&self.arch),
        }
    }

    /// The error for a load that does not fit: on the context's setting when the rotary tables
    /// alone are too large, else on the weights.
    pub(crate) fn memory_error(&self, needed: LoadBytes, free: u64, problem: String) -> Error {
        if needed.rotary_tables > free as u128 {
            context_error(&self.folder, &self.arch, problem)
        } else {
            Error::weights(&self.folder.root, problem)
        }
    }

    /// The settings of the module a SafeTensors checkpoint is built with.
    pub fn module_config(&self) -> Option<&dyn ModuleConfig> {
        match &self.module {
            Module::SafeTensors(module) => Some(module.as_ref()),
            Module::Gguf(_) => None,
        }
    }
}

/// An error on the setting that sizes the context: `max_position_embeddings`, or the GGUF's
/// `<arch>.context_length`.
fn context_error(folder: &ModelFolder, arch: &ArchConfig, problem: String) -> Error {
    match &folder.weights {
        Weights::Gguf(path) => Error::field(
            path,
            format!("{}.context_length", arch.architecture.name()),
            problem,
        ),
        _ => Error::field(&folder.config(), "max_position_embeddings", problem),
    }
}

/// The chat template, from the first that has one: chat_template.jinja (transformers 5),
/// tokenizer_config.json (4.x), the GGUF's `tokenizer.chat_template`. A template that does not
/// parse is kept as its error, which a chat request then gets.
fn chat_template(
    folder: &ModelFolder,
    tokenizer_config: Option<(&Path, &serde_json::Map<String, serde_json::Value>)>,
    gguf: Option<&GgufText>,
) -> Result<Option<std::result::Result<ChatTemplate, String>>> {
    let special = |key: &str, from_gguf: fn(&GgufText) -> &String| -> String {
        tokenizer_config
            .map(|(_, map)| crate::chat::special_token(map, key))
            .filter(|t| !t.is_empty())
            .or_else(|| gguf.map(|g| from_gguf(g).clone()))
            .unwrap_or_default()
    };
    let with_tokens = |source: String| {
        ChatTemplate::new(
            source,
            special("bos_token", |g| &g.bos_token),
            special("eos_token", |g| &g.eos_token),
        )
    };
    if let Some(path) = &folder.chat_template {
        let source = std::fs::read_to_string(path)
            .map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
        return Ok(Some(
            with_tokens(source).map_err(|e| format!("{}: {e}", path.display())),
        ));
    }
    if let Some((path, map)) = tokenizer_config {
        match ChatTemplate::from_config(path, map) {
            Ok(Some(template)) => return Ok(Some(Ok(template))),
            Err(e) => return Ok(Some(Err(e.to_string()))),
            Ok(None) => {}
        }
    }
    let gguf_template = gguf.and_then(|g| g.chat_template.clone());
    Ok(gguf_template.map(|source| {
        with_tokens(source).map_err(|e| {
            let file = folder.weights.files().pop().unwrap_or_default();
            format!("{}: {CHAT_TEMPLATE}: {e}", file.display())
        })
    }))
}
