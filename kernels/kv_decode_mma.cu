// Decode attention over packed uniform per-token KV caches (intB axis=token, sym or asym,
// 2 or 4 bits, head_dim 128) and KIVI caches (G <= 2) with the dot products on the tensor
// cores (mma.sync m16n8k16, fp16 inputs, fp32 accumulation). Two builds live here:
// version 3 (mma_decode_kernel: codes loaded into registers, three passes per 1024-token
// chunk; KVQ_KV_DECODE=mma|mma3|mma-hoist) and version 4 (stream_kernel, the default: the
// chunk staged in shared memory with cp.async, online softmax over 256-token stages; its
// design, KIVI factorisation and measured instruction counts are in the comments above it
// and in notes/kv-cuda-perf.md; H100 2026-11-22: int4 MHA 87-98% of copy from 32K at batch
// 8 / 128K at batch 1, 3.2-3.8x the fp16 kernel; int2 issue-bound at 39-64%).
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
#include "kernels/prefill_common.cuh"

namespace kvq::kern::mma_decode {
namespace {

constexpr int kT = 128;             // threads per block
constexpr int kW = kT / 32;         // warps
constexpr int kD = 128;             // head_dim served
constexpr int kMaxChunk = 1024;     // tokens per block (smem: scores + weights)
constexpr int kMinChunk = 256;
constexpr int kMaxCols = 16;        // B columns (two n-tiles)

__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

__device__ __forceinline__ void mma16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                         uint32_t a3, uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
}

__device__ __forceinline__ uint32_t h2_bits(__half2 h) {
  return *reinterpret_cast<uint32_t*>(&h);
}
__device__ __forceinline__ __half2 bits_h2(uint32_t u) {
  return *reinterpret_cast<__half2*>(&u);
}
__device__ __forceinline__ uint32_t pack_h2(float lo, float hi) {
  return h2_bits(__floats2half2_rn(lo, hi));
}

// Pair j of the 16-bit halves of x: the code at bits [BITS*j, BITS*j + BITS) of each half
// (j < 8 / BITS) as exact fp16 integers, low half first.
template <int BITS, int J>
__device__ __forceinline__ uint32_t pair_at(uint32_t x) {
  constexpr uint32_t m = ((1u << BITS) - 1u) << (BITS * J);
  // (1024 + c 2^k) * 2^-k - 1024 * 2^-k = c, both steps exact; constants as fp16 bits.
  constexpr uint32_t mul = static_cast<uint32_t>(15 - BITS * J) << 10;             // 2^-k
  constexpr uint32_t add = 0x8000u | (static_cast<uint32_t>(25 - BITS * J) << 10);  // -2^(10-k)
  // (x & mask) | 0x64006400 as one LOP3: written in C++, ptxas split it into an AND and an OR
  // with an immediate each (SASS of the H100 run of 2026-11-22: 67 LOP3 for 32 pairs per key
  // tile); in PTX with both constants it keeps one LOP3 and puts one constant in a register.
  uint32_t hb;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(hb) : "r"(x), "n"(m | (m << 16)), "n"(0x64006400u));
  const __half2 h = bits_h2(hb);
  return h2_bits(__hfma2(h, bits_h2(mul | (mul << 16)), bits_h2(add | (add << 16))));
}

// The NP = 16 / BITS fp16 pairs of a word: pair j = (code j, code j + NP) of the word's
// bit stream (code i at bit BITS * i).
template <int BITS>
__device__ __forceinline__ void word_pairs(uint32_t w, uint32_t* out) {
  const uint32_t w8 = w >> 8;
  if constexpr (BITS == 4) {
    out[0] = pair_at<4, 0>(w);  out[1] = pair_at<4, 1>(w);
    out[2] = pair_at<4, 0>(w8); out[3] = pair_at<4, 1>(w8);
  } else {
    static_assert(BITS == 2, "2 or 4 bits");
    out[0] = pair_at<2, 0>(w);  out[1] = pair_at<2, 1>(w);
    out[2] = pair_at<2, 2>(w);  out[3] = pair_at<2, 3>(w);
    out[4] = pair_at<2, 0>(w8); out[5] = pair_at<2, 1>(w8);
    out[6] = pair_at<2, 2>(w8); out[7] = pair_at<2, 3>(w8);
  }
}

// Key scores of one 16-token tile on the tensor cores, the same in every build of the key
// pass: w[rr] holds the lane's code words of tile row gid + 8 rr, bq the q B-fragments
// (n-tile nt, k-step kk); acc[nt] = codes x q for key n-tile nt, fp32 from zero, in the mma
// accumulator layout (row gid, cols 2 t4, 2 t4 + 1; row gid + 8, same cols).
template <int BITS, int NWK, int NTK>
__device__ __forceinline__ void key_tile_dot(const uint32_t (&w)[2][NWK], const uint32_t (&bq)[NTK][8][2],
                                             float (&acc)[NTK][4]) {
  constexpr int NP = 16 / BITS;  // fp16 pairs per code word
  uint32_t pr[2][16];
#pragma unroll
  for (int rr = 0; rr < 2; ++rr)
#pragma unroll
    for (int i = 0; i < NWK; ++i) word_pairs<BITS>(w[rr][i], &pr[rr][i * NP]);
#pragma unroll
  for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = 0.f;
#pragma unroll
  for (int kk = 0; kk < 8; ++kk)
#pragma unroll
    for (int nt = 0; nt < NTK; ++nt)
      mma16816(acc[nt], pr[0][2 * kk], pr[1][2 * kk], pr[0][2 * kk + 1], pr[1][2 * kk + 1], bq[nt][kk][0],
               bq[nt][kk][1]);
}

// pw[grp] for a run-time grp without indexing a register array (which would go to local
// memory): a chain of selects.
__device__ __forceinline__ float spw_or(const float (&pw)[8], int grp) {
  float v = pw[0];
#pragma unroll
  for (int i = 1; i < 8; ++i) v = grp == i ? pw[i] : v;
  return v;
}

// Channel (within the lane's 32-channel block) of the low code of key pair p (0..15).
template <int BITS>
__device__ __forceinline__ int key_pair_channel(int p) {
  constexpr int NP = 16 / BITS, CPW = 32 / BITS;
  return (p / NP) * CPW + p % NP;  // the high code is this + NP
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
#pragma unroll
    for (int nt = 0; nt < NTK; ++nt) {
      const int col = nt * 8 + gid;
      const bool ok = col < NCK;
      const int g = ok ? col / NGK : 0, grp = ok ? col % NGK : 0;
#pragma unroll
      for (int kk = 0; kk < 8; ++kk)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int ca = 32 * t4 + key_pair_channel<BITS>(2 * kk + h), cb = ca + NP;
          const float qa = ok && ca / K.group == grp ? qf[g * kD + ca] : 0.f;
          const float qb = ok && cb / K.group == grp ? qf[g * kD + cb] : 0.f;
          bq[nt][kk][h] = pack_h2(qa, qb);  // fp16 -> fp32 -> fp16: exact
        }
    }
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

// ---- Version 4: the chunk staged in shared memory, online softmax over 256-token stages ----
// Why (notes/kv-cuda-perf.md, version 3): the v3 kernel loads codes into registers, so the
// bytes in flight per warp are capped by the register budget (<= 128 per thread for 4
// blocks per SM), every pass waits for its own loads, and its three passes per 1024-token
// chunk leave the memory idle while a block does its softmax. Here every byte goes through
// cp.async into shared memory: while a block computes stage j, the key codes, key meta and
// value meta of stage j + 1 are in flight (double-buffered), and the value codes of stage
// j + 1 are issued as soon as stage j's value pass has read its buffer (single-buffered, so
// that 4 blocks of 128 threads fit an SM at G = 1: ~55 KB each at 4 bits). The softmax is
// online across stages (running max and sum per query head, the P V accumulators of the
// mma stay in registers and are rescaled by exp(m_old - m_new) * 2^(E_new - E_old) per
// stage, E the weights' exponent per value group), so a block can walk thousands of tokens
// and the split-K combine reads a few partials per head instead of one per 1024 tokens.
// The lane's key columns (head, group, q sum, score row) are computed once per block
// (the v3 SASS spent 5 of its 8.6 instructions per key element rebuilding them per tile).
constexpr int kS = 256;  // tokens per stage

__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src) : "memory");
}

// n 16-byte pieces from gsrc (16-byte aligned) to sdst, spread over the block's threads.
__device__ __forceinline__ void stage16(void* sdst, const void* gsrc, int n) {
  const uint32_t d = smem_addr(sdst);
  const char* g = static_cast<const char*>(gsrc);
  for (int i = threadIdx.x; i < n; i += kT) cp_async16(d + 16 * i, g + 16 * i, 16);
}

// Halves g[0, n) to s[off, off + n), off = 1 when g is 2 bytes past a 4-byte boundary (then
// the half before g, which lies in the same allocation because allocations are 256-byte
// aligned, is copied too); 4-byte copies, and a plain load for a last half whose word
// would reach past g + n.
__device__ __forceinline__ void stage_halves(uint16_t* s, const uint16_t* g, int n, int off) {
  const uint16_t* g4 = g - off;
  const int nw = (n + off) >> 1;
  const uint32_t d = smem_addr(s);
  for (int i = threadIdx.x; i < nw; i += kT) cp_async4(d + 4 * i, g4 + 2 * i);
  if (((n + off) & 1) && threadIdx.x == kT - 1) s[off + n - 1] = __ldg(g + n - 1);
}

// v[idx] for a run-time idx < N without indexing a register array (a chain of selects).
template <int N>
__device__ __forceinline__ float sel8(const float (&v)[N], int idx) {
  float x = v[0];
#pragma unroll
  for (int i = 1; i < N; ++i) x = idx == i ? v[i] : x;
  return x;
}

// The (scale, zero) meta of one group of a staged token: halves m[0] (scale) and m[1]
// (zero, asym only). Asym rows have an even number of halves (2 per group) and start on a
// 4-byte boundary in global memory, so the stage copy has no shift and (scale, zero) is one
// 32-bit load; sym rows may be odd-aligned (one half per group).
__device__ __forceinline__ uint32_t meta_at(const uint16_t* m, bool sym) {
  return sym ? static_cast<uint32_t>(m[0]) : *reinterpret_cast<const uint32_t*>(m);
}

// Halves of a staged meta buffer (kS tokens of mpr halves, the shift half, 16-byte multiple).
__host__ __device__ inline int meta_stage_halves(int mpr) { return (kS * mpr + 2 + 7) / 8 * 8; }
// The key side's: KIVI keys stage the (scale, zero) rows of kS / group token groups.
__host__ __device__ inline int key_meta_stage_halves(const PackedSide& K) {
  return K.format == KvFormat::kChannelAsym ? kS / K.group * 2 * kD : meta_stage_halves(K.mpr);
}

// KONE: one channel group on both sides (group = 128: the default per-token codes), so the
// key column of B is the query head, the value combination is the head, and no per-column
// group bookkeeping is needed. GM >= G bounds the per-head loops of the softmax step: the
// first build unrolled them to 8 heads and 8 value groups whatever G was, and the stage's
// 32 warp reductions (160 SHFL), its max/exp/split loops and their predicates cost about as
// many instructions per thread as the key and value tiles (SASS, H100 run 1 of 2026-11-22).
// 4 blocks per SM (<= 128 registers) for one n-tile each way; the two-n-tile builds keep
// 64 accumulators and spill at 128 registers (ptxas), so they take 3 (<= 168).
// KCH: KIVI keys (kChannelAsym: per-channel (scale, zero) per group of K.group tokens), for
// the tokens whose key and value are both quantized (j < len - resid_cap); kivi_tail_kernel
// does the rest. Per key group the B fragments are rebuilt from q' s, q' = q 2^-Eq (|q'| < 1,
// so q' s cannot overflow fp16), split into fp16 hi = RN(q' s) (HMUL2) and lo = RN(q' s - hi)
// (one HFMA2, fused) in two B columns per head; hi + lo = q' s exactly (q' s has <= 22
// significant bits) unless q' or lo fall below the fp16 normal range (<= 2^-25 each, the
// test's extra KIVI term). score = 2^Eq (acc_hi + acc_lo) + sum_d q_d z_d.
// NGVT > 0: the value group count at compile time (KIVI's default 32-channel value groups:
// 4), so the softmax step's per-group loops stop at NGVT instead of 8.
template <int BITS, int NTK, int NTV, bool KONE, int GM, bool KCH, int NGVT = 0>
__global__ void __launch_bounds__(kT, NTK == 1 && NTV == 1 ? 4 : 3)
stream_kernel(PackedSide K, PackedSide V, PackedDecodeArgs a, int span, int splits, float* part_o,
              float* part_ml) {
  constexpr int NP = 16 / BITS;   // fp16 pairs per code word
  constexpr int NWK = BITS;       // words per 32-code key block (a lane's share of a key row)
  constexpr int NWV = BITS / 2;   // words per 16-channel value run
  constexpr int RW = 4 * BITS;    // words per (token, head) row at head_dim 128
  constexpr int KPT = kS / kT;    // softmax tokens per thread per stage
  constexpr int GA = GM;                // head loop bound (G <= GM)
  constexpr int VA = KONE ? 1 : NGVT > 0 ? NGVT : 8;        // value group loop bound
  constexpr int CA = KONE ? GM : NGVT > 0 ? GM * NGVT : 8;  // (head, value group) combination loop bound
  static_assert(CA <= 8, "rbuf holds 8 combinations");
  extern __shared__ __align__(16) float sm[];
  const int G = a.n_heads / K.kv_heads;
  const int NGK = KONE || KCH ? 1 : kD / K.group, NGV = KONE ? 1 : NGVT > 0 ? NGVT : kD / V.group;
  const int NCK = G * NGK, NCV = 2 * G * NGV;
  const int kmpr = K.mpr, vmpr = V.mpr;
  const int kms = key_meta_stage_halves(K), vms = meta_stage_halves(vmpr);
  uint32_t* kc_s = reinterpret_cast<uint32_t*>(sm);        // [2][kS][RW] key codes
  uint32_t* vc_s = kc_s + 2 * kS * RW;                     // [kS][RW] value codes
  float* sc = reinterpret_cast<float*>(vc_s + kS * RW);    // [G][kS] scores, then p
  float* qsum = sc + G * kS;                               // [16] sum of q per key column
  float* zsum = qsum + 16;                                 // [16] running sum p z per (g, value group)
  float* lrun = zsum + 16;                                 // [8] running sum of p per head
  float* rbuf = lrun + 8;                                  // [kW][40] per-warp partials
  float* qx = rbuf + kW * 40;                              // KCH: [2][kD] q (fp32)
  uint16_t* km_s = reinterpret_cast<uint16_t*>(qx + (KCH ? 2 * kD : 0));  // [2][kms] key meta
  uint16_t* vm_s = km_s + 2 * kms;                               // [2][vms] value meta
  __half* W = reinterpret_cast<__half*>(vm_s + 2 * vms);         // [NCV][kS] value weights hi/lo

  const int s = blockIdx.x, kvh = blockIdx.y, r = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gid = lane >> 2, t4 = lane & 3;
  const int len = a.len[r];
  const int begin = s * span;
  const int end = min(KCH ? len - K.resid_cap : len, begin + span);
  const int64_t head0 = static_cast<int64_t>(r) * a.n_heads + kvh * G;
  if (begin >= end) {
    for (int i = threadIdx.x; i < G * kD; i += kT) part_o[((head0 + i / kD) * splits + s) * kD + i % kD] = 0.f;
    if (threadIdx.x < G) {
      part_ml[((head0 + threadIdx.x) * splits + s) * 2] = -INFINITY;
      part_ml[((head0 + threadIdx.x) * splits + s) * 2 + 1] = 0.f;
    }
    return;
  }
  const int64_t sh = static_cast<int64_t>(a.slot[r]) * K.kv_heads + kvh;
  const uint32_t* kcg = K.codes + sh * K.max_tokens * RW;
  const uint32_t* vcg = V.codes + sh * V.max_tokens * RW;
  const uint16_t* kmg = KCH ? K.cmeta + sh * (K.max_tokens / K.group) * 2 * kD : K.meta + sh * K.max_tokens * kmpr;
  const uint16_t* vmg = V.meta + sh * V.max_tokens * vmpr;
  // Stage starts are multiples of kS tokens, so the 2-byte shift is the block's.
  const int koff =
      KCH ? 0 : static_cast<int>((reinterpret_cast<uintptr_t>(kmg + static_cast<int64_t>(begin) * kmpr) >> 1) & 1u);
  const int voffs = static_cast<int>((reinterpret_cast<uintptr_t>(vmg + static_cast<int64_t>(begin) * vmpr) >> 1) & 1u);
  const int nsub = (end - begin + kS - 1) / kS;
  auto issue_a = [&](int j) {  // key codes, key meta, value meta of stage j
    const int t0 = begin + j * kS, n = min(kS, end - t0);
    stage16(kc_s + (j & 1) * kS * RW, kcg + static_cast<int64_t>(t0) * RW, n * RW / 4);
    if constexpr (KCH)  // the (scale, zero) rows of the stage's key groups (t0 is group-aligned)
      stage16(km_s + (j & 1) * kms, kmg + static_cast<int64_t>(t0 / K.group) * 2 * kD,
              (n + K.group - 1) / K.group * (4 * kD / 16));
    else
      stage_halves(km_s + (j & 1) * kms, kmg + static_cast<int64_t>(t0) * kmpr, n * kmpr, koff);
    stage_halves(vm_s + (j & 1) * vms, vmg + static_cast<int64_t>(t0) * vmpr, n * vmpr, voffs);
  };
  auto issue_b = [&](int j) {  // value codes of stage j
    const int t0 = begin + j * kS, n = min(kS, end - t0);
    stage16(vc_s, vcg + static_cast<int64_t>(t0) * RW, n * RW / 4);
  };
  issue_a(0);
  cp_async_commit();
  issue_b(0);
  cp_async_commit();

  // q staged in sc (free until the first key pass), per-column sums, B fragments.
  const uint16_t* q = static_cast<const uint16_t*>(a.q) + head0 * kD;  // [G][kD] fp16 bits
  float* qf = sc;
  for (int i = threadIdx.x; i < G * kD; i += kT) qf[i] = h2f(q[i]);
  if (threadIdx.x < 16) {
    zsum[threadIdx.x] = 0.f;
    if (threadIdx.x < 8) lrun[threadIdx.x] = 0.f;
  }
  __syncthreads();
  uint32_t qk[8][2];  // KCH: q' of the lane's B column head, (channel ca, cb) pairs
  float qunscale = 0.f;
  if constexpr (KCH) {
    // 2^-Eq per head with max |q| 2^-Eq < 1 (in qsum), q copied to qx (sc is overwritten).
    for (int i = threadIdx.x; i < G * kD; i += kT) qx[i] = qf[i];
    if (warp < G) {
      float mq = 0.f;
      for (int d = lane; d < kD; d += 32) mq = fmaxf(mq, fabsf(qf[warp * kD + d]));
      mq = warp_max(mq);
      if (lane == 0) qsum[warp] = mq > 0.f ? ldexpf(1.f, -(ilogbf(mq) + 1)) : 1.f;
    }
    __syncthreads();
    const int g = gid >> 1;
    const bool ok = g < G;
    const float qsc = ok ? qsum[g] : 0.f;
#pragma unroll
    for (int kk = 0; kk < 8; ++kk)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int ca = 32 * t4 + key_pair_channel<BITS>(2 * kk + h), cb = ca + NP;
        qk[kk][h] = ok ? pack_h2(qf[g * kD + ca] * qsc, qf[g * kD + cb] * qsc) : 0u;
      }
    qunscale = t4 < G ? 1.f / qsum[t4] : 0.f;  // a power of two: exact
  } else {
    for (int col = warp; col < NCK; col += kW) {
      const int g = col / NGK, grp = col % NGK;
      float acc = 0.f;
      for (int d = lane; d < K.group; d += 32) acc += qf[g * kD + grp * K.group + d];
      acc = warp_sum(acc);
      if (lane == 0) qsum[col] = acc;
    }
  }
  uint32_t bq[NTK][8][2];
#pragma unroll
  for (int nt = 0; nt < NTK; ++nt) {
    const int col = nt * 8 + gid;
    const bool ok = col < NCK;
    const int g = ok ? col / NGK : 0, grp = ok ? col % NGK : 0;
#pragma unroll
    for (int kk = 0; kk < 8; ++kk)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int ca = 32 * t4 + key_pair_channel<BITS>(2 * kk + h), cb = ca + NP;
        const float qa = ok && ca / K.group == grp ? qf[g * kD + ca] : 0.f;
        const float qb = ok && cb / K.group == grp ? qf[g * kD + cb] : 0.f;
        bq[nt][kk][h] = pack_h2(qa, qb);  // fp16 -> fp32 -> fp16: exact
      }
  }
  __syncthreads();  // qsum written; qf (sc) read no more
  // The lane's key columns, once per block.
  const bool ksym = K.format == KvFormat::kTokenSym;
  const float koffv = static_cast<float>(1 << (BITS - 1));
  int moff[NTK][2];   // halves from a token's meta row to the column's group
  float cqs[NTK][2];  // sum of q over the column's group
  int sdst[NTK][2];   // score row (g * kS) this lane writes for the column, -1: none
#pragma unroll
  for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int col = nt * 8 + 2 * t4 + c;
      const bool ok = col < NCK;
      const int grp = ok ? col % NGK : 0;
      moff[nt][c] = ksym ? grp : 2 * grp;
      cqs[nt][c] = ok ? qsum[col] : 0.f;
      if (KONE || KCH || NGK == 1)  // one key group: a column per head (KCH: unused)
        sdst[nt][c] = ok ? col * kS : -1;
      else
        sdst[nt][c] = c == 0 && ok && t4 % max(1, NGK / 2) == 0 ? (col / NGK) * kS : -1;
    }
  const float ascale = a.scale;
  const bool vsym = V.format == KvFormat::kTokenSym;
  const float voff = static_cast<float>(1 << (BITS - 1));
  const int vgroup = V.group;

  float m_run[GA], pw_run[VA];
#pragma unroll
  for (int g = 0; g < GA; ++g) m_run[g] = -INFINITY;
#pragma unroll
  for (int grp = 0; grp < VA; ++grp) pw_run[grp] = 1.f;
  float acc[NTV][8][4];
#pragma unroll
  for (int nt = 0; nt < NTV; ++nt)
#pragma unroll
    for (int mt = 0; mt < 8; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][mt][e] = 0.f;

  for (int j = 0; j < nsub; ++j) {
    const int cnt = min(kS, end - begin - j * kS);
    const int ntiles = (cnt + 15) / 16;
    if (j + 1 < nsub) issue_a(j + 1);
    cp_async_commit();
    cp_async_wait<2>();  // stage j's keys and value meta (group A_j) have landed
    __syncthreads();

    // ---- Keys: scores of the stage on the tensor cores. ----
    if constexpr (KCH) {
      // A warp takes whole key groups (tpg tiles each), so B is rebuilt once per group.
      const uint32_t* kcb = kc_s + (j & 1) * kS * RW + t4 * NWK;
      const int tpg = K.group / 16;
      const int ngr = (ntiles + tpg - 1) / tpg;
      const int part = gid & 1;  // this lane's B column: hi (0) or lo (1) of head gid / 2
      for (int gi = warp; gi < ngr; gi += kW) {
        const uint16_t* cmb = km_s + (j & 1) * kms + gi * 2 * kD;  // [kD][2] (scale, zero)
        uint32_t bk[1][8][2];
#pragma unroll
        for (int kk = 0; kk < 8; ++kk)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int ca = 32 * t4 + key_pair_channel<BITS>(2 * kk + h), cb = ca + NP;
            const __half2 sp = bits_h2(static_cast<uint32_t>(cmb[2 * ca]) | (static_cast<uint32_t>(cmb[2 * cb]) << 16));
            const __half2 qq = bits_h2(qk[kk][h]);
            const __half2 hi = __hmul2(qq, sp);
            bk[0][kk][h] = part ? h2_bits(__hfma2(qq, sp, __hneg2(hi))) : h2_bits(hi);
          }
        float zq[GA];  // sum_d q_d z_d of the group, per head
#pragma unroll
        for (int g = 0; g < GA; ++g) {
          float z = 0.f;
          if (g < G)
#pragma unroll
            for (int e = 0; e < 4; ++e) z = fmaf(qx[g * kD + 4 * lane + e], h2f(cmb[2 * (4 * lane + e) + 1]), z);
          zq[g] = warp_sum(z);
        }
        const float zmine = sel8(zq, t4);
        for (int tt = 0; tt < tpg; ++tt) {
          const int tb = gi * tpg + tt;
          if (tb >= ntiles) break;
          uint32_t w[2][NWK];
#pragma unroll
          for (int rr = 0; rr < 2; ++rr) {
            const int li = tb * 16 + gid + 8 * rr;
            if constexpr (NWK == 4) {
              const uint4 v = *reinterpret_cast<const uint4*>(kcb + li * RW);
              w[rr][0] = v.x; w[rr][1] = v.y; w[rr][2] = v.z; w[rr][3] = v.w;
            } else {
              const uint2 v = *reinterpret_cast<const uint2*>(kcb + li * RW);
              w[rr][0] = v.x; w[rr][1] = v.y;
            }
          }
          float dots[1][4];
          key_tile_dot<BITS>(w, bk, dots);
          // dots[0]: (row gid, cols 2t4 = hi, 2t4 + 1 = lo of head t4), (row gid + 8, same).
#pragma unroll
          for (int rr = 0; rr < 2; ++rr) {
            const int li = tb * 16 + gid + 8 * rr;
            const float v = fmaf(dots[0][2 * rr] + dots[0][2 * rr + 1], qunscale, zmine);
            if (t4 < G && li < cnt) sc[t4 * kS + li] = v * ascale;
          }
        }
      }
    } else {
      const uint32_t* kcb = kc_s + (j & 1) * kS * RW + t4 * NWK;
      const uint16_t* kmb = km_s + (j & 1) * kms + koff;
      for (int tb = warp; tb < ntiles; tb += kW) {
        uint32_t w[2][NWK];
        uint32_t mk[2][NTK][2];
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          const int li = tb * 16 + gid + 8 * rr;
          if constexpr (NWK == 4) {
            const uint4 v = *reinterpret_cast<const uint4*>(kcb + li * RW);
            w[rr][0] = v.x; w[rr][1] = v.y; w[rr][2] = v.z; w[rr][3] = v.w;
          } else {
            const uint2 v = *reinterpret_cast<const uint2*>(kcb + li * RW);
            w[rr][0] = v.x; w[rr][1] = v.y;
          }
          const uint16_t* mrow = kmb + li * kmpr;
          if constexpr (KONE) {
            const uint32_t m = meta_at(mrow, ksym);
#pragma unroll
            for (int nt = 0; nt < NTK; ++nt) mk[rr][nt][0] = mk[rr][nt][1] = m;
          } else {
#pragma unroll
            for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
              for (int c = 0; c < 2; ++c) mk[rr][nt][c] = meta_at(mrow + moff[nt][c], ksym);
          }
        }
        float dots[NTK][4];
        key_tile_dot<BITS>(w, bq, dots);
        // dots[nt]: (row gid, cols 2t4, 2t4+1), (row gid+8, same cols). With one head (KONE,
        // GM = 1) only column 0 is ever used: NC = 1 drops the other column's epilogue.
        constexpr int NC = KONE && GM == 1 ? 1 : 2;
#pragma unroll
        for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
          for (int rr = 0; rr < 2; ++rr) {
            const int li = tb * 16 + gid + 8 * rr;
            float v[2];
#pragma unroll
            for (int c = 0; c < NC; ++c) {
              const uint32_t m = mk[rr][nt][c];
              const float sf = h2f(static_cast<uint16_t>(m & 0xFFFFu));
              const float dot = dots[nt][2 * rr + c];
              v[c] = ksym ? sf * fmaf(-koffv, cqs[nt][c], dot)
                          : fmaf(sf, dot, h2f(static_cast<uint16_t>(m >> 16)) * cqs[nt][c]);
            }
            if (KONE || NGK == 1) {  // a column per head (key group 128; value groups may differ)
#pragma unroll
              for (int c = 0; c < NC; ++c)
                if (sdst[nt][c] >= 0 && li < cnt) sc[sdst[nt][c] + li] = v[c] * ascale;
            } else {
              float sum = v[0] + v[1];
              for (int o = 1; o < NGK / 2; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
              if (sdst[nt][0] >= 0 && li < cnt) sc[sdst[nt][0] + li] = sum * ascale;
            }
          }
      }
    }
    __syncthreads();

    // ---- Softmax of the stage against the running max; weights split into fp16 hi/lo. ----
    const uint16_t* vmb = vm_s + (j & 1) * vms + voffs;
    float alpha[GA], pwn[VA];
    {
#pragma unroll
      for (int g = 0; g < GA; ++g) {
        float ml = -INFINITY;
        if (g < G)
#pragma unroll
          for (int k = 0; k < KPT; ++k) {
            const int i = threadIdx.x + k * kT;
            if (i < cnt) ml = fmaxf(ml, sc[g * kS + i]);
          }
        const float v = warp_max(ml);
        if (lane == 0) rbuf[warp * 40 + g] = v;
      }
#pragma unroll
      for (int grp = 0; grp < VA; ++grp) {
        float mx = 0.f;
        if (grp < NGV)
#pragma unroll
          for (int k = 0; k < KPT; ++k) {
            const int i = threadIdx.x + k * kT;
            if (i < cnt) mx = fmaxf(mx, fabsf(h2f(vmb[i * vmpr + (vsym ? grp : 2 * grp)])));
          }
        const float v = warp_max(mx);
        if (lane == 0) rbuf[warp * 40 + 8 + grp] = v;
      }
    }
    __syncthreads();
    float mnew[GA];
#pragma unroll
    for (int g = 0; g < GA; ++g) {
      float m = m_run[g];
#pragma unroll
      for (int w2 = 0; w2 < kW; ++w2) m = fmaxf(m, rbuf[w2 * 40 + g]);
      mnew[g] = m;
      alpha[g] = g < G ? expf(m_run[g] - m) : 0.f;  // m_run = -inf on the first stage: 0
    }
#pragma unroll
    for (int grp = 0; grp < VA; ++grp) {
      float mx = 0.f;
#pragma unroll
      for (int w2 = 0; w2 < kW; ++w2) mx = fmaxf(mx, rbuf[w2 * 40 + 8 + grp]);
      // 2^E per value group: w 2^E = p s 2^E < 2^15 (p <= 1).
      pwn[grp] = mx > 0.f && isfinite(mx) ? ldexpf(1.f, 14 - ilogbf(mx)) : 1.f;
    }
    {
      float sl[GA], zl[CA];
#pragma unroll
      for (int g = 0; g < GA; ++g) {
        sl[g] = 0.f;
        if (g < G)
#pragma unroll
          for (int k = 0; k < KPT; ++k) {
            const int i = threadIdx.x + k * kT;
            if (i < cnt) {
              const float p = expf(sc[g * kS + i] - mnew[g]);
              sc[g * kS + i] = p;
              sl[g] += p;
            }
          }
      }
      // Combination c = (g, value group grp): B columns 2c (hi) and 2c + 1 (lo).
#pragma unroll
      for (int c = 0; c < CA; ++c) {
        zl[c] = 0.f;
        if (c < G * NGV) {
          const int g = KONE ? c : c / NGV, grp = KONE ? 0 : c % NGV;
          const float pwc = sel8(pwn, grp);
#pragma unroll
          for (int k = 0; k < KPT; ++k) {
            const int i = threadIdx.x + k * kT;
            if (i < cnt) {
              const float p = sc[g * kS + i];
              const uint32_t m = meta_at(vmb + i * vmpr + (vsym ? grp : 2 * grp), vsym);
              const float sf = h2f(static_cast<uint16_t>(m & 0xFFFFu));
              const float zf = vsym ? -voff * sf : h2f(static_cast<uint16_t>(m >> 16));
              const float w = p * sf * pwc;
              const __half hi = __float2half_rn(w);
              const __half lo = __float2half_rn(w - __half2float(hi));
              W[2 * c * kS + i] = hi;
              W[(2 * c + 1) * kS + i] = lo;
              zl[c] = fmaf(p, zf, zl[c]);
            }
          }
        }
      }
#pragma unroll
      for (int g = 0; g < GA; ++g) {
        const float v = warp_sum(sl[g]);
        if (lane == 0) rbuf[warp * 40 + 16 + g] = v;
      }
#pragma unroll
      for (int c = 0; c < CA; ++c) {
        const float v = warp_sum(zl[c]);
        if (lane == 0) rbuf[warp * 40 + 24 + c] = v;
      }
    }
    const int cpad = ntiles * 16;
    for (int i = threadIdx.x; i < NCV * (cpad - cnt); i += kT)
      W[(i / (cpad - cnt)) * kS + cnt + i % (cpad - cnt)] = __float2half_rn(0.f);
    cp_async_wait<1>();  // stage j's value codes (group B_j) have landed
    __syncthreads();
    if (threadIdx.x < 16) {  // running sums: l per head, sum p z per (head, value group)
      const int x = threadIdx.x;
      float l = 0.f, z = 0.f;
#pragma unroll
      for (int w2 = 0; w2 < kW; ++w2) {
        l += rbuf[w2 * 40 + 16 + (x & 7)];  // slots past GA / CA: unread below
        z += rbuf[w2 * 40 + 24 + (x & 7)];
      }
      if (x < 8 && x < G) lrun[x] = fmaf(lrun[x], sel8(alpha, x), l);
      if (x >= 8 && x - 8 < G * NGV) zsum[x - 8] = fmaf(zsum[x - 8], sel8(alpha, (x - 8) / NGV), z);
    }

    // ---- Values: P V on the tensor cores into the running accumulators. ----
    {
#pragma unroll
      for (int nt = 0; nt < NTV; ++nt) {
        const int k = nt * 4 + t4;
        float f = 1.f;
        if (k < G * NGV) {
          const int g = KONE ? k : k / NGV, grp = KONE ? 0 : k % NGV;
          f = sel8(alpha, g) * (sel8(pwn, grp) / sel8(pw_run, grp));  // the ratio is a power of two
        }
#pragma unroll
        for (int mt = 0; mt < 8; ++mt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[nt][mt][e] *= f;
      }
      const uint32_t* vcb = vc_s + gid * NWV;
      for (int tb = warp; tb < ntiles; tb += kW) {
        uint32_t w[4][NWV];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const uint32_t* row = vcb + (tb * 16 + 4 * t4 + k) * RW;
          if constexpr (NWV == 2) {
            const uint2 v = *reinterpret_cast<const uint2*>(row);
            w[k][0] = v.x; w[k][1] = v.y;
          } else {
            w[k][0] = row[0];
          }
        }
        uint32_t b[NTV][2];
#pragma unroll
        for (int nt = 0; nt < NTV; ++nt) {
          const int col = nt * 8 + gid;
          uint2 v = make_uint2(0, 0);
          if (col < NCV) v = *reinterpret_cast<const uint2*>(W + col * kS + tb * 16 + 4 * t4);
          b[nt][0] = v.x; b[nt][1] = v.y;
        }
        // p01[c] / p23[c]: (token 4t, 4t+1) / (4t+2, 4t+3) codes of local channel c (0..15).
        uint32_t p01[16], p23[16];
#pragma unroll
        for (int i = 0; i < NWV; ++i) {
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const uint32_t sel = hh ? 0x7632u : 0x5410u;
            const uint32_t x01 = __byte_perm(w[0][i], w[1][i], sel);
            const uint32_t x23 = __byte_perm(w[2][i], w[3][i], sel);
            uint32_t t01[8], t23[8];
            word_pairs<BITS>(x01, t01);
            word_pairs<BITS>(x23, t23);
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
            mma16816(acc[nt][mt], p01[2 * mt], p01[2 * mt + 1], p23[2 * mt], p23[2 * mt + 1], b[nt][0],
                     b[nt][1]);
      }
    }
#pragma unroll
    for (int g = 0; g < GA; ++g) m_run[g] = mnew[g];
#pragma unroll
    for (int grp = 0; grp < VA; ++grp) pw_run[grp] = pwn[grp];
    __syncthreads();  // value codes, scores and weights of stage j read by every warp
    if (j + 1 < nsub) issue_b(j + 1);
    cp_async_commit();
  }

  // acc[nt][mt]: rows = channels 16 gid + 2 mt (+1 for row gid + 8), cols 2t4 (hi), 2t4+1 (lo)
  // of combination k = nt * 4 + t4 = (g, value group). red aliases the key stages (no copy
  // is pending: the last stage issued none).
  float* red = reinterpret_cast<float*>(kc_s);  // [kW][G][kD]
#pragma unroll
  for (int nt = 0; nt < NTV; ++nt) {
    const int k = nt * 4 + t4;
    if (k < G * NGV) {
      const int g = KONE ? k : k / NGV, grp = KONE ? 0 : k % NGV;
      const float inv = 1.f / sel8(pw_run, grp);  // a power of two: exact
#pragma unroll
      for (int mt = 0; mt < 8; ++mt)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          const int ch = 16 * gid + 2 * mt + rr;
          if (ch / vgroup == grp) red[(warp * G + g) * kD + ch] = (acc[nt][mt][2 * rr] + acc[nt][mt][2 * rr + 1]) * inv;
        }
    }
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * kD; i += kT) {
    const int g = i / kD, d = i % kD;
    float v = 0.f;
    for (int w2 = 0; w2 < kW; ++w2) v += red[(w2 * G + g) * kD + d];
    part_o[((head0 + g) * splits + s) * kD + d] = v + zsum[g * NGV + d / vgroup];
  }
  if (threadIdx.x < G) {
    part_ml[((head0 + threadIdx.x) * splits + s) * 2] = sel8(m_run, threadIdx.x);
    part_ml[((head0 + threadIdx.x) * splits + s) * 2 + 1] = lrun[threadIdx.x];
  }
}

size_t stream_smem_bytes(int bits, int G, const PackedSide& k, int vmpr, int ncv) {
  const size_t rw = 4 * static_cast<size_t>(bits);
  const bool kch = k.format == KvFormat::kChannelAsym;
  return 3 * kS * rw * 4 + static_cast<size_t>(G) * kS * 4 + (16 + 16 + 8 + kW * 40 + (kch ? 2 * kD : 0)) * 4 +
         2 * static_cast<size_t>(key_meta_stage_halves(k) + meta_stage_halves(vmpr)) * 2 +
         static_cast<size_t>(ncv) * kS * 2;
}

// KIVI tail: tokens [len - R, len) of a row (R = resid_cap), whose values sit in the fp16
// ring and whose keys are quantized per channel below floor(len / R) R and in the ring from
// there, on CUDA cores (at most R tokens per (row, kv head): 128 by default, under 0.4% of
// a 32K context). One block per (kv head, row); writes split s_tail of the partials. Keys
// dequantized by the reference formula fma(c, s, z) (kv_layout.h), dot products and P V in
// fp32 as in the CUDA-core kernels.
template <int BITS>
__global__ void __launch_bounds__(kT) kivi_tail_kernel(PackedSide K, PackedSide V, PackedDecodeArgs a, int splits,
                                                       int s_tail, float* part_o, float* part_ml) {
  extern __shared__ __align__(16) float tsm[];
  const int kvh = blockIdx.x, r = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int G = a.n_heads / K.kv_heads, cap = K.resid_cap;
  const int len = a.len[r];
  const int v0 = max(0, len - cap), kq = len / cap * cap, n = len - v0;
  const int64_t sh = static_cast<int64_t>(a.slot[r]) * K.kv_heads + kvh;
  const int64_t head0 = static_cast<int64_t>(r) * a.n_heads + kvh * G;
  float* qs = tsm;            // [G][kD]
  float* ps = qs + G * kD;    // [G][cap] scores, then p
  float* st = ps + G * cap;   // [G][2] (max, sum)
  const uint16_t* q = static_cast<const uint16_t*>(a.q) + head0 * kD;
  for (int i = threadIdx.x; i < G * kD; i += kT) qs[i] = h2f(q[i]);
  __syncthreads();
  // One token per thread (n <= R tokens): the first version gave a warp per token with a
  // warp reduction after each token's loads, so a warp walked its 32 tokens one load
  // latency at a time (KIVI llama2-7b b1 4K: 61 us against 27 us for int4, H100 2026-11-22).
  // Here a thread's loads are independent of its sums. G <= 2 (kivi_fits).
  for (int t = threadIdx.x; t < n; t += kT) {
    const int j = v0 + t;
    float dot0 = 0.f, dot1 = 0.f;
    if (j >= kq) {
      const uint16_t* kr = K.resid + (sh * cap + j % cap) * kD;
#pragma unroll 4
      for (int d = 0; d < kD; d += 8) {
        const uint4 u = *reinterpret_cast<const uint4*>(kr + d);
        const uint32_t wv[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
        for (int e = 0; e < 8; ++e) {
          const float kv = h2f(static_cast<uint16_t>(wv[e >> 1] >> (16 * (e & 1))));
          dot0 = fmaf(qs[d + e], kv, dot0);
          if (G > 1) dot1 = fmaf(qs[kD + d + e], kv, dot1);
        }
      }
    } else {
      const uint32_t* cw = K.codes + (sh * K.max_tokens + j) * (4 * BITS);
      const uint16_t* cm = K.cmeta + (sh * (K.max_tokens / K.group) + j / K.group) * kD * 2;
#pragma unroll 2
      for (int wi = 0; wi < 4 * BITS; ++wi) {
        const uint32_t word = cw[wi];
#pragma unroll
        for (int e = 0; e < 32 / BITS; ++e) {
          const int d = wi * (32 / BITS) + e;  // code d of the row (kv_layout.h bit stream)
          const uint32_t c = (word >> (BITS * e)) & ((1u << BITS) - 1u);
          const float kv = kvlayout::dequantize_asym(c, h2f(cm[2 * d]), h2f(cm[2 * d + 1]));
          dot0 = fmaf(qs[d], kv, dot0);
          if (G > 1) dot1 = fmaf(qs[kD + d], kv, dot1);
        }
      }
    }
    ps[t] = dot0 * a.scale;
    if (G > 1) ps[cap + t] = dot1 * a.scale;
  }
  __syncthreads();
  for (int g = warp; g < G; g += kW) {
    float m = -INFINITY;
    for (int t = lane; t < n; t += 32) m = fmaxf(m, ps[g * cap + t]);
    m = warp_max(m);
    float l = 0.f;
    for (int t = lane; t < n; t += 32) {
      const float p = expf(ps[g * cap + t] - m);
      ps[g * cap + t] = p;
      l += p;
    }
    l = warp_sum(l);
    if (lane == 0) {
      st[2 * g] = m;
      st[2 * g + 1] = l;
    }
  }
  __syncthreads();
  const int d = threadIdx.x;  // kT == kD: one channel per thread
  for (int g = 0; g < G; ++g) {
    float o = 0.f;
#pragma unroll 8
    for (int t = 0; t < n; ++t) o = fmaf(ps[g * cap + t], h2f(V.resid[(sh * cap + (v0 + t) % cap) * kD + d]), o);
    part_o[((head0 + g) * splits + s_tail) * kD + d] = o;
  }
  if (threadIdx.x < G) {
    part_ml[((head0 + threadIdx.x) * splits + s_tail) * 2] = st[2 * threadIdx.x];
    part_ml[((head0 + threadIdx.x) * splits + s_tail) * 2 + 1] = st[2 * threadIdx.x + 1];
  }
}
static_assert(kT == kD, "kivi_tail_kernel: one thread per channel");

// Tokens per block (a multiple of kS) and the split count for the streaming kernel: the
// split count that minimises (waves of blocks) x (tokens per block + a per-block cost of
// kS / 2 tokens: q set-up, partial writes, the combine's share), for `resident` blocks at
// once on the device.
void stream_plan(int kv_heads, int rows, int max_len, int resident, int* span, int* splits) {
  const int per_split = std::max(1, kv_heads * rows);
  const int max_splits = std::max(1, (max_len + kS - 1) / kS);
  double best = 1e300;
  int bs = 1, bspan = max_splits * kS;
  for (int sp = 1; sp <= max_splits; ++sp) {
    const int sub = ((max_len + sp - 1) / sp + kS - 1) / kS;  // stages per block
    const int real = (max_len + sub * kS - 1) / (sub * kS);  // splits actually used
    if (real != sp) continue;
    const double waves = std::ceil(static_cast<double>(per_split) * sp / std::max(1, resident));
    const double cost = waves * (static_cast<double>(sub) * kS + kS / 2);
    if (cost < best) {
      best = cost;
      bs = sp;
      bspan = sub * kS;
    }
  }
  *span = bspan;
  *splits = bs;
}

template <int BITS, int NTK, int NTV, bool KONE, int GM, bool KCH = false, int NGVT = 0>
cudaError_t launch_stream(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                          int sm_count, float* part_o, float* part_ml, cudaStream_t stream) {
  const int G = a.n_heads / k.kv_heads;
  const int ncv = 2 * G * (kD / v.group);
  const size_t smem = stream_smem_bytes(BITS, G, k, v.mpr, ncv);
  auto* kernel = stream_kernel<BITS, NTK, NTV, KONE, GM, KCH, NGVT>;
  // The attribute and the occupancy query once per build and smem size (host time per decode).
  static size_t last_smem = 0;
  static int per_sm = 0;
  cudaError_t e = cudaSuccess;
  if (smem != last_smem) {
    if ((e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem))) !=
        cudaSuccess)
      return e;
    if ((e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kT, smem)) != cudaSuccess) return e;
    last_smem = smem;
  }
  int span = 0, splits = 0;
  stream_plan(k.kv_heads, a.rows, max_len, std::max(1, per_sm) * std::max(1, sm_count), &span, &splits);
  // KIVI: one more split, the tail kernel's (the last R tokens of each row).
  const int total = KCH ? splits + 1 : splits;
  kernel<<<dim3(splits, k.kv_heads, a.rows), kT, smem, stream>>>(k, v, a, span, total, part_o, part_ml);
  if ((e = launch_status()) != cudaSuccess) return e;
  if constexpr (KCH) {
    const size_t tsmem = (static_cast<size_t>(G) * (kD + k.resid_cap) + 2 * G) * sizeof(float);
    kivi_tail_kernel<BITS><<<dim3(k.kv_heads, a.rows), kT, tsmem, stream>>>(k, v, a, total, splits, part_o, part_ml);
    if ((e = launch_status()) != cudaSuccess) return e;
  }
  splitk_combine_kernel<__half><<<dim3(a.n_heads, a.rows), 128, 0, stream>>>(
      part_o, part_ml, static_cast<__half*>(a.out), a.n_heads, kD, total);
  return launch_status();
}

template <int BITS>
cudaError_t dispatch_stream(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                            int sm_count, float* o, float* ml, cudaStream_t stream) {
  const int G = a.n_heads / k.kv_heads;
  const int ntk = (G * (kD / k.group) + 7) / 8, ntv = (2 * G * (kD / v.group) + 7) / 8;
  if (k.format == KvFormat::kChannelAsym) {  // KIVI (kivi_fits: G <= 2, 2 G * 128/value group <= 16)
    if (v.group == 32 && G == 1) return launch_stream<BITS, 1, 1, false, 1, true, 4>(k, v, a, max_len, sm_count, o, ml, stream);
    if (v.group == 32) return launch_stream<BITS, 1, 2, false, 2, true, 4>(k, v, a, max_len, sm_count, o, ml, stream);
    if (G == 1 && ntv == 1) return launch_stream<BITS, 1, 1, false, 1, true>(k, v, a, max_len, sm_count, o, ml, stream);
    if (ntv == 1) return launch_stream<BITS, 1, 1, false, 2, true>(k, v, a, max_len, sm_count, o, ml, stream);
    return launch_stream<BITS, 1, 2, false, 2, true>(k, v, a, max_len, sm_count, o, ml, stream);
  }
  if (k.format != KvFormat::kChannelAsym && k.group == kD && v.group == kD) {  // default per-token codes
    if (G == 1) return launch_stream<BITS, 1, 1, true, 1>(k, v, a, max_len, sm_count, o, ml, stream);
    if (G == 2) return launch_stream<BITS, 1, 1, true, 2>(k, v, a, max_len, sm_count, o, ml, stream);
    if (G <= 4) return launch_stream<BITS, 1, 1, true, 4>(k, v, a, max_len, sm_count, o, ml, stream);
    return launch_stream<BITS, 1, 2, true, 8>(k, v, a, max_len, sm_count, o, ml, stream);
  }
  if (ntk == 1 && ntv == 1) return launch_stream<BITS, 1, 1, false, 8>(k, v, a, max_len, sm_count, o, ml, stream);
  if (ntk == 1) return launch_stream<BITS, 1, 2, false, 8>(k, v, a, max_len, sm_count, o, ml, stream);
  if (ntv == 1) return launch_stream<BITS, 2, 1, false, 8>(k, v, a, max_len, sm_count, o, ml, stream);
  return launch_stream<BITS, 2, 2, false, 8>(k, v, a, max_len, sm_count, o, ml, stream);
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

// KIVI (version 4 only): per-channel keys in token groups of 16..256 dividing the stage,
// per-token values, one residual length R on both sides; G <= 2 (the value side's
// 2 G * 128/value group B columns: KIVI's default 32-channel value groups give 8 G <= 16).
bool kivi_fits(const PackedSide& k, const PackedSide& v, int G) {
  if (k.format != KvFormat::kChannelAsym || v.format != KvFormat::kTokenAsym) return false;
  if (k.n_sink > 0 || k.outliers || k.inv_s || k.lut || v.n_sink > 0 || v.outliers || v.inv_s || v.lut) return false;
  if (k.head_dim != kD || v.head_dim != kD || (k.bits != 2 && k.bits != 4)) return false;
  if (k.group < 16 || k.group % 16 != 0 || kS % k.group != 0) return false;
  if (k.resid_cap <= 0 || k.resid_cap > 4096 || k.resid_cap % k.group != 0 || v.resid_cap != k.resid_cap) return false;
  if (v.group < 16 || v.group > kD || kD % v.group != 0) return false;
  return G <= 2 && 2 * G * (kD / v.group) <= kMaxCols;
}

}  // namespace

bool fits(Act act, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a) {
  if (act != Act::kF16 || a.inv_freq || k.bits != v.bits || k.kv_heads <= 0) return false;
  if (a.n_heads % k.kv_heads != 0) return false;
  const int G = a.n_heads / k.kv_heads;
  if ((a.variant == 0 || a.variant == 7) && kivi_fits(k, v, G)) return true;
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
  return std::max(splits, (std::max(max_len, 1) + kS - 1) / kS + 1);  // + 1: KIVI's tail split
}

cudaError_t run(Act act, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a,
                int max_len, int sm_count, float* part_o, float* part_ml, cudaStream_t stream) {
  if (!fits(act, k, v, a)) return cudaErrorInvalidValue;
  // Auto (0) and KVQ_KV_DECODE=mma-stream (7): the staged, online-softmax kernel (version 4);
  // mma (4), mma3 (5) and mma-hoist (6) keep the version-3 builds for comparison.
  if (a.variant == 0 || a.variant == 7) {
    if (k.bits == 4) return dispatch_stream<4>(k, v, a, max_len, sm_count, part_o, part_ml, stream);
    return dispatch_stream<2>(k, v, a, max_len, sm_count, part_o, part_ml, stream);
  }
  int chunk = 0, splits = 0;
  plan(k.kv_heads, a.rows, a.n_heads / k.kv_heads, max_len, sm_count, &chunk, &splits);
  if (k.bits == 4) return dispatch<4>(k, v, a, chunk, splits, part_o, part_ml, stream);
  return dispatch<2>(k, v, a, chunk, splits, part_o, part_ml, stream);
}

}  // namespace kvq::kern::mma_decode
