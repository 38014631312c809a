//! Reading checkpoints onto the device, and checking that the architecture's module reads
//! exactly the tensors the checkpoint holds: SafeTensors here, GGUF in [`crate::gguf`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use candle_core::safetensors::{Load, MmapedSafetensors};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::{Init, VarBuilder};

use crate::checkpoint::{holds_non_finite, layers_held, summarize_list, CheckpointSummary};
use crate::error::{without_backtrace, Error, Result};
use crate::fast::LlamaShape;
use crate::folder::{ModelFolder, Weights};
use crate::model::{ArchConfig, CausalLm, ModuleConfig};

pub const EMBEDDINGS: &str = "model.embed_tokens.weight";
pub const LM_HEAD: &str = "lm_head.weight";

/// Maps every weight file and checks the headers (a truncated or corrupt file fails here).
fn open_files(folder: &ModelFolder) -> Result<Vec<(PathBuf, MmapedSafetensors)>> {
    folder
        .weights
        .files()
        .into_iter()
        .map(|path| {
            // SAFETY: the file is only read; the worker does not modify model files while
            // they are mapped, and a concurrent writer is outside what any loader can guard.
            let mapped = unsafe { MmapedSafetensors::new(&path) }.map_err(|e| {
                Error::weights(&path, format!("not a readable SafeTensors file: {e}"))
            })?;
            Ok((path, mapped))
        })
        .collect()
}

/// Tensor name to the file that holds it; fails on a name held twice or an index that points
/// at the wrong shard.
fn locate(
    folder: &ModelFolder,
    files: &[(PathBuf, MmapedSafetensors)],
) -> Result<BTreeMap<String, usize>> {
    let mut location = BTreeMap::new();
    for (i, (path, mapped)) in files.iter().enumerate() {
        for (name, _) in mapped.tensors() {
            if let Some(other) = location.insert(name.clone(), i) {
                return Err(Error::weights(
                    path,
                    format!("tensor `{name}` is also in {}", files[other].0.display()),
                ));
            }
        }
    }
    if let Weights::Sharded { index, weight_map } = &folder.weights {
        for (name, file) in weight_map {
            let found = location.get(name).map(|i| &files[*i].0);
            if found != Some(file) {
                return Err(Error::weights(
                    index,
                    format!(
                        "lists tensor `{name}` in {}, but that file does not hold it",
                        file.display()
                    ),
                ));
            }
        }
    }
    Ok(location)
}

/// The headers of the SafeTensors files of `folder`.
pub fn summarize(folder: &ModelFolder) -> Result<CheckpointSummary> {
    let files = open_files(folder)?;
    locate(folder, &files)?;
    let mut summary = CheckpointSummary {
        files: files.iter().map(|(p, _)| p.clone()).collect(),
        file_bytes: 0,
        tensors: 0,
        parameters: 0,
        dtypes: BTreeMap::new(),
    };
    for (path, mapped) in &files {
        summary.file_bytes += std::fs::metadata(path).map(|m| m.len()).unwrap_or(0);
        for (_, view) in mapped.tensors() {
            summary.tensors += 1;
            summary.parameters += view.shape().iter().product::<usize>() as u64;
            *summary
                .dtypes
                .entry(format!("{:?}", view.dtype()).to_lowercase())
                .or_default() += 1;
        }
    }
    Ok(summary)
}

/// Reads every tensor once, converting floating-point ones to `dtype`, onto `device`.
fn read_all(
    folder: &ModelFolder,
    device: &Device,
    dtype: DType,
) -> Result<HashMap<String, Tensor>> {
    let files = open_files(folder)?;
    let location = locate(folder, &files)?;
    let mut tensors = HashMap::with_capacity(location.len());
    for (name, i) in location {
        let (path, mapped) = &files[i];
        let read = || -> candle_core::Result<Tensor> {
            let tensor = mapped.get(&name)?.load(device)?;
            if tensor.dtype().is_float() && tensor.dtype() != dtype {
                tensor.to_dtype(dtype)
            } else {
                Ok(tensor)
            }
        };
        let tensor = read()
            .map_err(|e| Error::weights(path, format!("cannot read tensor `{name}`: {e}")))?;
        tensors.insert(name, tensor);
    }
    Ok(tensors)
}

/// Refuses a config with more layers than the checkpoint holds (`model.layers.N.*`) before
/// anything is read: building a module of a million layers would take minutes and gigabytes to
/// reach the first missing tensor.
fn check_layer_count(folder: &ModelFolder, arch: &ArchConfig) -> Result<()> {
    let files = open_files(folder)?;
    let names: Vec<String> = files
        .iter()
        .flat_map(|(_, mapped)| mapped.tensors())
        .map(|(name, _)| name)
        .collect();
    let held = layers_held(names.iter().map(String::as_str), "model.layers.");
    if held > 0 && arch.dims.num_layers > held {
        return Err(Error::field(
            &folder.config(),
            "num_hidden_layers",
            format!(
                "is {}, but the checkpoint holds {held} layers (model.layers.0 to {})",
                arch.dims.num_layers,
                held - 1
            ),
        ));
    }
    Ok(())
}

/// Serves tensors to a candle module and records what it asked for. A missing tensor or a
/// wrong shape is recorded rather than returned, so that modules which `unwrap` while loading
/// cannot panic, and so that every problem is reported at once.
struct Tracker {
    tensors: HashMap<String, Tensor>,
    read: Mutex<BTreeSet<String>>,
    problems: Mutex<Vec<String>>,
    /// Tensors whose values the module cannot compute with.
    bad_values: Mutex<Vec<String>>,
}

impl Tracker {
    /// Records that `name` was read; true the first time.
    fn note_read(&self, name: &str) -> bool {
        self.read
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(name.to_string())
    }

    /// Checks a tensor the module reads, the first time it reads it: floating point, with no
    /// NaN or infinity (one reduction a tensor).
    fn check_values(&self, name: &str, tensor: &Tensor) -> candle_core::Result<()> {
        let problem = if !tensor.dtype().is_float() {
            format!(
                "`{name}` is {:?}, not floating point: its values are not weights",
                tensor.dtype()
            )
        } else if holds_non_finite(tensor)? {
            format!(
                "`{name}` holds NaN or infinity (in {:?}, as loaded)",
                tensor.dtype()
            )
        } else {
            return Ok(());
        };
        self.bad_values
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(problem);
        Ok(())
    }

    fn problem(&self, message: String) {
        self.problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(message);
    }
}

struct TrackingBackend(Arc<Tracker>);

impl SimpleBackend for TrackingBackend {
    fn get(
        &self,
        shape: Shape,
        name: &str,
        _: Init,
        dtype: DType,
        dev: &Device,
    ) -> candle_core::Result<Tensor> {
        let tracker = &self.0;
        let first = tracker.note_read(name);
        match tracker.tensors.get(name) {
            Some(t) if t.shape() == &shape => {
                if first {
                    tracker.check_values(name, t)?;
                }
                t.to_dtype(dtype)?.to_device(dev)
            }
            found => {
                tracker.problem(match found {
                    Some(t) => format!(
                        "`{name}` has shape {:?}, expected {:?}",
                        t.dims(),
                        shape.dims()
                    ),
                    None => format!("`{name}` (shape {:?}) is missing", shape.dims()),
                });
                // A stand-in without memory; the model built from it is discarded.
                Tensor::zeros((), dtype, dev)?.broadcast_as(shape)
            }
        }
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let first = self.0.note_read(name);
        match self.0.tensors.get(name) {
            Some(t) => {
                if first {
                    self.0.check_values(name, t)?;
                }
                t.to_dtype(dtype)?.to_device(dev)
            }
            None => Err(candle_core::Error::CannotFindTensor {
                path: name.to_string(),
            }),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.tensors.contains_key(name)
    }
}

/// Loads the SafeTensors checkpoint of `folder` onto `device` and builds the module `module`
/// configures, or the fast path of its shape when one is given, failing unless it reads every
/// tensor (but the harmless ones) with the right shape.
pub fn load_model(
    folder: &ModelFolder,
    arch: &ArchConfig,
    (module, fast_shape): (&dyn ModuleConfig, Option<&LlamaShape>),
    device: &Device,
    dtype: DType,
) -> Result<Box<dyn CausalLm>> {
    let root = folder.root.as_path();
    check_layer_count(folder, arch)?;
    let tensors = read_all(folder, device, dtype)?;
    check_output_layer(root, arch, &tensors)?;
    let tracker = Arc::new(Tracker {
        tensors,
        read: Mutex::new(BTreeSet::new()),
        problems: Mutex::new(Vec::new()),
        bad_values: Mutex::new(Vec::new()),
    });
    let vb = VarBuilder::from_backend(
        Box::new(TrackingBackend(tracker.clone())),
        dtype,
        device.clone(),
    );
    let built = match fast_shape {
        #[cfg(feature = "cuda")]
        Some(shape) => crate::fast::llama::load(vb, shape),
        #[cfg(not(feature = "cuda"))]
        Some(_) => unreachable!("fast::choose gives a shape only with the cuda feature"),
        None => module.load(vb),
    };
    let model = built.map_err(|e| {
        Error::weights(
            root,
            format!(
                "cannot build the {} model: {}",
                arch.architecture,
                without_backtrace(e)
            ),
        )
    })?;

    let bad_values = std::mem::take(
        &mut *tracker
            .bad_values
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    if !bad_values.is_empty() {
        return Err(Error::weights(
            root,
            format!(
                "the checkpoint holds values the model cannot compute with: {}",
                summarize_list(&bad_values)
            ),
        ));
    }
    let problems = std::mem::take(
        &mut *tracker
            .problems
            .lock()
            .unwrap_or_else(PoisonError::into_inner),
    );
    if !problems.is_empty() {
        return Err(Error::weights(
            root,
            format!(
                "the checkpoint does not match the {} config in config.json: {}",
                arch.architecture,
                summarize_list(&problems)
            ),
        ));
    }
    let read = tracker.read.lock().unwrap_or_else(PoisonError::into_inner);
    let unused: Vec<String> = tracker
        .tensors
        .keys()
        .filter(|name| !read.contains(*name))
        .filter(|name| {
            !arch
                .architecture
                .harmless_tensors()
                .iter()
                .any(|s| name.ends_with(s))
        })
        .filter(|name| !(arch.tie_word_embeddings && name.as_str() == LM_HEAD))
        .cloned()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    if !unused.is_empty() {
        return Err(Error::weights(
            root,
            format!(
                "the {} model does not use these checkpoint tensors, so its output would not be \
                 the checkpoint's: {} (is config.json for this checkpoint?)",
                arch.architecture,
                summarize_list(&unused)
            ),
        ));
    }
    drop(read);
    drop(tracker);
    #[cfg(feature = "cuda")]
    if fast_shape.is_some() {
        crate::fast::llama::release_pool_memory(device)
            .map_err(|e| Error::weights(root, format!("cannot release load memory: {e}")))?;
    }
    Ok(model)
}

/// With tied embeddings the output layer is the embedding matrix: a separate `lm_head` is
/// accepted only when it is a copy of it. Untied, it must be present (some modules would
/// otherwise tie silently).
fn check_output_layer(
    root: &Path,
    arch: &ArchConfig,
    tensors: &HashMap<String, Tensor>,
) -> Result<()> {
    let lm_head = tensors.get(LM_HEAD);
    match (arch.tie_word_embeddings, lm_head) {
        (true, Some(head)) => {
            let same = match tensors.get(EMBEDDINGS) {
                Some(emb) if emb.shape() == head.shape() => {
                    emb.ne(head)?.flatten_all()?.max(0)?.to_scalar::<u8>()? == 0
                }
                _ => false,
            };
            if !same {
                return Err(Error::weights(
                    root,
                    format!(
                        "config.json sets tie_word_embeddings, but the checkpoint has an \
                         `{LM_HEAD}` that differs from `{EMBEDDINGS}`"
                    ),
                ));
            }
        }
        (false, None) => {
            return Err(Error::weights(
                root,
                format!(
                    "`{LM_HEAD}` is missing and config.json sets tie_word_embeddings to false \
                     (set it to true if the output layer is tied to the embeddings)"
                ),
            ))
        }
        _ => {}
    }
    Ok(())
}
