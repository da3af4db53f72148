// Decode attention that reads the packed KV cache directly (layout: kernels/kv_ops.cuh).
// Same plan as attention_decode.cu (flash-decoding): the keys of a row are cut into chunks,
// one block of 4 warps per (chunk, kv head, row) serves the G query heads of its kv head
// (GQA), so each packed byte is read once per step; a combine kernel merges the chunks'
// (max, sum, output). Differences:
//  - A row of head_dim codes is read by head_dim/8 lanes, 8 channels each: one 32-bit word
//    at 4 bits, 16 bits at 2, 24 (two words) at 3, 64 at 8 (the row is one kv_layout.h bit
//    stream, code c at bit c*bits), dequantized in registers with the stored fp16 scales /
//    zeros (per token, per channel group or the KVQuant LUT in shared memory).
//  - Full-precision parts (KIVI residual ring, KVQuant sinks) are chosen per token by the
//    same length rule as the append kernels.
//  - KVQuant's sparse outliers: the lane reads the token's CSR range [off[j], off[j+1])
//    (usually 0-2 records) and patches its channels in registers.
//  - Pre-RoPE keys (KVQuant): RoPE fused after dequantization. The partner of channel c
//    (rotate-half: c +- hd/2) lives in lane lc ^ (LPR/2) and comes by one shuffle
//    (interleaved: in the same lane). cos/sin of each lane's channels follow its tokens
//    (j, j + S, j + 2S, ...) by an fp32 rotation recurrence, re-anchored every 32 steps
//    from an angle reduced in double, so the kernel never evaluates a trig function per
//    element (measured cost of the recurrence: see notes/kv-cuda-perf.md); the error is at
//    most ~32 * 4 * 2^-24 relative, accounted for in the test's tolerance.
// Softmax, scores and accumulators are fp32; the output is rounded once to Act.
#include <algorithm>
#include <cmath>

#include "kernels/common.cuh"
#include "kernels/decode_chunk.cuh"
#include "kernels/kv_decode_mma.cuh"
#include "kernels/kv_codes.cuh"
#include "kernels/kv_ops.cuh"

namespace kvq::kern {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxChunkFloats = 8192;
constexpr int kLutMax = 256;
constexpr int kAnchorEvery = 32;

using Plan = SplitPlan;

// Four blocks per SM worth of work: the fast kernel holds 1-2 blocks per SM (registers),
// so the grid is 2-4 waves and the last one is short.
Plan make_plan(int kv_heads, int rows, int group, int max_len, int sm_count) {
  return split_plan(kv_heads, rows, group, max_len, sm_count, 4, kMaxChunkFloats);
}

// Dequantizes channels [lc*8, lc*8+8) of token j of (slot, head) `sh` into x.
__device__ __forceinline__ void load_row(const PackedSide& p, int64_t sh, int h, int j, int len,
                                         int lc, const float* lut, int64_t range0, float (&x)[8]) {
  const int hd = p.head_dim, c0 = lc * 8;
  if (p.resid_cap > 0) {
    const int ql = p.format == KvFormat::kChannelAsym ? len / p.resid_cap * p.resid_cap
                                                      : len - p.resid_cap;
    if (j >= ql) {
      load_halves8(p.resid + (sh * p.resid_cap + j % p.resid_cap) * hd + c0, x);
      return;
    }
  }
  if (j < p.n_sink) {
    load_halves8(p.sink + (sh * p.n_sink + j) * hd + c0, x);
    return;
  }
  const int64_t row = sh * p.max_tokens + j;
  const uint32_t* w = p.codes + row * p.wpr;
  const int bit = c0 * p.bits;
  const int wi = bit >> 5, sft = bit & 31;
  uint64_t v = w[wi];
  if (sft + 8 * p.bits > 32) v |= static_cast<uint64_t>(w[wi + 1]) << 32;
  v >>= sft;
  const uint32_t m = (1u << p.bits) - 1u;
  uint32_t q[8];
#pragma unroll
  for (int e = 0; e < 8; ++e) q[e] = static_cast<uint32_t>(v >> (e * p.bits)) & m;
  switch (p.format) {
    case KvFormat::kTokenAsym: {
      const uint16_t* meta = p.meta + row * p.mpr + 2 * (c0 / p.group);
      const float sf = h2f(meta[0]), zf = h2f(meta[1]);
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = kvlayout::dequantize_asym(q[e], sf, zf);
      break;
    }
    case KvFormat::kTokenSym: {
      const float sf = h2f(p.meta[row * p.mpr + c0 / p.group]);
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = kvlayout::dequantize_sym(q[e], sf, p.bits);
      break;
    }
    case KvFormat::kChannelAsym: {
      const uint16_t* cm = p.cmeta + ((sh * (p.max_tokens / p.group) + j / p.group) * hd + c0) * 2;
      const uint4 a = *reinterpret_cast<const uint4*>(cm);
      const uint4 b = *reinterpret_cast<const uint4*>(cm + 8);
      const uint16_t* ea = reinterpret_cast<const uint16_t*>(&a);
      const uint16_t* eb = reinterpret_cast<const uint16_t*>(&b);
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        x[e] = kvlayout::dequantize_asym(q[e], h2f(ea[2 * e]), h2f(ea[2 * e + 1]));
        x[e + 4] = kvlayout::dequantize_asym(q[e + 4], h2f(eb[2 * e]), h2f(eb[2 * e + 1]));
      }
      break;
    }
    case KvFormat::kLutChannel: {
      const int64_t c = range0 + h * hd + c0;
#pragma unroll
      for (int e = 0; e < 8; ++e)
        x[e] = fmaf(fmaf(lut[q[e]], p.khalf[c + e], p.kmid[c + e]), p.qa, p.qb);
      break;
    }
    case KvFormat::kLutToken: {
      const uint16_t* meta = p.meta + row * p.mpr;
      const float mid = h2f(meta[0]), half = h2f(meta[1]);
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = fmaf(fmaf(lut[q[e]], half, mid), p.qa, p.qb);
      break;
    }
  }
  if (p.inv_s) {  // WKVQuant smoothing undone
    const int c = h * hd + c0;
#pragma unroll
    for (int e = 0; e < 8; ++e) x[e] = fmaf(x[e], p.s[c + e], p.delta[c + e]);
  }
  if (p.outliers) {
    const uint32_t* off = p.off + sh * (static_cast<int64_t>(p.max_tokens) + 1) + j;
    const uint32_t a = off[0], b = off[1];
    for (uint32_t r = a; r < b; ++r) {
      const kvlayout::Outlier o = p.rec[sh * p.out_cap + r];
      const int i = static_cast<int>(o.index) - h * hd - c0;
#pragma unroll
      for (int e = 0; e < 8; ++e)
        if (i == e) x[e] = h2f(o.value);
    }
  }
}

// cos/sin of angle j * f, the angle reduced in double.
__device__ __forceinline__ void anchor(double f, int j, float& c, float& s) {
  const double two_pi = 6.283185307179586476925286766559;
  const double t = static_cast<double>(j) * f;
  const double r = t - rint(t / two_pi) * two_pi;
  sincosf(static_cast<float>(r), &s, &c);
}

struct Rope {
  float c[8], s[8], dc[8], ds[8];
  double f[8];
};

template <typename T, int GMAX>
__global__ void __launch_bounds__(kThreads)
packed_decode_kernel(PackedSide K, PackedSide V, PackedDecodeArgs a, int chunk, int splits,
                     float* part_o, float* part_ml) {
  extern __shared__ __align__(16) float sm[];
  const int G = a.n_heads / K.kv_heads;
  const int D = K.head_dim;
  const int LPR = D / 8, RPW = 32 / LPR;
  float* sc = sm;                          // [G][chunk]
  float* red = sc + G * chunk;             // [kWarps][G][D]
  float* stat = red + kWarps * G * D;      // [G][2]
  float* klut = stat + 2 * GMAX;           // [kLutMax]
  float* vlut = klut + kLutMax;            // [kLutMax]

  const int s = blockIdx.x, kvh = blockIdx.y, r = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int lr = lane / LPR, lc = lane % LPR;
  const int len = a.len[r];
  const int begin = s * chunk;
  const int end = min(len, begin + chunk);
  const int64_t head0 = static_cast<int64_t>(r) * a.n_heads + kvh * G;

  if (begin >= end) {
    store_empty_split<kThreads>(G, D, head0, splits, s, part_o, part_ml);
    return;
  }
  if (K.lut)
    for (int i = threadIdx.x; i < (1 << K.bits); i += kThreads) klut[i] = K.lut[i];
  if (V.lut)
    for (int i = threadIdx.x; i < (1 << V.bits); i += kThreads) vlut[i] = V.lut[i];
  __syncthreads();

  const int64_t sh = static_cast<int64_t>(a.slot[r]) * K.kv_heads + kvh;
  const T* q = static_cast<const T*>(a.q);
  const bool rope = a.inv_freq != nullptr;
  const int step = kWarps * RPW;

  // Pass 1: scores.
  {
    float qv[GMAX][8];
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
      if (g < G) {
        const uint4 raw = *reinterpret_cast<const uint4*>(q + (head0 + g) * D + lc * 8);
        const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
        for (int i = 0; i < 8; ++i) qv[g][i] = to_f(e[i]);
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) qv[g][i] = 0.f;
      }
    }
    Rope rp;
    const bool upper = !a.rope_interleaved && lc >= LPR / 2;
    if (rope) {
#pragma unroll
      for (int e = 0; e < 8; ++e) {
        const int c = lc * 8 + e;
        const int pair = a.rope_interleaved ? c / 2 : (c % (D / 2));
        rp.f[e] = a.inv_freq[pair];
        anchor(rp.f[e], step, rp.dc[e], rp.ds[e]);
      }
    }
    int it = 0;
    for (int j0 = begin + warp * RPW; j0 < end; j0 += step, ++it) {
      const int j = j0 + lr;
      const bool row_ok = j < end;
      float kv[8];
      if (row_ok) {
        load_row(K, sh, kvh, j, len, lc, klut, a.slot[r] * K.range_stride, kv);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) kv[e] = 0.f;
      }
      if (rope) {
        if (it % kAnchorEvery == 0) {
#pragma unroll
          for (int e = 0; e < 8; ++e) anchor(rp.f[e], j, rp.c[e], rp.s[e]);
        } else {
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const float c = rp.c[e] * rp.dc[e] - rp.s[e] * rp.ds[e];
            rp.s[e] = rp.s[e] * rp.dc[e] + rp.c[e] * rp.ds[e];
            rp.c[e] = c;
          }
        }
        if (a.rope_interleaved) {
#pragma unroll
          for (int e = 0; e < 8; e += 2) {
            const float x0 = kv[e], x1 = kv[e + 1];
            kv[e] = x0 * rp.c[e] - x1 * rp.s[e];
            kv[e + 1] = x1 * rp.c[e] + x0 * rp.s[e];
          }
        } else {
          float rot[8];
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            // head_dim 8: one lane holds the whole row, the partner of e is e ^ 4.
            const float other = LPR >= 2 ? __shfl_xor_sync(0xffffffffu, kv[e], LPR / 2) : kv[e ^ 4];
            const bool hi = LPR >= 2 ? upper : e >= 4;
            rot[e] = hi ? kv[e] * rp.c[e] + other * rp.s[e] : kv[e] * rp.c[e] - other * rp.s[e];
          }
#pragma unroll
          for (int e = 0; e < 8; ++e) kv[e] = rot[e];
        }
      }
      store_scores<GMAX>(qv, kv, LPR, G, lc, row_ok, a.scale, sc, chunk, j, begin);
    }
  }
  __syncthreads();

  // Pass 2: p = exp(s - max) per head and the chunk's sum.
  chunk_softmax<kWarps, false>(sc, chunk, end - begin, G, warp, lane, stat);
  __syncthreads();

  // Pass 3: P V.
  float acc[GMAX][8];
  pv_rows<GMAX>(acc, begin + warp * RPW, step, lr, begin, end, sc, chunk, G,
                [&](int j, float (&vv)[8]) { load_row(V, sh, kvh, j, len, lc, vlut, 0, vv); });
  store_split_partials<GMAX, kThreads>(acc, LPR, lr, lc, warp, G, D, D, red, stat, head0, splits, s, part_o,
                                     part_ml);
}

size_t smem_for(int G, int chunk, int D) {
  return (static_cast<size_t>(G) * chunk + static_cast<size_t>(kWarps) * G * D + 2 * kMaxGroup +
          2 * kLutMax) * sizeof(float);
}

template <typename T, int GMAX>
cudaError_t launch(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a,
                   const Plan& p, float* part_o, float* part_ml, cudaStream_t stream) {
  const int G = a.n_heads / k.kv_heads;
  const size_t smem = smem_for(G, p.chunk, k.head_dim);
  cudaError_t e = cudaFuncSetAttribute(packed_decode_kernel<T, GMAX>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  packed_decode_kernel<T, GMAX><<<dim3(p.splits, k.kv_heads, a.rows), kThreads, smem, stream>>>(
      k, v, a, p.chunk, p.splits, part_o, part_ml);
  if ((e = launch_status()) != cudaSuccess) return e;
  splitk_combine_kernel<T><<<dim3(a.n_heads, a.rows), 128, 0, stream>>>(
      part_o, part_ml, static_cast<T*>(a.out), a.n_heads, k.head_dim, p.splits);
  return launch_status();
}

template <typename T>
cudaError_t dispatch(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a,
                     const Plan& p, float* o, float* ml, cudaStream_t stream) {
  const int G = a.n_heads / k.kv_heads;
  if (G == 1) return launch<T, 1>(k, v, a, p, o, ml, stream);
  if (G == 2) return launch<T, 2>(k, v, a, p, o, ml, stream);
  if (G <= 4) return launch<T, 4>(k, v, a, p, o, ml, stream);
  return launch<T, 8>(k, v, a, p, o, ml, stream);
}

// ---------------------------------------------------------------------------------------
// Fast path: uniform per-token codes (intB axis=token, sym or asym, any group that is a
// multiple of 8), KIVI (per-channel keys in token groups + fp16 residual ring, per-token
// values), same bit width on both sides, head_dim 32/64/128, no sinks, outliers, LUT,
// smoothing or RoPE (those take the general kernel above). Why a second kernel: the
// general one reached 2-8% of copy bandwidth with time flat across bit widths
// (docs/results.md, first device run): it was bound by instructions and latency, not
// bytes: a 4-byte load per lane and row, a run-time format switch and 64-bit shifts per
// element, a 16-lane shuffle reduction per token and query head, and one load in flight
// per lane. Here:
//  - the bit width is a template parameter, so a code is extracted with a constant shift
//    and mask (a byte permute at 8 bits) and turned into an exact float by the 2^23 magic
//    (or 0x4B000000 | code, minus 2^23): ~2-3 instructions per element before the fma;
//  - a lane owns a whole 32-code block of a token in the key pass (one 16-byte load at 4
//    bits, 8 at 2, 2 x 16 at 8), so the score needs a reduction over head_dim/32 lanes
//    only; kU consecutive tokens per lane are loaded before any is used (loads in flight);
//  - the value pass gives a lane 32/16/8 channels (GQA group 1-2/4/8) of kUV consecutive
//    tokens and accumulates P V in registers, reduced across lanes and warps once per block;
//  - 8 warps per block, >= 4 blocks per SM worth of (chunk, kv head, row) work at batch 1.
// Dequantization is the reference formula (kv_layout.h) element by element, so K'/V' are
// the same fp32 values the CPU holds and the test tolerance stays as derived.
namespace fast {

constexpr int kT = 256;
constexpr int kW = kT / 32;
// Consecutive tokens per lane per key-pass step (loads in flight: 4 x 16 B at 4 bits, 8 x
// 8 B at 2 bits); KIVI key groups must be a multiple of it.
// (8 at 2 bits measured slower on the H100, 2026-11-22: more registers, one block per SM.)
template <int BITS> constexpr int key_tokens() { return 4; }
constexpr int kUMax = 4;

__device__ __forceinline__ float magic_f(uint32_t c) {
  return __uint_as_float(0x4B000000u | c) - 8388608.f;  // exact for c < 2^23
}

// Code e (compile-time after unrolling) of a run of codes held in w (bit stream as in
// kv_layout.h, code e at bit e * BITS), as an exact float.
template <int BITS, int NW>
__device__ __forceinline__ float code_at(const uint32_t (&w)[NW], int e) {
  const int bit = e * BITS, wi = bit >> 5, sh = bit & 31;
  if constexpr (BITS == 8) {
    return __uint_as_float(__byte_perm(w[wi], 0x4B000000u, 0x7540u | (sh >> 3))) - 8388608.f;
  } else {
    uint32_t v;
    if (sh + BITS <= 32) {
      v = w[wi] >> sh;
    } else {
      v = __funnelshift_r(w[wi], w[wi + 1 < NW ? wi + 1 : wi], sh);
    }
    return magic_f(v & ((1u << BITS) - 1u));
  }
}

// Loads NW words starting at p (aligned to 4 * NW bytes when NW is 2 or 4 or 8).
template <int NW>
__device__ __forceinline__ void load_words(const uint32_t* p, uint32_t (&w)[NW]) {
  if constexpr (NW == 2) {
    const uint2 v = __ldg(reinterpret_cast<const uint2*>(p));
    w[0] = v.x; w[1] = v.y;
  } else if constexpr (NW % 4 == 0) {
#pragma unroll
    for (int i = 0; i < NW; i += 4) {
      const uint4 v = __ldg(reinterpret_cast<const uint4*>(p + i));
      w[i] = v.x; w[i + 1] = v.y; w[i + 2] = v.z; w[i + 3] = v.w;
    }
  } else {
#pragma unroll
    for (int i = 0; i < NW; ++i) w[i] = __ldg(p + i);
  }
}

__device__ __forceinline__ float h2f_(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// n fp16 values (n % 8 == 0, 16-byte aligned) to floats.
template <int N>
__device__ __forceinline__ void load_halves(const uint16_t* p, float* x) {
#pragma unroll
  for (int i = 0; i < N; i += 8) {
    const uint4 raw = __ldg(reinterpret_cast<const uint4*>(p + i));
    const __half2* h = reinterpret_cast<const __half2*>(&raw);
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      const float2 f = __half22float2(h[k]);
      x[i + 2 * k] = f.x;
      x[i + 2 * k + 1] = f.y;
    }
  }
}

// Per-token parameters of the 8-channel sub-blocks of a lane's channels: raw binary16
// (scale | zero << 16) for asym, scale for sym; gidx[s] = group of sub-block s. `one`: all
// sub-blocks share one group (group >= the lane's channels): one load instead of NSUB.
template <int NSUB>
__device__ __forceinline__ void load_token_meta(const PackedSide& p, int64_t row, bool sym,
                                                bool one, const int (&gidx)[NSUB],
                                                uint32_t (&m)[NSUB]) {
  const uint16_t* meta = p.meta + row * p.mpr;
#pragma unroll
  for (int s = 0; s < NSUB; ++s) {
    if (s > 0 && one) {
      m[s] = m[0];
    } else if (sym) {
      m[s] = __ldg(meta + gidx[s]);
    } else {
      m[s] = __ldg(reinterpret_cast<const uint32_t*>(meta + 2 * gidx[s]));
    }
  }
}

// Dequantizes CPT codes (channels c0 .. c0+CPT-1 of one token) with per-token meta.
template <int BITS, int NW, int CPT>
__device__ __forceinline__ void dequant_token(const uint32_t (&w)[NW], const uint32_t (&m)[CPT / 8],
                                              bool sym, float (&x)[CPT]) {
#pragma unroll
  for (int s = 0; s < CPT / 8; ++s) {
    const float sf = h2f_(static_cast<uint16_t>(m[s] & 0xFFFFu));
    if (sym) {
      const float off = static_cast<float>(1 << (BITS - 1));
#pragma unroll
      for (int e = 0; e < 8; ++e) x[8 * s + e] = (code_at<BITS>(w, 8 * s + e) - off) * sf;
    } else {
      const float zf = h2f_(static_cast<uint16_t>(m[s] >> 16));
#pragma unroll
      for (int e = 0; e < 8; ++e) x[8 * s + e] = fmaf(code_at<BITS>(w, 8 * s + e), sf, zf);
    }
  }
}

// PF: software prefetch, the next step's codes and scales are loaded before the current
// step is computed (twice the registers, one block per SM); without it (the default) the
// kernel is capped at 128 registers for two blocks per SM, which measured faster.
template <int BITS, int GMAX, bool KCH, bool PF>
__global__ void __launch_bounds__(kT, PF ? 1 : 2)
fast_decode_kernel(PackedSide K, PackedSide V, PackedDecodeArgs a, bool bf16, int chunk,
                   int splits, float* part_o, float* part_ml) {
  constexpr int NWK = BITS;                                  // words per 32-code block
  constexpr int CPT = GMAX <= 2 ? 32 : (GMAX == 4 ? 16 : 8);  // value channels per lane
  constexpr int NWV = CPT * BITS >= 32 ? CPT * BITS / 32 : 1;
  constexpr int kU = key_tokens<BITS>();
  constexpr int kUV = GMAX == 1 ? 4 : 2;  // value tokens per lane-step
  extern __shared__ __align__(16) float sm[];
  const int G = a.n_heads / K.kv_heads;
  const int D = K.head_dim;
  float* qs = sm;                    // [GMAX][D] fp32 queries
  float* sc = qs + GMAX * D;         // [G][chunk]
  float* red = sc + G * chunk;       // [kW][G][D]
  float* stat = red + kW * G * D;    // [G][2]

  const int s = blockIdx.x, kvh = blockIdx.y, r = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int len = a.len[r];
  const int begin = s * chunk;
  const int end = min(len, begin + chunk);
  const int64_t head0 = static_cast<int64_t>(r) * a.n_heads + kvh * G;
  if (begin >= end) {
    for (int i = threadIdx.x; i < G * D; i += kT)
      part_o[((head0 + i / D) * splits + s) * D + i % D] = 0.f;
    if (threadIdx.x < G) {
      part_ml[((head0 + threadIdx.x) * splits + s) * 2] = -INFINITY;
      part_ml[((head0 + threadIdx.x) * splits + s) * 2 + 1] = 0.f;
    }
    return;
  }
  {
    const uint16_t* q = static_cast<const uint16_t*>(a.q);
    for (int i = threadIdx.x; i < GMAX * D; i += kT) {
      float v = 0.f;
      if (i < G * D) {
        const uint16_t h = q[head0 * D + i];
        v = bf16 ? __bfloat162float(__ushort_as_bfloat16(h)) : h2f_(h);
      }
      qs[i] = v;
    }
  }
  __syncthreads();
  const int64_t sh = static_cast<int64_t>(a.slot[r]) * K.kv_heads + kvh;

  // ---- Pass 1: scores. Lane = (token slot, 32-channel block cb). ----
  {
    const int LPR = D / 32;
    const int cb = lane % LPR;
    const int rows_per_warp = 32 / LPR;
    const bool ksym = K.format == KvFormat::kTokenSym;
    constexpr bool kchan = KCH;  // KIVI keys (kChannelAsym)
    int kql = len;  // tokens below kql are coded, the rest in the fp16 ring
    if (K.resid_cap > 0) kql = kchan ? len / K.resid_cap * K.resid_cap : len - K.resid_cap;
    int gidx[4];
#pragma unroll
    for (int t = 0; t < 4; ++t) gidx[t] = kchan ? 0 : (32 * cb + 8 * t) / K.group;
    const bool kone = !kchan && gidx[0] == gidx[3];
    float qr[GMAX == 1 ? 32 : 1];
    if constexpr (GMAX == 1) {
#pragma unroll
      for (int e = 0; e < 32; ++e) qr[e] = qs[32 * cb + e];
    }
    const uint32_t* kcodes = K.codes + sh * K.max_tokens * K.wpr + cb * NWK;
    auto load_k = [&](int j0, uint32_t (&w)[kU][NWK], uint32_t (&m)[kU][4]) {
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int j = j0 + u;
#pragma unroll
        for (int i = 0; i < NWK; ++i) w[u][i] = 0u;
#pragma unroll
        for (int t = 0; t < 4; ++t) m[u][t] = 0u;
        if (j < end && j < kql) {
          load_words<NWK>(kcodes + static_cast<int64_t>(j) * K.wpr, w[u]);
          if (!kchan) load_token_meta<4>(K, sh * K.max_tokens + j, ksym, kone, gidx, m[u]);
        }
      }
    };
    const int kstep = kW * rows_per_warp * kU;
    uint32_t wn[PF ? kU : 1][NWK], mn[PF ? kU : 1][4];
    if constexpr (PF) load_k(begin + warp * rows_per_warp * kU + (lane / LPR) * kU, wn, mn);
    for (int base = begin + warp * rows_per_warp * kU; base < end; base += kstep) {
      const int j0 = base + (lane / LPR) * kU;
      uint32_t w[kU][NWK];
      uint32_t m[kU][4];
      if constexpr (PF) {
#pragma unroll
        for (int u = 0; u < kU; ++u) {
#pragma unroll
          for (int i = 0; i < NWK; ++i) w[u][i] = wn[u][i];
#pragma unroll
          for (int t = 0; t < 4; ++t) m[u][t] = mn[u][t];
        }
        if (base + kstep < end) load_k(j0 + kstep, wn, mn);
      } else {
        load_k(j0, w, m);
      }
      uint32_t cm[KCH ? 32 : 1];  // KIVI keys: (scale | zero << 16) of the lane's 32 channels
      if constexpr (KCH) {
        // tokens j0 .. j0+kU-1 share one group (group % kUMax == 0, j0 % kU == 0)
        if (j0 < end && j0 < kql) {
          const uint32_t* src = reinterpret_cast<const uint32_t*>(
              K.cmeta + ((sh * (K.max_tokens / K.group) + j0 / K.group) * D + 32 * cb) * 2);
#pragma unroll
          for (int i = 0; i < 32; i += 4) {
            const uint4 v = __ldg(reinterpret_cast<const uint4*>(src + i));
            cm[i] = v.x; cm[i + 1] = v.y; cm[i + 2] = v.z; cm[i + 3] = v.w;
          }
        } else {
#pragma unroll
          for (int i = 0; i < 32; ++i) cm[i] = 0u;
        }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int j = j0 + u;
        float x[32];
        if (j >= kql && j < end) {
          load_halves<32>(K.resid + (sh * K.resid_cap + j % K.resid_cap) * D + 32 * cb, x);
        } else if constexpr (KCH) {
#pragma unroll
          for (int e = 0; e < 32; ++e)
            x[e] = fmaf(code_at<BITS>(w[u], e), h2f_(static_cast<uint16_t>(cm[e] & 0xFFFFu)),
                        h2f_(static_cast<uint16_t>(cm[e] >> 16)));
        } else {
          dequant_token<BITS, NWK, 32>(w[u], m[u], ksym, x);
        }
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
          float dot = 0.f;
          if constexpr (GMAX == 1) {
#pragma unroll
            for (int e = 0; e < 32; ++e) dot = fmaf(qr[e], x[e], dot);
          } else {
            const float4* q4 = reinterpret_cast<const float4*>(qs + g * D + 32 * cb);
#pragma unroll
            for (int e = 0; e < 32; e += 4) {
              const float4 qv = q4[e / 4];
              dot = fmaf(qv.x, x[e], dot);
              dot = fmaf(qv.y, x[e + 1], dot);
              dot = fmaf(qv.z, x[e + 2], dot);
              dot = fmaf(qv.w, x[e + 3], dot);
            }
          }
          for (int o = 1; o < LPR; o <<= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
          if (g < G && cb == 0 && j < end) sc[g * chunk + (j - begin)] = dot * a.scale;
        }
      }
    }
  }
  __syncthreads();

  // ---- Pass 2: p = exp(s - max) per query head, and the chunk's sum. ----
  const int cnt = end - begin;
  for (int g = warp; g < G; g += kW) {
    float mx = -INFINITY;
    for (int i = lane; i < cnt; i += 32) mx = fmaxf(mx, sc[g * chunk + i]);
    mx = warp_max(mx);
    float sum = 0.f;
    for (int i = lane; i < cnt; i += 32) {
      const float p = expf(sc[g * chunk + i] - mx);
      sc[g * chunk + i] = p;
      sum += p;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      stat[2 * g] = mx;
      stat[2 * g + 1] = sum;
    }
  }
  __syncthreads();

  // ---- Pass 3: P V. Lane = (token slot, CPT channels). ----
  {
    const int LPRv = D / CPT;
    const int cv = (lane % LPRv) * CPT;
    const int rows_per_warp = 32 / LPRv;
    const bool vsym = V.format == KvFormat::kTokenSym;
    const int vql = V.resid_cap > 0 ? len - V.resid_cap : len;
    int gidx[CPT / 8];
#pragma unroll
    for (int t = 0; t < CPT / 8; ++t) gidx[t] = (cv + 8 * t) / V.group;
    const bool vone = gidx[0] == gidx[CPT / 8 - 1];
    const int wofs = (cv * BITS) >> 5, bofs = (cv * BITS) & 31;  // bofs != 0: 16-bit runs
    const uint32_t* vcodes = V.codes + sh * V.max_tokens * V.wpr + wofs;
    float acc[GMAX][CPT];
#pragma unroll
    for (int g = 0; g < GMAX; ++g)
#pragma unroll
      for (int e = 0; e < CPT; ++e) acc[g][e] = 0.f;
    auto load_v = [&](int j0, uint32_t (&w)[kUV][NWV], uint32_t (&m)[kUV][CPT / 8]) {
#pragma unroll
      for (int u = 0; u < kUV; ++u) {
        const int j = j0 + u;
#pragma unroll
        for (int i = 0; i < NWV; ++i) w[u][i] = 0u;
#pragma unroll
        for (int t = 0; t < CPT / 8; ++t) m[u][t] = 0u;
        if (j < end && j < vql) {
          load_words<NWV>(vcodes + static_cast<int64_t>(j) * V.wpr, w[u]);
          load_token_meta<CPT / 8>(V, sh * V.max_tokens + j, vsym, vone, gidx, m[u]);
        }
      }
    };
    const int vstep = kW * rows_per_warp * kUV;
    uint32_t wn[PF ? kUV : 1][NWV], mn[PF ? kUV : 1][CPT / 8];
    if constexpr (PF) load_v(begin + warp * rows_per_warp * kUV + (lane / LPRv) * kUV, wn, mn);
    for (int base = begin + warp * rows_per_warp * kUV; base < end; base += vstep) {
      const int j0 = base + (lane / LPRv) * kUV;
      uint32_t w[kUV][NWV];
      uint32_t m[kUV][CPT / 8];
      if constexpr (PF) {
#pragma unroll
        for (int u = 0; u < kUV; ++u) {
#pragma unroll
          for (int i = 0; i < NWV; ++i) w[u][i] = wn[u][i];
#pragma unroll
          for (int t = 0; t < CPT / 8; ++t) m[u][t] = mn[u][t];
        }
        if (base + vstep < end) load_v(j0 + vstep, wn, mn);
      } else {
        load_v(j0, w, m);
      }
      if (bofs) {
#pragma unroll
        for (int u = 0; u < kUV; ++u) w[u][0] >>= bofs;
      }
#pragma unroll
      for (int u = 0; u < kUV; ++u) {
        const int j = j0 + u;
        if (j >= end) continue;
        float x[CPT];
        if (j >= vql) {
          load_halves<CPT>(V.resid + (sh * V.resid_cap + j % V.resid_cap) * D + cv, x);
        } else {
          dequant_token<BITS, NWV, CPT>(w[u], m[u], vsym, x);
        }
#pragma unroll
        for (int g = 0; g < GMAX; ++g) {
          const float p = g < G ? sc[g * chunk + (j - begin)] : 0.f;
#pragma unroll
          for (int e = 0; e < CPT; ++e) acc[g][e] = fmaf(p, x[e], acc[g][e]);
        }
      }
    }
#pragma unroll
    for (int g = 0; g < GMAX; ++g)
#pragma unroll
      for (int e = 0; e < CPT; ++e)
        for (int o = LPRv; o < 32; o <<= 1) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
    if (lane < LPRv) {
#pragma unroll
      for (int g = 0; g < GMAX; ++g)
        if (g < G)
#pragma unroll
          for (int e = 0; e < CPT; ++e) red[(warp * G + g) * D + cv + e] = acc[g][e];
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * D; i += kT) {
    const int g = i / D, d = i % D;
    float v = 0.f;
    for (int w2 = 0; w2 < kW; ++w2) v += red[(w2 * G + g) * D + d];
    part_o[((head0 + g) * splits + s) * D + d] = v;
  }
  if (threadIdx.x < G) {
    part_ml[((head0 + threadIdx.x) * splits + s) * 2] = stat[2 * threadIdx.x];
    part_ml[((head0 + threadIdx.x) * splits + s) * 2 + 1] = stat[2 * threadIdx.x + 1];
  }
}

size_t smem_bytes(int gmax, int G, int chunk, int D) {
  return (static_cast<size_t>(gmax) * D + static_cast<size_t>(G) * chunk +
          static_cast<size_t>(kW) * G * D + 2 * kMaxGroup) * sizeof(float);
}

template <int BITS, int GMAX, bool KCH, bool PF>
cudaError_t launch(Act act, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a,
                   const Plan& p, float* part_o, float* part_ml, cudaStream_t stream) {
  const int G = a.n_heads / k.kv_heads;
  const size_t smem = smem_bytes(GMAX, G, p.chunk, k.head_dim);
  cudaError_t e = cudaFuncSetAttribute(fast_decode_kernel<BITS, GMAX, KCH, PF>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  fast_decode_kernel<BITS, GMAX, KCH, PF><<<dim3(p.splits, k.kv_heads, a.rows), kT, smem, stream>>>(
      k, v, a, act == Act::kBF16, p.chunk, p.splits, part_o, part_ml);
  if ((e = launch_status()) != cudaSuccess) return e;
  if (act == Act::kF16)
    splitk_combine_kernel<__half><<<dim3(a.n_heads, a.rows), 128, 0, stream>>>(
        part_o, part_ml, static_cast<__half*>(a.out), a.n_heads, k.head_dim, p.splits);
  else
    splitk_combine_kernel<__nv_bfloat16><<<dim3(a.n_heads, a.rows), 128, 0, stream>>>(
        part_o, part_ml, static_cast<__nv_bfloat16*>(a.out), a.n_heads, k.head_dim, p.splits);
  return launch_status();
}

template <int BITS, bool KCH, bool PF>
cudaError_t dispatch_group(Act act, const PackedSide& k, const PackedSide& v,
                           const PackedDecodeArgs& a, const Plan& p, float* o, float* ml,
                           cudaStream_t stream) {
  const int G = a.n_heads / k.kv_heads;
  if (G == 1) return launch<BITS, 1, KCH, PF>(act, k, v, a, p, o, ml, stream);
  if (G == 2) return launch<BITS, 2, KCH, PF>(act, k, v, a, p, o, ml, stream);
  if constexpr (BITS != 3) {
    if (G <= 4) return launch<BITS, 4, KCH, PF>(act, k, v, a, p, o, ml, stream);
    return launch<BITS, 8, KCH, PF>(act, k, v, a, p, o, ml, stream);
  }
  return cudaErrorInvalidValue;
}

template <int BITS>
cudaError_t dispatch_keys(Act act, const PackedSide& k, const PackedSide& v,
                          const PackedDecodeArgs& a, const Plan& p, float* o, float* ml,
                          cudaStream_t stream) {
  // Prefetch only on request: measured slower on the H100 (2026-11-22, llama2-7b b8 128K int4
  // 5896 us with it vs 4454 us without; one block per SM instead of two).
  const bool pf = a.variant == 3;
  if (k.format == KvFormat::kChannelAsym)
    return pf ? dispatch_group<BITS, true, true>(act, k, v, a, p, o, ml, stream)
              : dispatch_group<BITS, true, false>(act, k, v, a, p, o, ml, stream);
  return pf ? dispatch_group<BITS, false, true>(act, k, v, a, p, o, ml, stream)
            : dispatch_group<BITS, false, false>(act, k, v, a, p, o, ml, stream);
}

bool side_fits(const PackedSide& s, bool key) {
  if (s.n_sink > 0 || s.outliers || s.inv_s || s.lut) return false;
  if (s.format == KvFormat::kTokenAsym || s.format == KvFormat::kTokenSym)
    return s.group > 0 && s.group % 8 == 0 && s.head_dim % s.group == 0;
  if (s.format == KvFormat::kChannelAsym) return key && s.group % kUMax == 0 && s.resid_cap > 0;
  return false;
}

// True when the fast kernel serves this pair of sides.
bool fits(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a) {
  const int D = k.head_dim, G = a.n_heads / k.kv_heads;
  if (a.inv_freq || (D != 32 && D != 64 && D != 128) || k.bits != v.bits) return false;
  if (k.bits != 2 && k.bits != 4 && k.bits != 8 && !(k.bits == 3 && G <= 2)) return false;
  return side_fits(k, true) && side_fits(v, false);
}

cudaError_t run(Act act, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a,
                const Plan& p, float* o, float* ml, cudaStream_t stream) {
  switch (k.bits) {
    case 2: return dispatch_keys<2>(act, k, v, a, p, o, ml, stream);
    case 3: return dispatch_keys<3>(act, k, v, a, p, o, ml, stream);
    case 4: return dispatch_keys<4>(act, k, v, a, p, o, ml, stream);
    case 8: return dispatch_keys<8>(act, k, v, a, p, o, ml, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace fast

bool side_ok(const PackedSide& s) {
  if (s.bits < 1 || s.bits > 8) return false;
  if ((s.format == KvFormat::kTokenAsym || s.format == KvFormat::kTokenSym) && s.group % 8 != 0)
    return false;
  return true;
}

}  // namespace

size_t kv_decode_workspace(const PackedSide& k, const PackedDecodeArgs& a, int max_len,
                           int sm_count) {
  if (k.kv_heads <= 0 || a.rows <= 0 || max_len <= 0) return 0;
  const Plan p = make_plan(k.kv_heads, a.rows, a.n_heads / k.kv_heads, max_len, sm_count);
  // the tensor-core kernel's largest split count (kv_decode_mma.cu)
  const int msplits = mma_decode::max_splits(max_len);
  return static_cast<size_t>(a.rows) * a.n_heads * std::max(p.splits, msplits) * (k.head_dim + 2) *
         sizeof(float);
}

cudaError_t kv_decode_attention(Act act, const PackedSide& k, const PackedSide& v,
                                const PackedDecodeArgs& a, int max_len, int sm_count,
                                void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const int D = k.head_dim;
  // head_dim / 8 lanes per row must divide a warp: head_dim in {8, 16, 32, 64, 128}.
  if (D != v.head_dim || k.kv_heads != v.kv_heads || D > kMaxHeadDim || D < 8 || (D & (D - 1)) ||
      a.n_heads % k.kv_heads != 0 || a.n_heads / k.kv_heads > kMaxGroup || !side_ok(k) ||
      !side_ok(v))
    return cudaErrorInvalidValue;
  if (a.rows == 0) return cudaSuccess;
  if (workspace_bytes < kv_decode_workspace(k, a, max_len, sm_count)) return cudaErrorInvalidValue;
  const Plan p = make_plan(k.kv_heads, a.rows, a.n_heads / k.kv_heads, max_len, sm_count);
  float* part_o = static_cast<float*>(workspace);
  // Auto (variant 0) and 4 (force it): the tensor-core kernel where it applies (uniform
  // per-token 2/4-bit codes or KIVI, head_dim 128, fp16); its partials use its own split count.
  if ((a.variant == 0 || a.variant == 4) && mma_decode::fits(act, k, v, a)) {
    const int msplits = mma_decode::max_splits(max_len);
    float* mml = part_o + static_cast<size_t>(a.rows) * a.n_heads * msplits * D;
    return mma_decode::run(act, k, v, a, max_len, sm_count, part_o, mml, stream);
  }
  float* part_ml = part_o + static_cast<size_t>(a.rows) * a.n_heads * p.splits * D;
  if (a.variant != 1 && fast::fits(k, v, a)) return fast::run(act, k, v, a, p, part_o, part_ml, stream);
  if (act == Act::kF16) return dispatch<__half>(k, v, a, p, part_o, part_ml, stream);
  return dispatch<__nv_bfloat16>(k, v, a, p, part_o, part_ml, stream);
}

}  // namespace kvq::kern
