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
#include "kernels/kv_ops.cuh"

namespace kvq::kern {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxChunkFloats = 8192;
constexpr int kLutMax = 256;
constexpr int kAnchorEvery = 32;

struct Plan {
  int chunk = 0, splits = 0;
};

Plan make_plan(int kv_heads, int rows, int group, int max_len, int sm_count) {
  const int per_split = kv_heads * rows;
  const int want = std::max(1, (2 * std::max(sm_count, 1) + per_split - 1) / per_split);
  int chunk = (max_len + want - 1) / want;
  chunk = ((chunk + 63) / 64) * 64;
  const int cap = std::min(2048, (kMaxChunkFloats / group) / 64 * 64);
  chunk = std::max(64, std::min(chunk, cap));
  return {chunk, (max_len + chunk - 1) / chunk};
}

__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

__device__ __forceinline__ void load_halves8(const uint16_t* p, float (&x)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __half* e = reinterpret_cast<const __half*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) x[i] = __half2float(e[i]);
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
    for (int i = threadIdx.x; i < G * D; i += kThreads)
      part_o[((head0 + i / D) * splits + s) * D + i % D] = 0.f;
    if (threadIdx.x < G) {
      part_ml[((head0 + threadIdx.x) * splits + s) * 2] = -INFINITY;
      part_ml[((head0 + threadIdx.x) * splits + s) * 2 + 1] = 0.f;
    }
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
#pragma unroll
      for (int g = 0; g < GMAX; ++g) {
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) dot = fmaf(qv[g][e], kv[e], dot);
        for (int o = LPR / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (g < G && lc == 0 && row_ok) sc[g * chunk + (j - begin)] = dot * a.scale;
      }
    }
  }
  __syncthreads();

  // Pass 2: p = exp(s - max) per head and the chunk's sum.
  const int cnt = end - begin;
  for (int g = warp; g < G; g += kWarps) {
    float m = -INFINITY;
    for (int i = lane; i < cnt; i += 32) m = fmaxf(m, sc[g * chunk + i]);
    m = warp_max(m);
    float sum = 0.f;
    for (int i = lane; i < cnt; i += 32) {
      const float p = expf(sc[g * chunk + i] - m);
      sc[g * chunk + i] = p;
      sum += p;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      stat[2 * g] = m;
      stat[2 * g + 1] = sum;
    }
  }
  __syncthreads();

  // Pass 3: P V.
  float acc[GMAX][8];
#pragma unroll
  for (int g = 0; g < GMAX; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.f;
  for (int j0 = begin + warp * RPW; j0 < end; j0 += step) {
    const int j = j0 + lr;
    if (j < end) {
      float vv[8];
      load_row(V, sh, kvh, j, len, lc, vlut, 0, vv);
#pragma unroll
      for (int g = 0; g < GMAX; ++g) {
        const float p = g < G ? sc[g * chunk + (j - begin)] : 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(p, vv[e], acc[g][e]);
      }
    }
  }
#pragma unroll
  for (int g = 0; g < GMAX; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e)
      for (int o = LPR; o < 32; o <<= 1) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
  if (lr == 0) {
#pragma unroll
    for (int g = 0; g < GMAX; ++g)
      if (g < G)
#pragma unroll
        for (int e = 0; e < 8; ++e) red[(warp * G + g) * D + lc * 8 + e] = acc[g][e];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * D; i += kThreads) {
    const int g = i / D, d = i % D;
    float v = 0.f;
    for (int w = 0; w < kWarps; ++w) v += red[(w * G + g) * D + d];
    part_o[((head0 + g) * splits + s) * D + d] = v;
  }
  if (threadIdx.x < G) {
    part_ml[((head0 + threadIdx.x) * splits + s) * 2] = stat[2 * threadIdx.x];
    part_ml[((head0 + threadIdx.x) * splits + s) * 2 + 1] = stat[2 * threadIdx.x + 1];
  }
}

// One block per (query head, row): out = sum_s w_s o_s / sum_s w_s l_s, w_s = exp(m_s - m).
template <typename T>
__global__ void packed_combine_kernel(PackedDecodeArgs a, int D, int splits, const float* part_o,
                                      const float* part_ml) {
  const int h = blockIdx.x, r = blockIdx.y;
  const int64_t head = static_cast<int64_t>(r) * a.n_heads + h;
  const float* ml = part_ml + head * splits * 2;
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, ml[2 * s]);
  float l = 0.f;
  for (int s = 0; s < splits; ++s)
    l += ml[2 * s] == -INFINITY ? 0.f : expf(ml[2 * s] - m) * ml[2 * s + 1];
  T* out = static_cast<T*>(a.out) + head * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
    for (int s = 0; s < splits; ++s)
      if (ml[2 * s] != -INFINITY) o += expf(ml[2 * s] - m) * part_o[(head * splits + s) * D + d];
    out[d] = from_f<T>(o / l);
  }
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
  packed_combine_kernel<T><<<dim3(a.n_heads, a.rows), 128, 0, stream>>>(a, k.head_dim, p.splits,
                                                                       part_o, part_ml);
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
  return static_cast<size_t>(a.rows) * a.n_heads * p.splits * (k.head_dim + 2) * sizeof(float);
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
  float* part_ml = part_o + static_cast<size_t>(a.rows) * a.n_heads * p.splits * D;
  if (act == Act::kF16) return dispatch<__half>(k, v, a, p, part_o, part_ml, stream);
  return dispatch<__nv_bfloat16>(k, v, a, p, part_o, part_ml, stream);
}

}  // namespace kvq::kern
