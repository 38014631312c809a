//! Where the model runs (`cpu`, `cuda`, `metal`) and in which floating-point type.

use std::fmt;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    #[default]
    Cpu,
    Cuda,
    Metal,
}

impl Backend {
    pub const ALL: [Backend; 3] = [Backend::Cpu, Backend::Cuda, Backend::Metal];

    pub fn name(self) -> &'static str {
        match self {
            Backend::Cpu => "cpu",
            Backend::Cuda => "cuda",
            Backend::Metal => "metal",
        }
    }
}

impl std::str::FromStr for Backend {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Backend::ALL
            .into_iter()
            .find(|b| b.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown backend `{s}` (cpu, cuda or metal)"))
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The floating-point type weights and activations are held in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Dtype {
    #[default]
    F32,
    Bf16,
    F16,
}

impl Dtype {
    pub const ALL: [Dtype; 3] = [Dtype::F32, Dtype::Bf16, Dtype::F16];

    pub fn name(self) -> &'static str {
        match self {
            Dtype::F32 => "f32",
            Dtype::Bf16 => "bf16",
            Dtype::F16 => "f16",
        }
    }

    /// Bytes of one value.
    pub fn size_in_bytes(self) -> u64 {
        match self {
            Dtype::F32 => 4,
            Dtype::Bf16 | Dtype::F16 => 2,
        }
    }
}

impl std::str::FromStr for Dtype {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        Dtype::ALL
            .into_iter()
            .find(|d| d.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| format!("unknown dtype `{s}` (f32, bf16 or f16)"))
    }
}

impl fmt::Display for Dtype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The type the KV cache holds keys and values in.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum KvCache {
    /// The activations' type (`--dtype`; f32 for GGUF files).
    #[default]
    Activations,
    /// f16: half the memory of an f32 cache, for llama-family GGUF files. Keys and values are
    /// rounded to f16 as they are written and widened to f32 where attention reads them (as
    /// llama.cpp's default f16 cache does).
    F16,
}

impl KvCache {
    pub fn name(self) -> &'static str {
        match self {
            KvCache::Activations => "activations",
            KvCache::F16 => "f16",
        }
    }

    /// Bytes of one value, for activations of `dtype`.
    pub fn size_in_bytes(self, dtype: Dtype) -> u64 {
        match self {
            KvCache::Activations => dtype.size_in_bytes(),
            KvCache::F16 => 2,
        }
    }
}

impl fmt::Display for KvCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which implementation runs a model's forward pass.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum Engine {
    /// candle's modules (the worker's copies of them): every backend and architecture; the
    /// reference, the default on Metal and for the models the fast engine does not cover. The
    /// engine of records made before the fast engine existed.
    #[default]
    Candle,
    /// On CUDA the fused kernels and CUDA graph for the llama family from SafeTensors; on the
    /// CPU the kernels for llama-family GGUF files (Q4_0, Q4_1, Q8_0, Q2_K to Q6_K, f16 and
    /// f32 products). The default there.
    Fast,
}

impl Engine {
    pub fn name(self) -> &'static str {
        match self {
            Engine::Candle => "candle",
            Engine::Fast => "fast",
        }
    }

    /// The engine a load without one runs the models the fast engine covers with on `backend`.
    pub fn default_for(backend: Backend) -> Engine {
        match backend {
            Backend::Cuda | Backend::Cpu => Engine::Fast,
            Backend::Metal => Engine::Candle,
        }
    }
}

impl std::str::FromStr for Engine {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        [Engine::Candle, Engine::Fast]
            .into_iter()
            .find(|e| e.name() == s)
            .ok_or_else(|| format!("unknown engine `{s}` (candle or fast)"))
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}
