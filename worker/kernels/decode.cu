// Fused kernels of the CUDA decode step. Each replaces a sequence of candle ops and is checked
// against that sequence by worker/tests/cuda_ops.rs (NMSE within a bound per dtype). Every
// kernel computes in f32 and rounds once to the storage type; positions and lengths that change
// from token to token are read from device memory, so a captured graph can replay the launch.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <stdint.h>

__device__ __forceinline__ float to_f32(float x) { return x; }
__device__ __forceinline__ float to_f32(__nv_bfloat16 x) { return __bfloat162float(x); }
__device__ __forceinline__ float to_f32(__half x) { return __half2float(x); }

template <typename T>
__device__ __forceinline__ T from_f32(float x);
template <>
__device__ __forceinline__ float from_f32<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_f32<__nv_bfloat16>(float x) {
  return __float2bfloat16(x);
}
template <>
__device__ __forceinline__ __half from_f32<__half>(float x) {
  return __float2half(x);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v += __shfl_xor_sync(0xffffffff, v, offset);
  }
  return v;
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset >>= 1) {
    v = fmaxf(v, __shfl_xor_sync(0xffffffff, v, offset));
  }
  return v;
}

// The sum over the block (blockDim.x a multiple of 32), returned to every thread.
__device__ float block_sum(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_sum(v);
  __syncthreads();  // an earlier call's readers are done with `partial`
  if (lane == 0) {
    partial[warp] = v;
  }
  __syncthreads();
  v = lane < (int)(blockDim.x >> 5) ? partial[lane] : 0.0f;
  return warp_sum(v);
}

__device__ float block_max(float v) {
  __shared__ float partial[32];
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  v = warp_max(v);
  __syncthreads();
  if (lane == 0) {
    partial[warp] = v;
  }
  __syncthreads();
  v = lane < (int)(blockDim.x >> 5) ? partial[lane] : -INFINITY;
  return warp_max(v);
}

// Values of a row each thread of the row kernels keeps in registers: rows of up to
// ROW_VALUES * blockDim.x values, read once.
#define ROW_VALUES 16

// One block per row of `hidden` values. With `residual`: residual += x, rounded to T as candle's
// add is (the residual stream, updated in place), and the norm is of that sum.
// out = v * rsqrt(mean(v^2) + eps) * weight, as candle's rmsnorm kernel computes it. Every load
// is issued before the one reduction, so a single row (decode) costs one memory round trip.
template <typename T>
__device__ void rms_norm(const T* x, T* residual, T* out, const T* weight, int hidden, float eps) {
  const size_t row = blockIdx.x;
  x += row * hidden;
  out += row * hidden;
  if (residual != nullptr) {
    residual += row * hidden;
  }
  float values[ROW_VALUES];
  float weights[ROW_VALUES];
  float squares = 0.0f;
#pragma unroll
  for (int k = 0; k < ROW_VALUES; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    values[k] = 0.0f;
    weights[k] = 0.0f;
    if (i < hidden) {
      float v = to_f32(x[i]);
      if (residual != nullptr) {
        const T sum = from_f32<T>(v + to_f32(residual[i]));
        residual[i] = sum;
        v = to_f32(sum);
      }
      values[k] = v;
      weights[k] = to_f32(weight[i]);
      squares += v * v;
    }
  }
  squares = block_sum(squares);
  const float scale = rsqrtf(squares / hidden + eps);
#pragma unroll
  for (int k = 0; k < ROW_VALUES; ++k) {
    const int i = threadIdx.x + k * blockDim.x;
    if (i < hidden) {
      out[i] = from_f32<T>(scale * values[k] * weights[k]);
    }
  }
}

// qkv: (tokens, (heads + 2 kv_heads) * head_dim), the fused Q/K/V product, with its bias
// (same width) added when given, and each q and k head RMS-normed over head_dim by
// q_norm / k_norm when given (qwen3). For token t at position pos[0] + t, with the halves
// rotation of candle's `rope` (cos, sin: (positions, head_dim / 2)): q's heads rotated into
// q_out (tokens, heads, head_dim); k's rotated and v's copied into the caches
// (kv_heads, capacity, head_dim) at that position. Grid (tokens, heads + kv_heads); a block of
// at least head_dim / 2 threads (a multiple of 32), one per pair of rotated values.
template <typename T>
__device__ void rope_write_kv(const T* qkv, const T* bias, const T* q_norm, const T* k_norm,
                              float eps, T* q_out, T* k_cache, T* v_cache, const T* cos,
                              const T* sin, const int* pos, int heads, int kv_heads, int head_dim,
                              int capacity) {
  const int token = blockIdx.x;
  const int head = blockIdx.y;
  const int half = head_dim / 2;
  const int width = (heads + 2 * kv_heads) * head_dim;
  const int position = pos[0] + token;
  const T* row = qkv + (size_t)token * width;
  auto value = [&](int column) {
    float v = to_f32(row[column]);
    if (bias != nullptr) {
      v += to_f32(bias[column]);
    }
    return v;
  };
  const int i = threadIdx.x;
  const int column = head * head_dim + i;
  float x1 = i < half ? value(column) : 0.0f;
  float x2 = i < half ? value(column + half) : 0.0f;
  const T* norm = head < heads ? q_norm : k_norm;
  if (norm != nullptr) {
    // candle's RmsNorm rounds its output to T before the rotation.
    const float scale = rsqrtf(block_sum(x1 * x1 + x2 * x2) / head_dim + eps);
    if (i < half) {
      x1 = to_f32(from_f32<T>(x1 * scale * to_f32(norm[i])));
      x2 = to_f32(from_f32<T>(x2 * scale * to_f32(norm[i + half])));
    }
  }
  if (i >= half) {
    return;
  }
  const float c = to_f32(cos[(size_t)position * half + i]);
  const float s = to_f32(sin[(size_t)position * half + i]);
  const float r1 = x1 * c - x2 * s;
  const float r2 = x1 * s + x2 * c;
  if (head < heads) {
    T* q = q_out + ((size_t)token * heads + head) * head_dim;
    q[i] = from_f32<T>(r1);
    q[i + half] = from_f32<T>(r2);
  } else {
    const int kv_head = head - heads;
    const size_t at = ((size_t)kv_head * capacity + position) * head_dim;
    k_cache[at + i] = from_f32<T>(r1);
    k_cache[at + i + half] = from_f32<T>(r2);
    const int v_column = (heads + kv_heads + kv_head) * head_dim + i;
    v_cache[at + i] = from_f32<T>(value(v_column));
    v_cache[at + i + half] = from_f32<T>(value(v_column + half));
  }
}

// Positions one block of the split attention covers.
#define ATTENTION_CHUNK 256

// Attention over the cache, first pass (flash-decoding). Query token t of q
// (tokens, heads, head_dim), at position len[0] - 1 + t, sees the first len[0] + t positions
// of the caches (kv_heads, capacity, head_dim), causal as a prefill is, or their last `window`
// when window > 0 (a sliding window: the query at position p sees the keys after p - window,
// as transformers' mask); query head h reads kv head h / (heads / kv_heads), no repeated copy.
// Grid (heads, splits, tokens), a block of warps; block (h, s, t) covers positions
// [s * CHUNK, (s + 1) * CHUNK) and writes its running max, its sum of exponentials and its
// unnormalised output, in f32, for `attention_combine`. Dynamic shared memory:
// (head_dim + CHUNK) floats.
template <typename T>
__device__ void attention_split(const T* q, const T* k_cache, const T* v_cache, float* partial_out,
                                float* partial_max_sum, const int* len, int heads, int kv_heads,
                                int head_dim, int capacity, int window, float scale) {
  extern __shared__ float shared[];
  float* query = shared;
  float* scores = shared + head_dim;
  const int head = blockIdx.x;
  const int split = blockIdx.y;
  const int splits = gridDim.y;
  const int row = blockIdx.z * heads + head;
  const int length = len[0] + blockIdx.z;
  const int kv_head = head / (heads / kv_heads);
  const int first = window > 0 ? max(0, length - window) : 0;
  const int start = max(split * ATTENTION_CHUNK, first);
  const int end = min((split + 1) * ATTENTION_CHUNK, length);
  float* out = partial_out + ((size_t)row * splits + split) * head_dim;
  float* max_sum = partial_max_sum + ((size_t)row * splits + split) * 2;
  if (start >= end) {
    for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
      out[d] = 0.0f;
    }
    if (threadIdx.x == 0) {
      max_sum[0] = -INFINITY;
      max_sum[1] = 0.0f;
    }
    return;
  }
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    query[d] = to_f32(q[(size_t)row * head_dim + d]);
  }
  __syncthreads();
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  const int warps = blockDim.x >> 5;
  const T* keys = k_cache + (size_t)kv_head * capacity * head_dim;
  const T* values = v_cache + (size_t)kv_head * capacity * head_dim;
  for (int p = start + warp; p < end; p += warps) {
    const T* key = keys + (size_t)p * head_dim;
    float dot = 0.0f;
    for (int d = lane; d < head_dim; d += 32) {
      dot += query[d] * to_f32(key[d]);
    }
    dot = warp_sum(dot);
    if (lane == 0) {
      scores[p - start] = dot * scale;
    }
  }
  __syncthreads();
  const int count = end - start;
  float max = -INFINITY;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    max = fmaxf(max, scores[i]);
  }
  max = block_max(max);
  float sum = 0.0f;
  for (int i = threadIdx.x; i < count; i += blockDim.x) {
    const float e = __expf(scores[i] - max);
    scores[i] = e;
    sum += e;
  }
  sum = block_sum(sum);  // its barrier also publishes `scores`
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int i = 0; i < count; ++i) {
      acc += scores[i] * to_f32(values[(size_t)(start + i) * head_dim + d]);
    }
    out[d] = acc;
  }
  if (threadIdx.x == 0) {
    max_sum[0] = max;
    max_sum[1] = sum;
  }
}

// Attention, second pass: block (h, t) merges the splits of head h of token t into out
// (tokens, heads, head_dim), rounded to T once. Splits past the token's length hold nothing
// (max -inf, sum 0) and are skipped.
template <typename T>
__device__ void attention_combine(const float* partial_out, const float* partial_max_sum, T* out,
                                  const int* len, int splits, int head_dim) {
  const int row = blockIdx.y * gridDim.x + blockIdx.x;
  const float* max_sum = partial_max_sum + (size_t)row * splits * 2;
  const int used = min(splits, (len[0] + (int)blockIdx.y + ATTENTION_CHUNK - 1) / ATTENTION_CHUNK);
  float max = -INFINITY;
  for (int s = 0; s < used; ++s) {
    max = fmaxf(max, max_sum[2 * s]);
  }
  float total = 0.0f;
  for (int s = 0; s < used; ++s) {
    total += max_sum[2 * s + 1] * __expf(max_sum[2 * s] - max);
  }
  for (int d = threadIdx.x; d < head_dim; d += blockDim.x) {
    float acc = 0.0f;
    for (int s = 0; s < used; ++s) {
      const float weight = __expf(max_sum[2 * s] - max);
      acc += partial_out[((size_t)row * splits + s) * head_dim + d] * weight;
    }
    out[(size_t)row * head_dim + d] = from_f32<T>(acc / total);
  }
}

// gate_up: (rows, 2 * inter), the fused gate and up product; out (rows, inter) =
// silu(gate) * up.
template <typename T>
__device__ void silu_mul(const T* gate_up, T* out, int rows, int inter) {
  const size_t n = (size_t)rows * inter;
  for (size_t i = (size_t)blockIdx.x * blockDim.x + threadIdx.x; i < n;
       i += (size_t)gridDim.x * blockDim.x) {
    const size_t row = i / inter;
    const size_t column = i - row * inter;
    const float gate = to_f32(gate_up[row * 2 * inter + column]);
    const float up = to_f32(gate_up[row * 2 * inter + inter + column]);
    out[i] = from_f32<T>(gate / (1.0f + __expf(-gate)) * up);
  }
}

// y (outputs) = w (outputs, inputs) x (inputs), one token's product: one warp per output row,
// GEMV_ROWS rows per block, weights read in 16-byte loads when rows and pointers allow it, f32
// accumulation, rounded to T once. At one token cuBLAS's GEMM kernels leave much of the memory
// bandwidth unused and add a split-K reduction.
#define GEMV_ROWS 4
template <typename T>
__device__ void gemv(const T* w, const T* x, T* y, int inputs, int outputs) {
  const int lane = threadIdx.x & 31;
  const int row = blockIdx.x * GEMV_ROWS + (threadIdx.x >> 5);
  if (row >= outputs) {
    return;
  }
  const T* weights = w + (size_t)row * inputs;
  constexpr int V = 16 / sizeof(T);
  const bool aligned = inputs % V == 0 && ((uintptr_t)w | (uintptr_t)x) % 16 == 0;
  const int vectors = aligned ? inputs / V : 0;
  float acc = 0.0f;
#pragma unroll 4
  for (int j = lane; j < vectors; j += 32) {
    const uint4 packed_w = reinterpret_cast<const uint4*>(weights)[j];
    const uint4 packed_x = reinterpret_cast<const uint4*>(x)[j];
    const T* ws = reinterpret_cast<const T*>(&packed_w);
    const T* xs = reinterpret_cast<const T*>(&packed_x);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      acc += to_f32(ws[k]) * to_f32(xs[k]);
    }
  }
  for (int i = vectors * V + lane; i < inputs; i += 32) {
    acc += to_f32(weights[i]) * to_f32(x[i]);
  }
  acc = warp_sum(acc);
  if (lane == 0) {
    y[row] = from_f32<T>(acc);
  }
}

// out (tokens, hidden): the rows of `table` that `ids` name.
template <typename T>
__device__ void embedding(const T* table, const uint32_t* ids, T* out, int hidden) {
  const size_t token = blockIdx.x;
  const T* row = table + (size_t)ids[token] * hidden;
  for (int i = threadIdx.x; i < hidden; i += blockDim.x) {
    out[token * hidden + i] = row[i];
  }
}

// One block: out[0] = the index of the largest of n logits, the lowest index among equals (as
// the worker's greedy sampler picks); then pos_len's position and length (two ints) advance by
// one, so a replayed decode step runs the chosen token at the next position.
template <typename T>
__device__ void argmax(const T* logits, uint32_t* out, int* pos_len, int n) {
  __shared__ float best_values[32];
  __shared__ uint32_t best_indices[32];
  float best = -INFINITY;
  uint32_t index = 0xffffffffu;
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    const float v = to_f32(logits[i]);
    if (v > best || index == 0xffffffffu) {
      best = v;
      index = i;
    }
  }
  const int lane = threadIdx.x & 31;
  const int warp = threadIdx.x >> 5;
  for (int offset = 16; offset > 0; offset >>= 1) {
    const float other = __shfl_xor_sync(0xffffffff, best, offset);
    const uint32_t other_index = __shfl_xor_sync(0xffffffff, index, offset);
    if (other > best || (other == best && other_index < index)) {
      best = other;
      index = other_index;
    }
  }
  if (lane == 0) {
    best_values[warp] = best;
    best_indices[warp] = index;
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    for (int w = 1; w < (int)(blockDim.x >> 5); ++w) {
      if (best_values[w] > best || (best_values[w] == best && best_indices[w] < index)) {
        best = best_values[w];
        index = best_indices[w];
      }
    }
    out[0] = index;
    pos_len[0] += 1;
    pos_len[1] += 1;
  }
}

#define DECODE_KERNELS(T, SUFFIX)                                                                  \
  extern "C" __global__ void rms_norm_##SUFFIX(const T* x, T* out, const T* weight, int hidden,    \
                                               float eps) {                                        \
    rms_norm<T>(x, nullptr, out, weight, hidden, eps);                                             \
  }                                                                                                \
  extern "C" __global__ void add_rms_norm_##SUFFIX(const T* x, T* residual, T* out,                \
                                                   const T* weight, int hidden, float eps) {       \
    rms_norm<T>(x, residual, out, weight, hidden, eps);                                            \
  }                                                                                                \
  extern "C" __global__ void rope_write_kv_##SUFFIX(                                               \
      const T* qkv, T* q_out, T* k_cache, T* v_cache, const T* cos, const T* sin, const int* pos,  \
      int heads, int kv_heads, int head_dim, int capacity) {                                       \
    rope_write_kv<T>(qkv, nullptr, nullptr, nullptr, 0.0f, q_out, k_cache, v_cache, cos, sin, pos, \
                     heads, kv_heads, head_dim, capacity);                                         \
  }                                                                                                \
  extern "C" __global__ void rope_write_kv_bias_##SUFFIX(                                          \
      const T* qkv, const T* bias, T* q_out, T* k_cache, T* v_cache, const T* cos, const T* sin,   \
      const int* pos, int heads, int kv_heads, int head_dim, int capacity) {                       \
    rope_write_kv<T>(qkv, bias, nullptr, nullptr, 0.0f, q_out, k_cache, v_cache, cos, sin, pos,    \
                     heads, kv_heads, head_dim, capacity);                                         \
  }                                                                                                \
  extern "C" __global__ void rope_write_kv_norm_##SUFFIX(                                          \
      const T* qkv, const T* q_norm, const T* k_norm, float eps, T* q_out, T* k_cache, T* v_cache, \
      const T* cos, const T* sin, const int* pos, int heads, int kv_heads, int head_dim,           \
      int capacity) {                                                                              \
    rope_write_kv<T>(qkv, nullptr, q_norm, k_norm, eps, q_out, k_cache, v_cache, cos, sin, pos,    \
                     heads, kv_heads, head_dim, capacity);                                         \
  }                                                                                                \
  extern "C" __global__ void attention_split_##SUFFIX(                                             \
      const T* q, const T* k_cache, const T* v_cache, float* partial_out, float* partial_max_sum,  \
      const int* len, int heads, int kv_heads, int head_dim, int capacity, int window,             \
      float scale) {                                                                               \
    attention_split<T>(q, k_cache, v_cache, partial_out, partial_max_sum, len, heads, kv_heads,    \
                       head_dim, capacity, window, scale);                                         \
  }                                                                                                \
  extern "C" __global__ void attention_combine_##SUFFIX(                                           \
      const float* partial_out, const float* partial_max_sum, T* out, const int* len, int splits,  \
      int head_dim) {                                                                              \
    attention_combine<T>(partial_out, partial_max_sum, out, len, splits, head_dim);                \
  }                                                                                                \
  extern "C" __global__ void silu_mul_##SUFFIX(const T* gate_up, T* out, int rows, int inter) {    \
    silu_mul<T>(gate_up, out, rows, inter);                                                        \
  }                                                                                                \
  extern "C" __global__ void gemv_##SUFFIX(const T* w, const T* x, T* y, int inputs,               \
                                           int outputs) {                                          \
    gemv<T>(w, x, y, inputs, outputs);                                                             \
  }                                                                                                \
  extern "C" __global__ void embedding_##SUFFIX(const T* table, const uint32_t* ids, T* out,       \
                                                int hidden) {                                      \
    embedding<T>(table, ids, out, hidden);                                                         \
  }                                                                                                \
  extern "C" __global__ void argmax_##SUFFIX(const T* logits, uint32_t* out, int* pos_len,         \
                                             int n) {                                              \
    argmax<T>(logits, out, pos_len, n);                                                            \
  }

DECODE_KERNELS(float, f32)
DECODE_KERNELS(__nv_bfloat16, bf16)
DECODE_KERNELS(__half, f16)
