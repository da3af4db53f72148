// Row-wise and element-wise kernels of the Llama forward pass: embedding lookup, RMSNorm
// (with the per-layer non-finite check folded in), bias, RoPE, fp32 -> 16-bit rounding,
// the KV-cache scatter, SwiGLU, the per-token NLL and the synthetic-weight fills.
// Each is memory-bound and simple: one pass over its input, 16-bit loads/stores, fp32 math.
//
// Two fused kernels serve the forward pass when no observer needs the intermediate fp32
// tensors (notes/cuda-perf.md, "Elementwise fusion (session 3)"):
//  - rope_store_qkv: RoPE on q and k, the KV-cache store and the query rounding in one pass
//    over the fp32 q/k/v GEMM output: 6 B per element (read 4, write 2) instead of 14 B for q
//    and k (rotation in place: read + write fp32, then read fp32 + write 16-bit) and 6 B for v.
//    Bit-identical to rope() + store_kv() + to_act(): same angle, same cosf/sinf, the
//    rotation in rope_pair() with every operation rounded explicitly (no FMA contraction
//    that could differ between the two kernels).
//  - swiglu_act: SwiGLU over a 16-bit gate|up GEMM output (half the bytes of the fp32 one):
//    the gate and up values are rounded to 16 bits where transformers rounds them too; the
//    SiLU and the product stay in fp32 and are rounded once (transformers also rounds SiLU's
//    output: we keep that one out, it costs nothing to skip and keeps us nearer the fp32
//    reference; measured: with it, testbed argmax agreement with HF fp32 fell to 62/64).
#include <algorithm>
#include <cmath>

#include "kernels/common.cuh"

namespace kvq::kern {
namespace {

__device__ __forceinline__ unsigned short bits16(__half v) { return __half_as_ushort(v); }
__device__ __forceinline__ unsigned short bits16(__nv_bfloat16 v) { return __bfloat16_as_ushort(v); }
// Two fp32 values rounded to T (round half to even) and packed low, high.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  return static_cast<uint32_t>(bits16(from_f<T>(lo))) | (static_cast<uint32_t>(bits16(from_f<T>(hi))) << 16);
}

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

// The same RMSNorm with 16-byte loads and the row held in registers (one read of x; the
// kernel above reads each row twice, the second time hopefully from cache): thread i holds
// float4s i, i + blockDim, ..., up to kRmsVec of them, so hidden <= 16 * 1024.
constexpr int kRmsVec = 4;

template <typename T>
__global__ void rmsnorm_vec_kernel(const float* x, int hidden, const T* w, float eps, T* out, int* flag) {
  __shared__ float red[32];
  const int64_t t = blockIdx.x;
  const int n4 = hidden / 4;
  const float4* row = reinterpret_cast<const float4*>(x + t * hidden);
  float4 v[kRmsVec];
  float ss = 0.f;
  bool bad = false;
#pragma unroll
  for (int k = 0; k < kRmsVec; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < n4) {
      v[k] = row[c];
      bad |= !isfinite(v[k].x) || !isfinite(v[k].y) || !isfinite(v[k].z) || !isfinite(v[k].w);
      ss += v[k].x * v[k].x;
      ss += v[k].y * v[k].y;
      ss += v[k].z * v[k].z;
      ss += v[k].w * v[k].w;
    }
  }
  if (flag != nullptr && __syncthreads_or(bad) && threadIdx.x == 0) atomicOr(flag, 1);
  ss = warp_sum(ss);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = ss;
  __syncthreads();
  if (threadIdx.x < 32) {
    float s = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    s = warp_sum(s);
    if (threadIdx.x == 0) red[0] = s;
  }
  __syncthreads();
  const float inv = 1.0f / sqrtf(red[0] / static_cast<float>(hidden) + eps);
  uint2* o = reinterpret_cast<uint2*>(out + t * hidden);
  const uint2* w4 = reinterpret_cast<const uint2*>(w);
#pragma unroll
  for (int k = 0; k < kRmsVec; ++k) {
    const int c = threadIdx.x + k * blockDim.x;
    if (c < n4) {
      const uint2 wv = w4[c];
      const T* ws = reinterpret_cast<const T*>(&wv);
      o[c] = make_uint2(pack2<T>(v[k].x * inv * to_f(ws[0]), v[k].y * inv * to_f(ws[1])),
                        pack2<T>(v[k].z * inv * to_f(ws[2]), v[k].w * inv * to_f(ws[3])));
    }
  }
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

// The rotation of one pair (a, b) by the angle with cosine c and sine s, each product and
// sum rounded on its own (__fmul_rn / __fadd_rn are never contracted into an FMA), so the
// unfused rope_kernel and the fused rope_store_qkv_kernel give the same bits.
__device__ __forceinline__ void rope_pair(float x0, float x1, float c, float s, float& y0, float& y1) {
  y0 = __fsub_rn(__fmul_rn(x0, c), __fmul_rn(x1, s));
  y1 = __fadd_rn(__fmul_rn(x1, c), __fmul_rn(x0, s));
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
    rope_pair(head[a], head[b], c, s, head[a], head[b]);
  }
}


// Loads 4 consecutive floats (16-byte aligned when kVec).
template <bool kVec>
__device__ __forceinline__ void load4(const float* p, float* v) {
  if constexpr (kVec) {
    const float4 f = *reinterpret_cast<const float4*>(p);
    v[0] = f.x, v[1] = f.y, v[2] = f.z, v[3] = f.w;
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) v[e] = p[e];
  }
}
// Stores 4 values rounded to T (8-byte aligned when kVec).
template <typename T, bool kVec>
__device__ __forceinline__ void store4(T* p, const float* v) {
  if constexpr (kVec) {
    *reinterpret_cast<uint2*>(p) = make_uint2(pack2<T>(v[0], v[1]), pack2<T>(v[2], v[3]));
  } else {
#pragma unroll
    for (int e = 0; e < 4; ++e) p[e] = from_f<T>(v[e]);
  }
}

// One block per token (token t = row r, index i of the chunk, at position pos0[r] + i).
// The block first computes cos/sin of the token's head_dim/2 angles into shared memory
// (once per token instead of once per head and pair, as rope_kernel does), then its
// threads walk the token's (n_heads + 2 kv_heads) * head_dim / 8 units of 8 channels:
//   q units: 4 rotation pairs of one query head -> q_out (16-bit)
//   k units: 4 rotation pairs of one kv head    -> k_cache[slot, g, pos, :]
//   v units: 8 channels of one kv head          -> v_cache[slot, g, pos, :]
// A unit's pairs are channels (4j..4j+3, 4j+half..4j+half+3) in the rotate-half layout and
// 8j..8j+7 in the interleaved one, so every load is a 16-byte float4 and every store 8 or
// 16 bytes when the operands are aligned (kVec); otherwise the same arithmetic with scalar
// accesses. Requires head_dim % 8 == 0 and head_dim <= 2 * kMaxRopeHalf.
constexpr int kMaxRopeHalf = 128;

template <typename T, bool kVec>
__global__ void rope_store_qkv_kernel(const float* qkv, int64_t ld, int n, int n_heads, int kv_heads,
                                      int head_dim, const int32_t* slot, const int32_t* pos0,
                                      const float* inv_freq, bool interleaved, int max_tokens, T* q_out,
                                      T* kc, T* vc) {
  __shared__ float cs[kMaxRopeHalf], sn[kMaxRopeHalf];
  const int64_t t = blockIdx.x;
  const int r = static_cast<int>(t / n), i = static_cast<int>(t % n);
  const int half = head_dim / 2;
  const int pos = pos0[r] + i;
  for (int p = threadIdx.x; p < half; p += blockDim.x) {
    // The same fp32 angle and cosf/sinf calls as rope_kernel.
    const float ang = static_cast<float>(pos) * inv_freq[p];
    cs[p] = cosf(ang);
    sn[p] = sinf(ang);
  }
  __syncthreads();
  const int upr = head_dim / 8;  // units per head
  const int q_units = n_heads * upr, k_units = kv_heads * upr;
  const int units = q_units + 2 * k_units;
  const int QD = n_heads * head_dim, KV = kv_heads * head_dim;
  const float* row = qkv + t * ld;
  const int64_t slot_base = static_cast<int64_t>(slot[r]) * kv_heads;
  for (int u = threadIdx.x; u < units; u += blockDim.x) {
    if (u >= q_units + k_units) {  // values: round and store
      const int uv = u - q_units - k_units, g = uv / upr, j = uv % upr;
      float v[8];
      load4<kVec>(row + QD + KV + g * head_dim + 8 * j, v);
      load4<kVec>(row + QD + KV + g * head_dim + 8 * j + 4, v + 4);
      T* dst = vc + ((slot_base + g) * max_tokens + pos) * head_dim + 8 * j;
      store4<T, kVec>(dst, v);
      store4<T, kVec>(dst + 4, v + 4);
      continue;
    }
    const bool is_q = u < q_units;
    const int uh = is_q ? u : u - q_units, h = uh / upr, j = uh % upr;
    const float* src = row + (is_q ? 0 : QD) + h * head_dim;
    T* dst = is_q ? q_out + t * QD + h * head_dim
                  : kc + ((slot_base + h) * max_tokens + pos) * head_dim;
    float a[4], b[4], ya[4], yb[4];
    if (interleaved) {
      float x[8];
      load4<kVec>(src + 8 * j, x);
      load4<kVec>(src + 8 * j + 4, x + 4);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int p = 4 * j + e;
        rope_pair(x[2 * e], x[2 * e + 1], cs[p], sn[p], ya[e], yb[e]);
      }
      float y[8];
#pragma unroll
      for (int e = 0; e < 4; ++e) y[2 * e] = ya[e], y[2 * e + 1] = yb[e];
      store4<T, kVec>(dst + 8 * j, y);
      store4<T, kVec>(dst + 8 * j + 4, y + 4);
    } else {
      load4<kVec>(src + 4 * j, a);
      load4<kVec>(src + half + 4 * j, b);
#pragma unroll
      for (int e = 0; e < 4; ++e) rope_pair(a[e], b[e], cs[4 * j + e], sn[4 * j + e], ya[e], yb[e]);
      store4<T, kVec>(dst + 4 * j, ya);
      store4<T, kVec>(dst + half + 4 * j, yb);
    }
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

// silu(g) * u in fp32, the one formula of both SwiGLU kernels (so that swiglu_act on 16-bit
// inputs equals swiglu on the same values widened, bit for bit).
__device__ __forceinline__ float silu_mul(float g, float u) { return g / (1.0f + expf(-g)) * u; }

template <typename T>
__global__ void swiglu_kernel(const float* gu, int tokens, int inter, T* out) {
  const size_t count = static_cast<size_t>(tokens) * inter;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int64_t t = static_cast<int64_t>(i / inter), c = static_cast<int64_t>(i % inter);
    const float g = gu[t * 2 * inter + c], u = gu[t * 2 * inter + inter + c];
    out[i] = from_f<T>(silu_mul(g, u));
  }
}

// out = round(silu(g) * u) over a 16-bit gate|up block, 8 channels per thread (16-byte
// loads and store when inter % 8 == 0 and the pointers are aligned: kVec).
template <typename T>
__device__ __forceinline__ float swiglu_one(T g16, T u16) {
  return silu_mul(to_f(g16), to_f(u16));
}

template <typename T, bool kVec>
__global__ void swiglu_act_kernel(const T* gu, int tokens, int inter, T* out) {
  const int upr = kVec ? inter / 8 : inter;  // units per token
  const size_t count = static_cast<size_t>(tokens) * upr;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < count;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int64_t t = static_cast<int64_t>(idx / upr);
    const int c = static_cast<int>(idx % upr);
    const T* g = gu + t * 2 * inter;
    const T* u = g + inter;
    if constexpr (kVec) {
      const uint4 gv = *reinterpret_cast<const uint4*>(g + 8 * c);
      const uint4 uv = *reinterpret_cast<const uint4*>(u + 8 * c);
      const T* gs = reinterpret_cast<const T*>(&gv);
      const T* us = reinterpret_cast<const T*>(&uv);
      float y[8];
#pragma unroll
      for (int e = 0; e < 8; ++e) y[e] = swiglu_one(gs[e], us[e]);
      *reinterpret_cast<uint4*>(out + t * inter + 8 * c) =
          make_uint4(pack2<T>(y[0], y[1]), pack2<T>(y[2], y[3]), pack2<T>(y[4], y[5]), pack2<T>(y[6], y[7]));
    } else {
      out[t * inter + c] = from_f<T>(swiglu_one(g[c], u[c]));
    }
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

cudaError_t rmsnorm_vec(Act act, const float* x, int tokens, int hidden, const void* w, float eps,
                        void* out, int* flag, cudaStream_t stream) {
  if (tokens == 0) return cudaSuccess;
  const auto aligned = [](const void* p, uintptr_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; };
  const int n4 = hidden / 4;
  if (hidden % 4 != 0 || n4 > kRmsVec * 1024 || !aligned(x, 16) || !aligned(w, 8) || !aligned(out, 8))
    return rmsnorm(act, x, tokens, hidden, w, eps, out, flag, stream);
  // Enough threads that each holds at most kRmsVec float4s, a whole number of warps.
  const int threads = std::max(32, ((n4 + kRmsVec - 1) / kRmsVec + 31) / 32 * 32);
  KVQ_DISPATCH_ACT(act, T, rmsnorm_vec_kernel<T><<<tokens, threads, 0, stream>>>(
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

cudaError_t rope_store_qkv(Act act, const float* qkv, int64_t ld, int rows, int n, int n_heads,
                           int kv_heads, int head_dim, const int32_t* slot, const int32_t* pos0,
                           const float* inv_freq, bool interleaved, int max_tokens, void* q_out,
                           void* k_cache, void* v_cache, cudaStream_t stream) {
  if (head_dim % 8 != 0 || head_dim <= 0 || head_dim / 2 > kMaxRopeHalf || n <= 0 || rows < 0 ||
      n_heads <= 0 || kv_heads <= 0)
    return cudaErrorInvalidValue;
  const int64_t tokens = static_cast<int64_t>(rows) * n;
  if (tokens == 0) return cudaSuccess;
  if (tokens > 0x7fffffff) return cudaErrorInvalidValue;
  const int units = (n_heads + 2 * kv_heads) * (head_dim / 8);
  const int threads = units >= 256 ? 256 : (units >= 128 ? 128 : (units >= 64 ? 64 : 32));
  auto aligned = [](const void* p, uintptr_t a) { return (reinterpret_cast<uintptr_t>(p) & (a - 1)) == 0; };
  // float4 loads need 16-byte rows (ld % 4 == 0); 16-bit stores of 4 values need 8 bytes.
  const bool vec = ld % 4 == 0 && aligned(qkv, 16) && aligned(q_out, 8) && aligned(k_cache, 8) &&
                   aligned(v_cache, 8);
  KVQ_DISPATCH_ACT(act, T, {
    if (vec)
      rope_store_qkv_kernel<T, true><<<static_cast<unsigned>(tokens), threads, 0, stream>>>(
          qkv, ld, n, n_heads, kv_heads, head_dim, slot, pos0, inv_freq, interleaved, max_tokens,
          static_cast<T*>(q_out), static_cast<T*>(k_cache), static_cast<T*>(v_cache));
    else
      rope_store_qkv_kernel<T, false><<<static_cast<unsigned>(tokens), threads, 0, stream>>>(
          qkv, ld, n, n_heads, kv_heads, head_dim, slot, pos0, inv_freq, interleaved, max_tokens,
          static_cast<T*>(q_out), static_cast<T*>(k_cache), static_cast<T*>(v_cache));
  });
  return launch_status();
}

cudaError_t swiglu_act(Act act, const void* gu, int tokens, int inter, void* out, cudaStream_t stream) {
  const size_t count = static_cast<size_t>(tokens) * inter;
  if (count == 0) return cudaSuccess;
  auto aligned = [](const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15) == 0; };
  const bool vec = inter % 8 == 0 && aligned(gu) && aligned(out);
  KVQ_DISPATCH_ACT(act, T, {
    if (vec)
      swiglu_act_kernel<T, true><<<blocks_for(count / 8, 256), 256, 0, stream>>>(
          static_cast<const T*>(gu), tokens, inter, static_cast<T*>(out));
    else
      swiglu_act_kernel<T, false><<<blocks_for(count, 256), 256, 0, stream>>>(
          static_cast<const T*>(gu), tokens, inter, static_cast<T*>(out));
  });
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
