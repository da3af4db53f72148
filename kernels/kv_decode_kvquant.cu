// Decode attention specialised for KVQuant packed caches (interface: kv_decode_kvquant.cuh),
// the CUDA-core build, KVQ_KV_DECODE=kvq-fast in lib/cuda/packed_cache.cpp (the default there
// is now the tensor-core build, kv_decode_kvquant_mma.cu: 1.09-1.46x faster than this one on
// the H100, notes/s5/results-h45.md; KVQ_KV_DECODE=general keeps the general kernel). The general kernel (kv_decode_packed.cu) served KVQuant at 0.20-0.23x the
// fp16 decode kernel on the H100 (docs/results.md, llama2-7b b1 32K/128K: 1300 / 3632 us):
// one 32-bit load per lane and row, a run-time format switch, 64-bit shifts and a 16-lane
// shuffle reduction per token and head, and a dependent global load chain per outlier record.
// This kernel: 434 us at 32K, 1396 us at 128K (0.51-0.60x fp16 MHA, 0.72-1.42x GQA; H100,
// notes/s5/results-h42.md), 2.6-3x the general kernel, still slower than fp16 at MHA (issue
// 4's goal, 3x fp16 at 4 bits, is not met). For head_dim 128, rotate-half RoPE, 2 or 4 bits
// on both sides, fp16 activations:
//  - Keys, 8 lanes per token, lane p holding channels 8p..8p+7 and their RoPE partners
//    64+8p..64+8p+7: the rotation needs no shuffle, the lane's codes are two aligned loads
//    (two 32-bit words at 4 bits, two 16-bit halves at 2 bits), and the kU = 4 tokens of
//    an iteration issue all their loads before any is used.
//  - Dense key value: fma(fma(lut[c], half_ch, mid_ch), qa, qb) exactly as the CPU codec
//    (lib/codecs/kvquant.cpp decode): LUT in shared memory (16 floats: distinct codes hit
//    distinct banks, no conflicts), the lane's 16 (half, mid) in registers, the Q-Norm FMA
//    compiled out when both sides are the identity (fma(x, 1, 0) == x).
//  - RoPE: the lane's 8 frequencies advance by the angle-addition recurrence per step of 16
//    tokens (4 fp32 ops per frequency), re-anchored from an angle reduced in double every 32
//    steps, as the general kernel (same error, <= 2^-17 relative, kv_packed_test.cpp's bound).
//  - Scores of GM heads: each lane's GM partial dots are reduce-scattered over the token's
//    8 lanes (GM = 8: 7 shuffles instead of 24; the lane ends with the sum of one head).
//  - Sparse outliers: the chunk's CSR offsets and records are staged once per pass in
//    shared memory (global fallback past 2 records per token on average), and a lane patches
//    the records that fall in its channels before RoPE (keys) or before the weights (values).
//    Sinks (positions < n_sink) are read from their fp16 rows.
//  - Values: CPT = 16 channels per lane (8 at GM = 8), x = fma(lut[c], half_t, mid_t) (+ Q-Norm),
//    then GM fp32 FMAs; per-chunk three passes (scores to shared memory, softmax, P V) and the
//    split-K combine of common.cuh, as the general kernel.
// Per key element (4 bits, G = 1), thread instructions: code extraction ~1.5, LDS 1, FMA 1,
// RoPE 2 + recurrence 2, dot 1, the rest (reduction, outlier check, addresses) ~1: ~9.5.
// Bytes per (token, kv head) at 4 bits: 64 + 64 codes, 4 value meta, 2 x 4 CSR offsets and
// 4 per record (KVQuant's ~1% per side): about 141 of fp16's 512.
// What bounds it (H100, notes/s5/results-h42.md): time is the same at 2 and 4 bits (434 / 435
// us at 32K b1), 360-465 GB/s, so bytes are not the limit. A build that staged the chunk's
// codes and value meta through cp.async into shared memory (chunks <= 448 tokens for 3
// blocks per SM, 052bdd0) was no faster: 392 us at 32K b1 but 10-18% slower at 64K/128K and
// at batch 8 (more blocks, each paying the per-block setup: 16 (half, mid) loads, 16 sincosf
// anchors, outlier staging, three barriers). At ~165 registers (3 blocks of 4 warps per SM)
// the estimated ~9.5 instructions per key element (~14 with the value pass) would take
// ~50 us per round of blocks at 32K b1 if issued at full rate; 544 blocks in two rounds took
// 434 us, so the warps mostly wait (an inference from counts, not a profile):
// the per-token chains (LUT LDS -> FMA -> RoPE -> 16 dependent FMAs of the dot -> 3 shuffles)
// and the outlier loop, whose trip count differs across a warp's 4 tokens (up to ~3 records
// at 1%, 16 selects each). Next: the tensor-core formulation of the issue (codes -> fp16
// pairs through a byte LUT, per-channel scale/offset as one HFMA2 per pair, RoPE folded into
// the query per 64-token stage plus a per-position (cos, sin) table, P V on mma as version 4)
// and outliers as a per-chunk sparse correction of the scores instead of per-lane patches.
#include "kernels/kv_decode_kvquant.cuh"

#include <algorithm>
#include <cmath>

#include "kernels/common.cuh"

namespace kvq::kern::kvquant_decode {
namespace {

constexpr int kT = 128;             // threads per block
constexpr int kW = kT / 32;         // warps
constexpr int kD = 128;             // head_dim served
constexpr int kU = 4;               // tokens per lane per loop iteration
constexpr int kMaxChunk = 2048;     // tokens per block
constexpr int kScoreFloats = 8192;  // chunk * GM cap (32 KB of scores)
constexpr int kAnchorEvery = 32;    // recurrence steps between exact (cos, sin)
constexpr int kKeyStep = kW * 4;    // tokens between a lane's consecutive keys

struct Plan {
  int chunk = 0, splits = 0;
};

int gm_of(int G) { return G == 1 ? 1 : G == 2 ? 2 : G <= 4 ? 4 : 8; }

// Four blocks per SM worth of work (several blocks per SM overlap one block's softmax with
// another's loads); chunks a multiple of 64 tokens.
Plan make_plan(int kv_heads, int rows, int gm, int max_len, int sm_count) {
  const int per_split = std::max(1, kv_heads * rows);
  const int want = std::max(1, (4 * std::max(sm_count, 1) + per_split - 1) / per_split);
  int chunk = (max_len + want - 1) / want;
  chunk = (chunk + 63) / 64 * 64;
  const int cap = std::min(kMaxChunk, kScoreFloats / gm / 64 * 64);
  chunk = std::max(64, std::min(chunk, cap));
  return {chunk, (max_len + chunk - 1) / chunk};
}

// Shared memory, in floats: scores [chunk][GM] (later the warps' partial outputs
// [kW][GM][kD]), query [GM][kD], two LUTs of 16, stats [8][2], CSR offsets [chunk + 4],
// records [2 chunk].
size_t score_floats(int gm, int chunk) { return std::max<size_t>(static_cast<size_t>(chunk) * gm, kW * gm * kD); }
size_t smem_bytes(int gm, int chunk) {
  return (score_floats(gm, chunk) + gm * kD + 32 + 16 + chunk + 4 + 2 * chunk) * 4;
}

__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// cos/sin of angle j * f, the angle reduced in double (as kv_decode_packed.cu).
__device__ __forceinline__ void anchor(double f, int64_t j, float& c, float& s) {
  const double two_pi = 6.283185307179586476925286766559;
  const double t = static_cast<double>(j) * f;
  const double r = t - rint(t / two_pi) * two_pi;
  sincosf(static_cast<float>(r), &s, &c);
}

// One halving step of the reduce-scatter over a token's 8 lanes: N partial sums -> N/2,
// lanes with bit O set keeping the upper half.
template <int N, int O>
__device__ __forceinline__ void split_stage(float (&v)[8], int lane) {
  const bool up = (lane & O) != 0;
#pragma unroll
  for (int i = 0; i < N / 2; ++i) {
    const float send = up ? v[i] : v[i + N / 2];
    const float keep = up ? v[i + N / 2] : v[i];
    v[i] = keep + __shfl_xor_sync(0xffffffffu, send, O);
  }
}

// v[0..GM): this lane's partial dots of GM heads; returns the sum over lanes lane ^ {0..7}
// of head head_of<GM>(lane).
template <int GM>
__device__ __forceinline__ float reduce8(float (&v)[8], int lane) {
  if constexpr (GM == 8) {
    split_stage<8, 4>(v, lane);
    split_stage<4, 2>(v, lane);
    split_stage<2, 1>(v, lane);
  } else if constexpr (GM == 4) {
    split_stage<4, 4>(v, lane);
    split_stage<2, 2>(v, lane);
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], 1);
  } else if constexpr (GM == 2) {
    split_stage<2, 4>(v, lane);
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], 2);
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], 1);
  } else {
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], 4);
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], 2);
    v[0] += __shfl_xor_sync(0xffffffffu, v[0], 1);
  }
  return v[0];
}
template <int GM>
__device__ __forceinline__ int head_of(int lane) {
  if constexpr (GM == 8) return lane & 7;
  if constexpr (GM == 4) return ((lane & 4) ? 2 : 0) + ((lane & 2) ? 1 : 0);
  if constexpr (GM == 2) return (lane & 4) ? 1 : 0;
  return 0;
}
// Whether this lane stores its head's sum (one lane per head and token).
template <int GM>
__device__ __forceinline__ bool writer(int lane) {
  if constexpr (GM == 8) return true;
  if constexpr (GM == 4) return (lane & 1) == 0;
  if constexpr (GM == 2) return (lane & 3) == 0;
  return (lane & 7) == 0;
}

// Stages the CSR offsets of tokens [begin, begin + cnt] of one side, relative to the first
// (soff[i] = off[begin + i] - off[begin]), and their records when they fit `cap`, into
// shared memory; returns the records to index with soff (staged, or global past the cap).
// Ends with a block barrier.
__device__ const kvlayout::Outlier* stage_outliers(const PackedSide& P, int64_t sh, int begin, int cnt,
                                                   uint32_t* soff, kvlayout::Outlier* srec, int cap) {
  const uint32_t* off = P.off + sh * (static_cast<int64_t>(P.max_tokens) + 1) + begin;
  const uint32_t o0 = off[0];
  const uint32_t n = off[cnt] - o0;
  for (int i = threadIdx.x; i <= cnt; i += kT) soff[i] = off[i] - o0;
  const kvlayout::Outlier* g = P.rec + sh * P.out_cap + o0;
  const bool fit = n <= static_cast<uint32_t>(cap);
  if (fit)
    for (uint32_t i = threadIdx.x; i < n; i += kT) srec[i] = g[i];
  __syncthreads();
  return fit ? srec : g;
}

// x[k] = v for the one k == e (registers stay registers: no run-time index into x).
template <int N>
__device__ __forceinline__ void put_at(float (&x)[N], int e, float v) {
#pragma unroll
  for (int k = 0; k < N; ++k)
    if (k == e) x[k] = v;
}

template <int BITS>
__device__ __forceinline__ uint32_t code_at(uint64_t bits, int e) {
  return static_cast<uint32_t>(bits >> (BITS * e)) & ((1u << BITS) - 1u);
}

template <int BITS, int GM, bool QN>
__global__ void __launch_bounds__(kT, 3)
kvquant_kernel(PackedSide K, PackedSide V, PackedDecodeArgs a, int chunk, int splits, float* part_o,
               float* part_ml) {
  extern __shared__ __align__(16) float sm[];
  const int G = a.n_heads / K.kv_heads;
  float* sc = sm;                                              // [chunk][GM]
  float* qs = sc + max(chunk * GM, kW * GM * kD);              // [GM][kD]
  float* klut = qs + GM * kD;                                  // [16]
  float* vlut = klut + 16;                                     // [16]
  float* stat = vlut + 16;                                     // [8][2]
  uint32_t* soff = reinterpret_cast<uint32_t*>(stat + 16);     // [chunk + 1]
  kvlayout::Outlier* srec = reinterpret_cast<kvlayout::Outlier*>(soff + chunk + 4);  // [2 chunk]

  const int s = blockIdx.x, kvh = blockIdx.y, r = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int len = a.len[r];
  const int begin = s * chunk;
  const int end = min(len, begin + chunk);
  const int64_t head0 = static_cast<int64_t>(r) * a.n_heads + kvh * G;
  if (begin >= end) {
    for (int i = threadIdx.x; i < G * kD; i += kT) part_o[((head0 + i / kD) * splits + s) * kD + i % kD] = 0.f;
    if (threadIdx.x < G) {
      part_ml[((head0 + threadIdx.x) * splits + s) * 2] = -INFINITY;
      part_ml[((head0 + threadIdx.x) * splits + s) * 2 + 1] = 0.f;
    }
    return;
  }
  const int cnt = end - begin;
  if (threadIdx.x < (1 << BITS)) {
    klut[threadIdx.x] = K.lut[threadIdx.x];
    vlut[threadIdx.x] = V.lut[threadIdx.x];
  }
  const __half* q = static_cast<const __half*>(a.q) + head0 * kD;
  for (int i = threadIdx.x; i < GM * kD; i += kT) qs[i] = i < G * kD ? __half2float(q[i]) : 0.f;
  const int slot = a.slot[r];
  const int64_t sh = static_cast<int64_t>(slot) * K.kv_heads + kvh;
  const kvlayout::Outlier* krec = nullptr;
  if (K.outliers)
    krec = stage_outliers(K, sh, begin, cnt, soff, srec, 2 * chunk);
  else
    __syncthreads();

  // ---- Pass 1: scores. Lane (lr, p): token lr of the warp's 4, channels 8p.. and 64+8p.. ----
  {
    const int p = lane & 7, lr = lane >> 3;
    const int64_t cb = static_cast<int64_t>(slot) * K.range_stride + kvh * kD;
    float kh[16], km[16];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      kh[e] = K.khalf[cb + 8 * p + e];
      km[e] = K.kmid[cb + 8 * p + e];
      kh[8 + e] = K.khalf[cb + 64 + 8 * p + e];
      km[8 + e] = K.kmid[cb + 64 + 8 * p + e];
    }
    float qr[GM <= 2 ? GM : 1][16];
    if constexpr (GM <= 2) {
#pragma unroll
      for (int g = 0; g < GM; ++g)
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          qr[g][e] = qs[g * kD + 8 * p + e];
          qr[g][8 + e] = qs[g * kD + 64 + 8 * p + e];
        }
    }
    float rc[8], rs[8], dc[8], ds[8];
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      anchor(a.inv_freq[8 * p + e], kKeyStep, dc[e], ds[e]);
      rc[e] = 1.f;
      rs[e] = 0.f;
    }
    const uint32_t* kcodes = K.codes + sh * K.max_tokens * K.wpr;
    const int hidx = head_of<GM>(lane);
    const bool wr = writer<GM>(lane) && hidx < G;
    int step = 0;
    for (int base = begin; base < end; base += kU * kKeyStep) {
      uint64_t wb[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int j = base + u * kKeyStep + warp * 4 + lr;
        wb[u] = 0;
        if (j < end && j >= K.n_sink) {
          if constexpr (BITS == 4) {
            const uint32_t* row = kcodes + static_cast<int64_t>(j) * 16;
            wb[u] = static_cast<uint64_t>(__ldg(row + p)) | (static_cast<uint64_t>(__ldg(row + 8 + p)) << 32);
          } else {
            const uint16_t* row = reinterpret_cast<const uint16_t*>(kcodes + static_cast<int64_t>(j) * 8);
            wb[u] = static_cast<uint64_t>(__ldg(row + p)) | (static_cast<uint64_t>(__ldg(row + 8 + p)) << 32);
          }
        }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (base + u * kKeyStep + warp * 4 >= end) break;  // warp-uniform: later tokens too
        const int j = base + u * kKeyStep + warp * 4 + lr;
        float x[16];
        if (j < K.n_sink) {
          const uint4 lo = *reinterpret_cast<const uint4*>(K.sink + (sh * K.n_sink + j) * kD + 8 * p);
          const uint4 hi = *reinterpret_cast<const uint4*>(K.sink + (sh * K.n_sink + j) * kD + 64 + 8 * p);
          const __half* el = reinterpret_cast<const __half*>(&lo);
          const __half* eh = reinterpret_cast<const __half*>(&hi);
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            x[e] = __half2float(el[e]);
            x[8 + e] = __half2float(eh[e]);
          }
        } else {
          const uint32_t wlo = static_cast<uint32_t>(wb[u]), whi = static_cast<uint32_t>(wb[u] >> 32);
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            x[e] = fmaf(klut[(wlo >> (BITS * e)) & ((1u << BITS) - 1u)], kh[e], km[e]);
            x[8 + e] = fmaf(klut[(whi >> (BITS * e)) & ((1u << BITS) - 1u)], kh[8 + e], km[8 + e]);
          }
          if constexpr (QN) {
#pragma unroll
            for (int e = 0; e < 16; ++e) x[e] = fmaf(x[e], K.qa, K.qb);
          }
          if (K.outliers && j < end) {
            const uint32_t r0 = soff[j - begin], r1 = soff[j - begin + 1];
            for (uint32_t rr = r0; rr < r1; ++rr) {
              const kvlayout::Outlier o = krec[rr];
              const int i = static_cast<int>(o.index) - kvh * kD;
              if (((i & 63) >> 3) == p) put_at<16>(x, (i & 7) + (i >= 64 ? 8 : 0), h2f(o.value));
            }
          }
        }
        // RoPE at position j.
        if (step % kAnchorEvery == 0) {
#pragma unroll
          for (int e = 0; e < 8; ++e) anchor(a.inv_freq[8 * p + e], j, rc[e], rs[e]);
        } else {
#pragma unroll
          for (int e = 0; e < 8; ++e) {
            const float c = fmaf(rc[e], dc[e], -rs[e] * ds[e]);
            rs[e] = fmaf(rs[e], dc[e], rc[e] * ds[e]);
            rc[e] = c;
          }
        }
        ++step;
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float x0 = x[e], x1 = x[8 + e];
          x[e] = fmaf(x0, rc[e], -x1 * rs[e]);
          x[8 + e] = fmaf(x1, rc[e], x0 * rs[e]);
        }
        float v[8];
#pragma unroll
        for (int g = 0; g < GM; ++g) {
          float dot = 0.f;
          if constexpr (GM <= 2) {
#pragma unroll
            for (int e = 0; e < 16; ++e) dot = fmaf(qr[g][e], x[e], dot);
          } else {
            const float4* qlo = reinterpret_cast<const float4*>(qs + g * kD + 8 * p);
            const float4* qhi = reinterpret_cast<const float4*>(qs + g * kD + 64 + 8 * p);
#pragma unroll
            for (int h = 0; h < 2; ++h) {
              const float4 a4 = qlo[h], b4 = qhi[h];
              dot = fmaf(a4.x, x[4 * h], dot);
              dot = fmaf(a4.y, x[4 * h + 1], dot);
              dot = fmaf(a4.z, x[4 * h + 2], dot);
              dot = fmaf(a4.w, x[4 * h + 3], dot);
              dot = fmaf(b4.x, x[8 + 4 * h], dot);
              dot = fmaf(b4.y, x[8 + 4 * h + 1], dot);
              dot = fmaf(b4.z, x[8 + 4 * h + 2], dot);
              dot = fmaf(b4.w, x[8 + 4 * h + 3], dot);
            }
          }
          v[g] = dot;
        }
        const float sum = reduce8<GM>(v, lane);
        if (wr && j < end) sc[(j - begin) * GM + hidx] = sum * a.scale;
      }
    }
  }
  __syncthreads();

  // ---- Pass 2: p = exp(s - max) per query head, and the chunk's sum. ----
  for (int g = warp; g < G; g += kW) {
    float m = -INFINITY;
    for (int i = lane; i < cnt; i += 32) m = fmaxf(m, sc[i * GM + g]);
    m = warp_max(m);
    float sum = 0.f;
    for (int i = lane; i < cnt; i += 32) {
      const float pe = expf(sc[i * GM + g] - m);
      sc[i * GM + g] = pe;
      sum += pe;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      stat[2 * g] = m;
      stat[2 * g + 1] = sum;
    }
  }
  const kvlayout::Outlier* vrec = nullptr;
  if (V.outliers)
    vrec = stage_outliers(V, sh, begin, cnt, soff, srec, 2 * chunk);
  else
    __syncthreads();

  // ---- Pass 3: P V. Lane (lt, pv): token lt of the warp's TPW, channels cv .. cv + CPT. ----
  {
    constexpr int CPT = GM == 8 ? 8 : 16;
    constexpr int LPV = kD / CPT;    // lanes per token
    constexpr int TPW = 32 / LPV;    // tokens per warp
    constexpr int TSTEP = kW * TPW;  // tokens per block step
    const int pv = lane % LPV, lt = lane / LPV;
    const int cv = pv * CPT;
    float acc[GM][CPT];
#pragma unroll
    for (int g = 0; g < GM; ++g)
#pragma unroll
      for (int e = 0; e < CPT; ++e) acc[g][e] = 0.f;
    const uint32_t* vcodes = V.codes + sh * V.max_tokens * V.wpr;
    const uint32_t* vmeta = reinterpret_cast<const uint32_t*>(V.meta) + sh * V.max_tokens;  // (mid, half)
    for (int base = begin; base < end; base += kU * TSTEP) {
      uint64_t wb[kU];
      uint32_t mv[kU];
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        const int j = base + u * TSTEP + warp * TPW + lt;
        wb[u] = 0;
        mv[u] = 0;
        if (j < end && j >= V.n_sink) {
          const uint32_t* row = vcodes + static_cast<int64_t>(j) * (4 * BITS);
          if constexpr (CPT * BITS == 64) {
            const uint2 w = __ldg(reinterpret_cast<const uint2*>(row) + pv);
            wb[u] = static_cast<uint64_t>(w.x) | (static_cast<uint64_t>(w.y) << 32);
          } else if constexpr (CPT * BITS == 32) {
            wb[u] = __ldg(row + pv);
          } else {
            wb[u] = __ldg(reinterpret_cast<const uint16_t*>(row) + pv);
          }
          mv[u] = __ldg(vmeta + j);
        }
      }
#pragma unroll
      for (int u = 0; u < kU; ++u) {
        if (base + u * TSTEP + warp * TPW >= end) break;  // warp-uniform
        const int j = base + u * TSTEP + warp * TPW + lt;
        if (j >= end) continue;
        float x[CPT];
        if (j < V.n_sink) {
          const uint16_t* src = V.sink + (sh * V.n_sink + j) * kD + cv;
#pragma unroll
          for (int h = 0; h < CPT / 8; ++h) {
            const uint4 raw = *reinterpret_cast<const uint4*>(src + 8 * h);
            const __half* el = reinterpret_cast<const __half*>(&raw);
#pragma unroll
            for (int e = 0; e < 8; ++e) x[8 * h + e] = __half2float(el[e]);
          }
        } else {
          const float mid = h2f(static_cast<uint16_t>(mv[u] & 0xFFFFu));
          const float half = h2f(static_cast<uint16_t>(mv[u] >> 16));
#pragma unroll
          for (int e = 0; e < CPT; ++e) x[e] = fmaf(vlut[code_at<BITS>(wb[u], e)], half, mid);
          if constexpr (QN) {
#pragma unroll
            for (int e = 0; e < CPT; ++e) x[e] = fmaf(x[e], V.qa, V.qb);
          }
          if (V.outliers) {
            const uint32_t r0 = soff[j - begin], r1 = soff[j - begin + 1];
            for (uint32_t rr = r0; rr < r1; ++rr) {
              const kvlayout::Outlier o = vrec[rr];
              const int i = static_cast<int>(o.index) - kvh * kD - cv;
              if (i >= 0 && i < CPT) put_at<CPT>(x, i, h2f(o.value));
            }
          }
        }
        float pw[GM];
        const float* ps = sc + (j - begin) * GM;
        if constexpr (GM == 1) {
          pw[0] = ps[0];
        } else if constexpr (GM == 2) {
          const float2 t = *reinterpret_cast<const float2*>(ps);
          pw[0] = t.x;
          pw[1] = t.y;
        } else {
#pragma unroll
          for (int g = 0; g < GM; g += 4) {
            const float4 t = *reinterpret_cast<const float4*>(ps + g);
            pw[g] = t.x;
            pw[g + 1] = t.y;
            pw[g + 2] = t.z;
            pw[g + 3] = t.w;
          }
        }
#pragma unroll
        for (int g = 0; g < GM; ++g)
#pragma unroll
          for (int e = 0; e < CPT; ++e) acc[g][e] = fmaf(pw[g], x[e], acc[g][e]);
      }
    }
#pragma unroll
    for (int g = 0; g < GM; ++g)
#pragma unroll
      for (int e = 0; e < CPT; ++e)
#pragma unroll
        for (int o = LPV; o < 32; o <<= 1) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
    __syncthreads();  // every warp is done with the weights: sc becomes red
    float* red = sc;  // [kW][GM][kD]
    if (lt == 0) {
#pragma unroll
      for (int g = 0; g < GM; ++g)
        if (g < G)
#pragma unroll
          for (int e = 0; e < CPT; ++e) red[(warp * GM + g) * kD + cv + e] = acc[g][e];
    }
    __syncthreads();
    for (int i = threadIdx.x; i < G * kD; i += kT) {
      const int g = i / kD, d = i % kD;
      float o = 0.f;
#pragma unroll
      for (int w2 = 0; w2 < kW; ++w2) o += red[(w2 * GM + g) * kD + d];
      part_o[((head0 + g) * splits + s) * kD + d] = o;
    }
    if (threadIdx.x < G) {
      part_ml[((head0 + threadIdx.x) * splits + s) * 2] = stat[2 * threadIdx.x];
      part_ml[((head0 + threadIdx.x) * splits + s) * 2 + 1] = stat[2 * threadIdx.x + 1];
    }
  }
}

template <int BITS, int GM, bool QN>
cudaError_t launch(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, const Plan& p,
                   float* part_o, float* part_ml, cudaStream_t stream) {
  const size_t smem = smem_bytes(GM, p.chunk);
  cudaError_t e = cudaFuncSetAttribute(kvquant_kernel<BITS, GM, QN>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  kvquant_kernel<BITS, GM, QN><<<dim3(p.splits, k.kv_heads, a.rows), kT, smem, stream>>>(k, v, a, p.chunk, p.splits,
                                                                                         part_o, part_ml);
  if ((e = launch_status()) != cudaSuccess) return e;
  splitk_combine_kernel<__half><<<dim3(a.n_heads, a.rows), 128, 0, stream>>>(
      part_o, part_ml, static_cast<__half*>(a.out), a.n_heads, kD, p.splits);
  return launch_status();
}

template <int BITS, bool QN>
cudaError_t dispatch_gm(int gm, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, const Plan& p,
                        float* o, float* ml, cudaStream_t stream) {
  switch (gm) {
    case 1: return launch<BITS, 1, QN>(k, v, a, p, o, ml, stream);
    case 2: return launch<BITS, 2, QN>(k, v, a, p, o, ml, stream);
    case 4: return launch<BITS, 4, QN>(k, v, a, p, o, ml, stream);
    case 8: return launch<BITS, 8, QN>(k, v, a, p, o, ml, stream);
  }
  return cudaErrorInvalidValue;
}

}  // namespace

bool fits(Act act, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a) {
  if (act != Act::kF16 || k.format != KvFormat::kLutChannel || v.format != KvFormat::kLutToken) return false;
  if (k.bits != v.bits || (k.bits != 2 && k.bits != 4)) return false;
  if (k.head_dim != kD || v.head_dim != kD || k.kv_heads != v.kv_heads || k.kv_heads <= 0) return false;
  if (!a.inv_freq || a.rope_interleaved || a.n_heads % k.kv_heads != 0) return false;
  const int G = a.n_heads / k.kv_heads;
  if (G < 1 || G > 8) return false;
  if (!k.lut || !v.lut || !k.kmid || !k.khalf || v.mpr != 2 || !v.meta) return false;
  if (k.wpr != 4 * k.bits || v.wpr != 4 * v.bits || k.resid_cap > 0 || v.resid_cap > 0) return false;
  if ((k.outliers && (!k.off || !k.rec)) || (v.outliers && (!v.off || !v.rec))) return false;
  return !k.inv_s && !v.inv_s;
}

size_t workspace(const PackedSide& k, const PackedDecodeArgs& a, int max_len, int sm_count) {
  if (k.kv_heads <= 0 || a.rows <= 0 || max_len <= 0 || a.n_heads % k.kv_heads != 0) return 0;
  const Plan p = make_plan(k.kv_heads, a.rows, gm_of(a.n_heads / k.kv_heads), max_len, sm_count);
  return static_cast<size_t>(a.rows) * a.n_heads * p.splits * (kD + 2) * sizeof(float);
}

cudaError_t run(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len, int sm_count,
                void* ws, size_t ws_bytes, cudaStream_t stream) {
  if (!fits(Act::kF16, k, v, a)) return cudaErrorInvalidValue;
  if (a.rows == 0) return cudaSuccess;
  if (max_len <= 0 || ws_bytes < workspace(k, a, max_len, sm_count)) return cudaErrorInvalidValue;
  const int gm = gm_of(a.n_heads / k.kv_heads);
  const Plan p = make_plan(k.kv_heads, a.rows, gm, max_len, sm_count);
  float* part_o = static_cast<float*>(ws);
  float* part_ml = part_o + static_cast<size_t>(a.rows) * a.n_heads * p.splits * kD;
  const bool qn = k.qa != 1.f || k.qb != 0.f || v.qa != 1.f || v.qb != 0.f;
  if (k.bits == 4)
    return qn ? dispatch_gm<4, true>(gm, k, v, a, p, part_o, part_ml, stream)
              : dispatch_gm<4, false>(gm, k, v, a, p, part_o, part_ml, stream);
  return qn ? dispatch_gm<2, true>(gm, k, v, a, p, part_o, part_ml, stream)
            : dispatch_gm<2, false>(gm, k, v, a, p, part_o, part_ml, stream);
}

}  // namespace kvq::kern::kvquant_decode
