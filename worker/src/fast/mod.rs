//! The CUDA fast path of the llama family (llama, mistral, qwen2, qwen3 from SafeTensors):
//! fused kernels (kernels/decode.cu) launched on candle's device and stream, a decode step
//! captured as a CUDA graph (`llama`). candle's modules stay the reference and the fallback
//! (`Engine::Candle`); worker/tests/cuda_ops.rs checks each kernel against the candle ops it
//! replaces.

#[cfg(feature = "cuda")]
pub mod kernels;
#[cfg(feature = "cuda")]
pub mod llama;
pub mod shape;

use candle_core::Device;

use crate::error::{Error, Result};
use crate::model::ModuleConfig;

#[cfg(feature = "cuda")]
pub use kernels::{Element, Kernels, QkvExtra};
pub use llm_worker_rbee_api::Engine;
pub use shape::{Heads, LlamaShape, QkvKind};

/// The engine that runs `module` on `device`: `wanted`, else the fast engine where it runs (CUDA,
/// the llama family from SafeTensors) and candle's elsewhere. Asking for `fast` where it does
/// not run is an error that says why.
pub fn choose(
    wanted: Option<Engine>,
    device: &Device,
    module: Option<&dyn ModuleConfig>,
) -> Result<(Engine, Option<LlamaShape>)> {
    let shape = module.and_then(|m| m.llama_shape());
    let available = cfg!(feature = "cuda") && device.is_cuda();
    match (wanted, shape) {
        (Some(Engine::Candle), _) | (None, None) => Ok((Engine::Candle, None)),
        (Some(Engine::Fast) | None, Some(shape)) if available => Ok((Engine::Fast, Some(shape))),
        (None, Some(_)) => Ok((Engine::Candle, None)),
        (Some(Engine::Fast), shape) => Err(Error::Engine(if !available {
            "the fast engine runs on CUDA only (a build with the `cuda` feature and \
             `--backend cuda`); use `--engine candle`"
                .into()
        } else if shape.is_none() && module.is_some() {
            "the fast engine covers the llama family (llama, mistral, qwen2, qwen3) from \
             SafeTensors; this model runs on `--engine candle`"
                .into()
        } else {
            "the fast engine does not run GGUF files; use `--engine candle`".into()
        })),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn candle_is_the_default_and_fast_is_refused_off_cuda() {
        let cpu = Device::Cpu;
        assert_eq!(choose(None, &cpu, None).unwrap().0, Engine::Candle);
        assert_eq!(
            choose(Some(Engine::Candle), &cpu, None).unwrap().0,
            Engine::Candle
        );
        let refused = choose(Some(Engine::Fast), &cpu, None).unwrap_err();
        assert!(refused.to_string().contains("CUDA only"), "{refused}");
    }

    /// The fast path covers exactly the llama family, with the fixtures' own sizes.
    #[cfg(feature = "synth")]
    #[test]
    fn the_llama_family_describes_its_shape_and_no_other_architecture_does() {
        for spec in crate::synth::fixtures() {
            let dir = tempfile::tempdir().unwrap();
            crate::synth::write_fixture(&spec, dir.path()).unwrap();
            let hf = crate::config::HfConfig::load(&dir.path().join("config.json")).unwrap();
            let parsed = crate::arch::parse(&hf).unwrap();
            let name = parsed.config.architecture.name();
            let covered = ["llama", "mistral", "qwen2", "qwen3"].contains(&name);
            let Some(shape) = parsed.module.llama_shape() else {
                assert!(!covered, "{}: {name} has no llama shape", spec.id);
                continue;
            };
            assert!(covered, "{}: {name} describes a llama shape", spec.id);
            let dims = &parsed.config.dims;
            assert_eq!(
                (shape.hidden, shape.intermediate, shape.vocab, shape.layers),
                (
                    dims.hidden_size,
                    dims.intermediate_size,
                    dims.vocab_size,
                    dims.num_layers
                ),
                "{}",
                spec.id
            );
            assert_eq!(
                shape.heads,
                Heads {
                    heads: dims.num_heads,
                    kv_heads: dims.num_kv_heads,
                    head_dim: dims.head_dim
                },
                "{}",
                spec.id
            );
            assert_eq!(shape.inv_freq.len(), dims.head_dim / 2, "{}", spec.id);
            assert_eq!(
                shape.tie_embeddings, parsed.config.tie_word_embeddings,
                "{}",
                spec.id
            );
        }
    }
}
