// Decode attention over packed uniform per-token KV caches (intB axis=token, sym or asym,
// 2 or 4 bits, head_dim 128) and KIVI caches (G <= 2) with the dot products on the tensor
// cores (mma.sync m16n8k16, fp16 inputs, fp32 accumulation). This file: version 3
// (mma_decode_kernel: codes loaded into registers, three passes per 1024-token chunk;
// KVQ_KV_DECODE=mma|mma3|mma-hoist), the pair selection (fits) and run(), which hands the
// default and KVQ_KV_DECODE=mma-stream to version 4 in kv_decode_stream.cu (the chunk
// staged in shared memory with cp.async, online softmax over 256-token stages, KIVI; H100
// 2026-11-22: int4 MHA 87-98% of copy from 32K at batch 8 / 64K at batch 1, 3.2-3.8x the
// fp16 kernel; int2 issue-bound at 39-64%). Helpers both use: kv_decode_mma_common.cuh.
// Why tensor cores: the CUDA-core kernels (kv_decode_packed.cu)
// spend ~5 instructions per element (shift, magic OR, FADD, dequant FFMA, dot FFMA) and
// stalled at 18-34% of copy bandwidth (notes/kv-cuda-perf.md); at 2990 GB/s the H100 issues
// 5.3 thread-instructions per int4 element and 2.8 per int2 element, so the kernel must do
// far less per element than the dequantize-then-fma form.
//
// The factorisation (per token t, channel group grp, per-token stored scale s and zero z):
//   keys:   score(g, t) = scale * sum_grp [ s_t * sum_{d in grp} q_gd c_td + z_t * sum_{d in grp} q_gd ]
//   values: out(g, d)   = (sum_t (p_gt s_t) c_td + sum_t p_gt z_t) / l_g
// (symmetric codes: z = -2^(b-1) s). The integer codes c go through the tensor cores
// unscaled; the scales are applied once per token (keys) or folded into the softmax
// weights (values).
//  - Codes -> fp16, exactly: (w & mask) | 0x6400 per half is 1024 + c * 2^k (one LOP3 for two
//    codes), then one HFMA2 by (2^-k, -1024 * 2^-k) gives c. A 32-bit word of 4-bit codes
//    becomes 4 fp16 pairs (codes j, j+4) with 1 shift + 4 LOP3 + 4 HFMA2; of 2-bit codes
//    8 pairs (j, j+8) with 1 + 8 + 8.
//  - Keys: A = codes [16 tokens x 16 channels] (row = token), B = q [16 channels x 8 columns],
//    column = (query head g, channel group grp): q masked to the group, so the groups of
//    a token come out as separate columns (G * 128/group <= 16 columns: 1 or 2 mmas per
//    A fragment). The k dimension (channels) may be permuted freely as long as A and B
//    agree: lane (gid, t) holds channels 32t .. 32t+31 of its two tokens (one 16-byte load
//    per token at 4 bits, 8 at 2 bits) and the k-slots are the fp16 pairs in the order the
//    magic conversion produces them. q is fp16 already, so B is exact.
//  - Values: A = codes transposed [16 channels x 16 tokens], B = weights [16 tokens x 8
//    columns], column = (g, value group, hi | lo). Lane (gid, t) loads channels
//    16 gid .. 16 gid + 15 of tokens 4t .. 4t+3 (8-byte loads at 4 bits), pairs two tokens'
//    codes of one channel with a byte permute (PRMT) before the magic conversion.
//    The weight w = p s is fp32; it is split into w_hi = fp16(w 2^E) and w_lo =
//    fp16(w 2^E - w_hi) (two B columns; the mma sums both), E per value group chosen from
//    the chunk's largest scale so that w 2^E < 2^15 (no overflow; p <= 1): the pair carries
//    22 bits, relative error <= 2^-22, and underflow of small weights costs at most
//    2^-25 * 2^-E absolute, below 2^-39 of the chunk's largest weight.
//  - The z terms (sum_g q per group, sum_t p z) are fp32 sums outside the tensor cores.
// Instruction count per element, predicted: keys 4 bits 9/8 conversion + 1/8 mma + ~0.3
// epilogue (scale/zero per token, 2 of 64 codes per lane) = ~1.55; values 4 bits 10/8
// (2 PRMT + 2 SHF + 8 LOP3 + 8 HFMA2 per 16 codes) + 1/8 mma + ~0.05 = ~1.4; 2 bits ~1.3
// each, against 5.3 (int4) / 2.8 (int2) issued per element at 100% of copy bandwidth.
// Measured in the SASS (H100 run of 2026-11-22, notes/s3/results-h21.md): key loop 8.6,
// value loop 3.0 per element. The conversions and mmas are as predicted; the key pass's
// epilogue is not (run-time / and % by the key group count and per-column meta addresses
// inside the tile loop): that, not bytes, is why this version stops at 50% of copy
// (HOIST = true, KVQ_KV_DECODE=mma-hoist, hoists them: measured faster for GQA and slower
// for MHA in session 3; version 4 hoists them too and keeps its loads out of registers).
// Error: the mma's fp32 accumulation aligns the 16 products and the accumulator to the
// largest exponent and truncates (Fasi et al., "Numerical behavior of NVIDIA tensor
// cores", 2021): per mma step at most 17 units of 2^-23 of the largest term. Over the
// 128/16 = 8 key steps that is <= 8 * 17 * 2^-23 <= 128 * 2^-23 of sum |q c| |s| + |z| sum|q|,
// i.e. the test's hd * 2^-23 bound with |s c| + |z| in place of |k| (tests/gpu/kv_packed_test.cpp).
// Softmax, sums and outputs in fp32; the output is rounded once to fp16.
#include <algorithm>
#include <cmath>

#include "kernels/common.cuh"
#include "kernels/kv_decode_mma.cuh"
#include "kernels/kv_decode_mma_common.cuh"

namespace kvq::kern::mma_decode {
namespace {

constexpr int kMaxChunk = 1024;     // tokens per block (smem: scores + weights)
constexpr int kMinChunk = 256;

// pw[grp] for a run-time grp without indexing a register array (which would go to local
// memory): a chain of selects.
__device__ __forceinline__ float spw_or(const float (&pw)[8], int grp) {
  float v = pw[0];
#pragma unroll
  for (int i = 1; i < 8; ++i) v = grp == i ? pw[i] : v;
  return v;
}

template <int BITS, int NTK, int NTV, int U, int UV, int MINB, bool HOIST>
__global__ void __launch_bounds__(kT, MINB)
mma_decode_kernel(PackedSide K, PackedSide V, PackedDecodeArgs a, int chunk, int splits,
                  float* part_o, float* part_ml) {
  constexpr int NP = 16 / BITS;       // fp16 pairs per code word
  constexpr int NWK = BITS;           // words per 32-code key block
  constexpr int NWV = BITS / 2;       // words per 16-channel value run
  extern __shared__ __align__(16) float sm[];
  const int G = a.n_heads / K.kv_heads;
  const int NGK = kD / K.group, NGV = kD / V.group;
  const int NCK = G * NGK, NCV = 2 * G * NGV;
  float* sc = sm;                                   // [G][chunk] scores, then p
  float* red = sc + G * chunk;                      // [kW][G][kD]
  float* qsum = red + kW * G * kD;                  // [kMaxCols] sum of q per key column
  float* zsum = qsum + kMaxCols;                    // [G * NGV] sum_t p z
  float* stat = zsum + kMaxCols;                    // [G][2]
  float* smx = stat + 2 * kMaxGroup;                // [kW][8] largest value scale per group
  float* spw = smx + kW * 8;                        // [8] 2^E per value group
  float* rbuf = spw + 8;                            // [kW][32] per-warp max / sum / z partials
  uint32_t* vmeta = reinterpret_cast<uint32_t*>(rbuf + kW * 32);  // [NGV][chunk] value scale|zero
  __half* W = reinterpret_cast<__half*>(vmeta + NGV * chunk);     // [NCV][chunk] value weights

  const int s = blockIdx.x, kvh = blockIdx.y, r = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gid = lane >> 2, t4 = lane & 3;
  const int len = a.len[r];
  const int begin = s * chunk;
  const int end = min(len, begin + chunk);
  const int64_t head0 = static_cast<int64_t>(r) * a.n_heads + kvh * G;
  if (begin >= end) {
    for (int i = threadIdx.x; i < G * kD; i += kT)
      part_o[((head0 + i / kD) * splits + s) * kD + i % kD] = 0.f;
    if (threadIdx.x < G) {
      part_ml[((head0 + threadIdx.x) * splits + s) * 2] = -INFINITY;
      part_ml[((head0 + threadIdx.x) * splits + s) * 2 + 1] = 0.f;
    }
    return;
  }
  const uint16_t* q = static_cast<const uint16_t*>(a.q) + head0 * kD;  // [G][kD] fp16 bits
  // q staged in shared memory (red is free until the value pass ends), then the per-column
  // sums by warps: the first version summed 128 global loads in one thread per column, a
  // chain of load latencies at the start of every block.
  float* qf = red;  // [G][kD] fp32
  for (int i = threadIdx.x; i < G * kD; i += kT) qf[i] = h2f(q[i]);
  __syncthreads();
  for (int col = warp; col < NCK; col += kW) {
    const int g = col / NGK, grp = col % NGK;
    float acc = 0.f;
    for (int d = lane; d < K.group; d += 32) acc += qf[g * kD + grp * K.group + d];
    acc = warp_sum(acc);
    if (lane == 0) qsum[col] = acc;
  }
  const int64_t sh = static_cast<int64_t>(a.slot[r]) * K.kv_heads + kvh;
  const int cnt = end - begin;
  const int ntiles = (cnt + 15) / 16;
  const bool vsym = V.format == KvFormat::kTokenSym;
  const float voff = static_cast<float>(1 << (BITS - 1));
  // The chunk's value scales/zeros into shared memory before the key pass, with the largest
  // scale per value group (the weights' exponent E). All KPT loads of a group are issued
  // before any is used (clamped index instead of a branch around load + store): the
  // second version loaded and stored token by token, which serialized 8 load latencies
  // per block (measured: int4 llama3-8b b8 128K 1208 -> 1675 us).
  {
    constexpr int KPT = kMaxChunk / kT;
    float mx[8];
#pragma unroll
    for (int grp = 0; grp < 8; ++grp) mx[grp] = 0.f;
#pragma unroll
    for (int grp = 0; grp < 8; ++grp) {
      if (grp >= NGV) break;
      uint32_t lm[KPT];
#pragma unroll
      for (int k = 0; k < KPT; ++k) {
        const int i = min(threadIdx.x + k * kT, cnt - 1);
        const uint16_t* meta = V.meta + (sh * V.max_tokens + begin + i) * V.mpr;
        lm[k] = vsym ? static_cast<uint32_t>(__ldg(meta + grp))
                     : __ldg(reinterpret_cast<const uint32_t*>(meta + 2 * grp));
      }
#pragma unroll
      for (int k = 0; k < KPT; ++k) {
        const int i = threadIdx.x + k * kT;
        if (i < cnt) {
          vmeta[grp * chunk + i] = lm[k];
          mx[grp] = fmaxf(mx[grp], fabsf(h2f(static_cast<uint16_t>(lm[k] & 0xFFFFu))));
        }
      }
    }
#pragma unroll
    for (int grp = 0; grp < 8; ++grp) {
      const float m = warp_max(mx[grp]);
      if (lane == 0) smx[warp * 8 + grp] = m;
    }
  }

  // ---- Pass 1: scores on the tensor cores. ----
  {
    const bool ksym = K.format == KvFormat::kTokenSym;
    const float koff = static_cast<float>(1 << (BITS - 1));
    // B fragments: q of column nt*8 + gid, masked to the column's channel group.
    uint32_t bq[NTK][8][2];
    key_q_fragments<BITS>(qf, NCK, NGK, K.group, gid, t4, bq);
    __syncthreads();  // qsum; qf is read no more
    if constexpr (!HOIST) {
      const uint32_t* kcodes = K.codes + sh * K.max_tokens * K.wpr + t4 * NWK;
      for (int tb = warp * U; tb < ntiles; tb += kW * U) {
        uint32_t w[U][2][NWK];
        uint32_t mk[U][2][NTK][2];
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
          for (int rr = 0; rr < 2; ++rr) {
            const int j = begin + (tb + u) * 16 + gid + 8 * rr;
            const bool ok = j < end;
            const int64_t row = sh * K.max_tokens + j;
            if constexpr (NWK == 4) {
              uint4 v = make_uint4(0, 0, 0, 0);
              if (ok) v = __ldg(reinterpret_cast<const uint4*>(kcodes + static_cast<int64_t>(j) * K.wpr));
              w[u][rr][0] = v.x; w[u][rr][1] = v.y; w[u][rr][2] = v.z; w[u][rr][3] = v.w;
            } else {
              uint2 v = make_uint2(0, 0);
              if (ok) v = __ldg(reinterpret_cast<const uint2*>(kcodes + static_cast<int64_t>(j) * K.wpr));
              w[u][rr][0] = v.x; w[u][rr][1] = v.y;
            }
#pragma unroll
            for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const int col = nt * 8 + 2 * t4 + c;
                uint32_t m = 0u;
                if (ok && col < NCK) {
                  const int grp = col % NGK;
                  m = ksym ? static_cast<uint32_t>(__ldg(K.meta + row * K.mpr + grp))
                           : __ldg(reinterpret_cast<const uint32_t*>(K.meta + row * K.mpr + 2 * grp));
                }
                mk[u][rr][nt][c] = m;
              }
          }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          float acc[NTK][4];
          key_tile_dot<BITS>(w[u], bq, acc);
          // acc[nt]: (row gid, cols 2t4, 2t4+1), (row gid+8, same cols).
#pragma unroll
          for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
              const int j = begin + (tb + u) * 16 + gid + 8 * rr;
              float v[2];
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const int col = nt * 8 + 2 * t4 + c;
                const uint32_t m = mk[u][rr][nt][c];
                const float sf = h2f(static_cast<uint16_t>(m & 0xFFFFu));
                const float dot = acc[nt][2 * rr + c];
                const float qs = col < NCK ? qsum[col] : 0.f;
                v[c] = ksym ? sf * fmaf(-koff, qs, dot)
                            : fmaf(sf, dot, h2f(static_cast<uint16_t>(m >> 16)) * qs);
              }
              if (NGK == 1) {
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                  const int col = nt * 8 + 2 * t4 + c;
                  if (col < NCK && j < end) sc[col * chunk + (j - begin)] = v[c] * a.scale;
                }
              } else {
                float sum = v[0] + v[1];
                for (int o = 1; o < NGK / 2; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
                const int col = nt * 8 + 2 * t4;
                if (t4 % (NGK / 2) == 0 && col < NCK && j < end)
                  sc[(col / NGK) * chunk + (j - begin)] = sum * a.scale;
              }
            }
        }
      }
    } else {
      // The lane's column constants, hoisted out of the tile loop (SASS of the first measured
      // version: run-time / and % by the group count and the meta address rebuilt for every
      // tile, row and column made the key loop 8.6 instructions per element).
      const bool kone = NGK == 1;
      int moff[NTK][2];   // offset of the column's group in a meta row (halves)
      bool cok[NTK][2];   // column in use
      float cqs[NTK][2];  // sum of q over the column's group
      int sdst[NTK][2];   // score row (g * chunk) this lane writes for the column, -1: none
#pragma unroll
      for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int col = nt * 8 + 2 * t4 + c;
          cok[nt][c] = col < NCK;
          const int grp = cok[nt][c] ? col % NGK : 0;
          moff[nt][c] = ksym ? grp : 2 * grp;
          cqs[nt][c] = cok[nt][c] ? qsum[col] : 0.f;
          if (kone)
            sdst[nt][c] = cok[nt][c] ? col * chunk : -1;
          else
            sdst[nt][c] = c == 0 && cok[nt][0] && t4 % (NGK / 2) == 0 ? (col / NGK) * chunk : -1;
        }
      const float ascale = a.scale;
      const int kwpr = K.wpr, kmpr = K.mpr;
      const uint32_t* kc0 = K.codes + (sh * K.max_tokens + begin) * kwpr + t4 * NWK;
      const uint16_t* km0 = K.meta + (sh * K.max_tokens + begin) * kmpr;
      for (int tb = warp * U; tb < ntiles; tb += kW * U) {
        uint32_t w[U][2][NWK];
        uint32_t mk[U][2][NTK][2];
#pragma unroll
        for (int u = 0; u < U; ++u)
#pragma unroll
          for (int rr = 0; rr < 2; ++rr) {
            const int li = (tb + u) * 16 + gid + 8 * rr;  // token index within the chunk
            const bool ok = li < cnt;
            if constexpr (NWK == 4) {
              uint4 v = make_uint4(0, 0, 0, 0);
              if (ok) v = __ldg(reinterpret_cast<const uint4*>(kc0 + li * kwpr));
              w[u][rr][0] = v.x; w[u][rr][1] = v.y; w[u][rr][2] = v.z; w[u][rr][3] = v.w;
            } else {
              uint2 v = make_uint2(0, 0);
              if (ok) v = __ldg(reinterpret_cast<const uint2*>(kc0 + li * kwpr));
              w[u][rr][0] = v.x; w[u][rr][1] = v.y;
            }
            const uint16_t* mrow = km0 + li * kmpr;
            if (kone) {
              uint32_t m = 0u;
              if (ok) m = ksym ? static_cast<uint32_t>(__ldg(mrow)) : __ldg(reinterpret_cast<const uint32_t*>(mrow));
#pragma unroll
              for (int nt = 0; nt < NTK; ++nt) mk[u][rr][nt][0] = mk[u][rr][nt][1] = m;
            } else {
#pragma unroll
              for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
                for (int c = 0; c < 2; ++c) {
                  uint32_t m = 0u;
                  if (ok && cok[nt][c])
                    m = ksym ? static_cast<uint32_t>(__ldg(mrow + moff[nt][c]))
                             : __ldg(reinterpret_cast<const uint32_t*>(mrow + moff[nt][c]));
                  mk[u][rr][nt][c] = m;
                }
            }
          }
#pragma unroll
        for (int u = 0; u < U; ++u) {
          float acc[NTK][4];
          key_tile_dot<BITS>(w[u], bq, acc);
          // acc[nt]: (row gid, cols 2t4, 2t4+1), (row gid+8, same cols).
#pragma unroll
          for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
            for (int rr = 0; rr < 2; ++rr) {
              const int li = (tb + u) * 16 + gid + 8 * rr;
              float v[2];
#pragma unroll
              for (int c = 0; c < 2; ++c) {
                const uint32_t m = mk[u][rr][nt][c];
                const float sf = h2f(static_cast<uint16_t>(m & 0xFFFFu));
                const float dot = acc[nt][2 * rr + c];
                v[c] = ksym ? sf * fmaf(-koff, cqs[nt][c], dot)
                            : fmaf(sf, dot, h2f(static_cast<uint16_t>(m >> 16)) * cqs[nt][c]);
              }
              if (kone) {
#pragma unroll
                for (int c = 0; c < 2; ++c)
                  if (sdst[nt][c] >= 0 && li < cnt) sc[sdst[nt][c] + li] = v[c] * ascale;
              } else {
                float sum = v[0] + v[1];
                for (int o = 1; o < NGK / 2; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
                if (sdst[nt][0] >= 0 && li < cnt) sc[sdst[nt][0] + li] = sum * ascale;
              }
            }
        }
      }
    }
  }
  __syncthreads();

  // ---- Pass 2: softmax weights, split into the fp16 hi/lo B columns of the value pass. ----
  // Every thread takes tokens tid, tid + kT, ... (at most kMaxChunk / kT): the first version
  // gave one warp per query head and read the value scales from global memory inside that
  // loop, so at G = 1 one warp walked 1024 tokens with a load latency per 32 of them
  // (measured: int2 took 0.82x the int4 time, far from the 0.5x of the bytes).
  float pw[8];  // 2^E per value group
#pragma unroll
  for (int grp = 0; grp < 8; ++grp) {
    float m = 0.f;
    for (int w2 = 0; w2 < kW; ++w2) m = fmaxf(m, smx[w2 * 8 + grp]);
    pw[grp] = m > 0.f && isfinite(m) ? ldexpf(1.f, 14 - ilogbf(m)) : 1.f;
  }
  if (threadIdx.x == 0) {
#pragma unroll
    for (int grp = 0; grp < 8; ++grp) spw[grp] = pw[grp];
  }
  constexpr int KPT = kMaxChunk / kT;  // tokens per thread
  float mg[8];
  {
    float ml[8];
#pragma unroll
    for (int g = 0; g < 8; ++g) {
      ml[g] = -INFINITY;
      if (g < G)
#pragma unroll
        for (int k = 0; k < KPT; ++k) {
          const int i = threadIdx.x + k * kT;
          if (i < cnt) ml[g] = fmaxf(ml[g], sc[g * chunk + i]);
        }
      const float v = warp_max(ml[g]);
      if (lane == 0) rbuf[warp * 32 + g] = v;
    }
  }
  __syncthreads();
#pragma unroll
  for (int g = 0; g < 8; ++g) {
    float m = -INFINITY;
    for (int w2 = 0; w2 < kW; ++w2) m = fmaxf(m, rbuf[w2 * 32 + g]);
    mg[g] = m;
  }
  {
    float sl[8], zl[8];
#pragma unroll
    for (int g = 0; g < 8; ++g) {
      sl[g] = 0.f;
      if (g < G)
#pragma unroll
        for (int k = 0; k < KPT; ++k) {
          const int i = threadIdx.x + k * kT;
          if (i < cnt) {
            const float p = expf(sc[g * chunk + i] - mg[g]);
            sc[g * chunk + i] = p;
            sl[g] += p;
          }
        }
    }
    // Combination c = (g, value group grp): B columns 2c (hi) and 2c + 1 (lo).
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      zl[c] = 0.f;
      if (c < G * NGV) {
        const int g = c / NGV, grp = c % NGV;
        const float pwc = spw_or(pw, grp);
#pragma unroll
        for (int k = 0; k < KPT; ++k) {
          const int i = threadIdx.x + k * kT;
          if (i < cnt) {
            const float p = sc[g * chunk + i];
            const uint32_t m = vmeta[grp * chunk + i];
            const float sf = h2f(static_cast<uint16_t>(m & 0xFFFFu));
            const float zf = vsym ? -voff * sf : h2f(static_cast<uint16_t>(m >> 16));
            const float w = p * sf * pwc;
            const __half hi = __float2half_rn(w);
            const __half lo = __float2half_rn(w - __half2float(hi));
            W[2 * c * chunk + i] = hi;
            W[(2 * c + 1) * chunk + i] = lo;
            zl[c] = fmaf(p, zf, zl[c]);
          }
        }
      }
    }
#pragma unroll
    for (int g = 0; g < 8; ++g) {
      const float v = warp_sum(sl[g]);
      if (lane == 0) rbuf[warp * 32 + 8 + g] = v;
    }
#pragma unroll
    for (int c = 0; c < 8; ++c) {
      const float v = warp_sum(zl[c]);
      if (lane == 0) rbuf[warp * 32 + 16 + c] = v;
    }
  }
  const int cpad = ntiles * 16;
  for (int i = threadIdx.x; i < NCV * (cpad - cnt); i += kT)
    W[(i / (cpad - cnt)) * chunk + cnt + i % (cpad - cnt)] = __float2half_rn(0.f);
  __syncthreads();
  if (threadIdx.x < 8) {
    const int x = threadIdx.x;
    float l = 0.f, z = 0.f;
    for (int w2 = 0; w2 < kW; ++w2) {
      l += rbuf[w2 * 32 + 8 + x];
      z += rbuf[w2 * 32 + 16 + x];
    }
    if (x < G) {
      float m = -INFINITY;
      for (int w2 = 0; w2 < kW; ++w2) m = fmaxf(m, rbuf[w2 * 32 + x]);
      stat[2 * x] = m;
      stat[2 * x + 1] = l;
    }
    if (x < G * NGV) zsum[x] = z;
  }

  // ---- Pass 3: P V on the tensor cores. ----
  {
    float acc[NTV][8][4];
#pragma unroll
    for (int nt = 0; nt < NTV; ++nt)
#pragma unroll
      for (int mt = 0; mt < 8; ++mt)
#pragma unroll
        for (int e = 0; e < 4; ++e) acc[nt][mt][e] = 0.f;
    const uint32_t* vcodes = V.codes + sh * V.max_tokens * V.wpr + gid * NWV;
    for (int tb = warp * UV; tb < ntiles; tb += kW * UV) {
      uint32_t w[UV][4][NWV];
#pragma unroll
      for (int u = 0; u < UV; ++u)
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const int j = begin + (tb + u) * 16 + 4 * t4 + k;
          const bool ok = tb + u < ntiles && j < end;
          if constexpr (NWV == 2) {
            uint2 v = make_uint2(0, 0);
            if (ok) v = __ldg(reinterpret_cast<const uint2*>(vcodes + static_cast<int64_t>(j) * V.wpr));
            w[u][k][0] = v.x; w[u][k][1] = v.y;
          } else {
            w[u][k][0] = ok ? __ldg(vcodes + static_cast<int64_t>(j) * V.wpr) : 0u;
          }
        }
#pragma unroll
      for (int u = 0; u < UV; ++u) {
        if (tb + u >= ntiles) break;
        uint32_t b[NTV][2];
#pragma unroll
        for (int nt = 0; nt < NTV; ++nt) {
          const int col = nt * 8 + gid;
          uint2 v = make_uint2(0, 0);
          if (col < NCV)
            v = *reinterpret_cast<const uint2*>(W + col * chunk + (tb + u) * 16 + 4 * t4);
          b[nt][0] = v.x; b[nt][1] = v.y;
        }
        // p01[c] / p23[c]: (token 4t, 4t+1) / (4t+2, 4t+3) codes of local channel c (0..15).
        uint32_t p01[16], p23[16];
#pragma unroll
        for (int i = 0; i < NWV; ++i) {
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const uint32_t sel = hh ? 0x7632u : 0x5410u;
            const uint32_t x01 = __byte_perm(w[u][0][i], w[u][1][i], sel);
            const uint32_t x23 = __byte_perm(w[u][2][i], w[u][3][i], sel);
            // x: low half = first token's 16 bits, high half = second token's.
            uint32_t t01[8], t23[8];
            word_pairs<BITS>(x01, t01);
            word_pairs<BITS>(x23, t23);
            // word_pairs gives pair j = (bits of code j of each half) for j < NP/2 from x and
            // from x >> 8 for the rest: in a 16-bit half that is codes 0 .. NP-1 in order.
#pragma unroll
            for (int jj = 0; jj < NP; ++jj) {
              const int c = (32 / BITS) * i + NP * hh + jj;
              p01[c] = t01[jj];
              p23[c] = t23[jj];
            }
          }
        }
#pragma unroll
        for (int mt = 0; mt < 8; ++mt)
#pragma unroll
          for (int nt = 0; nt < NTV; ++nt)
            mma16816(acc[nt][mt], p01[2 * mt], p01[2 * mt + 1], p23[2 * mt], p23[2 * mt + 1],
                     b[nt][0], b[nt][1]);
      }
    }
    // acc[nt][mt]: rows = channels 16 gid + 2 mt (+1 for row gid + 8), cols 2t4 (hi), 2t4+1 (lo)
    // of combination k = nt * 4 + t4 = (g, value group).
#pragma unroll
    for (int nt = 0; nt < NTV; ++nt) {
      const int k = nt * 4 + t4;
      if (k < G * NGV) {
        const int g = k / NGV, grp = k % NGV;
        const float inv = 1.f / spw[grp];  // a power of two: exact
#pragma unroll
        for (int mt = 0; mt < 8; ++mt)
#pragma unroll
          for (int rr = 0; rr < 2; ++rr) {
            const int ch = 16 * gid + 2 * mt + rr;
            if (ch / V.group == grp)
              red[(warp * G + g) * kD + ch] = (acc[nt][mt][2 * rr] + acc[nt][mt][2 * rr + 1]) * inv;
          }
      }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * kD; i += kT) {
    const int g = i / kD, d = i % kD;
    float v = 0.f;
    for (int w2 = 0; w2 < kW; ++w2) v += red[(w2 * G + g) * kD + d];
    part_o[((head0 + g) * splits + s) * kD + d] = v + zsum[g * NGV + d / V.group];
  }
  if (threadIdx.x < G) {
    part_ml[((head0 + threadIdx.x) * splits + s) * 2] = stat[2 * threadIdx.x];
    part_ml[((head0 + threadIdx.x) * splits + s) * 2 + 1] = stat[2 * threadIdx.x + 1];
  }
}

size_t smem_bytes(int G, int ngv, int ncv, int chunk) {
  return (static_cast<size_t>(G) * chunk + static_cast<size_t>(kW) * G * kD + 2 * kMaxCols +
          2 * kMaxGroup + kW * 8 + 8 + kW * 32) * sizeof(float) +
         static_cast<size_t>(ngv) * chunk * sizeof(uint32_t) +
         static_cast<size_t>(ncv) * chunk * sizeof(__half);
}

template <int BITS, int NTK, int NTV, int MINB = 3, bool HOIST = false>
cudaError_t launch(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int chunk,
                   int splits, float* part_o, float* part_ml, cudaStream_t stream) {
  const int G = a.n_heads / k.kv_heads;
  const int ncv = 2 * G * (kD / v.group);
  const size_t smem = smem_bytes(G, kD / v.group, ncv, chunk);
  // U: key tiles (16 tokens) per warp loaded before use; UV the same for values.
  constexpr int U = 4, UV = NTV == 1 ? 4 : 2;
  auto* kernel = mma_decode_kernel<BITS, NTK, NTV, U, UV, MINB, HOIST>;
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  kernel<<<dim3(splits, k.kv_heads, a.rows), kT, smem, stream>>>(k, v, a, chunk, splits, part_o,
                                                                  part_ml);
  if ((e = launch_status()) != cudaSuccess) return e;
  splitk_combine_kernel<__half><<<dim3(a.n_heads, a.rows), 128, 0, stream>>>(
      part_o, part_ml, static_cast<__half*>(a.out), a.n_heads, kD, splits);
  return launch_status();
}

template <int BITS>
cudaError_t dispatch(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int chunk,
                     int splits, float* o, float* ml, cudaStream_t stream) {
  const int G = a.n_heads / k.kv_heads;
  const int ntk = (G * (kD / k.group) + 7) / 8, ntv = (2 * G * (kD / v.group) + 7) / 8;
  // One n-tile each way: <= 128 registers for 4 blocks per SM (measured faster than 3 blocks
  // at ~168 registers: llama2-7b b8 128K int4 3903 vs 5013 us, H100, 2026-11-22); variant 5
  // (KVQ_KV_DECODE=mma3, benchmarks) keeps the 3-block build for comparison.
  if (ntk == 1 && ntv == 1 && a.variant == 5) return launch<BITS, 1, 1, 3>(k, v, a, chunk, splits, o, ml, stream);
  // Variant 6 (KVQ_KV_DECODE=mma-hoist): the key loop with its column constants hoisted
  // (HOIST, notes/kv-cuda-perf.md next step 1); compiled, not yet measured, so not default.
  if (ntk == 1 && ntv == 1 && a.variant == 6) return launch<BITS, 1, 1, 4, true>(k, v, a, chunk, splits, o, ml, stream);
  if (ntk == 1 && ntv == 1) return launch<BITS, 1, 1, 4>(k, v, a, chunk, splits, o, ml, stream);
  if (ntk == 1) return launch<BITS, 1, 2>(k, v, a, chunk, splits, o, ml, stream);
  if (ntv == 1) return launch<BITS, 2, 1>(k, v, a, chunk, splits, o, ml, stream);
  return launch<BITS, 2, 2>(k, v, a, chunk, splits, o, ml, stream);
}

bool side_fits(const PackedSide& s) {
  if (s.format != KvFormat::kTokenAsym && s.format != KvFormat::kTokenSym) return false;
  if (s.resid_cap > 0 || s.n_sink > 0 || s.outliers || s.inv_s || s.lut) return false;
  return s.head_dim == kD && (s.bits == 2 || s.bits == 4) && s.group >= 16 && s.group <= kD &&
         kD % s.group == 0;
}

}  // namespace

bool fits(Act act, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a) {
  if (act != Act::kF16 || a.inv_freq || k.bits != v.bits || k.kv_heads <= 0) return false;
  if (a.n_heads % k.kv_heads != 0) return false;
  const int G = a.n_heads / k.kv_heads;
  if ((a.variant == 0 || a.variant == 7) && stream_kivi_fits(k, v, G)) return true;
  if (!side_fits(k) || !side_fits(v)) return false;
  return G <= kMaxGroup && G * (kD / k.group) <= kMaxCols && 2 * G * (kD / v.group) <= kMaxCols;
}

void plan(int kv_heads, int rows, int G, int max_len, int sm_count, int* chunk, int* splits) {
  // >= 8 blocks per SM worth of (chunk, kv head, row) work: 128-thread blocks, 3 per SM by
  // registers, so at least 2-3 waves; chunks of 256..1024 tokens (the combine reads
  // splits x (128 + 2) floats per head: < 1% of the cache bytes at 1024 tokens per chunk).
  const int per_split = std::max(1, kv_heads * rows);
  const int want = std::max(1, (8 * std::max(sm_count, 1) + per_split - 1) / per_split);
  int c = (max_len + want - 1) / want;
  c = (c + 63) / 64 * 64;
  const int cap = G > 4 ? kMaxChunk / 2 : kMaxChunk;
  c = std::max(kMinChunk, std::min(c, cap));
  *chunk = c;
  *splits = (max_len + c - 1) / c;
}

int max_splits(int kv_heads, int rows, int G, int max_len, int sm_count) {
  int chunk = 0, splits = 0;
  plan(kv_heads, rows, G, max_len, sm_count, &chunk, &splits);
  return std::max(splits, stream_max_splits(max_len));
}

cudaError_t run(Act act, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a,
                int max_len, int sm_count, float* part_o, float* part_ml, cudaStream_t stream) {
  if (!fits(act, k, v, a)) return cudaErrorInvalidValue;
  // Auto (0) and KVQ_KV_DECODE=mma-stream (7): the staged, online-softmax kernel (version 4);
  // mma (4), mma3 (5) and mma-hoist (6) keep the version-3 builds for comparison.
  if (a.variant == 0 || a.variant == 7) return stream_run(k, v, a, max_len, sm_count, part_o, part_ml, stream);
  int chunk = 0, splits = 0;
  plan(k.kv_heads, a.rows, a.n_heads / k.kv_heads, max_len, sm_count, &chunk, &splits);
  if (k.bits == 4) return dispatch<4>(k, v, a, chunk, splits, part_o, part_ml, stream);
  return dispatch<2>(k, v, a, chunk, splits, part_o, part_ml, stream);
}

}  // namespace kvq::kern::mma_decode
