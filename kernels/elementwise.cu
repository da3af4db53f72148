// Row-wise and element-wise kernels of the Llama forward pass: embedding lookup, RMSNorm
// (with the per-layer non-finite check folded in), bias, RoPE, fp32 -> 16-bit rounding,
// the KV-cache scatter, SwiGLU, the per-token NLL and the synthetic-weight fills.
// Each is memory-bound and simple: one pass over its input, 16-bit loads/stores, fp32 math.
#include <cmath>

#include "kernels/common.cuh"

namespace kvq::kern {
namespace {

template <typename T>
__global__ void embed_kernel(const int32_t* ids, int tokens, const T* table, int hidden,
                             float* out) {
  const int t = blockIdx.y;
  const T* src = table + static_cast<int64_t>(ids[t]) * hidden;
  float* dst = out + static_cast<int64_t>(t) * hidden;
  for (int c = blockIdx.x * blockDim.x + threadIdx.x; c < hidden; c += gridDim.x * blockDim.x)
    dst[c] = to_f(src[c]);
}

// One block per token. The sum of squares is reduced in fp32 (tree order; the CPU
// reference sums sequentially: the two differ by a few ulps of the sum, far below the
// 16-bit rounding of the output).
template <typename T>
__global__ void rmsnorm_kernel(const float* x, int hidden, const T* w, float eps, T* out,
                               int* flag) {
  __shared__ float red[32];
  const int t = blockIdx.x;
  const float* row = x + static_cast<int64_t>(t) * hidden;
  float ss = 0.f;
  bool bad = false;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
    float v = row[c];
    bad |= !isfinite(v);
    ss += v * v;
  }
  if (flag != nullptr && __syncthreads_or(bad) && threadIdx.x == 0) atomicOr(flag, 1);
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    v = warp_sum(v);
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  const float inv = 1.0f / sqrtf(red[0] / static_cast<float>(hidden) + eps);
  T* o = out + static_cast<int64_t>(t) * hidden;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) o[c] = from_f<T>(row[c] * inv * to_f(w[c]));
}

template <typename T>
__global__ void add_bias_kernel(float* y, int tokens, int cols, int64_t ld, const T* bias) {
  const size_t count = static_cast<size_t>(tokens) * cols;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int t = static_cast<int>(i / cols), c = static_cast<int>(i % cols);
    y[t * ld + c] += to_f(bias[c]);
  }
}

__global__ void rope_kernel(float* x, int tokens, int64_t ld, int n_heads, int head_dim, int n,
                            const int32_t* pos0, const float* inv_freq, bool interleaved) {
  const int half = head_dim / 2;
  const size_t count = static_cast<size_t>(tokens) * n_heads * half;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < count;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const int h = static_cast<int>((idx / half) % n_heads);
    const int t = static_cast<int>(idx / (static_cast<size_t>(half) * n_heads));
    const float pos = static_cast<float>(pos0[t / n] + t % n);
    const float ang = pos * inv_freq[i];
    const float c = cosf(ang), s = sinf(ang);
    float* head = x + t * ld + static_cast<int64_t>(h) * head_dim;
    const int a = interleaved ? 2 * i : i;
    const int b = interleaved ? 2 * i + 1 : i + half;
    const float x0 = head[a], x1 = head[b];
    head[a] = x0 * c - x1 * s;
    head[b] = x1 * c + x0 * s;
  }
}

template <typename T>
__global__ void to_act_kernel(const float* in, int tokens, int cols, int64_t ld_in, T* out,
                              int64_t ld_out) {
  const size_t count = static_cast<size_t>(tokens) * cols;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int64_t t = static_cast<int64_t>(i / cols), c = static_cast<int64_t>(i % cols);
    out[t * ld_out + c] = from_f<T>(in[t * ld_in + c]);
  }
}

template <typename T>
__global__ void store_kv_kernel(const float* k, const float* v, int64_t ld, int rows, int n,
                                const int32_t* slot, const int32_t* pos0, int kv_heads,
                                int head_dim, int max_tokens, T* kc, T* vc) {
  const int cols = kv_heads * head_dim;
  const size_t count = static_cast<size_t>(rows) * n * cols;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < count;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int c = static_cast<int>(idx % cols);
    const int64_t t = static_cast<int64_t>(idx / cols);
    const int r = static_cast<int>(t / n), i = static_cast<int>(t % n);
    const int h = c / head_dim, d = c % head_dim;
    const int64_t dst =
        ((static_cast<int64_t>(slot[r]) * kv_heads + h) * max_tokens + pos0[r] + i) * head_dim + d;
    kc[dst] = from_f<T>(k[t * ld + c]);
    vc[dst] = from_f<T>(v[t * ld + c]);
  }
}

template <typename T>
__global__ void swiglu_kernel(const float* gu, int tokens, int inter, T* out) {
  const size_t count = static_cast<size_t>(tokens) * inter;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int64_t t = static_cast<int64_t>(i / inter), c = static_cast<int64_t>(i % inter);
    const float g = gu[t * 2 * inter + c], u = gu[t * 2 * inter + inter + c];
    out[i] = from_f<T>(g / (1.0f + expf(-g)) * u);
  }
}

// One block per token: max, then sum of exp(x - max), both in fp32.
__global__ void nll_kernel(const float* logits, int vocab, const int32_t* target, float* nll) {
  __shared__ float red[32];
  const int t = blockIdx.x;
  const float* row = logits + static_cast<int64_t>(t) * vocab;
  float m = -INFINITY;
  for (int c = threadIdx.x; c < vocab; c += blockDim.x) m = fmaxf(m, row[c]);
  m = warp_max(m);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x < 32) {
    float v = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : -INFINITY;
    v = warp_max(v);
    if (threadIdx.x == 0) red[0] = v;
  }
  __syncthreads();
  m = red[0];
  __syncthreads();
  float s = 0.f;
  for (int c = threadIdx.x; c < vocab; c += blockDim.x) s += expf(row[c] - m);
  s = warp_sum(s);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = s;
  __syncthreads();
  if (threadIdx.x == 0) {
    float v = 0.f;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) v += red[w];
    const int tg = target[t];
    nll[t] = tg < 0 ? NAN : (m + logf(v)) - row[tg];
  }
}

__global__ void check_finite_kernel(const float* x, size_t count, int* flag) {
  bool bad = false;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    bad |= !isfinite(x[i]);
  if (__any_sync(0xffffffffu, bad) && (threadIdx.x & 31) == 0) atomicOr(flag, 1);
}

__device__ __forceinline__ uint64_t splitmix64(uint64_t z) {
  z += 0x9e3779b97f4a7c15ull;
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

template <typename T>
__global__ void fill_uniform_kernel(T* dst, size_t count, float scale, uint64_t seed) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const uint64_t r = splitmix64(seed * 0x632be59bd9b4e019ull + i);
    const float u = static_cast<float>(r >> 40) * (1.0f / 8388608.0f) - 1.0f;  // 24 bits
    dst[i] = from_f<T>(scale * u);
  }
}

template <typename T>
__global__ void fill_const_kernel(T* dst, size_t count, float value) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x)
    dst[i] = from_f<T>(value);
}

}  // namespace

cudaError_t embed(Act act, const int32_t* ids, int tokens, const void* table, int hidden,
                  float* out, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  dim3 grid((hidden + 255) / 256, tokens);
  KVQ_DISPATCH_ACT(act, T, embed_kernel<T><<<grid, 256, 0, stream>>>(
                                ids, tokens, static_cast<const T*>(table), hidden, out));
  return launch_status();
}

cudaError_t rmsnorm(Act act, const float* x, int tokens, int hidden, const void* w, float eps,
                    void* out, int* flag, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  const int threads = hidden >= 1024 ? 512 : (hidden >= 256 ? 256 : 64);
  KVQ_DISPATCH_ACT(act, T, rmsnorm_kernel<T><<<tokens, threads, 0, stream>>>(
                                x, hidden, static_cast<const T*>(w), eps, static_cast<T*>(out), flag));
  return launch_status();
}

cudaError_t add_bias(Act act, float* y, int tokens, int cols, int64_t ld, const void* bias,
                     cudaStream_t stream) {
  const size_t count = static_cast<size_t>(tokens) * cols;
  if (count == 0) return cudaSuccess;
  KVQ_DISPATCH_ACT(act, T, add_bias_kernel<T><<<blocks_for(count, 256), 256, 0, stream>>>(
                                y, tokens, cols, ld, static_cast<const T*>(bias)));
  return launch_status();
}

cudaError_t rope(float* x, int tokens, int64_t ld, int n_heads, int head_dim, int n,
                 const int32_t* pos0, const float* inv_freq, bool interleaved,
                 cudaStream_t stream) {
  const size_t count = static_cast<size_t>(tokens) * n_heads * (head_dim / 2);
  if (count == 0) return cudaSuccess;
  rope_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(x, tokens, ld, n_heads, head_dim, n,
                                                          pos0, inv_freq, interleaved);
  return launch_status();
}

cudaError_t to_act(Act act, const float* in, int tokens, int cols, int64_t ld_in, void* out,
                   int64_t ld_out, cudaStream_t stream) {
  const size_t count = static_cast<size_t>(tokens) * cols;
  if (count == 0) return cudaSuccess;
  KVQ_DISPATCH_ACT(act, T, to_act_kernel<T><<<blocks_for(count, 256), 256, 0, stream>>>(
                                in, tokens, cols, ld_in, static_cast<T*>(out), ld_out));
  return launch_status();
}

cudaError_t store_kv(Act act, const float* k, const float* v, int64_t ld, int rows, int n,
                     const int32_t* slot, const int32_t* pos0, int kv_heads, int head_dim,
                     int max_tokens, void* k_cache, void* v_cache, cudaStream_t stream) {
  const size_t count = static_cast<size_t>(rows) * n * kv_heads * head_dim;
  if (count == 0) return cudaSuccess;
  KVQ_DISPATCH_ACT(act, T, store_kv_kernel<T><<<blocks_for(count, 256), 256, 0, stream>>>(
                                k, v, ld, rows, n, slot, pos0, kv_heads, head_dim, max_tokens,
                                static_cast<T*>(k_cache), static_cast<T*>(v_cache)));
  return launch_status();
}

cudaError_t swiglu(Act act, const float* gu, int tokens, int inter, void* out,
                   cudaStream_t stream) {
  const size_t count = static_cast<size_t>(tokens) * inter;
  if (count == 0) return cudaSuccess;
  KVQ_DISPATCH_ACT(act, T, swiglu_kernel<T><<<blocks_for(count, 256), 256, 0, stream>>>(
                                gu, tokens, inter, static_cast<T*>(out)));
  return launch_status();
}

cudaError_t nll_rows(const float* logits, int tokens, int vocab, const int32_t* target,
                     float* nll, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  nll_kernel<<<tokens, 256, 0, stream>>>(logits, vocab, target, nll);
  return launch_status();
}

cudaError_t check_finite(const float* x, size_t count, int* flag, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  check_finite_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(x, count, flag);
  return launch_status();
}

cudaError_t fill_uniform(Act act, void* dst, size_t count, float scale, uint64_t seed,
                         cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  KVQ_DISPATCH_ACT(act, T, fill_uniform_kernel<T><<<blocks_for(count, 256), 256, 0, stream>>>(
                                static_cast<T*>(dst), count, scale, seed));
  return launch_status();
}

cudaError_t fill_const(Act act, void* dst, size_t count, float value, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  KVQ_DISPATCH_ACT(act, T, fill_const_kernel<T><<<blocks_for(count, 256), 256, 0, stream>>>(
                                static_cast<T*>(dst), count, value));
  return launch_status();
}

}  // namespace kvq::kern
