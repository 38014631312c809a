//! Each decode kernel (kernels/decode.cu) against the candle ops it replaces, as llama.cpp's
//! test-backend-ops checks its backends: random inputs at many shapes, the normalised mean
//! squared error (NMSE) of the kernel's output from candle's within a bound per dtype. Needs a
//! CUDA device: `cargo test -p llm-worker-rbee --features cuda --test cuda_ops -- --nocapture`
//! prints every NMSE measured.
#![cfg(feature = "cuda")]

use candle_core::cuda_backend::cudarc::driver::{CudaSlice, DeviceRepr, ValidAsZeroBits};
use candle_core::cuda_backend::CudaDevice;
use candle_core::{DType, Device, IndexOp, Tensor, WithDType};
use half::{bf16, f16};
use llm_worker_rbee::fast::kernels::splits;
use llm_worker_rbee::fast::{Element, Heads, Kernels, QkvExtra};

/// Token counts of the row kernels and the rope write.
const TOKENS: &[usize] = &[1, 4, 8, 23, 512];
/// Cache lengths before the step: the attention covers these plus the new positions.
const CACHE_LENGTHS: &[usize] = &[0, 1, 255, 256, 4095];
/// Attention geometries (heads, kv heads, head dim): tinyllama-1.1b, qwen2.5-0.5b,
/// mistral-7b and one without grouping.
const GEOMETRIES: &[(usize, usize, usize)] = &[(32, 4, 64), (14, 2, 64), (32, 8, 128), (8, 8, 64)];

/// The NMSE a kernel may have from candle's ops, by dtype: candle rounds to the storage type
/// after every op of a sequence where a kernel rounds once, so the bound is a few roundings of
/// the dtype's precision (bf16 8 bits, f16 11 bits); f32 differs only in summation order.
fn bound(dtype: DType) -> f64 {
    match dtype {
        DType::F32 => 1e-10,
        DType::F16 => 1e-6,
        DType::BF16 => 3e-5,
        other => panic!("no kernels for {other:?}"),
    }
}

fn device() -> (Device, CudaDevice) {
    let device = Device::new_cuda(0).expect("a CUDA device");
    let cuda = device.as_cuda_device().expect("cuda").clone();
    (device, cuda)
}

/// Deterministic values in [-1, 1) (xorshift), the same on every run.
fn random(n: usize, seed: u64) -> Vec<f32> {
    let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..n)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 40) as f32 / (1u64 << 23) as f32 - 1.0
        })
        .collect()
}

/// `values` rounded to T: the tensor candle's reference runs on, and the same data uploaded
/// for the kernel.
fn inputs<T: Element + WithDType>(
    device: &Device,
    cuda: &CudaDevice,
    values: &[f32],
    shape: &[usize],
) -> (Tensor, CudaSlice<T>) {
    let tensor = Tensor::from_slice(values, shape, &Device::Cpu)
        .unwrap()
        .to_dtype(T::DTYPE)
        .unwrap();
    let host: Vec<T> = tensor.flatten_all().unwrap().to_vec1().unwrap();
    (
        tensor.to_device(device).unwrap(),
        cuda.clone_htod(&host).unwrap(),
    )
}

fn output<T: DeviceRepr + ValidAsZeroBits>(cuda: &CudaDevice, n: usize) -> CudaSlice<T> {
    cuda.alloc_zeros::<T>(n).unwrap()
}

fn download<T: Element + WithDType>(cuda: &CudaDevice, slice: &CudaSlice<T>) -> Vec<f32> {
    let host: Vec<T> = cuda.clone_dtoh(slice).unwrap();
    host.iter().map(|v| v.to_f64() as f32).collect()
}

fn values(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap()
}

fn nmse(ours: &[f32], reference: &[f32]) -> f64 {
    assert_eq!(ours.len(), reference.len(), "lengths");
    let (mut error, mut norm) = (0f64, 0f64);
    for (a, b) in ours.iter().zip(reference) {
        error += (f64::from(*a) - f64::from(*b)).powi(2);
        norm += f64::from(*b).powi(2);
    }
    if norm == 0.0 {
        error
    } else {
        error / norm
    }
}

/// Asserts the NMSE bound and prints the measurement (`--nocapture` shows them all).
fn check(op: &str, dtype: DType, shape: &str, ours: &[f32], reference: &[f32]) {
    assert!(
        ours.iter().all(|v| v.is_finite()),
        "{op} {dtype:?} {shape}: not finite"
    );
    let error = nmse(ours, reference);
    println!(
        "{op:<18} {:<5} {shape:<34} nmse {error:.3e}",
        format!("{dtype:?}")
    );
    assert!(
        error <= bound(dtype),
        "{op} {dtype:?} {shape}: nmse {error:.3e} over the bound {:.0e}",
        bound(dtype)
    );
}

fn for_each_dtype(f: fn(DType)) {
    for dtype in [DType::F32, DType::BF16, DType::F16] {
        f(dtype);
    }
}

macro_rules! typed {
    ($dtype:expr, $f:ident) => {
        match $dtype {
            DType::F32 => $f::<f32>(),
            DType::BF16 => $f::<bf16>(),
            DType::F16 => $f::<f16>(),
            other => panic!("no kernels for {other:?}"),
        }
    };
}

#[test]
fn rms_norm_and_add_rms_norm_match_candle() {
    fn run<T: Element + WithDType>() {
        let (device, cuda) = device();
        let kernels = Kernels::new(&cuda);
        let eps = 1e-5;
        for &hidden in &[64, 896, 2048, 4096, 16_384] {
            for &rows in TOKENS {
                let shape = format!("rows {rows} hidden {hidden}");
                let n = rows * hidden;
                let (x, x_dev) = inputs::<T>(&device, &cuda, &random(n, 1), &[rows, hidden]);
                let (r, mut r_dev) = inputs::<T>(&device, &cuda, &random(n, 2), &[rows, hidden]);
                let w_values: Vec<f32> = random(hidden, 3).iter().map(|v| 1.0 + v).collect();
                let (w, w_dev) = inputs::<T>(&device, &cuda, &w_values, &[hidden]);

                let mut out = output::<T>(&cuda, n);
                let (xv, wv) = (x_dev.as_view(), w_dev.as_view());
                kernels
                    .rms_norm(&xv, &mut out.as_view_mut(), &wv, rows, hidden, eps)
                    .unwrap();
                let reference = candle_nn::ops::rms_norm(&x, &w, eps).unwrap();
                check(
                    "rms_norm",
                    T::DTYPE,
                    &shape,
                    &download(&cuda, &out),
                    &values(&reference),
                );

                kernels
                    .add_rms_norm(
                        &xv,
                        &mut r_dev.as_view_mut(),
                        &mut out.as_view_mut(),
                        &wv,
                        rows,
                        hidden,
                        eps,
                    )
                    .unwrap();
                let sum = (&x + &r).unwrap();
                let reference = candle_nn::ops::rms_norm(&sum, &w, eps).unwrap();
                check(
                    "add_rms_norm",
                    T::DTYPE,
                    &shape,
                    &download(&cuda, &out),
                    &values(&reference),
                );
                check(
                    "add_rms_norm sum",
                    T::DTYPE,
                    &shape,
                    &download(&cuda, &r_dev),
                    &values(&sum),
                );
            }
        }
    }
    for_each_dtype(|dtype| typed!(dtype, run));
}

#[test]
fn rope_write_kv_matches_candle_rope_and_a_cache_write() {
    fn run<T: Element + WithDType>() {
        let (device, cuda) = device();
        let kernels = Kernels::new(&cuda);
        let capacity = 4096 + 512;
        for &(heads, kv_heads, head_dim) in &GEOMETRIES[..3] {
            let geometry = Heads {
                heads,
                kv_heads,
                head_dim,
            };
            let half = head_dim / 2;
            // The tables of the llama module's cache, theta 10000.
            let inv: Vec<f32> = (0..half)
                .map(|i| 1.0 / 10_000f32.powf(2.0 * i as f32 / head_dim as f32))
                .collect();
            let angles: Vec<f32> = (0..capacity)
                .flat_map(|p| inv.iter().map(move |f| p as f32 * f))
                .collect();
            let cos_values: Vec<f32> = angles.iter().map(|a| a.cos()).collect();
            let sin_values: Vec<f32> = angles.iter().map(|a| a.sin()).collect();
            let (cos, cos_dev) = inputs::<T>(&device, &cuda, &cos_values, &[capacity, half]);
            let (sin, sin_dev) = inputs::<T>(&device, &cuda, &sin_values, &[capacity, half]);
            for &tokens in TOKENS {
                for &start in CACHE_LENGTHS {
                    for variant in ["", "bias", "norm"] {
                        let width = geometry.qkv_width();
                        let shape = format!(
                            "{heads}/{kv_heads}x{head_dim} tokens {tokens} at {start} {variant}"
                        );
                        let (qkv, qkv_dev) = inputs::<T>(
                            &device,
                            &cuda,
                            &random(tokens * width, 4),
                            &[tokens, width],
                        );
                        let (bias, bias_dev) =
                            inputs::<T>(&device, &cuda, &random(width, 5), &[width]);
                        let norm_weights = |seed| {
                            let w: Vec<f32> =
                                random(head_dim, seed).iter().map(|v| 1.0 + v).collect();
                            inputs::<T>(&device, &cuda, &w, &[head_dim])
                        };
                        let ((q_norm, q_norm_dev), (k_norm, k_norm_dev)) =
                            (norm_weights(12), norm_weights(13));
                        let eps = 1e-6;
                        let pos = cuda.clone_htod(&[start as i32]).unwrap();
                        let mut q = output::<T>(&cuda, tokens * heads * head_dim);
                        let mut k_cache = output::<T>(&cuda, kv_heads * capacity * head_dim);
                        let mut v_cache = output::<T>(&cuda, kv_heads * capacity * head_dim);
                        let (bias_view, q_norm_view, k_norm_view) = (
                            bias_dev.as_view(),
                            q_norm_dev.as_view(),
                            k_norm_dev.as_view(),
                        );
                        let extra = match variant {
                            "bias" => QkvExtra::Bias(&bias_view),
                            "norm" => QkvExtra::Norm {
                                q: &q_norm_view,
                                k: &k_norm_view,
                                eps,
                            },
                            _ => QkvExtra::None,
                        };
                        kernels
                            .rope_write_kv(
                                &qkv_dev.as_view(),
                                extra,
                                &mut q.as_view_mut(),
                                (&mut k_cache.as_view_mut(), &mut v_cache.as_view_mut()),
                                (&cos_dev.as_view(), &sin_dev.as_view()),
                                &pos.as_view(),
                                tokens,
                                geometry,
                                capacity,
                            )
                            .unwrap();

                        let qkv = if variant == "bias" {
                            qkv.broadcast_add(&bias).unwrap()
                        } else {
                            qkv
                        };
                        let norm = |x: Tensor, weight: &Tensor| {
                            if variant == "norm" {
                                candle_nn::ops::rms_norm(&x, weight, eps).unwrap()
                            } else {
                                x
                            }
                        };
                        // (1, heads, tokens, head_dim), as the module splits them.
                        let part = |from: usize, n: usize| {
                            qkv.narrow(1, from * head_dim, n * head_dim)
                                .unwrap()
                                .reshape((1, tokens, n, head_dim))
                                .unwrap()
                                .transpose(1, 2)
                                .unwrap()
                                .contiguous()
                                .unwrap()
                        };
                        let cos = cos.narrow(0, start, tokens).unwrap();
                        let sin = sin.narrow(0, start, tokens).unwrap();
                        let rope = |x: Tensor| candle_nn::rotary_emb::rope(&x, &cos, &sin).unwrap();
                        let q_ref = rope(norm(part(0, heads), &q_norm)).transpose(1, 2).unwrap();
                        let k_ref = rope(norm(part(heads, kv_heads), &k_norm));
                        let v_ref = part(heads + kv_heads, kv_heads);
                        check(
                            "rope_write_kv q",
                            T::DTYPE,
                            &shape,
                            &download(&cuda, &q),
                            &values(&q_ref),
                        );
                        // The whole cache: the written positions, and zeros elsewhere.
                        let cache = |reference: &Tensor| {
                            let zeros = |n: usize| {
                                Tensor::zeros((1, kv_heads, n, head_dim), T::DTYPE, &device)
                                    .unwrap()
                            };
                            Tensor::cat(
                                &[
                                    zeros(start),
                                    reference.clone(),
                                    zeros(capacity - start - tokens),
                                ],
                                2,
                            )
                            .unwrap()
                        };
                        check(
                            "rope_write_kv k",
                            T::DTYPE,
                            &shape,
                            &download(&cuda, &k_cache),
                            &values(&cache(&k_ref)),
                        );
                        check(
                            "rope_write_kv v",
                            T::DTYPE,
                            &shape,
                            &download(&cuda, &v_cache),
                            &values(&cache(&v_ref)),
                        );
                    }
                }
            }
        }
    }
    for_each_dtype(|dtype| typed!(dtype, run));
}

/// (query tokens, cache lengths before them) of the attention checks: decode, short and
/// long prefill chunks.
fn attention_cases() -> Vec<(usize, usize)> {
    let mut cases: Vec<(usize, usize)> = [1, 4, 23]
        .iter()
        .flat_map(|&t| CACHE_LENGTHS.iter().map(move |&l| (t, l)))
        .collect();
    cases.extend([(512, 0), (512, 256)]);
    cases
}

#[test]
fn attention_matches_the_llama_modules_attention() {
    fn run<T: Element + WithDType>() {
        let (device, cuda) = device();
        let kernels = Kernels::new(&cuda);
        let capacity = 4096 + 512;
        for &(heads, kv_heads, head_dim) in GEOMETRIES {
            let geometry = Heads {
                heads,
                kv_heads,
                head_dim,
            };
            let cache_shape = [1, kv_heads, capacity, head_dim];
            let n = kv_heads * capacity * head_dim;
            // Scaled so that the softmax is neither flat nor one-hot.
            let scaled = |n, seed| random(n, seed).iter().map(|v| v * 2.0).collect::<Vec<_>>();
            let (k, k_dev) = inputs::<T>(&device, &cuda, &scaled(n, 6), &cache_shape);
            let (v, v_dev) = inputs::<T>(&device, &cuda, &random(n, 7), &cache_shape);
            let splits = splits(capacity);
            let scale = 1.0 / (head_dim as f32).sqrt();
            for ((tokens, cache_len), window) in attention_cases()
                .into_iter()
                .flat_map(|case| [(case, None), (case, Some(100))])
            {
                let shape = format!(
                    "{heads}/{kv_heads}x{head_dim} tokens {tokens} after {cache_len} window {window:?}"
                );
                let (q, q_dev) = inputs::<T>(
                    &device,
                    &cuda,
                    &scaled(tokens * heads * head_dim, 8),
                    &[tokens, heads, head_dim],
                );
                let mut partial_out = output::<f32>(&cuda, tokens * heads * splits * head_dim);
                let mut partial_max_sum = output::<f32>(&cuda, tokens * heads * splits * 2);
                let len_dev = cuda.clone_htod(&[cache_len as i32 + 1]).unwrap();
                let mut out = output::<T>(&cuda, tokens * heads * head_dim);
                kernels
                    .attention(
                        &q_dev.as_view(),
                        (&k_dev.as_view(), &v_dev.as_view()),
                        (
                            &mut partial_out.as_view_mut(),
                            &mut partial_max_sum.as_view_mut(),
                        ),
                        &mut out.as_view_mut(),
                        &len_dev.as_view(),
                        (tokens, geometry),
                        (capacity, window),
                        scale,
                    )
                    .unwrap();

                // Token by token, the llama module's attention of one query: f32, kv heads
                // repeated, softmax, cast back; a window keeps the last `window` positions, as
                // mistral's mask does.
                let n_rep = heads / kv_heads;
                let reference: Vec<Tensor> = (0..tokens)
                    .map(|t| {
                        let len = cache_len + 1 + t;
                        let first = window.map_or(0, |w: usize| len.saturating_sub(w));
                        let seen = len - first;
                        let repeat = |x: &Tensor| {
                            x.i((.., .., first..len, ..))
                                .unwrap()
                                .to_dtype(DType::F32)
                                .unwrap()
                                .unsqueeze(2)
                                .unwrap()
                                .broadcast_as((1, kv_heads, n_rep, seen, head_dim))
                                .unwrap()
                                .contiguous()
                                .unwrap()
                                .reshape((1, heads, seen, head_dim))
                                .unwrap()
                        };
                        let q = q
                            .i(t)
                            .unwrap()
                            .reshape((1, heads, 1, head_dim))
                            .unwrap()
                            .to_dtype(DType::F32)
                            .unwrap();
                        let att = (q.matmul(&repeat(&k).t().unwrap()).unwrap() * f64::from(scale))
                            .unwrap();
                        let att = candle_nn::ops::softmax_last_dim(&att).unwrap();
                        att.matmul(&repeat(&v)).unwrap().to_dtype(T::DTYPE).unwrap()
                    })
                    .collect();
                let reference = Tensor::cat(&reference, 0).unwrap();
                check(
                    "attention",
                    T::DTYPE,
                    &shape,
                    &download(&cuda, &out),
                    &values(&reference),
                );
            }
        }
    }
    for_each_dtype(|dtype| typed!(dtype, run));
}

#[test]
fn silu_mul_matches_candle_silu_times_up() {
    fn run<T: Element + WithDType>() {
        let (device, cuda) = device();
        let kernels = Kernels::new(&cuda);
        for &inter in &[4864, 5632] {
            for &rows in TOKENS {
                let shape = format!("rows {rows} inter {inter}");
                let values4: Vec<f32> = random(rows * 2 * inter, 9)
                    .iter()
                    .map(|v| v * 4.0)
                    .collect();
                let (gate_up, gate_up_dev) =
                    inputs::<T>(&device, &cuda, &values4, &[rows, 2 * inter]);
                let mut out = output::<T>(&cuda, rows * inter);
                kernels
                    .silu_mul(&gate_up_dev.as_view(), &mut out.as_view_mut(), rows, inter)
                    .unwrap();
                let gate = gate_up.narrow(1, 0, inter).unwrap();
                let up = gate_up.narrow(1, inter, inter).unwrap();
                let reference = (candle_nn::ops::silu(&gate).unwrap() * up).unwrap();
                check(
                    "silu_mul",
                    T::DTYPE,
                    &shape,
                    &download(&cuda, &out),
                    &values(&reference),
                );
            }
        }
    }
    for_each_dtype(|dtype| typed!(dtype, run));
}

#[test]
fn gemv_matches_candle_matmul_at_one_token() {
    fn run<T: Element + WithDType>() {
        let (device, cuda) = device();
        let kernels = Kernels::new(&cuda);
        // (width, outputs): the products of tinyllama-1.1b, qwen2.5-0.5b and mistral-7b, a
        // fixture's, and widths the 16-byte loads cannot take (then read one value at a time).
        let products = [
            (2048, 2560),
            (2048, 11_264),
            (5632, 2048),
            (2048, 32_000),
            (896, 1152),
            (4864, 896),
            (4096, 6144),
            (14_336, 4096),
            (64, 96),
            (100, 7),
            (37, 33),
        ];
        for (width, outputs) in products {
            // x at the start of its buffer, then one value in: the kernel's loads must not
            // assume an aligned x.
            for x_offset in [0, 1] {
                let shape = format!("in {width} out {outputs} x offset {x_offset}");
                let (w, w_dev) = inputs::<T>(
                    &device,
                    &cuda,
                    &random(outputs * width, 12),
                    &[outputs, width],
                );
                let (x, x_dev) =
                    inputs::<T>(&device, &cuda, &random(width + 1, 13), &[1, width + 1]);
                let x = x.narrow(1, x_offset, width).unwrap();
                let mut y = output::<T>(&cuda, outputs);
                kernels
                    .gemv(
                        &w_dev.as_view(),
                        &x_dev.slice(x_offset..x_offset + width),
                        &mut y.as_view_mut(),
                        width,
                        outputs,
                    )
                    .unwrap();
                let reference = x.matmul(&w.t().unwrap()).unwrap();
                check(
                    "gemv",
                    T::DTYPE,
                    &shape,
                    &download(&cuda, &y),
                    &values(&reference),
                );
            }
        }
    }
    for_each_dtype(|dtype| typed!(dtype, run));
}

#[test]
fn embedding_gathers_the_rows_candle_gathers() {
    fn run<T: Element + WithDType>() {
        let (device, cuda) = device();
        let kernels = Kernels::new(&cuda);
        let (vocab, hidden) = (1000, 896);
        let (table, table_dev) = inputs::<T>(
            &device,
            &cuda,
            &random(vocab * hidden, 10),
            &[vocab, hidden],
        );
        for &tokens in TOKENS {
            let ids: Vec<u32> = (0..tokens)
                .map(|i| ((i * 7919 + 13) % vocab) as u32)
                .collect();
            let ids_dev = cuda.clone_htod(&ids).unwrap();
            let mut out = output::<T>(&cuda, tokens * hidden);
            kernels
                .embedding(
                    &table_dev.as_view(),
                    &ids_dev.as_view(),
                    &mut out.as_view_mut(),
                    tokens,
                    hidden,
                )
                .unwrap();
            let ids = Tensor::new(ids.as_slice(), &device).unwrap();
            let reference = table.embedding(&ids).unwrap();
            assert_eq!(download(&cuda, &out), values(&reference), "{tokens} tokens");
        }
    }
    for_each_dtype(|dtype| typed!(dtype, run));
}

#[test]
fn argmax_picks_the_lowest_index_of_the_largest_logit_and_advances_the_position() {
    fn run<T: Element + WithDType>() {
        let (_, cuda) = device();
        let kernels = Kernels::new(&cuda);
        for &vocab in &[32_000, 49_152, 151_936] {
            for (case, planted) in [(0, vec![]), (1, vec![77, 30_001]), (2, vec![31_999, 5])] {
                let mut logits = random(vocab, 11 + case);
                for &i in &planted {
                    logits[i] = 4.0;
                }
                let host: Vec<T> = logits.iter().map(|&v| T::from_f64(f64::from(v))).collect();
                let rounded: Vec<f32> = host.iter().map(|v| v.to_f64() as f32).collect();
                let expected =
                    rounded
                        .iter()
                        .enumerate()
                        .fold(0, |best, (i, v)| if *v > rounded[best] { i } else { best });
                let logits_dev = cuda.clone_htod(&host).unwrap();
                let mut out = output::<u32>(&cuda, 1);
                let mut pos_len = cuda.clone_htod(&[7i32, 8]).unwrap();
                kernels
                    .argmax(
                        &logits_dev.as_view(),
                        &mut out.as_view_mut(),
                        &mut pos_len.as_view_mut(),
                        vocab,
                    )
                    .unwrap();
                let got = cuda.clone_dtoh(&out).unwrap()[0] as usize;
                // The decode step's position and length, advanced for the next step.
                assert_eq!(cuda.clone_dtoh(&pos_len).unwrap(), [8, 9]);
                assert_eq!(
                    got,
                    expected,
                    "{:?} vocab {vocab} planted {planted:?}",
                    T::DTYPE
                );
            }
        }
    }
    for_each_dtype(|dtype| typed!(dtype, run));
}
