// Device helpers of the tensor-core packed-KV decode (version 4, kv_decode_stream.cu, the
// chunk staged in shared memory, online softmax; also used by KVQuant's kv_decode_kvquant_fold.cu):
// the block shape,
// the mma.sync wrapper, the exact codes -> fp16 pair conversion and the key tile's dot
// products. Their design and error bound: the header comment of kv_decode_mma.cu. nvcc only.
#pragma once

#include <cstdint>

#include <cuda_fp16.h>

namespace kvq::kern::mma_decode {

constexpr int kT = 128;             // threads per block
constexpr int kW = kT / 32;         // warps
constexpr int kD = 128;             // head_dim served
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

// Folded conversion (version 4's default): pair j of a word as fp16 (off(j) + c) without the
// HFMA2, one LOP3 per pair. The code sits at mantissa bit k = BITS * (j % (8 / BITS)) + 2 of
// a half whose exponent field is 25 - k, so the half is exactly 2^(10 - k) + c: the offset
// is the smallest power of two whose ulp is 1 at that bit. Codes 0 .. NP/2 - 1 of each half
// come from w << 2, the rest from w >> 6 (two SHF per word instead of one), so that every code
// lands at k >= 2: offsets 256, 64, 16, 4 (2 bits) or 256, 16 (4 bits), where the unshifted
// words would give 1024, 256, 64, 16 / 1024, 64 (4x the cancellation below). The caller
// removes sum off * (the other operand): keys start the mma from -sum_d q_d off(d), values
// subtract off(ch) * sum_t w_t in the epilogue. Bits the shifts carry across the halves
// (w << 2: bits 14-15 into 16-17; w >> 6: 16-21 into 10-15) lie outside every mask.
// Cost (2 bits): 8 LOP3 + 2 SHF per 16 codes instead of 8 LOP3 + 8 HFMA2 + 1 SHF.
// off(ch) for channel ch (key channel in its row, or value channel: both index the code
// stream, and a code's j is its index mod NP within its half, NP | 16).
template <int BITS>
__host__ __device__ constexpr int fold_offset(int ch) {
  return 1 << (8 - BITS * (ch % (8 / BITS)));
}

template <int BITS, int J>
__device__ __forceinline__ uint32_t pair_fold_at(uint32_t x) {
  constexpr int k = BITS * J + 2;
  constexpr uint32_t m = ((1u << BITS) - 1u) << k;
  constexpr uint32_t e = static_cast<uint32_t>(25 - k) << 10;  // exponent of 2^(10 - k)
  uint32_t hb;
  asm("lop3.b32 %0, %1, %2, %3, 0xEA;\n" : "=r"(hb) : "r"(x), "n"(m | (m << 16)), "n"(e | (e << 16)));
  return hb;
}

// The NP = 16 / BITS fp16 pairs of a word: pair j = (code j, code j + NP) of the word's
// bit stream (code i at bit BITS * i). FOLD: as off(j) + code (pair_fold_at above).
template <int BITS, bool FOLD = false>
__device__ __forceinline__ void word_pairs(uint32_t w, uint32_t* out) {
  if constexpr (FOLD) {
    const uint32_t wl = w << 2, wr = w >> 6;
    if constexpr (BITS == 4) {
      out[0] = pair_fold_at<4, 0>(wl); out[1] = pair_fold_at<4, 1>(wl);
      out[2] = pair_fold_at<4, 0>(wr); out[3] = pair_fold_at<4, 1>(wr);
    } else {
      static_assert(BITS == 2, "2 or 4 bits");
      out[0] = pair_fold_at<2, 0>(wl); out[1] = pair_fold_at<2, 1>(wl);
      out[2] = pair_fold_at<2, 2>(wl); out[3] = pair_fold_at<2, 3>(wl);
      out[4] = pair_fold_at<2, 0>(wr); out[5] = pair_fold_at<2, 1>(wr);
      out[6] = pair_fold_at<2, 2>(wr); out[7] = pair_fold_at<2, 3>(wr);
    }
    return;
  }
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
// FOLD: the codes enter as off + c and acc starts from init[nt][c] = -sum_d q_d off(d) of
// column 2 t4 + c (so acc = codes x q again, up to the accumulation's rounding).
// SPLIT (h52, session 6; an A/B, kv_decode_stream.cu's KVQ_KV_ILP): the 8 k-steps as two
// independent mma chains (even / odd k-steps, 4 deep each) added at the end, instead of one
// chain 8 deep (each mma waits for the previous one's accumulator); one more fp32 rounding
// per score (the add), far inside the test's bound.
template <int BITS, bool FOLD = false, bool SPLIT = false, int NWK, int NTK>
__device__ __forceinline__ void key_tile_dot(const uint32_t (&w)[2][NWK], const uint32_t (&bq)[NTK][8][2],
                                             float (&acc)[NTK][4], const float (*init)[2] = nullptr) {
  constexpr int NP = 16 / BITS;  // fp16 pairs per code word
  uint32_t pr[2][16];
#pragma unroll
  for (int rr = 0; rr < 2; ++rr)
#pragma unroll
    for (int i = 0; i < NWK; ++i) word_pairs<BITS, FOLD>(w[rr][i], &pr[rr][i * NP]);
#pragma unroll
  for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
    for (int e = 0; e < 4; ++e) acc[nt][e] = FOLD ? init[nt][e & 1] : 0.f;
  if constexpr (SPLIT) {
    float acc2[NTK][4];
#pragma unroll
    for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc2[nt][e] = 0.f;
#pragma unroll
    for (int kk = 0; kk < 8; kk += 2)
#pragma unroll
      for (int nt = 0; nt < NTK; ++nt) {
        mma16816(acc[nt], pr[0][2 * kk], pr[1][2 * kk], pr[0][2 * kk + 1], pr[1][2 * kk + 1], bq[nt][kk][0],
                 bq[nt][kk][1]);
        mma16816(acc2[nt], pr[0][2 * kk + 2], pr[1][2 * kk + 2], pr[0][2 * kk + 3], pr[1][2 * kk + 3],
                 bq[nt][kk + 1][0], bq[nt][kk + 1][1]);
      }
#pragma unroll
    for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][e] += acc2[nt][e];
  } else {
#pragma unroll
    for (int kk = 0; kk < 8; ++kk)
#pragma unroll
      for (int nt = 0; nt < NTK; ++nt)
        mma16816(acc[nt], pr[0][2 * kk], pr[1][2 * kk], pr[0][2 * kk + 1], pr[1][2 * kk + 1], bq[nt][kk][0],
                 bq[nt][kk][1]);
  }
}

// Channel (within the lane's 32-channel block) of the low code of key pair p (0..15).
template <int BITS>
__device__ __forceinline__ int key_pair_channel(int p) {
  constexpr int NP = 16 / BITS, CPW = 32 / BITS;
  return (p / NP) * CPW + p % NP;  // the high code is this + NP
}

// The key mma's B fragments, the same in every build of the key pass: column col = nt * 8 +
// gid (of ncols) is query head col / ngk and key channel group col % ngk; its entries are that
// head's q (qf: fp32 copies of fp16 values, head-major, kD each) on the channels of key pair
// (kk, h) of this lane, zero outside the column's group of `group` channels.
template <int BITS, int NTK>
__device__ __forceinline__ void key_q_fragments(const float* qf, int ncols, int ngk, int group, int gid, int t4,
                                                uint32_t (&bq)[NTK][8][2]) {
  constexpr int NP = 16 / BITS;  // fp16 pairs per code word
#pragma unroll
  for (int nt = 0; nt < NTK; ++nt) {
    const int col = nt * 8 + gid;
    const bool ok = col < ncols;
    const int g = ok ? col / ngk : 0, grp = ok ? col % ngk : 0;
    // One group (group = kD, the default per-token codes): every channel is in the column's
    // group, without the 32 run-time divisions per lane below (~20 instructions each).
    const bool one = group == kD;
#pragma unroll
    for (int kk = 0; kk < 8; ++kk)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int ca = 32 * t4 + key_pair_channel<BITS>(2 * kk + h), cb = ca + NP;
        const float qa = ok && (one || ca / group == grp) ? qf[g * kD + ca] : 0.f;
        const float qb = ok && (one || cb / group == grp) ? qf[g * kD + cb] : 0.f;
        bq[nt][kk][h] = pack_h2(qa, qb);  // fp16 -> fp32 -> fp16: exact
      }
  }
}

}  // namespace kvq::kern::mma_decode
