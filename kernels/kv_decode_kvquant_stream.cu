// KVQuant decode on the tensor cores in one pass per 64-token stage with an online softmax
// (interface: kv_decode_kvquant.cuh, run_stream; KVQ_KV_DECODE=kvq-stream in
// lib/cuda/packed_cache.cpp). Same cases (fits()), same per-element arithmetic as the
// three-pass build kvq-mma (h45, retired in session 7; its layouts, the RoPE split
// R(j0 + u) = R(j0) R(u) and the fp16 roundings: kv_decode_kvquant_common.cuh's header, the
// error terms in tests/gpu/kv_kvquant_test.cpp), restructured along version
// 4's lines (kv_decode_stream.cu) because h45's figures (notes/s5/results-h45.md, H100
// 2026-11-23: 323 us at llama2-7b b1 32K 4 bits against an issue estimate of ~60 us, 2 bits
// only 3-5% faster than 4) point at waiting, not bytes: three block-barrier-separated passes
// per chunk (scores into a [chunk][G] buffer, softmax with one warp per head, P V) and
// thread-per-token correction loops between them.
// Here every warp streams its own stages (st = warp, warp + 8, ...) with no block barrier
// between setup and the final merge:
//  1. the stage's key codes, CSR offsets (key and value) and the stage anchor (cos, sin)(j0 f)
//     are loaded/computed by the warp; the query rotated by R(j0)^T into fp16 A fragments;
//  2. dense scores by mma into a per-warp [64][GM] buffer (-inf past the end); the value codes
//     and per-token (half, mid) of the stage are issued right after, so that their latency
//     overlaps the corrections and the softmax;
//  3. sinks recomputed from their fp16 rows, key outliers as score corrections (lane per token);
//  4. online softmax per head: the warp's running max m_g (warp-uniform), a lane-partial sum,
//     p = exp(s - m_g) in place, the mma accumulators and the warp's value-correction buffer
//     rescaled by exp(m_old - m_new) when the max moved;
//  5. P V on mma (4 k-tiles of 16 tokens), sink rows and value outliers as fp32 corrections
//     p (v_out - v_dense) into the warp's [G][128] buffer.
// At the end the 8 warps merge (m, l, acc + corrections) in shared memory into the same split-K
// partials and combine as the other builds.
// Measured (H100, 2026-11-23, commit 2192aa0 = this code, notes/s5/results-h47.md): passed the
// [kvquant] cases (stream cases worst 0.01 of the bound, incl. the one-split long case) and
// "kv packed: KVQuant*"; against the three-pass build in one process (kvq-kvbench --ab
// KVQ_KV_DECODE=kvq-mma,kvq-stream): faster in 10 of 16 cells -- llama3-8b (GQA) all 8 cells
// (b1 32K 150.9 -> 124.1 us, 1.80x fp16; b1 128K 1.07-1.09x; b8 1.01-1.02x) and llama2-7b b1
// 32K (321.6 -> 287.4 us at 4 bits, 302.7 -> 268.7 at 2) -- but 3-5% slower at llama2-7b b1
// 128K and b8 (MHA, 32-256 stages per warp; b8 128K 4 bits 7980 -> 8352 us; cause not isolated,
// no profile). So it stays opt-in (KVQ_KV_DECODE=kvq-stream), not the default.
// Not done (the brief's cp.async double buffering of the next stage): the per-warp stage
// would need 2 x ~8.5 KB of staging per warp at 4 bits; with 8 warps x 2 blocks per SM that
// does not fit next to the (cos, sin)(u f) table, so the next stage's latency is hidden only
// by the other 15 warps of the SM (each has a stage's codes in flight), not by the warp itself.
// Split plan: no score buffer, so no chunk cap; the split count minimises waves x rounds of
// stages per warp (rounds = ceil(stages / 8)), as version 4's plan minimises waves x span.
// Error: the mma build's terms (tests/gpu/kv_kvquant_test.cpp header) with one change: p is
// exp(s - m_running) rounded to fp16, m_running <= the chunk max, so p is at least as large
// as in the three-pass build and its fp16 rounding is the same 2^-11 relative (no new
// subnormal loss); the rescale by exp(m_old - m_new) is one more fp32 rounding per stage on
// the accumulators (<= 2^-24 x stages relative, ~2^-19 at 32 stages), far below the 2^-9 terms.
#include "kernels/kv_decode_kvquant.cuh"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <string_view>

#include "kernels/common.cuh"
#include "kernels/decode_chunk.cuh"
#include "kernels/kv_decode_kvquant_common.cuh"
#include "kernels/kv_decode_mma_common.cuh"

namespace kvq::kern::kvquant_decode {
namespace {

using mma_decode::mma16816;
using mma_decode::pack_h2;

struct Plan {
  int chunk = 0, splits = 0;
};

// Splits minimising waves x (rounds + 1): a block's time is ~ the rounds of stages its busiest
// warp runs, plus setup/merge (~1 round); ties keep fewer splits (less combine work).
Plan make_plan(int kv_heads, int rows, int max_len, int sm_count) {
  const int per_split = std::max(1, kv_heads * rows);
  const int slots = 2 * std::max(sm_count, 1);
  const int nst = (max_len + kS - 1) / kS;
  Plan best{nst * kS, 1};
  long best_cost = -1;
  const int max_splits = std::min(nst, std::max(1, (8 * slots + per_split - 1) / per_split));
  for (int s = 1; s <= max_splits; ++s) {
    const int per = (nst + s - 1) / s;
    const int real = (nst + per - 1) / per;
    const long waves = (static_cast<long>(real) * per_split + slots - 1) / slots;
    const long cost = waves * ((per + kW - 1) / kW + 1);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best = {per * kS, real};
    }
  }
  return best;
}

// Shared memory: (cos, sin)(u f) [kS][kUS] float2, query [GM][kD], key (half, mid) [64]
// float4, two LUTs, merge stats [kW][GM][2], then per warp: anchors [64] float2, scores [kS][GM],
// value corrections [GM][kD].
size_t warp_floats(int gm) { return 128 + static_cast<size_t>(kS) * gm + static_cast<size_t>(gm) * kD; }
size_t smem_bytes(int gm) {
  return static_cast<size_t>(kS) * kUS * 8 +
         (static_cast<size_t>(gm) * kD + 64 * 4 + 32 + kW * gm * 2 + kW * warp_floats(gm)) * 4;
}

// AG: value-outlier corrections through warp_channel_add (false: one shared atomicAdd per lane
// and head, the session-5 code, kept for the A/B KVQ_KVQ_VOUT=lane,warp).
template <int BITS, int GM, bool QN, bool AG>
__global__ void __launch_bounds__(kT, 2)
kvquant_stream_kernel(PackedSide K, PackedSide V, PackedDecodeArgs a, int chunk, int splits, float* part_o,
                      float* part_ml) {
  extern __shared__ __align__(16) float sm[];
  const int G = a.n_heads / K.kv_heads;
  float2* ut = reinterpret_cast<float2*>(sm);                 // [kS][kUS]
  float* qs = reinterpret_cast<float*>(ut + kS * kUS);        // [GM][kD]
  float4* khm = reinterpret_cast<float4*>(qs + GM * kD);      // [64] by pair_slot
  float* klut = reinterpret_cast<float*>(khm + 64);           // [16]
  float* vlut = klut + 16;                                    // [16]
  float* stat = vlut + 16;                                    // [kW][GM][2]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gid = lane >> 2, t4 = lane & 3;
  float* wbase = stat + kW * GM * 2 + warp * (128 + kS * GM + GM * kD);
  float2* anc = reinterpret_cast<float2*>(wbase);             // [64] by pair_slot
  float* sc = wbase + 128;                                    // [kS][GM]
  float* corr = sc + kS * GM;                                 // [GM][kD]

  const int s = blockIdx.x, kvh = blockIdx.y, r = blockIdx.z;
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

  // ---- Setup (block): LUTs, query, key (half, mid), (cos, sin)(u f) table, corrections 0 ----
  setup_luts_query<BITS, GM>(K, V, a, head0, G, klut, vlut, qs);
  for (int i = lane; i < GM * kD; i += 32) corr[i] = 0.f;
  setup_key_tables(K, a, cb, khm, ut);
  __syncthreads();

  const uint32_t* kcodes = K.codes + sh * K.max_tokens * K.wpr;
  const uint32_t* vcodes = V.codes + sh * V.max_tokens * V.wpr;
  const uint32_t* vmeta = reinterpret_cast<const uint32_t*>(V.meta) + sh * V.max_tokens;
  const uint32_t* koff = K.off + sh * (static_cast<int64_t>(K.max_tokens) + 1);
  const uint32_t* voff = V.off + sh * (static_cast<int64_t>(V.max_tokens) + 1);
  const kvlayout::Outlier* krec = K.rec + sh * K.out_cap;
  const kvlayout::Outlier* vrec = V.rec + sh * V.out_cap;
  const bool hv = gid < G;
  const float* qh = qs + (hv ? gid : 0) * kD;

  float m[GM], lsum[GM], fac[GM];
#pragma unroll
  for (int g = 0; g < GM; ++g) {
    m[g] = -INFINITY;
    lsum[g] = 0.f;
  }
  float acc[8][4];
#pragma unroll
  for (int mt = 0; mt < 8; ++mt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[mt][e] = 0.f;
  bool has_corr = false;  // warp-uniform: corr holds something to rescale

  for (int st = warp; st < nst; st += kW) {
    const int t0 = st * kS;
    const int j0 = begin + t0;
    // ---- 1. loads: key codes, CSR offsets of the lane's tokens t0 + lane, t0 + lane + 32 ----
    // Key codes of n-tile nt (8 tokens); tiles 0..3 issued now, tile nt + 4 at the start of
    // tile nt's math (all eight at once next to the live P V accumulators spilled, ptxas sm_90).
    uint32_t kw[8][4];
    auto load_k = [&](int nt) { load_key_codes<BITS>(kcodes, min(j0 + nt * 8 + gid, end - 1), t4, kw[nt]); };
#pragma unroll
    for (int nt = 0; nt < 4; ++nt) load_k(nt);
    uint32_t ko[2][2] = {{0, 0}, {0, 0}}, vo[2][2] = {{0, 0}, {0, 0}};
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int j = j0 + lane + 32 * h;
      if (j < end) {
        if (K.outliers) {
          ko[h][0] = __ldg(koff + j);
          ko[h][1] = __ldg(koff + j + 1);
        }
        if (V.outliers) {
          vo[h][0] = __ldg(voff + j);
          vo[h][1] = __ldg(voff + j + 1);
        }
      }
    }
    // Stage anchor (cos, sin)(j0 f_i) for the lane's pairs lane, lane + 32.
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int i = lane + 32 * h;
      float c, sn;
      anchor(a.inv_freq[i], j0, c, sn);
      anc[pair_slot(i)] = make_float2(c, sn);
    }
    __syncwarp();
    // ---- 2. dense scores on the tensor cores ----
    uint32_t qa0[8], qa2[8];
    rotate_query(qh, hv, t4, [&](int kt, int e) { return anc[(2 * kt + e) * 4 + t4]; }, qa0, qa2);
#pragma unroll
    for (int nt = 0; nt < 8; ++nt) {
      if (nt < 4) load_k(nt + 4);
      float d[4] = {0.f, 0.f, 0.f, 0.f};
      key_tile<BITS, QN>(kw[nt], ut + (nt * 8 + gid) * kUS + t4, khm, klut, K.qa, K.qb, t4, qa0, qa2, d);
      const int tok = nt * 8 + 2 * t4;
      if (hv) {
        sc[tok * GM + gid] = t0 + tok < cnt ? d[0] * a.scale : -INFINITY;
        sc[(tok + 1) * GM + gid] = t0 + tok + 1 < cnt ? d[1] * a.scale : -INFINITY;
      }
    }
    // The stage's value codes and (half, mid): tokens kk 16 + 2 t4 + (x & 1) + 8 (x >> 1),
    // channels 16 gid .. 16 gid + 15. k-tiles 0 and 1 issued now (their latency overlaps the
    // corrections and the softmax), 2 and 3 at the start of the P V of 0 and 1: all four
    // early spilled 130-270 bytes per thread at 4 bits (ptxas, sm_90, 128 registers).
    uint32_t vw[4][4][2], vmv[4][4];
    auto load_v = [&](int kk) {
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int j = min(j0 + kk * 16 + 2 * t4 + (x & 1) + 8 * (x >> 1), end - 1);
        if constexpr (BITS == 4) {
          const uint2 c2 = __ldg(reinterpret_cast<const uint2*>(vcodes + static_cast<int64_t>(j) * 16) + gid);
          vw[kk][x][0] = c2.x;
          vw[kk][x][1] = c2.y;
        } else {
          vw[kk][x][0] = __ldg(vcodes + static_cast<int64_t>(j) * 8 + gid);
          vw[kk][x][1] = 0;
        }
        vmv[kk][x] = __ldg(vmeta + j);
      }
    };
    load_v(0);
    load_v(1);
    __syncwarp();
    // ---- 3. sinks recomputed from their fp16 rows; key outliers as score corrections ----
    const int ks_end = min(min(j0 + kS, end), K.n_sink);
    for (int j = j0; j < ks_end; ++j) {  // warp-uniform
      const uint16_t* row = K.sink + (sh * K.n_sink + j) * kD;
      float c[2], sn[2], x0[2], x1[2];
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int i = lane + 32 * h;
        anchor(a.inv_freq[i], j, c[h], sn[h]);
        x0[h] = h2f(row[i]);
        x1[h] = h2f(row[i + 64]);
      }
      for (int g = 0; g < G; ++g) {
        float dot = 0.f;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int i = lane + 32 * h;
          dot = fmaf(qs[g * kD + i], fmaf(x0[h], c[h], -x1[h] * sn[h]), dot);
          dot = fmaf(qs[g * kD + i + 64], fmaf(x1[h], c[h], x0[h] * sn[h]), dot);
        }
        dot = warp_sum(dot);
        if (lane == 0) sc[(j - j0) * GM + g] = dot * a.scale;
      }
    }
    __syncwarp();
    if (K.outliers) {
#pragma unroll 1
      for (int h = 0; h < 2; ++h) {
        const int tok = lane + 32 * h, j = j0 + tok;
        if (j >= end || j < K.n_sink) continue;
        for (uint32_t rr = ko[h][0]; rr < ko[h][1]; ++rr) {
          const kvlayout::Outlier o = krec[rr];
          const int i = static_cast<int>(o.index) - kvh * kD;
          const uint32_t w = kcodes[static_cast<int64_t>(j) * K.wpr + i / (32 / BITS)];
          const uint32_t code = (w >> (BITS * (i % (32 / BITS)))) & ((1u << BITS) - 1u);
          const float4 hm = khm[pair_slot(i & 63)];
          float kd = fmaf(klut[code], i < 64 ? hm.x : hm.y, i < 64 ? hm.z : hm.w);
          if constexpr (QN) kd = fmaf(kd, K.qa, K.qb);
          const float delta = h2f(o.value) - kd;
          const int ip = i & 63;
          float c, sn;
          anchor(a.inv_freq[ip], j, c, sn);
          for (int g = 0; g < G; ++g) {
            const float qi = qs[g * kD + ip], qp = qs[g * kD + ip + 64];
            const float qr = i < 64 ? fmaf(qi, c, qp * sn) : fmaf(qp, c, -qi * sn);
            sc[tok * GM + g] += a.scale * qr * delta;
          }
        }
      }
    }
    __syncwarp();
    // ---- 4. online softmax: running max per head, p in place, rescale factors ----
    bool moved = false;
#pragma unroll
    for (int g = 0; g < GM; ++g) {
      fac[g] = 1.f;
      if (g < G) {
        const float s0 = sc[lane * GM + g], s1 = sc[(lane + 32) * GM + g];
        const float mn = fmaxf(m[g], warp_max(fmaxf(s0, s1)));  // token t0 is in range: finite
        fac[g] = expf(m[g] - mn);                               // m = -inf at the first stage: 0
        moved |= mn != m[g];
        const float p0 = expf(s0 - mn), p1 = expf(s1 - mn);
        sc[lane * GM + g] = p0;
        sc[(lane + 32) * GM + g] = p1;
        lsum[g] = fmaf(lsum[g], fac[g], p0 + p1);
        m[g] = mn;
      }
    }
    if (moved) {  // warp-uniform
      float f0 = 1.f, f1 = 1.f;
#pragma unroll
      for (int g = 0; g < GM; ++g) {
        if (g == 2 * t4) f0 = fac[g];
        if (g == 2 * t4 + 1) f1 = fac[g];
      }
#pragma unroll
      for (int mt = 0; mt < 8; ++mt) {
        acc[mt][0] *= f0;
        acc[mt][1] *= f1;
        acc[mt][2] *= f0;
        acc[mt][3] *= f1;
      }
      if (has_corr) {
#pragma unroll
        for (int g = 0; g < GM; ++g)
          if (g < G && fac[g] != 1.f)
            for (int dd = lane; dd < kD; dd += 32) corr[g * kD + dd] *= fac[g];
      }
    }
    __syncwarp();
    // ---- 5. P V on the tensor cores ----
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) {
      if (kk < 2) load_v(kk + 2);
      float vh[4], vm[4], vq[4], pw[4];
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int tt = kk * 16 + 2 * t4 + (x & 1) + 8 * (x >> 1);
        const bool in = t0 + tt < cnt;
        const int j = j0 + tt;
        const uint32_t mv = vmv[kk][x];
        const bool dense = in && j >= V.n_sink;
        vm[x] = dense ? h2f(static_cast<uint16_t>(mv & 0xFFFFu)) : 0.f;
        vh[x] = dense ? h2f(static_cast<uint16_t>(mv >> 16)) : 0.f;
        vq[x] = dense ? V.qb : 0.f;  // sinks and tokens past the end: v = 0 exactly
        pw[x] = in && hv ? sc[tt * GM + gid] : 0.f;
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
            v[x] = fmaf(vlut[code16<BITS>(vw[kk][x], qpos)], vh[x], vm[x]);
            if constexpr (QN) v[x] = fmaf(v[x], V.qa, vq[x]);
          }
          af[rr] = pack_h2(v[0], v[1]);
          af[2 + rr] = pack_h2(v[2], v[3]);
        }
        mma16816(acc[mt], af[0], af[1], af[2], af[3], b0, b1);
      }
    }
    // Sink rows: p v into corr (lane-disjoint channels, no atomics).
    const int vs_end = min(min(j0 + kS, end), V.n_sink);
    for (int j = j0; j < vs_end; ++j) {  // warp-uniform
      has_corr = true;
      const uint16_t* row = V.sink + (sh * V.n_sink + j) * kD;
      for (int g = 0; g < G; ++g) {
        const float p = sc[(j - j0) * GM + g];
        for (int dd = lane; dd < kD; dd += 32) corr[g * kD + dd] = fmaf(p, h2f(row[dd]), corr[g * kD + dd]);
      }
    }
    __syncwarp();
    // Value outliers: p (v_out - v_dense), lane per token, the lanes sharing a channel summed
    // first (warp_channel_add: contended shared atomics were a third of this kernel's time).
    if (V.outliers) {
      if constexpr (AG) {
        const bool any = __any_sync(0xffffffffu, vo[0][1] > vo[0][0] || vo[1][1] > vo[1][0]);
        has_corr |= any;
#pragma unroll 1
        for (int h = 0; h < 2; ++h) {
          const int tok = lane + 32 * h, j = j0 + tok;
          const bool tok_on = j < end && j >= V.n_sink;
          const uint32_t r0 = vo[h][0], n = tok_on ? vo[h][1] - vo[h][0] : 0u;
          float mid = 0.f, half = 0.f;
          if (n > 0) {
            const uint32_t mv = __ldg(vmeta + j);
            mid = h2f(static_cast<uint16_t>(mv & 0xFFFFu));
            half = h2f(static_cast<uint16_t>(mv >> 16));
          }
          const uint32_t nmax = __reduce_max_sync(0xffffffffu, n);
          for (uint32_t k = 0; k < nmax; ++k) {  // warp-uniform
            const bool on = k < n;
            int i = 0;
            float delta = 0.f;
            if (on) {
              const kvlayout::Outlier o = vrec[r0 + k];
              i = static_cast<int>(o.index) - kvh * kD;
              const uint32_t w = vcodes[static_cast<int64_t>(j) * V.wpr + i / (32 / BITS)];
              const uint32_t code = (w >> (BITS * (i % (32 / BITS)))) & ((1u << BITS) - 1u);
              float vd = fmaf(vlut[code], half, mid);
              if constexpr (QN) vd = fmaf(vd, V.qa, V.qb);
              delta = h2f(o.value) - vd;
            }
            warp_channel_add(corr, on, i, delta, sc + tok * GM, G, lane);
          }
        }
      } else {  // KVQ_KVQ_VOUT=lane: a shared atomicAdd per lane and head (A/B only)
        const bool any = __any_sync(0xffffffffu, vo[0][1] > vo[0][0] || vo[1][1] > vo[1][0]);
        has_corr |= any;
#pragma unroll 1
        for (int h = 0; h < 2; ++h) {
          const int tok = lane + 32 * h, j = j0 + tok;
          if (j >= end || j < V.n_sink || vo[h][0] == vo[h][1]) continue;
          const uint32_t mv = __ldg(vmeta + j);
          const float mid = h2f(static_cast<uint16_t>(mv & 0xFFFFu)), half = h2f(static_cast<uint16_t>(mv >> 16));
          for (uint32_t rr = vo[h][0]; rr < vo[h][1]; ++rr) {
            const kvlayout::Outlier o = vrec[rr];
            const int i = static_cast<int>(o.index) - kvh * kD;
            const uint32_t w = vcodes[static_cast<int64_t>(j) * V.wpr + i / (32 / BITS)];
            const uint32_t code = (w >> (BITS * (i % (32 / BITS)))) & ((1u << BITS) - 1u);
            float vd = fmaf(vlut[code], half, mid);
            if constexpr (QN) vd = fmaf(vd, V.qa, V.qb);
            const float delta = h2f(o.value) - vd;
            for (int g = 0; g < G; ++g) atomicAdd(&corr[g * kD + i], sc[tok * GM + g] * delta);
          }
        }
      }
    }
    __syncwarp();  // sc and corr settled before the next stage rewrites / rescales them
  }

  // ---- Merge the warps: (m, l) per head, outputs rescaled to the block max ----
#pragma unroll
  for (int g = 0; g < GM; ++g) {
    const float l = warp_sum(lsum[g]);
    if (lane == 0) {
      stat[(warp * GM + g) * 2] = m[g];
      stat[(warp * GM + g) * 2 + 1] = l;
    }
  }
  __syncthreads();
  float fw[GM];
#pragma unroll
  for (int g = 0; g < GM; ++g) {
    float M = -INFINITY;
#pragma unroll
    for (int w2 = 0; w2 < kW; ++w2) M = fmaxf(M, stat[(w2 * GM + g) * 2]);
    fw[g] = m[g] == -INFINITY ? 0.f : expf(m[g] - M);
  }
  // Each (channel, head) of corr is one lane's accumulator element: no conflicts.
#pragma unroll
  for (int mt = 0; mt < 8; ++mt)
#pragma unroll
    for (int e = 0; e < 4; ++e) {
      const int g = 2 * t4 + (e & 1), d = 16 * gid + 2 * mt + (e >> 1);
      float f = 0.f;
#pragma unroll
      for (int g2 = 0; g2 < GM; ++g2)
        if (g2 == g) f = fw[g2];
      if (g < G) corr[g * kD + d] = (corr[g * kD + d] + acc[mt][e]) * f;
    }
  __syncthreads();
  const size_t wstride = 128 + kS * GM + GM * kD;
  float* corr0 = stat + kW * GM * 2 + 128 + kS * GM;
  for (int i = threadIdx.x; i < G * kD; i += kT) {
    const int g = i / kD, d = i % kD;
    float o = 0.f;
#pragma unroll
    for (int w2 = 0; w2 < kW; ++w2) o += corr0[w2 * wstride + g * kD + d];
    part_o[((head0 + g) * splits + s) * kD + d] = o;
  }
  if (threadIdx.x < G) {
    const int g = threadIdx.x;
    float M = -INFINITY;
    for (int w2 = 0; w2 < kW; ++w2) M = fmaxf(M, stat[(w2 * GM + g) * 2]);
    float l = 0.f;
    for (int w2 = 0; w2 < kW; ++w2) {
      const float mw = stat[(w2 * GM + g) * 2];
      if (mw != -INFINITY) l = fmaf(stat[(w2 * GM + g) * 2 + 1], expf(mw - M), l);
    }
    part_ml[((head0 + g) * splits + s) * 2] = M;
    part_ml[((head0 + g) * splits + s) * 2 + 1] = l;
  }
}

template <int BITS, int GM, bool QN, bool AG>
cudaError_t launch1(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, const Plan& p,
                    float* part_o, float* part_ml, cudaStream_t stream) {
  const size_t smem = smem_bytes(GM);
  cudaError_t e = cudaFuncSetAttribute(kvquant_stream_kernel<BITS, GM, QN, AG>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  kvquant_stream_kernel<BITS, GM, QN, AG><<<dim3(p.splits, k.kv_heads, a.rows), kT, smem, stream>>>(
      k, v, a, p.chunk, p.splits, part_o, part_ml);
  if ((e = launch_status()) != cudaSuccess) return e;
  splitk_combine_kernel<__half><<<dim3(a.n_heads, a.rows), 128, 0, stream>>>(
      part_o, part_ml, static_cast<__half*>(a.out), a.n_heads, kD, p.splits);
  return launch_status();
}

// KVQ_KVQ_VOUT=lane (read per call, for kvq-kvbench --ab): the per-lane atomics build, compiled
// only for the benchmarked shapes (G = 1 and 4, no Q-Norm); elsewhere the value is ignored.
bool lane_vout() {
  const char* e = std::getenv("KVQ_KVQ_VOUT");
  return e && std::string_view(e) == "lane";
}
template <int BITS, int GM, bool QN>
cudaError_t launch(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, const Plan& p,
                   float* part_o, float* part_ml, cudaStream_t stream) {
  if constexpr (!QN && (GM == 1 || GM == 4))
    if (lane_vout()) return launch1<BITS, GM, QN, false>(k, v, a, p, part_o, part_ml, stream);
  return launch1<BITS, GM, QN, true>(k, v, a, p, part_o, part_ml, stream);
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

size_t workspace_stream(const PackedSide& k, const PackedDecodeArgs& a, int max_len, int sm_count) {
  if (k.kv_heads <= 0 || a.rows <= 0 || max_len <= 0 || a.n_heads % k.kv_heads != 0) return 0;
  const Plan p = make_plan(k.kv_heads, a.rows, max_len, sm_count);
  return static_cast<size_t>(a.rows) * a.n_heads * p.splits * (kD + 2) * sizeof(float);
}

cudaError_t run_stream(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                       int sm_count, void* ws, size_t ws_bytes, cudaStream_t stream) {
  if (!fits(Act::kF16, k, v, a)) return cudaErrorInvalidValue;
  if (a.rows == 0) return cudaSuccess;
  if (max_len <= 0 || ws_bytes < workspace_stream(k, a, max_len, sm_count)) return cudaErrorInvalidValue;
  const int gm = gm_of(a.n_heads / k.kv_heads);
  Plan p = make_plan(k.kv_heads, a.rows, max_len, sm_count);
  // KVQ_KVQ_STREAM_SPLITS=N (tests): at most N splits, so that each warp walks many stages and
  // the online rescales run (the plan gives 1-4 stages per warp at the test's sizes). Fewer
  // splits need less workspace than the plan's, so the check above covers it.
  if (const char* e = std::getenv("KVQ_KVQ_STREAM_SPLITS"); e && std::atoi(e) > 0 && std::atoi(e) < p.splits) {
    const int nst = (max_len + kS - 1) / kS, n = std::atoi(e);
    p.chunk = (nst + n - 1) / n * kS;
    p.splits = (max_len + p.chunk - 1) / p.chunk;
  }
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
