// Decode attention over the packed caches of kernels/kv_more.cuh (fp16, q8_0, q4_0, fp8,
// intB axis=channel, Hadamard, MiKV). The plan of kv_decode_packed.cu / attention_decode.cu
// (flash-decoding): the context of a row is cut into chunks, one block of 4 warps per
// (chunk, kv head, row) serves the G query heads of its kv head (GQA: each packed byte is
// read once per step), a combine kernel merges the chunks' (max, sum, output).
//  - A (token, head) record is read by head_dim/8 lanes, 8 channels each, with one
//    vector load per lane where the record allows it (fp16: 16 bytes, int8 / fp8: 8, q4_0:
//    8 bytes of nibbles, packed codes: b bytes) and dequantized in registers with the
//    stored scales (fp8 through a 256-entry table in shared memory, the exact values of
//    kv_layout.h's conversion).
//  - The query is converted to fp32 once per (row, head) by a small kernel; for Hadamard
//    keys it is rotated there with the keys' signs and transform (q . k = (n H D q) . y,
//    the transform orthogonal up to n = 1/sqrt(hd)), so keys are never rotated back.
//    For Hadamard values the combine kernel rotates the merged output back (D H o n).
//  - MiKV: a flag byte per record picks the fp16 / int8 / int-b record; the newest
//    ring_cap tokens come from the fp16 ring; balanced keys are multiplied by 1/b per
//    channel exactly as mikv.cpp's dequantize does.
// Softmax, scores and accumulators are fp32; the output is rounded once to Act. The per-row
// steps of the three passes (after the loads) are kernels/decode_chunk.cuh's.
#include <algorithm>
#include <cmath>

#include "kernels/common.cuh"
#include "kernels/decode_chunk.cuh"
#include "kernels/kv_codes.cuh"
#include "kernels/kv_more.cuh"

namespace kvq::kern {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxChunkFloats = 8192;

using Plan = SplitPlan;

// 8 packed codes of `bits` bits starting at code c0 of the record at w.
__device__ __forceinline__ void load_codes8(const uint32_t* w, int c0, int bits, uint32_t (&q)[8]) {
  const int bit = c0 * bits;
  const int wi = bit >> 5, sft = bit & 31;
  uint64_t v = w[wi];
  if (sft + 8 * bits > 32) v |= static_cast<uint64_t>(w[wi + 1]) << 32;
  v >>= sft;
  const uint32_t m = (1u << bits) - 1u;
#pragma unroll
  for (int e = 0; e < 8; ++e) q[e] = static_cast<uint32_t>(v >> (e * bits)) & m;
}

// Channels [lc*8, lc*8 + 8) of token j of (slot, head) sh, as the CPU reference's
// dequantize() gives them (Hadamard: in the rotated space).
__device__ __forceinline__ void load_row(const MoreSide& p, int slot, int64_t sh, int h, int j,
                                         int len, int lc, const float* f8, float (&x)[8]) {
  const int hd = p.head_dim, c0 = lc * 8;
  if (p.ring_cap > 0 && j >= len - p.ring_cap) {  // MiKV's recent window
    load_halves8(p.ring + (sh * p.ring_cap + j % p.ring_cap) * hd + c0, x);
    return;
  }
  const int64_t row = sh * p.max_tokens + j;
  const uint8_t* rec = p.data + row * p.row_bytes;
  switch (p.format) {
    case MoreFormat::kF16:
      load_halves8(reinterpret_cast<const uint16_t*>(rec) + c0, x);
      return;
    case MoreFormat::kQ8_0: {
      const uint2 raw = *reinterpret_cast<const uint2*>(rec + c0);
      const int8_t* b = reinterpret_cast<const int8_t*>(&raw);
      const float d = h2f(p.meta[row * p.mpr + c0 / 32]);
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = static_cast<float>(b[e]) * d;
      return;
    }
    case MoreFormat::kQ4_0: {
      const int within = c0 % 32;
      const uint2 raw = *reinterpret_cast<const uint2*>(rec + (c0 / 32) * 16 + within % 16);
      const uint8_t* b = reinterpret_cast<const uint8_t*>(&raw);
      const float d = h2f(p.meta[row * p.mpr + c0 / 32]);
      const int shift = within >= 16 ? 4 : 0;
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = static_cast<float>(((b[e] >> shift) & 0x0f) - 8) * d;
      return;
    }
    case MoreFormat::kFp8: {
      const uint2 raw = *reinterpret_cast<const uint2*>(rec + c0);
      const uint8_t* b = reinterpret_cast<const uint8_t*>(&raw);
      const float s = p.scale[slot * p.kv_heads + h];
#pragma unroll
      for (int e = 0; e < 8; ++e) x[e] = f8[b[e]] * s;
      return;
    }
    case MoreFormat::kChannel: {
      uint32_t q[8];
      load_codes8(reinterpret_cast<const uint32_t*>(rec), c0, p.bits, q);
      const int per = p.sym ? 1 : 2;
      const uint16_t* cm = p.cmeta + ((sh * (p.max_tokens / p.group) + j / p.group) * hd + c0) * per;
      if (p.sym) {
        float s[8];
        load_halves8(cm, s);
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] = kvlayout::dequantize_sym(q[e], s[e], p.bits);
      } else {
        float a[8], b[8];
        load_halves8(cm, a);
        load_halves8(cm + 8, b);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          x[e] = kvlayout::dequantize_asym(q[e], a[2 * e], a[2 * e + 1]);
          x[e + 4] = kvlayout::dequantize_asym(q[e + 4], b[2 * e], b[2 * e + 1]);
        }
      }
      return;
    }
    case MoreFormat::kHadamard:
    case MoreFormat::kMikv: {
      int bits = p.bits;
      if (p.format == MoreFormat::kMikv && p.flag[row]) {
        if (p.hi_bits == 16) {
          load_halves8(reinterpret_cast<const uint16_t*>(rec) + c0, x);
          bits = 0;
        } else {
          bits = p.hi_bits;
        }
      }
      if (bits > 0) {
        uint32_t q[8];
        load_codes8(reinterpret_cast<const uint32_t*>(rec), c0, bits, q);
        const uint16_t* m = p.meta + row * p.mpr;
        const float sf = h2f(m[0]), zf = h2f(m[1]);
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] = kvlayout::dequantize_asym(q[e], sf, zf);
      }
      if (p.inv_b) {
        const float* ib = p.inv_b + static_cast<int64_t>(slot) * p.kv_heads * hd + h * hd + c0;
#pragma unroll
        for (int e = 0; e < 8; ++e) x[e] *= ib[e];
      }
      return;
    }
  }
}

// In-place fp32 fast Walsh-Hadamard transform of s[0, D) by D threads (hadamard.cpp's
// stage order and pairs), then s[i] *= post[i] (post: norm * sign, or norm).
__device__ void block_fwht(float* s, int D, int i) {
  for (int len = 1; len < D; len <<= 1) {
    __syncthreads();
    const float a = s[i & ~len], b = s[i | len];
    __syncthreads();
    s[i] = (i & len) ? a - b : a + b;
  }
  __syncthreads();
}

// qf[row, head, :] = fp32 query; Hadamard keys: norm * H (signs . q).
template <typename T>
__global__ void prep_q_kernel(MoreDecodeArgs a, int D, const float* signs, float norm, float* qf) {
  __shared__ float s[kMaxHeadDim];
  const int h = blockIdx.x, r = blockIdx.y, i = threadIdx.x;
  const int64_t base = (static_cast<int64_t>(r) * a.n_heads + h) * D;
  const float x = to_f(static_cast<const T*>(a.q)[base + i]);
  if (!signs) {
    qf[base + i] = x;
    return;
  }
  s[i] = x * signs[i];
  block_fwht(s, D, i);
  qf[base + i] = s[i] * norm;
}

template <int GMAX>
__global__ void __launch_bounds__(kThreads)
more_decode_kernel(MoreSide K, MoreSide V, MoreDecodeArgs a, const float* qf, int chunk,
                   int splits, float* part_o, float* part_ml) {
  extern __shared__ __align__(16) float sm[];
  const int G = a.n_heads / K.kv_heads;
  const int D = K.head_dim;
  const int LPR = D / 8, RPW = 32 / LPR;
  float* sc = sm;                      // [G][chunk]
  float* red = sc + G * chunk;         // [kWarps][G][D]
  float* stat = red + kWarps * G * D;  // [GMAX][2]
  float* kf8 = stat + 2 * GMAX;        // [256] fp8 values of K
  float* vf8 = kf8 + 256;              // [256] of V

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
  for (int i = threadIdx.x; i < 256; i += kThreads) {
    if (K.format == MoreFormat::kFp8)
      kf8[i] = K.e5m2 ? kvlayout::e5m2_to_float(static_cast<uint8_t>(i))
                      : kvlayout::e4m3_to_float(static_cast<uint8_t>(i));
    if (V.format == MoreFormat::kFp8)
      vf8[i] = V.e5m2 ? kvlayout::e5m2_to_float(static_cast<uint8_t>(i))
                      : kvlayout::e4m3_to_float(static_cast<uint8_t>(i));
  }
  __syncthreads();

  const int slot = a.slot[r];
  const int64_t sh = static_cast<int64_t>(slot) * K.kv_heads + kvh;
  const int step = kWarps * RPW;

  // Pass 1: scores.
  {
    float qv[GMAX][8];
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
      if (g < G) {
        const float4 a0 = *reinterpret_cast<const float4*>(qf + (head0 + g) * D + lc * 8);
        const float4 a1 = *reinterpret_cast<const float4*>(qf + (head0 + g) * D + lc * 8 + 4);
        qv[g][0] = a0.x; qv[g][1] = a0.y; qv[g][2] = a0.z; qv[g][3] = a0.w;
        qv[g][4] = a1.x; qv[g][5] = a1.y; qv[g][6] = a1.z; qv[g][7] = a1.w;
      } else {
#pragma unroll
        for (int i = 0; i < 8; ++i) qv[g][i] = 0.f;
      }
    }
    for (int j0 = begin + warp * RPW; j0 < end; j0 += step) {
      const int j = j0 + lr;
      const bool row_ok = j < end;
      float kv[8];
      if (row_ok) {
        load_row(K, slot, sh, kvh, j, len, lc, kf8, kv);
      } else {
#pragma unroll
        for (int e = 0; e < 8; ++e) kv[e] = 0.f;
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
                [&](int j, float (&vv)[8]) { load_row(V, slot, sh, kvh, j, len, lc, vf8, vv); });
  store_split_partials<GMAX, kThreads>(acc, LPR, lr, lc, warp, G, D, D, red, stat, head0, splits, s, part_o,
                                     part_ml);
}

// One block of D threads per (query head, row): out = sum_s w_s o_s / sum_s w_s l_s,
// w_s = exp(m_s - m); Hadamard values: out = (norm * signs) . H out.
template <typename T>
__global__ void more_combine_kernel(MoreDecodeArgs a, int D, int splits, const float* part_o,
                                    const float* part_ml, const float* signs, float norm) {
  __shared__ float s[kMaxHeadDim];
  const int h = blockIdx.x, r = blockIdx.y, d = threadIdx.x;
  const int64_t head = static_cast<int64_t>(r) * a.n_heads + h;
  const float* ml = part_ml + head * splits * 2;
  float m = -INFINITY;
  for (int i = 0; i < splits; ++i) m = fmaxf(m, ml[2 * i]);
  float l = 0.f, o = 0.f;
  for (int i = 0; i < splits; ++i)
    if (ml[2 * i] != -INFINITY) {
      const float w = expf(ml[2 * i] - m);
      l += w * ml[2 * i + 1];
      o += w * part_o[(head * splits + i) * D + d];
    }
  o /= l;
  if (signs) {
    s[d] = o;
    block_fwht(s, D, d);
    o = s[d] * (norm * signs[d]);
  }
  static_cast<T*>(a.out)[head * D + d] = from_f<T>(o);
}

size_t smem_for(int G, int chunk, int D) {
  return (static_cast<size_t>(G) * chunk + static_cast<size_t>(kWarps) * G * D + 2 * kMaxGroup +
          2 * 256) * sizeof(float);
}

template <int GMAX>
cudaError_t launch(const MoreSide& k, const MoreSide& v, const MoreDecodeArgs& a, const float* qf,
                   const Plan& p, float* part_o, float* part_ml, cudaStream_t stream) {
  const int G = a.n_heads / k.kv_heads;
  const size_t smem = smem_for(G, p.chunk, k.head_dim);
  cudaError_t e = cudaFuncSetAttribute(more_decode_kernel<GMAX>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  more_decode_kernel<GMAX><<<dim3(p.splits, k.kv_heads, a.rows), kThreads, smem, stream>>>(
      k, v, a, qf, p.chunk, p.splits, part_o, part_ml);
  return launch_status();
}

bool side_ok(const MoreSide& s) {
  const int hd = s.head_dim;
  if (hd < 8 || hd > kMaxHeadDim || (hd & (hd - 1)) || s.row_bytes % 4 != 0) return false;
  if ((s.format == MoreFormat::kQ8_0 || s.format == MoreFormat::kQ4_0) && hd % 32 != 0) return false;
  if (s.format == MoreFormat::kChannel && (s.group <= 0 || s.max_tokens % s.group != 0)) return false;
  if (s.format == MoreFormat::kHadamard && !s.signs) return false;
  return true;
}

struct Workspace {
  Plan plan;
  size_t o = 0, ml = 0, q = 0;  // float counts
  size_t bytes() const { return (o + ml + q) * sizeof(float); }
};

Workspace workspace_for(const MoreSide& k, const MoreDecodeArgs& a, int max_len, int sm_count) {
  Workspace w;
  w.plan = split_plan(k.kv_heads, a.rows, a.n_heads / k.kv_heads, max_len, sm_count, 2, kMaxChunkFloats);
  const size_t heads = static_cast<size_t>(a.rows) * a.n_heads;
  w.o = heads * w.plan.splits * k.head_dim;
  w.ml = heads * w.plan.splits * 2;
  w.q = heads * k.head_dim;
  return w;
}

}  // namespace

size_t more_decode_workspace(const MoreSide& k, const MoreDecodeArgs& a, int max_len,
                             int sm_count) {
  if (k.kv_heads <= 0 || a.rows <= 0 || max_len <= 0) return 0;
  return workspace_for(k, a, max_len, sm_count).bytes() + 16;
}

cudaError_t more_decode_attention(Act act, const MoreSide& k, const MoreSide& v,
                                  const MoreDecodeArgs& a, int max_len, int sm_count,
                                  void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  const int D = k.head_dim;
  if (D != v.head_dim || k.kv_heads != v.kv_heads || a.n_heads % k.kv_heads != 0 ||
      a.n_heads / k.kv_heads > kMaxGroup || !side_ok(k) || !side_ok(v) || max_len <= 0)
    return cudaErrorInvalidValue;
  if (a.rows == 0) return cudaSuccess;
  const Workspace w = workspace_for(k, a, max_len, sm_count);
  if (workspace_bytes < w.bytes()) return cudaErrorInvalidValue;
  // qf first: float4 loads need 16-byte alignment (cudaMalloc'd workspace).
  float* qf = static_cast<float*>(workspace);
  float* part_o = qf + w.q;
  float* part_ml = part_o + w.o;
  const bool hk = k.format == MoreFormat::kHadamard, hv = v.format == MoreFormat::kHadamard;
  const dim3 heads(a.n_heads, a.rows);
  if (act == Act::kF16)
    prep_q_kernel<__half><<<heads, D, 0, stream>>>(a, D, hk ? k.signs : nullptr, k.norm, qf);
  else
    prep_q_kernel<__nv_bfloat16><<<heads, D, 0, stream>>>(a, D, hk ? k.signs : nullptr, k.norm, qf);
  if (cudaError_t e = launch_status(); e != cudaSuccess) return e;
  const int G = a.n_heads / k.kv_heads;
  cudaError_t e;
  if (G == 1) e = launch<1>(k, v, a, qf, w.plan, part_o, part_ml, stream);
  else if (G == 2) e = launch<2>(k, v, a, qf, w.plan, part_o, part_ml, stream);
  else if (G <= 4) e = launch<4>(k, v, a, qf, w.plan, part_o, part_ml, stream);
  else e = launch<8>(k, v, a, qf, w.plan, part_o, part_ml, stream);
  if (e != cudaSuccess) return e;
  if (act == Act::kF16)
    more_combine_kernel<__half><<<heads, D, 0, stream>>>(a, D, w.plan.splits, part_o, part_ml,
                                                         hv ? v.signs : nullptr, v.norm);
  else
    more_combine_kernel<__nv_bfloat16><<<heads, D, 0, stream>>>(a, D, w.plan.splits, part_o, part_ml,
                                                                hv ? v.signs : nullptr, v.norm);
  return launch_status();
}

}  // namespace kvq::kern
