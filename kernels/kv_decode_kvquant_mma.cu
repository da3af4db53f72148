// KVQuant decode on the tensor cores (interface: kv_decode_kvquant.cuh, run_mma), the default
// of lib/cuda/packed_cache.cpp where it fits (it replaced h42's CUDA-core kernel, retired
// after dfabb0b, notes/kv-cuda-perf.md). H100, 2026-11-23 (notes/s5/results-h45.md, run 2 = this code,
// OPT 2): passed the [kvquant] cases (worst 0.01 of the bound below) and "kv packed: KVQuant*",
// and ran 1.11-1.49x faster than the CUDA-core kernel in every cell of one process (llama2-7b
// b1 32K 4 bits 432.6 -> 323.4 us, 0.80x fp16; llama3-8b b1 32K 149.4 us, 1.51x fp16): faster,
// but still below fp16 at MHA (0.70-0.84x), 5-21% of copy bandwidth, 2 bits only 3-5% faster
// than 4 (not bytes); issue 4's 1.7x / 3x is not met. Same cases as that kernel
// (fits(): head_dim 128, rotate-half RoPE, 2/4 bits both sides, fp16, G <= 8), same split-K
// partials and combine, same three passes per chunk (scores to shared memory, softmax, P V).
// Why: the CUDA-core kernel spends ~9.5 instructions per key element (+1 FMA per element and
// query head for the dot, +3 shuffles per token) in long dependent chains at 12 warps per SM,
// and its time is the same at 2 and 4 bits (notes/s5/results-h42.md): latency and issue, not
// bytes. Here the dots and P V run on mma.sync m16n8k16 and every lane's work per token is a
// set of independent pairs:
//  - Keys as B fragments (k = channel slots, n = 8 tokens): slot pair (2 t4, 2 t4 + 1) of
//    k-tile kt holds channels (i, i + 64) with i = 16 t4 + 2 kt, slots (2 t4 + 8, 2 t4 + 9)
//    the pair i + 1, so the rotate-half partners sit in one register and RoPE is lane-local;
//    a lane's 32 channels of its token are two aligned loads (two uint2 at 4 bits, two words
//    at 2 bits). The query (A, rows = the G heads) uses the same slot order.
//  - RoPE split as R(j0 + u) = R(j0) R(u): per 64-token stage the lane rotates its head's 16
//    query pairs by R(j0)^T (fp32, (cos, sin)(j0 f) from a per-block table of angles reduced
//    in double) and rounds them to fp16 once; each key pair is rotated by R(u) (u = offset in
//    the stage) in fp32 from a per-block table of (cos, sin)(u f) (16 anchors + 15 recurrence
//    steps each) and rounded to fp16 for the mma.
//  - Dense key value fma(lut[c], half_ch, mid_ch) (+ Q-Norm) in fp32 exactly as the CPU codec
//    (LUT of 16 floats in shared memory; the channel's (half, mid) pairs in shared memory,
//    laid out by slot so that a warp's 128-bit loads hit distinct banks).
//  - Outliers and sinks as corrections after the dense pass, in fp32: a thread per token adds
//    scale (R_j^T q)_c (k_out - k_dense) per key record (cos, sin of j f reduced in double) and
//    p_jg (v_out - v_dense) per value record (shared-memory atomics into a [G][128] buffer);
//    a sink token's score is recomputed from its fp16 row (a warp per token and head) and its
//    value row enters as p v, its dense value as 0.
//  - Values as A fragments (m = channels, k = 16 tokens): lane (gid, t4) holds channels
//    16 gid + 2 mt (+1) of tokens 2 t4, 2 t4 + 1, 2 t4 + 8, 2 t4 + 9, one aligned load per
//    token; v = fma(lut[c], half_t, mid_t) in fp32 rounded to fp16; B = softmax weights p in
//    fp16 (n = heads).
// Error (bound stated and checked in tests/gpu/kv_kvquant_test.cpp, mma cases): the fp16
// roundings of R(j0)^T q and R(u) k (2^-11 relative each) on top of the CUDA-core kernel's
// terms, bounded per rotate-half pair by (|q_i| + |q_p|)(|k_i| + |k_p|) since rotations keep
// the pair's norm; values: v and p rounded to fp16 (2^-11 relative each).
#include "kernels/kv_decode_kvquant.cuh"

#include <algorithm>
#include <cmath>
#include <cstdlib>

#include "kernels/common.cuh"
#include "kernels/decode_chunk.cuh"
#include "kernels/kv_decode_kvquant_common.cuh"
#include "kernels/kv_decode_mma_common.cuh"

namespace kvq::kern::kvquant_decode {
namespace {

using mma_decode::mma16816;
using mma_decode::pack_h2;

constexpr int kMaxChunk = 2048;
constexpr int kScoreFloats = 8192;  // chunk * GM cap, and kW * GM * kD at GM = 8

struct Plan {
  int chunk = 0, splits = 0;
};

Plan make_plan(int kv_heads, int rows, int gm, int max_len, int sm_count) {
  const int per_split = std::max(1, kv_heads * rows);
  const int want = std::max(1, (4 * std::max(sm_count, 1) + per_split - 1) / per_split);
  int chunk = (max_len + want - 1) / want;
  chunk = (chunk + kS - 1) / kS * kS;
  const int cap = std::min(kMaxChunk, kScoreFloats / gm / kS * kS);
  chunk = std::max(kS, std::min(chunk, cap));
  return {chunk, (max_len + chunk - 1) / chunk};
}

// Shared memory in bytes: (cos, sin)(u f) [kS][kUS] float2, stage anchors [chunk / kS][64]
// float2, scores / partial outputs, query [GM][kD], key (half, mid) [64] float4, two LUTs,
// stats [8][2], value corrections [GM][kD].
size_t score_floats(int gm, int chunk) { return std::max<size_t>(static_cast<size_t>(chunk) * gm, kW * gm * kD); }
size_t smem_bytes(int gm, int chunk) {
  return static_cast<size_t>(kS) * kUS * 8 + static_cast<size_t>(chunk / kS) * 64 * 8 +
         (score_floats(gm, chunk) + gm * kD + 64 * 4 + 32 + 16 + gm * kD) * 4;
}

// OPT >= 1: the chunk's CSR offsets (relative to the first) and, when they fit `cap`, its
// records are staged into shared memory by the whole block (coalesced, one round trip), as
// the retired CUDA-core kernel did; returns the records to index with soff (staged or global). The
// caller puts a barrier after it. OPT 0 (225b925, the first H100 run) read off[j], off[j + 1]
// and each record from global memory in a thread's per-token loop: ~3 dependent global loads
// per outlier token.
__device__ const kvlayout::Outlier* stage_csr(const PackedSide& P, int64_t sh, int begin, int cnt, uint32_t* soff,
                                              kvlayout::Outlier* srec, int cap) {
  const uint32_t* off = P.off + sh * (static_cast<int64_t>(P.max_tokens) + 1) + begin;
  const uint32_t o0 = off[0];
  const uint32_t n = off[cnt] - o0;
  for (int i = threadIdx.x; i <= cnt; i += kT) soff[i] = off[i] - o0;
  const kvlayout::Outlier* g = P.rec + sh * P.out_cap + o0;
  const bool fit = n <= static_cast<uint32_t>(cap);
  if (fit)
    for (uint32_t i = threadIdx.x; i < n; i += kT) srec[i] = g[i];
  return fit ? srec : g;
}

template <int BITS, int GM, bool QN, int OPT>
__global__ void __launch_bounds__(kT, 2)
kvquant_mma_kernel(PackedSide K, PackedSide V, PackedDecodeArgs a, int chunk, int splits, float* part_o,
                   float* part_ml) {
  extern __shared__ __align__(16) float sm[];
  const int G = a.n_heads / K.kv_heads;
  float2* ut = reinterpret_cast<float2*>(sm);                 // [kS][kUS]
  float2* st0 = ut + kS * kUS;                                // [chunk / kS][64]
  float* sc = reinterpret_cast<float*>(st0 + (chunk / kS) * 64);  // [chunk][GM], later [kW][GM][kD]
  float* qs = sc + max(chunk * GM, kW * GM * kD);             // [GM][kD]
  float4* khm = reinterpret_cast<float4*>(qs + GM * kD);      // [64] by pair_slot
  float* klut = reinterpret_cast<float*>(khm + 64);           // [16]
  float* vlut = klut + 16;                                    // [16]
  float* stat = vlut + 16;                                    // [8][2]
  float* corr = stat + 16;                                    // [GM][kD]

  const int s = blockIdx.x, kvh = blockIdx.y, r = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gid = lane >> 2, t4 = lane & 3;
  const int len = a.len[r];
  const int begin = s * chunk;
  const int end = min(len, begin + chunk);
  const int64_t head0 = static_cast<int64_t>(r) * a.n_heads + kvh * G;
  if (begin >= end) {
    store_empty_split<kT>(G, kD, head0, splits, s, part_o, part_ml);
    return;
  }
  const int cnt = end - begin;
  const int nst = (cnt + kS - 1) / kS;
  const int slot = a.slot[r];
  const int64_t sh = static_cast<int64_t>(slot) * K.kv_heads + kvh;
  const int64_t cb = static_cast<int64_t>(slot) * K.range_stride + kvh * kD;

  // ---- Setup: LUTs, query, key (half, mid), (cos, sin) tables, corrections zeroed ----
  setup_luts_query<BITS, GM>(K, V, a, head0, G, klut, vlut, qs);
  for (int i = threadIdx.x; i < GM * kD; i += kT) corr[i] = 0.f;
  setup_key_tables(K, a, cb, khm, ut);
  for (int idx = threadIdx.x; idx < nst * 64; idx += kT) {
    float c, sn;
    anchor(a.inv_freq[idx & 63], begin + (idx >> 6) * kS, c, sn);
    st0[idx] = make_float2(c, sn);
  }
  __syncthreads();

  // ---- Pass 1: dense scores on the tensor cores, a warp per 64-token stage ----
  {
    const uint32_t* kcodes = K.codes + sh * K.max_tokens * K.wpr;
    const bool hv = gid < G;
    const float* qh = qs + (hv ? gid : 0) * kD;
    for (int st = warp; st < nst; st += kW) {
      // The stage's 8 n-tiles of codes in flight before anything else.
      uint32_t kw[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) load_key_codes<BITS>(kcodes, min(begin + st * kS + nt * 8 + gid, end - 1), t4, kw[nt]);
      // Query of head gid rotated by R(j0)^T, fp16 A fragments (rows >= G zero).
      uint32_t qa0[8], qa2[8];
      rotate_query(qh, hv, t4, [&](int kt, int e) { return st0[st * 64 + 16 * t4 + 2 * kt + e]; }, qa0, qa2);
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) {
        if (st * kS + nt * 8 >= cnt) break;  // warp-uniform
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
        key_tile<BITS, QN>(kw[nt], ut + (nt * 8 + gid) * kUS + t4, khm, klut, K.qa, K.qb, t4, qa0, qa2, acc);
        const int tok = st * kS + nt * 8 + 2 * t4;
        if (hv) {
          if (tok < cnt) sc[tok * GM + gid] = acc[0] * a.scale;
          if (tok + 1 < cnt) sc[(tok + 1) * GM + gid] = acc[1] * a.scale;
        }
      }
    }
  }
  __syncthreads();

  // ---- Pass 1b: sinks recomputed, key outliers added (fp32) ----
  // OPT >= 1: CSR staged in the (cos, sin) table's space, dead after pass 1.
  uint32_t* soff = reinterpret_cast<uint32_t*>(ut);                                   // [chunk + 1]
  kvlayout::Outlier* srec = reinterpret_cast<kvlayout::Outlier*>(soff + chunk + 4);  // [2 chunk]
  const kvlayout::Outlier* krec = nullptr;
  if constexpr (OPT >= 1) {
    if (K.outliers) {
      krec = stage_csr(K, sh, begin, cnt, soff, srec, 2 * chunk);
      __syncthreads();
    }
  }
  {
    sink_scores<GM>(K, a, sh, begin, end, G, qs, sc, warp, lane);
    if (K.outliers) {
      const uint32_t* off = K.off + sh * (static_cast<int64_t>(K.max_tokens) + 1);
      const kvlayout::Outlier* rec = OPT >= 1 ? krec : K.rec + sh * K.out_cap;
      const uint32_t* kcodes = K.codes + sh * K.max_tokens * K.wpr;
      for (int j = max(begin, K.n_sink) + static_cast<int>(threadIdx.x); j < end; j += kT) {
        const uint32_t r0 = OPT >= 1 ? soff[j - begin] : off[j], r1 = OPT >= 1 ? soff[j - begin + 1] : off[j + 1];
        for (uint32_t rr = r0; rr < r1; ++rr) {
          const kvlayout::Outlier o = rec[rr];
          const int i = static_cast<int>(o.index) - kvh * kD;
          const uint32_t w = kcodes[static_cast<int64_t>(j) * K.wpr + i / (32 / BITS)];
          const uint32_t code = (w >> (BITS * (i % (32 / BITS)))) & ((1u << BITS) - 1u);
          float kh, km;
          if constexpr (OPT >= 1) {
            const float4 hm = khm[pair_slot(i & 63)];
            kh = i < 64 ? hm.x : hm.y;
            km = i < 64 ? hm.z : hm.w;
          } else {
            kh = K.khalf[cb + i];
            km = K.kmid[cb + i];
          }
          float kd = fmaf(klut[code], kh, km);
          if constexpr (QN) kd = fmaf(kd, K.qa, K.qb);
          const float delta = h2f(o.value) - kd;
          const int ip = i & 63;
          float c, sn;
          anchor(a.inv_freq[ip], j, c, sn);
          for (int g = 0; g < G; ++g) {
            const float qi = qs[g * kD + ip], qp = qs[g * kD + ip + 64];
            const float qr = i < 64 ? fmaf(qi, c, qp * sn) : fmaf(qp, c, -qi * sn);
            sc[(j - begin) * GM + g] += a.scale * qr * delta;
          }
        }
      }
    }
  }
  __syncthreads();

  // ---- Pass 2: p = exp(s - max) per query head, and the chunk's sum ----
  // OPT >= 1: the value CSR staged meanwhile (the key records are dead after the barrier above).
  const kvlayout::Outlier* vrec = nullptr;
  if constexpr (OPT >= 1)
    if (V.outliers) vrec = stage_csr(V, sh, begin, cnt, soff, srec, 2 * chunk);
  chunk_softmax<kW, false>(sc, 1, cnt, G, warp, lane, stat, GM);
  __syncthreads();

  // ---- Pass 3: P V on the tensor cores, a warp per 16-token k-tile; then corrections ----
  {
    float acc[8][4];
#pragma unroll
    for (int mt = 0; mt < 8; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][e] = 0.f;
    const uint32_t* vcodes = V.codes + sh * V.max_tokens * V.wpr;
    const uint32_t* vmeta = reinterpret_cast<const uint32_t*>(V.meta) + sh * V.max_tokens;
    const int ntile = (cnt + 15) / 16;
    // Tokens 2 t4, 2 t4 + 1, 2 t4 + 8, 2 t4 + 9 of a tile; channels 16 gid .. 16 gid + 15.
    // OPT 2: the next tile's codes and meta are loaded before this tile's math.
    uint32_t nw[4][2], nmv[4];
    auto load_tile = [&](int kt16) {
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int tt = min(kt16 * 16 + 2 * t4 + (x & 1) + 8 * (x >> 1), cnt - 1);
        const int j = begin + tt;
        if constexpr (BITS == 4) {
          const uint2 c2 = __ldg(reinterpret_cast<const uint2*>(vcodes + static_cast<int64_t>(j) * 16) + gid);
          nw[x][0] = c2.x;
          nw[x][1] = c2.y;
        } else {
          nw[x][0] = __ldg(vcodes + static_cast<int64_t>(j) * 8 + gid);
          nw[x][1] = 0;
        }
        nmv[x] = __ldg(vmeta + j);
      }
    };
    if constexpr (OPT >= 2)
      if (warp < ntile) load_tile(warp);
    for (int kt16 = warp; kt16 < ntile; kt16 += kW) {
      uint32_t w[4][2], mvs[4];
      if constexpr (OPT < 2) load_tile(kt16);
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        w[x][0] = nw[x][0];
        w[x][1] = nw[x][1];
        mvs[x] = nmv[x];
      }
      if constexpr (OPT >= 2)
        if (kt16 + kW < ntile) load_tile(kt16 + kW);
      float vh[4], vm[4], vq[4], pw[4];
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int tt = kt16 * 16 + 2 * t4 + (x & 1) + 8 * (x >> 1);
        const bool in = tt < cnt;
        const int j = begin + (in ? tt : cnt - 1);
        const uint32_t mv = mvs[x];
        const bool dense = in && j >= V.n_sink;
        vm[x] = dense ? h2f(static_cast<uint16_t>(mv & 0xFFFFu)) : 0.f;
        vh[x] = dense ? h2f(static_cast<uint16_t>(mv >> 16)) : 0.f;
        vq[x] = dense ? V.qb : 0.f;  // sinks and tokens past the end: v = 0 exactly
        pw[x] = in && gid < G ? sc[tt * GM + gid] : 0.f;
      }
      const uint32_t b0 = pack_h2(pw[0], pw[1]), b1 = pack_h2(pw[2], pw[3]);
#pragma unroll
      for (int mt = 0; mt < 8; ++mt) {
        uint32_t af[4];
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          const int qpos = 2 * mt + rr;
          float v[4];
#pragma unroll
          for (int x = 0; x < 4; ++x) {
            v[x] = fmaf(vlut[code16<BITS>(w[x], qpos)], vh[x], vm[x]);
            if constexpr (QN) v[x] = fmaf(v[x], V.qa, vq[x]);
          }
          af[rr] = pack_h2(v[0], v[1]);      // row gid + 8 rr, tokens 2 t4, 2 t4 + 1
          af[2 + rr] = pack_h2(v[2], v[3]);  // tokens 2 t4 + 8, 2 t4 + 9
        }
        mma16816(acc[mt], af[0], af[1], af[2], af[3], b0, b1);
      }
    }
    // Sinks and value outliers into corr (fp32, shared atomics; p still in sc).
    const int ns_end = min(end, V.n_sink);
    for (int idx = threadIdx.x; idx < (ns_end - begin) * G * kD; idx += kT) {
      const int j = begin + idx / (G * kD), g = (idx / kD) % G, d = idx % kD;
      atomicAdd(&corr[g * kD + d], sc[(j - begin) * GM + g] * h2f(V.sink[(sh * V.n_sink + j) * kD + d]));
    }
    if (V.outliers) {
      const uint32_t* off = V.off + sh * (static_cast<int64_t>(V.max_tokens) + 1);
      const kvlayout::Outlier* rec = OPT >= 1 ? vrec : V.rec + sh * V.out_cap;
      for (int j = max(begin, V.n_sink) + static_cast<int>(threadIdx.x); j < end; j += kT) {
        const uint32_t r0 = OPT >= 1 ? soff[j - begin] : off[j], r1 = OPT >= 1 ? soff[j - begin + 1] : off[j + 1];
        if (r0 == r1) continue;
        const uint32_t mv = vmeta[j];
        const float mid = h2f(static_cast<uint16_t>(mv & 0xFFFFu)), half = h2f(static_cast<uint16_t>(mv >> 16));
        for (uint32_t rr = r0; rr < r1; ++rr) {
          const kvlayout::Outlier o = rec[rr];
          const int i = static_cast<int>(o.index) - kvh * kD;
          const uint32_t w = vcodes[static_cast<int64_t>(j) * V.wpr + i / (32 / BITS)];
          const uint32_t code = (w >> (BITS * (i % (32 / BITS)))) & ((1u << BITS) - 1u);
          float vd = fmaf(vlut[code], half, mid);
          if constexpr (QN) vd = fmaf(vd, V.qa, V.qb);
          const float delta = h2f(o.value) - vd;
          for (int g = 0; g < G; ++g) atomicAdd(&corr[g * kD + i], sc[(j - begin) * GM + g] * delta);
        }
      }
    }
    __syncthreads();  // weights and corrections done: sc becomes red
    float* red = sc;  // [kW][GM][kD]
#pragma unroll
    for (int mt = 0; mt < 8; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int g = 2 * t4 + (e & 1), d = 16 * gid + 2 * mt + (e >> 1);
        if (g < GM) red[(warp * GM + g) * kD + d] = acc[mt][e];
      }
    __syncthreads();
    for (int i = threadIdx.x; i < G * kD; i += kT) {
      const int g = i / kD, d = i % kD;
      float o = corr[i];
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

template <int BITS, int GM, bool QN, int OPT>
cudaError_t launch(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, const Plan& p,
                   float* part_o, float* part_ml, cudaStream_t stream) {
  const size_t smem = smem_bytes(GM, p.chunk);
  cudaError_t e = cudaFuncSetAttribute(kvquant_mma_kernel<BITS, GM, QN, OPT>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  kvquant_mma_kernel<BITS, GM, QN, OPT><<<dim3(p.splits, k.kv_heads, a.rows), kT, smem, stream>>>(
      k, v, a, p.chunk, p.splits, part_o, part_ml);
  if ((e = launch_status()) != cudaSuccess) return e;
  splitk_combine_kernel<__half><<<dim3(a.n_heads, a.rows), 128, 0, stream>>>(
      part_o, part_ml, static_cast<__half*>(a.out), a.n_heads, kD, p.splits);
  return launch_status();
}

template <int BITS, bool QN, int OPT>
cudaError_t dispatch_gm(int gm, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, const Plan& p,
                        float* o, float* ml, cudaStream_t stream) {
  switch (gm) {
    case 1: return launch<BITS, 1, QN, OPT>(k, v, a, p, o, ml, stream);
    case 2: return launch<BITS, 2, QN, OPT>(k, v, a, p, o, ml, stream);
    case 4: return launch<BITS, 4, QN, OPT>(k, v, a, p, o, ml, stream);
    case 8: return launch<BITS, 8, QN, OPT>(k, v, a, p, o, ml, stream);
  }
  return cudaErrorInvalidValue;
}

template <int OPT>
cudaError_t dispatch(int gm, bool qn, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a,
                     const Plan& p, float* o, float* ml, cudaStream_t stream) {
  if (k.bits == 4)
    return qn ? dispatch_gm<4, true, OPT>(gm, k, v, a, p, o, ml, stream)
              : dispatch_gm<4, false, OPT>(gm, k, v, a, p, o, ml, stream);
  return qn ? dispatch_gm<2, true, OPT>(gm, k, v, a, p, o, ml, stream)
            : dispatch_gm<2, false, OPT>(gm, k, v, a, p, o, ml, stream);
}

}  // namespace

size_t workspace_mma(const PackedSide& k, const PackedDecodeArgs& a, int max_len, int sm_count) {
  if (k.kv_heads <= 0 || a.rows <= 0 || max_len <= 0 || a.n_heads % k.kv_heads != 0) return 0;
  const Plan p = make_plan(k.kv_heads, a.rows, gm_of(a.n_heads / k.kv_heads), max_len, sm_count);
  return static_cast<size_t>(a.rows) * a.n_heads * p.splits * (kD + 2) * sizeof(float);
}

cudaError_t run_mma(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len, int sm_count,
                    void* ws, size_t ws_bytes, cudaStream_t stream) {
  if (!fits(Act::kF16, k, v, a)) return cudaErrorInvalidValue;
  if (a.rows == 0) return cudaSuccess;
  if (max_len <= 0 || ws_bytes < workspace_mma(k, a, max_len, sm_count)) return cudaErrorInvalidValue;
  const int gm = gm_of(a.n_heads / k.kv_heads);
  const Plan p = make_plan(k.kv_heads, a.rows, gm, max_len, sm_count);
  float* part_o = static_cast<float*>(ws);
  float* part_ml = part_o + static_cast<size_t>(a.rows) * a.n_heads * p.splits * kD;
  const bool qn = k.qa != 1.f || k.qb != 0.f || v.qa != 1.f || v.qb != 0.f;
  // KVQ_KVQ_MMA_OPT=0|1|2 (read per call, for A/B runs in one process): 0 the first build
  // (225b925), 1 CSR staged in shared memory, 2 (default) 1 + the value pass's next tile
  // loaded before the current tile's math. H100 (llama2-7b b1 32K 4 bits, one process):
  // 338.1 / 326.3 / 327.3 us; all three passed parity (0 in run 1, 2 in run 2). Builds 0 and 1
  // are compiled only with -DKVQ_KVQ_MMA_AB (nvcc flag): each OPT value is 16 instantiations,
  // and with all three this file took 1 min 44 s of nvcc for sm_90 alone (the slowest here).
#ifdef KVQ_KVQ_MMA_AB
  const char* e = std::getenv("KVQ_KVQ_MMA_OPT");
  const int opt = e && *e ? std::atoi(e) : 2;
  if (opt == 0) return dispatch<0>(gm, qn, k, v, a, p, part_o, part_ml, stream);
  if (opt == 1) return dispatch<1>(gm, qn, k, v, a, p, part_o, part_ml, stream);
#endif
  return dispatch<2>(gm, qn, k, v, a, p, part_o, part_ml, stream);
}

}  // namespace kvq::kern::kvquant_decode
