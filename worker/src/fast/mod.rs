//! The fast engine. On CUDA, for the llama family (llama, mistral, qwen2, qwen3 from
//! SafeTensors): fused kernels (kernels/decode.cu) launched on candle's device and stream, a
//! decode step captured as a CUDA graph (`llama`); worker/tests/cuda_ops.rs checks each kernel
//! against the candle ops it replaces. On the CPU, for llama-family GGUF files: the quantized
//! products of `cpu`, checked there against candle's, and the decode attention of
//! `cpu_attention`, which gives candle's values bit for bit. candle's modules stay the reference and
//! the fallback (`Engine::Candle`).

pub mod cpu;
pub mod cpu_attention;
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

/// The model an engine is chosen for.
#[derive(Clone, Copy)]
pub enum Candidate<'a> {
    SafeTensors(&'a dyn ModuleConfig),
    /// A GGUF file; `cpu_kernels`: its module runs its products on `cpu`'s kernels.
    Gguf {
        cpu_kernels: bool,
    },
}

/// The engine that runs `candidate` on `device`: `wanted`, else the fast engine where it runs
/// (CUDA, the llama family from SafeTensors; the CPU, llama-family GGUF files) and candle's
/// elsewhere. Asking for `fast` where it does not run is an error that says why.
pub fn choose(
    wanted: Option<Engine>,
    device: &Device,
    candidate: Candidate,
) -> Result<(Engine, Option<LlamaShape>)> {
    let on_cuda = cfg!(feature = "cuda") && device.is_cuda();
    match (wanted, candidate) {
        (Some(Engine::Candle), _) => Ok((Engine::Candle, None)),
        (wanted, Candidate::SafeTensors(module)) => match (module.llama_shape(), wanted) {
            (Some(shape), _) if on_cuda => Ok((Engine::Fast, Some(shape))),
            (_, None) => Ok((Engine::Candle, None)),
            (shape, Some(_)) => Err(Error::Engine(if !on_cuda {
                "from SafeTensors the fast engine runs on CUDA only (a build with the `cuda` \
                 feature and `--backend cuda`); use `--engine candle`"
                    .into()
            } else {
                debug_assert!(shape.is_none());
                "the fast engine covers the llama family (llama, mistral, qwen2, qwen3) from \
                 SafeTensors; this model runs on `--engine candle`"
                    .into()
            })),
        },
        (wanted, Candidate::Gguf { cpu_kernels }) => {
            if cpu_kernels && device.is_cpu() {
                Ok((Engine::Fast, None))
            } else if wanted.is_none() {
                Ok((Engine::Candle, None))
            } else if cpu_kernels {
                Err(Error::Engine(
                    "from GGUF files the fast engine runs on the CPU only; use `--engine candle`"
                        .into(),
                ))
            } else {
                Err(Error::Engine(
                    "from GGUF files the fast engine covers the llama family (llama, mistral, \
                     SmolLM2); this model runs on `--engine candle`"
                        .into(),
                ))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// On the CPU the fast engine is the default for the GGUF modules with CPU kernels, and is
    /// refused for the others with the reason; candle's runs everything when asked for.
    #[test]
    fn on_the_cpu_fast_runs_where_the_cpu_kernels_cover_the_model() {
        let cpu = Device::Cpu;
        let (covered, other) = (
            Candidate::Gguf { cpu_kernels: true },
            Candidate::Gguf { cpu_kernels: false },
        );
        for candidate in [covered, other] {
            let candle = choose(Some(Engine::Candle), &cpu, candidate).unwrap();
            assert_eq!(candle.0, Engine::Candle);
        }
        assert_eq!(choose(None, &cpu, covered).unwrap().0, Engine::Fast);
        assert_eq!(choose(None, &cpu, other).unwrap().0, Engine::Candle);
        assert_eq!(
            choose(Some(Engine::Fast), &cpu, covered).unwrap().0,
            Engine::Fast
        );
        let refused = choose(Some(Engine::Fast), &cpu, other).unwrap_err();
        assert!(refused.to_string().contains("llama family"), "{refused}");
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
            // Off CUDA the llama family from SafeTensors runs on candle's engine.
            let candidate = Candidate::SafeTensors(parsed.module.as_ref());
            let chosen = choose(None, &Device::Cpu, candidate).unwrap();
            assert_eq!(chosen.0, Engine::Candle, "{}", spec.id);
            let refused = choose(Some(Engine::Fast), &Device::Cpu, candidate).unwrap_err();
            assert!(refused.to_string().contains("CUDA only"), "{}", spec.id);
        }
    }
}
