// KVQuant decode on the tensor cores with the codec's affine maps folded into tables
// (interface: kv_decode_kvquant.cuh, run_fold2 / run_foldm; lib/cuda/packed_cache.cpp routes
// KVQuant here where fits() holds: kvq-fold2 at G = 1, kvq-foldm at G > 1). Three passes per chunk
// (scores to shared memory, softmax, P V), split-K partials and a combine, outliers and sinks as
// fp32 corrections after the dense passes (h45's three-pass design). The fold (h51,
// notes/s6/results-h51.md) replaced h45's fp32 per-element arithmetic, whose SASS (H100 device
// build of 281af5b, <4 bits, G = 1>) spent 343 instructions per 8-token key n-tile and lane
// (10.7 per key element, ~130 integer index operations for the LUT and the (half, mid), (cos,
// sin) rows) and 465 per 16-token value k-tile (7.3 per value element).
// Session 7 (h62): h51's own key pass (kvq-fold, the heads as the mma's M and 8-token n-tiles of
// B; VAR 0) and h45's fp32 build (kvq-mma, kv_decode_kvquant_mma.cu) were retired: in the lead's
// one-process A/B of all five builds (H100, 2026-11-23, archive of b0add53, /work/notes/s7 ->
// notes/s7/results-h62.md) neither was fastest in any of the 16 cells (kvq-fold at best tied
// kvq-stream / kvq-foldm within 0.5%). Its tables and (u, t4) records stay: kvq-foldm builds its
// key A fragments from them. Then ncu (H100, 2763772, llama3-8b 32K 4 bits) put 48% (b1) / 56%
// (b8) of kvq-foldm's warp samples in pass 3's value-outlier corrections (contended shared
// atomics, compare-and-swap loops); summed per warp and channel first (warp_channel_add,
// kv_decode_kvquant_common.cuh) kvq-foldm ran 1.11-1.50x faster on llama3-8b and kvq-fold2
// 1.15-1.21x on llama2-7b, and kvq-foldm 1.10-1.43x faster than the one-pass kvq-stream
// (kv_decode_kvquant_stream.cu, h47; the batch-1 GQA default for one commit), which was retired
// too (notes/s7/results-h62.md). The last commits with each retired build are named in
// packed_cache.cpp's refusal of their KVQ_KV_DECODE values.
// The fold, as h51 built it:
//  - Keys: k_c = a_c L[code] + b_c (a = half, b = mid of the channel's static range, Q-Norm
//    folded in: a = qa half, b = qa mid + qb), so the R(u)-rotated pair is
//      rot_i = cos(u f_i) a_i L_i - sin(u f_i) a_p L_p + (cos b_i - sin b_p)
//      rot_p = cos(u f_i) a_p L_p + sin(u f_i) a_i L_i + (cos b_p + sin b_i),  p = i + 64.
//    A B-fragment register holds channels (i, i + 1) (the low half of the head) or
//    (p, p + 1): slot pair (2 t4, 2 t4 + 1) of k-tile kt = channels i, i + 1 with
//    i = 16 t4 + 2 kt, slots (2 t4 + 8, 2 t4 + 9) = i + 64, i + 65. Those two codes are one
//    byte of the lane's codes (4 bits; a nibble at 2 bits), so one shared load from a
//    byte -> half2 (L[lo], L[hi]) table gives them, and the two registers of k-tile kt are
//    two HFMA2 each with per-(u, channel) fp16 coefficients (cos a, -sin a', sin a, and the
//    offset as the addend) from a per-block table: ~2.5 instructions per key element.
//  - Values: v_tc = w_t L[code] + m_t with w_t = qa half_t, m_t = qa mid_t + qb, so
//    sum_t p_t v_tc = sum_t (p_t w_t) L_tc + sum_t p_t m_t: the A fragments are the fp16 L
//    values straight from the byte table (a PRMT pairs two tokens' entries), the B fragment
//    p_t w_t (fp16), and sum p m is one fp32 scalar per head added to every channel.
//  - The split count minimises waves x (stages per block + setup), instead of aiming at 4
//    blocks per SM (llama2-7b b1 32K: 17 splits = 544 blocks on 264 slots = 3 rounds; 16
//    splits = 2).
// Measured (H100, 2026-11-23, 28872d5 = VAR 0, retired, notes/s6/results-h51.md): parity passed (fold
// cases 0.00 of their bound; "kv packed: KVQuant*" 0.38-0.93 of its fp32-level bound); SASS
// <4 bits, G = 1>: key n-tile 136 instructions (4.3 per element: 32 HFMA2, 16 LDS, 12 LDS.128,
// 8 HMMA, ~45 integer), value k-tile 155 in the inner loop (2.4 per element), 269 with the next
// tile's loads and the weights; 127 registers, no spills. Against kvq-mma in one process:
// 1.05-1.21x at 4 bits and 1.21-1.38x at 2 bits on llama2-7b (b1 32K 321.1 -> 265.6 us = 0.99x
// fp16; 2 bits 308.3 -> 223.9 = 1.17x), llama3-8b 0.94-1.25x (slower at b1 128K and b8 32K, 4 bits). Still far from issue 4's 1.7x fp16 on MHA:
// ncu (b1 32K 4 bits) puts the kernel on the shared-memory pipe (L1/TEX 75.5% of peak, short-
// scoreboard stalls 31% of the cycles, 0.5 eligible warps per scheduler at 16 warps per SM): the
// coefficient records (12 LDS.128 per n-tile and lane, 24 B per 4 key elements) and the 256-entry
// tables' bank conflicts now cost more than the arithmetic they replaced. Next (not done):
// coefficients in registers (a lane's token offset u = gid fixed, the stage anchor moved into
// 16 anchored query rows of the A fragment, h51's notes in notes/kv-cuda-perf.md), lane-private
// table copies, or the one-pass structure of kv_decode_kvquant_stream.cu.
// kvq-fold2 (h54, run_fold2; the default at G = 1): the cuts h51 named, by the shared-memory
// wavefront count in notes/s6/results-h54.md (~830 -> ~260 per 64-token key stage and warp):
//  - the lane's token offset within its anchor is u = gid in every n-tile: n-tile nt is
//    anchored at j0 + 8 nt and the anchors go into the A rows (row m GM + g = head g rotated by
//    R(j0 + 8 (ag 8 / GM + m))^T, R(j0) R(8 m) composed in fp32), so the lane's 32 coefficient
//    words are loaded once per stage (8 LDS.128) instead of 12 LDS.128 per n-tile; an n-tile
//    keeps only its anchor's rows (at G = 1 kvq-fold discarded rows 1..15 too);
//  - the offset term R(u) b (fixed per lane) is an fp16 B operand: 8 mma per A group give the
//    initial accumulators, and each B register is hfma2(L', c', hmul2(L, c));
//  - 4 bits: lane-private key and value byte tables (32 KB each, bank = lane) in the record
//    space (the value table from pass 2 on, the value CSR staged after it).
// Measured (H100, 2026-11-23, archive of 8424090 = this code with an extra kvq-fold2k build since
// removed, notes/s6/results-h54.md, one process --ab KVQ_KV_DECODE=kvq-fold,kvq-fold2k,kvq-fold2):
// parity 0.00 of the derived bound (MHA, G = 2, 3, 4, 8); llama2-7b 1.14-1.32x faster than
// kvq-fold at 4 bits (b1 32K 306.9 -> 233.1 us; ncu: L1/TEX 75.5% -> 57.9%, eligible warps per
// scheduler 0.50 -> 0.69), 1.06-1.10x at 2 bits; llama3-8b (G = 4: 2 anchors per A group, so an A
// rebuild and 8 offset mma per 2 n-tiles, 8-36 B of spills) 6-13% slower: kvq-fold stays there.
// Error (derived in tests/gpu/kv_kvquant_test.cpp, fold cases): on top of the mma build's
// query rounding, each rotated key component carries <= 4 fp16 roundings of terms bounded by
// Lmax (|a_i| + |a_p|) + |b_i| + |b_p| (L, the coefficients, the offset, two HFMA2 results), so
// 2^-9 per pair and channel; values: L and p w rounded to fp16, |w L| <= 2 max|v| of the token.
// kvq-foldm (h56, run_foldm, VAR 2; opt-in KVQ_KV_DECODE=kvq-foldm): for GQA, kvq-fold's key pass
// with the tokens as the mma's M and the G query heads as its N columns (h53's fp16 layout, as
// h54 suggested): the lane's A rows are tokens gid and gid + 8 of each 16-token m-tile, built
// from kvq-fold's (u, t4) records exactly as kvq-fold builds its B; B is kvq-fold's rotated query.
// Same fp16 values, same shared-memory wavefronts, half the key-pass mma (32 instead of 64 per
// stage, each chain of 8 dependent mma now covers 16 tokens); plus kvq-fold2's lane-private 4-bit
// value table. Count per stage in notes/s6/results-h56.md; ptxas (sm_90, CUDA 13): 121-128
// registers, no spills in its 16 builds. kvq-fold's and kvq-fold2's PTX unchanged by it.
// Measured (H100, 2026-11-23, archive of d9c0223 = this code, one process --ab
// KVQ_KV_DECODE=kvq-fold,kvq-foldm, llama3-8b 32K/128K, batch 1/8): parity 0.00 of kvq-fold's
// bound; 2 bits 0.99-1.01x of kvq-fold (the transposed key pass alone: no gain, so the key-pass
// mma does not limit G = 4), 4 bits 1.00-1.04x (b8 128K 3048.5 -> 2942.2 us; the value table's
// size of gain). Opt-in; kvq-fold stays the default at G > 1.
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

using mma_decode::h2_bits;
using mma_decode::mma16816;
using mma_decode::pack_h2;

constexpr int kMaxChunk = 2048;
constexpr int kScoreFloats = 8192;  // chunk * GM cap, and kW * GM * kD at GM = 8
constexpr int kRec = 52;            // words per (u, t4) coefficient record: 8 k-tiles x 6 + 4 pad
constexpr int kLutWords = 1024;     // byte -> half2 table, 4 copies (4 bits); 16 entries at 2 bits
constexpr int kSetupStages = 6;     // per-block setup in units of one stage's work (plan)
// Shared memory per block at most, so that 2 blocks fit an SM (228 KB, 1 KB reserved each):
// at G = 4 a 2048-token chunk would need 116 KB, so its chunks stop at 1536 tokens.
constexpr size_t kMaxSmem = 113 * 1024;

struct Plan {
  int chunk = 0, splits = 0;
};

// Shared memory in words: key and value byte tables [kLutWords] each, coefficient records
// [kS * 4][kRec], stage anchors [chunk / kS][64] float2, scores / partial outputs, query
// [GM][kD], key (half, mid) [64] float4, two fp32 LUTs, stats [8][2], value corrections [GM][kD],
// per-head sum p m [GM].
size_t score_floats(int gm, int chunk) { return std::max<size_t>(static_cast<size_t>(chunk) * gm, kW * gm * kD); }
size_t smem_bytes(int gm, int chunk) {
  return (2 * kLutWords + static_cast<size_t>(kS) * 4 * kRec + static_cast<size_t>(chunk / kS) * 64 * 2 +
          score_floats(gm, chunk) + gm * kD + 64 * 4 + 32 + 16 + gm * kD + 8) *
         4;
}

// Splits minimising waves x (stages per block + setup) at 2 blocks per SM (launch bounds, and
// the shared memory below stays <= 111 KB per block); ties keep fewer splits (less combine).
Plan make_plan(int kv_heads, int rows, int gm, int max_len, int sm_count) {
  const int per_split = std::max(1, kv_heads * rows);
  const long slots = 2L * std::max(sm_count, 1);
  const int nst = (max_len + kS - 1) / kS;
  int cap_tokens = std::min(kMaxChunk, kScoreFloats / gm / kS * kS);
  while (cap_tokens > kS && smem_bytes(gm, cap_tokens) > kMaxSmem) cap_tokens -= kS;
  const int cap = cap_tokens / kS;  // stages per block
  Plan best{0, 0};
  long best_cost = -1;
  const int s_min = (nst + cap - 1) / cap;
  const int s_max = std::max(s_min, std::min(nst, static_cast<int>((8 * slots + per_split - 1) / per_split)));
  for (int s = s_min; s <= s_max; ++s) {
    const int per = (nst + s - 1) / s;
    const int real = (nst + per - 1) / per;
    const long waves = (static_cast<long>(real) * per_split + slots - 1) / slots;
    const long cost = waves * (per + kSetupStages);
    if (best_cost < 0 || cost < best_cost) {
      best_cost = cost;
      best = {per * kS, real};
    }
  }
  return best;
}

// The table entry for field k (0..7, a compile-time constant after unrolling) of a lane's
// 16 codes: 4 bits: byte k of (w0, w1), entry stride 16 B with copy t4 at +4 t4 (the 8 lanes
// of one copy spread over 8 banks instead of 32 lanes over 32); 2 bits: nibble k of w0, 16
// entries of 4 B (one bank each, no conflicts).
template <int BITS>
__device__ __forceinline__ uint32_t lut_get(const char* tab, uint32_t w0, uint32_t w1, int k, uint32_t t4x4) {
  uint32_t off;
  if constexpr (BITS == 4) {
    const uint32_t w = k < 4 ? w0 : w1;
    const int b = k & 3;
    off = (b == 0 ? (w << 4) : (w >> (8 * b - 4))) & 0xFF0u;
    off |= t4x4;
  } else {
    off = (k == 0 ? (w0 << 2) : (w0 >> (4 * k - 2))) & 0x3Cu;
  }
  return *reinterpret_cast<const uint32_t*>(tab + off);
}

__device__ __forceinline__ uint32_t hfma2(uint32_t a, uint32_t b, uint32_t c) {
  uint32_t d;
  asm("fma.rn.f16x2 %0, %1, %2, %3;" : "=r"(d) : "r"(a), "r"(b), "r"(c));
  return d;
}
__device__ __forceinline__ uint32_t hmul2(uint32_t a, uint32_t b) {
  uint32_t d;
  asm("mul.rn.f16x2 %0, %1, %2;" : "=r"(d) : "r"(a), "r"(b));
  return d;
}

// The staged builds' copies (VAR & kStage, h82): global -> shared without a register, so that no
// instruction waits on them until cp.async.wait_group (sm_80+; 16 B: both addresses 16-byte
// aligned, 4 B: 4-byte aligned).
__device__ __forceinline__ void st_cp16(void* dst, const void* src) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16;\n" ::"r"(static_cast<uint32_t>(__cvta_generic_to_shared(dst))),
               "l"(src)
               : "memory");
}
__device__ __forceinline__ void st_cp4(void* dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(static_cast<uint32_t>(__cvta_generic_to_shared(dst))),
               "l"(src)
               : "memory");
}
__device__ __forceinline__ void st_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void st_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// kvq-fold2 (h54): the 4-bit key table with one copy per lane, entry e of lane L at word
// 32 e + L, so a warp's 32 loads hit 32 banks (kvq-fold's 4 copies: ~2.5 wavefronts per load).
// Byte k (0..7, constant after unrolling) of the lane's low (w0) or high (w1) code words.
__device__ __forceinline__ uint32_t lut_lane(const char* tab, uint32_t w0, uint32_t w1, int k, uint32_t lane4) {
  const uint32_t w = k < 4 ? w0 : w1;
  const int b = k & 3;
  const uint32_t off = (b == 0 ? (w << 7) : (w >> (8 * b - 7))) & 0x7F80u;
  return *reinterpret_cast<const uint32_t*>(tab + (off | lane4));
}

// kvq-fold2 word layout of the rec space during pass 1 (words): the lane-private key table
// [256][32] (4 bits), the lane records [12][32] uint4 (words 0..31: the lane's (cos a_i,
// -sin a_p, cos a_p, sin a_i) per k-tile, words 32..47: its offsets (off_i, off_p) per k-tile,
// at u = gid), R(8 m) (cos, sin) [8][kE8] float2 in pair-slot order. All dead after pass 1.
constexpr int kE8 = 68;  // float2 row stride: 136 words = 8 mod 32, so rows m and m + 4 share banks only
constexpr int kPrivWords = 256 * 32;
constexpr int kLrecWords = 12 * 32 * 4;
static_assert(kPrivWords + kLrecWords + 8 * kE8 * 2 <= kS * 4 * kRec, "kvq-fold2 tables exceed the rec space");
static_assert(kT == 256, "setup_fold2_tables: one thread per byte-table entry");

// Block setup of the tables: byte -> (L[lo], L[hi]) for keys and values, and the coefficient
// records: record (u, t4), k-tile kt, words 6 kt .. 6 kt + 5 = (cos a_i, -sin a_p, cos b_i -
// sin b_p, cos a_p, sin a_i, cos b_p + sin b_i) for channels (i, i + 1) = 16 t4 + 2 kt + (0, 1)
// (low half, high half of each word), cos/sin of u f_i, a/b the channel's folded range.
template <int BITS, bool QN>
__device__ __forceinline__ void setup_fold_tables(const PackedSide& K, const PackedSide& V, const PackedDecodeArgs& a,
                                                  int64_t cb, uint32_t* klut2, uint32_t* vlut2, __half* rec) {
  constexpr int n = 1 << BITS;
  if constexpr (BITS == 4) {
    for (int idx = threadIdx.x; idx < 256 * 4; idx += kT) {
      const int e = idx >> 2;
      klut2[idx] = pack_h2(K.lut[e & 15], K.lut[e >> 4]);
      vlut2[idx] = pack_h2(V.lut[e & 15], V.lut[e >> 4]);
    }
  } else {
    if (threadIdx.x < n * n) {
      const int e = threadIdx.x;
      klut2[e] = pack_h2(K.lut[e & 3], K.lut[e >> 2]);
      vlut2[e] = pack_h2(V.lut[e & 3], V.lut[e >> 2]);
    }
  }
  const int i = threadIdx.x & 63, qq = threadIdx.x >> 6;
  const float qa = QN ? K.qa : 1.f, qb = QN ? K.qb : 0.f;
  const float ai = qa * K.khalf[cb + i], ap = qa * K.khalf[cb + 64 + i];
  const float bi = fmaf(qa, K.kmid[cb + i], qb), bp = fmaf(qa, K.kmid[cb + 64 + i], qb);
  const double f = a.inv_freq[i];
  float c, sn, dc, ds;
  anchor(f, 16 * qq, c, sn);
  anchor(f, 1, dc, ds);
  const int t4 = i >> 4, kt = (i >> 1) & 7, e = i & 1;
#pragma unroll 1
  for (int u = 16 * qq; u < 16 * qq + 16; ++u) {
    __half* r = rec + (u * 4 + t4) * (2 * kRec) + kt * 12 + e;
    r[0] = __float2half_rn(c * ai);
    r[2] = __float2half_rn(-sn * ap);
    r[4] = __float2half_rn(fmaf(c, bi, -sn * bp));
    r[6] = __float2half_rn(c * ap);
    r[8] = __float2half_rn(sn * ai);
    r[10] = __float2half_rn(fmaf(c, bp, sn * bi));
    const float c2 = fmaf(c, dc, -sn * ds);
    sn = fmaf(sn, dc, c * ds);
    c = c2;
  }
}

// kvq-fold2's block setup (the byte tables as kvq-fold; at 4 bits the key table also in its
// lane-private form): the lane records for u = gid (t4 = lane & 3) and R(8 m) for m < 8.
template <int BITS, bool QN>
__device__ __forceinline__ void setup_fold2_tables(const PackedSide& K, const PackedSide& V, const PackedDecodeArgs& a,
                                                   int64_t cb, uint32_t* klut2, uint32_t* vlut2, uint32_t* kpriv,
                                                   __half* lrec, float2* e8) {
  constexpr int n = 1 << BITS;
  if constexpr (BITS == 4) {
    for (int idx = threadIdx.x; idx < 256 * 4; idx += kT) {
      const int e = idx >> 2;
      klut2[idx] = pack_h2(K.lut[e & 15], K.lut[e >> 4]);
      vlut2[idx] = pack_h2(V.lut[e & 15], V.lut[e >> 4]);
    }
    // Thread e writes entry e's 32 copies, starting at copy e mod 32 so that a warp's stores
    // hit 32 banks.
    const int e = threadIdx.x;  // kT == 256 entries
    const uint32_t v = pack_h2(K.lut[e & 15], K.lut[e >> 4]);
#pragma unroll 4
    for (int l = 0; l < 32; ++l) kpriv[e * 32 + ((e + l) & 31)] = v;
  } else {
    if (threadIdx.x < n * n) {
      const int e = threadIdx.x;
      klut2[e] = pack_h2(K.lut[e & 3], K.lut[e >> 2]);
      vlut2[e] = pack_h2(V.lut[e & 3], V.lut[e >> 2]);
    }
  }
  const float qa = QN ? K.qa : 1.f, qb = QN ? K.qb : 0.f;
  for (int it = threadIdx.x; it < 8 * 64; it += kT) {
    const int u = it >> 6, i = it & 63;
    const double f = a.inv_freq[i];
    float c, sn;
    anchor(f, u, c, sn);
    const float ai = qa * K.khalf[cb + i], ap = qa * K.khalf[cb + 64 + i];
    const float bi = fmaf(qa, K.kmid[cb + i], qb), bp = fmaf(qa, K.kmid[cb + 64 + i], qb);
    const int t4 = i >> 4, kt = (i >> 1) & 7, e = i & 1;
    const int L = u * 4 + t4;
    __half* cw = lrec + ((kt * 32 + L) * 4) * 2 + e;  // words 4 kt .. 4 kt + 3 of lane L
    cw[0] = __float2half_rn(c * ai);
    cw[2] = __float2half_rn(-sn * ap);
    cw[4] = __float2half_rn(c * ap);
    cw[6] = __float2half_rn(sn * ai);
    __half* ow = lrec + (((8 + (kt >> 1)) * 32 + L) * 4 + 2 * (kt & 1)) * 2 + e;  // words 32 + 2 kt, + 1
    ow[0] = __float2half_rn(fmaf(c, bi, -sn * bp));
    ow[2] = __float2half_rn(fmaf(c, bp, sn * bi));
    float c8, s8;
    anchor(f, 8 * u, c8, s8);
    e8[u * kE8 + pair_slot(i)] = make_float2(c8, s8);
  }
}

// OPT >= 1 of the mma build: the chunk's CSR offsets (relative to the first) and, when they
// fit `cap`, its records staged into shared memory; returns the records to index with soff.
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

// VAR: 1 kvq-fold2 (pass 1 below, and at 4 bits a lane-private value table in pass 3); 2
// kvq-foldm (h51's tables and records, pass 1 with the tokens as the mma's M and the query
// heads as its N columns, and kvq-fold2's lane-private 4-bit value table). VAR 0 (kvq-fold,
// h51's key pass with the heads as M) was retired in session 7 (header comment).
// Pass 3's value-outlier corrections: warp_channel_add (kv_decode_kvquant_common.cuh), whose
// shared channels are summed by one gather per warp step where cheaper (h72; the butterfly-only
// build and its switch KVQ_KVQ_VSUM, 1.004-1.05x slower in all 16 cells of H100 2026-11-23, f0c4e67,
// went in h81; figures there).
// VAR | kStage (h82, opt-in KVQ_KVQ_STAGE=1, packed_cache.cpp): the same build with the loads
// that ncu found exposed staged (H100, 2026-11-23, 0cac4b0, llama2-7b b1 32K 4 bits, kvq-fold2:
// long-scoreboard stalls 27.1% of the samples, 8.7% of all on the wait after pass 3's tile
// loads, 6% in pass 1b's key-outlier loop; notes/kv-cuda-perf.md, session 9):
//  - pass 1b: inv_freq as fp32 in klut2's space (dead after pass 1; the same static_cast<float>
//    of the fp64 value the default build converts per record), and, where the chunk's key CSR
//    is staged and twice its records fit the records' space, each record's key code word
//    copied by cp.async next to the records before the sinks' scores, so the record loop reads
//    only shared memory instead of one dependent global round trip per record (else the
//    default loads);
//  - pass 3: each warp's 16-token tiles of value codes and meta copied by cp.async into two
//    buffers per warp, the copy of tile i + 2 issued once tile i is in registers (two tiles of
//    work to land instead of one, and no registers held). Buffers in space dead in pass 3:
//    buffer 0 of the 8 warps in klut2 (and vlut2 at 4 bits, where pass 3 reads the lane-private
//    value table), buffer 1 in st0 where the chunk gives 2 chunk >= 8 x the buffer (4 bits:
//    chunk >= 1024 tokens, 2 bits: >= 512), else in the records' space's last 8 buffers (the
//    value CSR's staging capacity that much smaller: records past it are read from global
//    memory, the same values); meta in khm's 256 words. So the shared memory per block and
//    the plan are unchanged. Rows are placed so that each of the lanes' four reads per tile
//    is conflict-free (tile_row_* below).
// Same values loaded, same arithmetic in the same order: the outputs are bit-identical to the
// default build's (tests/gpu/kv_kvquant_test.cpp requires it).
constexpr int kStage = 4;
// Words of one staged tile of value codes (16 tokens x 16 or 8 words).
template <int BITS>
constexpr int stage_tile_words() {
  return BITS == 4 ? 256 : 128;
}
// Row of token tt (0..15) of a staged tile. 4 bits: bits 0 and 2 of tt swapped, and 16-byte
// chunk c of the row stored at c ^ (tt & 2): the half-warp of a 64-bit read (lanes gid 0..3 or
// 4..7, t4 0..3, token 2 t4 + x's offset) then covers 8 distinct 16-byte bank groups. 2 bits:
// row (tt >> 1 & 3) + 4 (tt & 1) + (tt & 8), so the 4 tokens of a read lie in 4 rows of 8 banks.
__device__ __forceinline__ int tile_row4(int tt) { return (tt & 10) | ((tt >> 2) & 1) | ((tt & 1) << 2); }
__device__ __forceinline__ int tile_row2(int tt) { return ((tt >> 1) & 3) | ((tt & 1) << 2) | (tt & 8); }

template <int BITS, int GM, bool QN, int VAR>
__global__ void __launch_bounds__(kT, 2)
kvquant_fold_kernel(PackedSide K, PackedSide V, PackedDecodeArgs a, int chunk, int splits, float* part_o,
                    float* part_ml, bool kout_stage) {
  static_assert((VAR & ~kStage) == 1 || (VAR & ~kStage) == 2, "kvq-fold2 or kvq-foldm, staged or not");
  constexpr bool V2 = (VAR & ~kStage) == 1;
  constexpr bool ST = (VAR & kStage) != 0;
  // kvq-fold2's value table: 32 copies (bank = lane) in the rec space from pass 2 on, the
  // value CSR staged after it (capacity kS * 4 * kRec - kPrivWords - chunk - 4 records; more
  // are read from global memory, as when kvq-fold's staging does not fit).
  constexpr bool VP = BITS == 4;
  extern __shared__ __align__(16) float sm[];
  const int G = a.n_heads / K.kv_heads;
  uint32_t* klut2 = reinterpret_cast<uint32_t*>(sm);          // [kLutWords]
  uint32_t* vlut2 = klut2 + kLutWords;                         // [kLutWords]
  uint32_t* rec = vlut2 + kLutWords;                           // [kS * 4][kRec]
  float2* st0 = reinterpret_cast<float2*>(rec + kS * 4 * kRec);  // [chunk / kS][64]
  float* sc = reinterpret_cast<float*>(st0 + (chunk / kS) * 64);  // [chunk][GM], later [kW][GM][kD]
  float* qs = sc + max(chunk * GM, kW * GM * kD);              // [GM][kD]
  float4* khm = reinterpret_cast<float4*>(qs + GM * kD);       // [64] by pair_slot (corrections)
  float* klut = reinterpret_cast<float*>(khm + 64);            // [16]
  float* vlut = klut + 16;                                     // [16]
  float* stat = vlut + 16;                                     // [8][2]
  float* corr = stat + 16;                                     // [GM][kD]
  float* pmid = corr + GM * kD;                                // [GM]: sum p m per head

  const int s = blockIdx.x, kvh = blockIdx.y, r = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gid = lane >> 2, t4 = lane & 3;
  const uint32_t t4x4 = BITS == 4 ? 4u * t4 : 0u;
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

  // ---- Setup: LUTs, query, key (half, mid), tables, corrections zeroed ----
  setup_luts_query<BITS, GM>(K, V, a, head0, G, klut, vlut, qs);
  for (int i = threadIdx.x; i < GM * kD; i += kT) corr[i] = 0.f;
  if (threadIdx.x < GM) pmid[threadIdx.x] = 0.f;
  if (threadIdx.x < 64) {
    const int i = threadIdx.x;
    khm[pair_slot(i)] = make_float4(K.khalf[cb + i], K.khalf[cb + 64 + i], K.kmid[cb + i], K.kmid[cb + 64 + i]);
  }
  // kvq-fold2: the rec space holds the lane-private key table, the lane records and R(8 m).
  uint32_t* kpriv = rec;
  uint4* lrec = reinterpret_cast<uint4*>(rec + kPrivWords);
  float2* e8 = reinterpret_cast<float2*>(rec + kPrivWords + kLrecWords);
  if constexpr (V2)
    setup_fold2_tables<BITS, QN>(K, V, a, cb, klut2, vlut2, kpriv, reinterpret_cast<__half*>(lrec), e8);
  else
    setup_fold_tables<BITS, QN>(K, V, a, cb, klut2, vlut2, reinterpret_cast<__half*>(rec));
  for (int idx = threadIdx.x; idx < nst * 64; idx += kT) {
    float c, sn;
    anchor(a.inv_freq[idx & 63], begin + (idx >> 6) * kS, c, sn);
    // kvq-fold2 reads it by pair slot (the 4 lanes t4 of a k-tile contiguous).
    st0[V2 ? (idx & ~63) + pair_slot(idx & 63) : idx] = make_float2(c, sn);
  }
  __syncthreads();

  // ---- Pass 1: dense scores on the tensor cores, a warp per 64-token stage ----
  if constexpr (V2) {
    // kvq-fold2 (h54): the lane's token offset is u = gid in every n-tile, n-tile nt anchored at
    // j0 + 8 nt: A row rho = m GM + g holds head g's query rotated by R(j0 + 8 (ag 8 / GM + m))^T
    // (ag: the A group, 8 / GM n-tiles each), so the lane's coefficients (u = gid) stay in
    // registers and n-tile nt's scores are the rows of its anchor (m = nt mod (8 / GM)); the
    // other rows are discarded (at G = 1 kvq-fold discarded rows 1..15 as well). The offset
    // term R(u) b is a fixed B per lane: its product with the A rows (8 mma per A group) is the
    // initial accumulator of the group's n-tiles.
    constexpr int kRows = 8 / GM;  // anchors (n-tiles) per A group
    const uint32_t* kcodes = K.codes + sh * K.max_tokens * K.wpr;
    const char* ktab = reinterpret_cast<const char*>(BITS == 4 ? kpriv : klut2);
    const uint32_t lane4 = 4u * lane;
    const int g = gid % GM, m = gid / GM;
    const bool hv = g < G;
    const float* qh = qs + g * kD;
    for (int st = warp; st < nst; st += kW) {
      uint32_t kw[8][4];
#pragma unroll
      for (int nt = 0; nt < 8; ++nt) load_key_codes<BITS>(kcodes, min(begin + st * kS + nt * 8 + gid, end - 1), t4, kw[nt]);
      uint32_t cf[8][4];
#pragma unroll
      for (int kt = 0; kt < 8; ++kt) {
        const uint4 x = lrec[kt * 32 + lane];
        cf[kt][0] = x.x;
        cf[kt][1] = x.y;
        cf[kt][2] = x.z;
        cf[kt][3] = x.w;
      }
#pragma unroll
      for (int ag = 0; ag < GM; ++ag) {
        if (st * kS + ag * kRows * 8 >= cnt) break;  // warp-uniform
        const float2* e8r = e8 + (ag * kRows + m) * kE8;
        uint32_t qa0[8], qa2[8];
#pragma unroll
        for (int kt = 0; kt < 8; ++kt) {
          float qv[2], pv[2];
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const int i = 16 * t4 + 2 * kt + e, slot = (2 * kt + e) * 4 + t4;
            const float2 c0 = st0[st * 64 + slot], c8 = e8r[slot];
            const float c = fmaf(c0.x, c8.x, -c0.y * c8.y), sn = fmaf(c0.y, c8.x, c0.x * c8.y);
            const float q = qh[i], p = qh[i + 64];
            qv[e] = fmaf(q, c, p * sn);
            pv[e] = fmaf(p, c, -q * sn);
          }
          qa0[kt] = pack_h2(qv[0], qv[1]);
          qa2[kt] = pack_h2(pv[0], pv[1]);
        }
        float off[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
        for (int k2 = 0; k2 < 4; ++k2) {
          const uint4 o = lrec[(8 + k2) * 32 + lane];
          mma16816(off, qa0[2 * k2], 0u, qa2[2 * k2], 0u, o.x, o.y);
          mma16816(off, qa0[2 * k2 + 1], 0u, qa2[2 * k2 + 1], 0u, o.z, o.w);
        }
#pragma unroll
        for (int mm = 0; mm < kRows; ++mm) {
          const int nt = ag * kRows + mm;
          if (st * kS + nt * 8 >= cnt) break;  // warp-uniform
          float acc[4] = {off[0], off[1], off[2], off[3]};
#pragma unroll
          for (int kt = 0; kt < 8; ++kt) {
            uint32_t lo, hi;
            if constexpr (BITS == 4) {
              lo = lut_lane(ktab, kw[nt][0], kw[nt][1], kt, lane4);
              hi = lut_lane(ktab, kw[nt][2], kw[nt][3], kt, lane4);
            } else {
              lo = lut_get<BITS>(ktab, kw[nt][0], kw[nt][1], kt, 0u);
              hi = lut_get<BITS>(ktab, kw[nt][2], kw[nt][3], kt, 0u);
            }
            const uint32_t b0 = hfma2(hi, cf[kt][1], hmul2(lo, cf[kt][0]));
            const uint32_t b1 = hfma2(lo, cf[kt][3], hmul2(hi, cf[kt][2]));
            mma16816(acc, qa0[kt], 0u, qa2[kt], 0u, b0, b1);
          }
          const int tok = st * kS + nt * 8 + 2 * t4;
          if (hv && m == mm) {
            if (tok < cnt) sc[tok * GM + g] = acc[0] * a.scale;
            if (tok + 1 < cnt) sc[(tok + 1) * GM + g] = acc[1] * a.scale;
          }
        }
      }
    }
  } else {  // TM
    // kvq-foldm (h56): tokens as M, heads as N (h53's layout of the fp16 decode,
    // kernels/attention_decode_mma.cu). m-tile mt holds the stage's tokens 16 mt .. 16 mt + 15;
    // the lane's A rows are tokens u0 = 16 mt + gid and u1 = u0 + 8, its A registers the same
    // dequantized, R(u)-rotated pairs that kvq-fold builds as B (a0 / a2: token u0, channels
    // (i, i + 1) / (i + 64, i + 65), i = 16 t4 + 2 kt; a1 / a3: token u1), from the same (u, t4)
    // records. B is kvq-fold's A: the query of head gid (column gid) rotated by R(j0)^T, so
    // C = (token gid, heads 2 t4, 2 t4 + 1) and (token gid + 8, same heads). Same fp16 values
    // and roundings as kvq-fold, half the mma (8 per 16 tokens instead of 8 per 8).
    const uint32_t* kcodes = K.codes + sh * K.max_tokens * K.wpr;
    const char* ktab = reinterpret_cast<const char*>(klut2);
    const bool hv = gid < G;
    const float* qh = qs + (hv ? gid : 0) * kD;
    for (int st = warp; st < nst; st += kW) {
      uint32_t kw[4][2][4];
#pragma unroll
      for (int mt = 0; mt < 4; ++mt)
#pragma unroll
        for (int h = 0; h < 2; ++h)
          load_key_codes<BITS>(kcodes, min(begin + st * kS + 16 * mt + 8 * h + gid, end - 1), t4, kw[mt][h]);
      uint32_t qb0[8], qb2[8];
#pragma unroll
      for (int kt = 0; kt < 8; ++kt) {
        const int i = 16 * t4 + 2 * kt;
        const float2 c0 = st0[st * 64 + i], c1 = st0[st * 64 + i + 1];
        const float q0 = qh[i], q1 = qh[i + 1], p0 = qh[i + 64], p1 = qh[i + 65];
        qb0[kt] = hv ? pack_h2(fmaf(q0, c0.x, p0 * c0.y), fmaf(q1, c1.x, p1 * c1.y)) : 0u;
        qb2[kt] = hv ? pack_h2(fmaf(p0, c0.x, -q0 * c0.y), fmaf(p1, c1.x, -q1 * c1.y)) : 0u;
      }
#pragma unroll
      for (int mt = 0; mt < 4; ++mt) {
        if (st * kS + mt * 16 >= cnt) break;  // warp-uniform
        float acc[4] = {0.f, 0.f, 0.f, 0.f};
        // The records (u, t4) of the lane's tokens u0, u1 (kvq-fold's layout, setup_fold_tables).
        const uint4* cr0 = reinterpret_cast<const uint4*>(rec + ((16 * mt + gid) * 4 + t4) * kRec);
        const uint4* cr1 = reinterpret_cast<const uint4*>(rec + ((16 * mt + 8 + gid) * 4 + t4) * kRec);
#pragma unroll
        for (int k2 = 0; k2 < 4; ++k2) {
          const uint4 x0 = cr0[3 * k2], y0 = cr0[3 * k2 + 1], z0 = cr0[3 * k2 + 2];
          const uint4 x1 = cr1[3 * k2], y1 = cr1[3 * k2 + 1], z1 = cr1[3 * k2 + 2];
          // k-tile 2 k2: words x.x .. y.y; k-tile 2 k2 + 1: y.z .. z.w.
          const uint32_t cf[2][2][6] = {{{x0.x, x0.y, x0.z, x0.w, y0.x, y0.y}, {y0.z, y0.w, z0.x, z0.y, z0.z, z0.w}},
                                        {{x1.x, x1.y, x1.z, x1.w, y1.x, y1.y}, {y1.z, y1.w, z1.x, z1.y, z1.z, z1.w}}};
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int kt = 2 * k2 + h;
            uint32_t ar[2][2];  // [token u0 / u1][channels (i, i + 1) / (i + 64, i + 65)]
#pragma unroll
            for (int x = 0; x < 2; ++x) {
              const uint32_t lo = lut_get<BITS>(ktab, kw[mt][x][0], kw[mt][x][1], kt, t4x4);
              const uint32_t hi = lut_get<BITS>(ktab, kw[mt][x][2], kw[mt][x][3], kt, t4x4);
              ar[x][0] = hfma2(hi, cf[x][h][1], hfma2(lo, cf[x][h][0], cf[x][h][2]));
              ar[x][1] = hfma2(lo, cf[x][h][4], hfma2(hi, cf[x][h][3], cf[x][h][5]));
            }
            mma16816(acc, ar[0][0], ar[1][0], ar[0][1], ar[1][1], qb0[kt], qb2[kt]);
          }
        }
        const int tok = st * kS + mt * 16 + gid;
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int g = 2 * t4 + e;
          if (g < G) {
            if (tok < cnt) sc[tok * GM + g] = acc[e] * a.scale;
            if (tok + 8 < cnt) sc[(tok + 8) * GM + g] = acc[2 + e] * a.scale;
          }
        }
      }
    }
  }
  __syncthreads();

  // ---- Pass 1b: sinks recomputed, key outliers added (fp32); CSR staged in the coefficient
  // records' space, dead after pass 1 ----
  uint32_t* soff = rec;                                                                // [chunk + 1]
  kvlayout::Outlier* srec = reinterpret_cast<kvlayout::Outlier*>(soff + chunk + 4);  // [2 chunk]
  // Staging capacity: the records' space (kS * 4 * kRec words) after the offsets.
  const int rcap = kS * 4 * kRec - (chunk + 4);
  const kvlayout::Outlier* krec = nullptr;
  float* kfreq = reinterpret_cast<float*>(klut2);  // staged builds: inv_freq as fp32 [64]
  if (K.outliers) {
    krec = stage_csr(K, sh, begin, cnt, soff, srec, rcap);
    if constexpr (ST)
      if (threadIdx.x < 64) kfreq[threadIdx.x] = static_cast<float>(a.inv_freq[threadIdx.x]);
    __syncthreads();
  }
  // Staged builds: the records' key code words [n] after the staged records, copied now and
  // waited for after the sinks' scores (block-uniform: the records staged and 2 n <= rcap).
  bool kst = false;
  uint32_t* kwst = nullptr;
  if constexpr (ST) {
    if (K.outliers && krec == srec) {
      const uint32_t n = soff[cnt];
      kst = 2 * n <= static_cast<uint32_t>(rcap);
      kwst = reinterpret_cast<uint32_t*>(srec + n);
    }
    if (kst) {
      const uint32_t* kcodes = K.codes + sh * K.max_tokens * K.wpr;
      for (int j = max(begin, K.n_sink) + static_cast<int>(threadIdx.x); j < end; j += kT) {
        const uint32_t r0 = soff[j - begin], r1 = soff[j - begin + 1];
        for (uint32_t rr = r0; rr < r1; ++rr) {
          const int i = static_cast<int>(srec[rr].index) - kvh * kD;
          st_cp4(kwst + rr, kcodes + static_cast<int64_t>(j) * K.wpr + i / (32 / BITS));
        }
      }
      st_commit();
    }
  }
  {
    sink_scores<GM>(K, a, sh, begin, end, G, qs, sc, warp, lane);
    if (K.outliers) {
      // Each thread reads back only the words it copied itself: its own wait suffices.
      if constexpr (ST)
        if (kst) st_wait<0>();
      const uint32_t* kcodes = K.codes + sh * K.max_tokens * K.wpr;
      for (int j = max(begin, K.n_sink) + static_cast<int>(threadIdx.x); j < end; j += kT) {
        const uint32_t r0 = soff[j - begin], r1 = soff[j - begin + 1];
        for (uint32_t rr = r0; rr < r1; ++rr) {
          const kvlayout::Outlier o = krec[rr];
          const int i = static_cast<int>(o.index) - kvh * kD;
          uint32_t w;
          if constexpr (ST)
            w = kst ? kwst[rr] : kcodes[static_cast<int64_t>(j) * K.wpr + i / (32 / BITS)];
          else
            w = kcodes[static_cast<int64_t>(j) * K.wpr + i / (32 / BITS)];
          const uint32_t code = (w >> (BITS * (i % (32 / BITS)))) & ((1u << BITS) - 1u);
          const float4 hm = khm[pair_slot(i & 63)];
          float kd = fmaf(klut[code], i < 64 ? hm.x : hm.y, i < 64 ? hm.z : hm.w);
          if constexpr (QN) kd = fmaf(kd, K.qa, K.qb);
          const float delta = h2f(o.value) - kd;
          const int ip = i & 63;
          float c, sn;
          if (kout_stage) {
            // R(j) = R(j0) R(u): the stage anchor R(j0) (st0, reduced in double at setup) and
            // R(u), u = j - j0 < 64, from sincosf of the fp32 angle u f (h65). Why: anchor()
            // per record (a double product, division and rint before sincosf) was ~19% of
            // kvq-foldm's warp samples at llama3-8b b8 32K (ncu, notes/s7/results-h62.md).
            // This drops the record's serial fp64 chain (MUFU.RCP64H, 7 DFMA, 2 DMUL, I2F.F64,
            // FRND.F64: the division's refinement and the reduction) for an LDS.64 and 4 fp32
            // ops; sincosf stays. Measured (H100, 2026-11-23, archive of 2518e01, one process,
            // kvq-kvbench --ab KVQ_KVQ_KOUT=old,new): faster in all 16 cells, llama3-8b
            // (kvq-foldm) 1.01-1.02x, llama2-7b (kvq-fold2) 1.02-1.05x (b8 128K 2 bits);
            // thread instructions per record in a one-record-per-thread copy of the code: 80
            // -> ~71 (ncu; notes/s7/results-h65.md). Error: |(c, s) - fp64| <= 2^-16 derived
            // (tests/gpu/kv_kvquant_test.cpp's header), 2^-18.65 the largest of 2^20 records
            // at llama3's theta (old: 2^-22.6).
            const int o = j - begin;
            const float2 c0 = st0[(o & ~63) + (V2 ? pair_slot(ip) : ip)];
            float cu, su;
            if constexpr (ST)
              sincosf(static_cast<float>(o & 63) * kfreq[ip], &su, &cu);
            else
              sincosf(static_cast<float>(o & 63) * static_cast<float>(a.inv_freq[ip]), &su, &cu);
            c = fmaf(c0.x, cu, -c0.y * su);
            sn = fmaf(c0.y, cu, c0.x * su);
          } else {
            anchor(a.inv_freq[ip], j, c, sn);
          }
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

  // ---- Pass 2: p = exp(s - max) per query head, and the chunk's sum; value CSR staged ----
  uint32_t* vsoff = VP ? rec + kPrivWords : soff;
  if constexpr (VP) {
    const int e = threadIdx.x;  // kT == 256 entries, copy (e + l) mod 32 first: 32 banks per store
    const uint32_t v = pack_h2(vlut[e & 15], vlut[e >> 4]);
#pragma unroll 4
    for (int l = 0; l < 32; ++l) rec[e * 32 + ((e + l) & 31)] = v;
  }
  // Staged builds: pass 3's buffer 1 of the 8 warps in st0 where it fits, else at the end of the
  // records' space (the value CSR's staging capacity that much smaller).
  constexpr int kTileW = stage_tile_words<BITS>();
  const bool buf_st0 = 2 * chunk >= kW * kTileW;
  const int vtail = ST && !buf_st0 ? kW * kTileW : 0;
  const kvlayout::Outlier* vrec = nullptr;
  if (V.outliers) {
    if constexpr (ST)
      vrec = VP ? stage_csr(V, sh, begin, cnt, vsoff, reinterpret_cast<kvlayout::Outlier*>(vsoff + chunk + 4),
                            kS * 4 * kRec - kPrivWords - (chunk + 4) - vtail)
                : stage_csr(V, sh, begin, cnt, soff, srec, rcap - vtail);
    else
      vrec = VP ? stage_csr(V, sh, begin, cnt, vsoff, reinterpret_cast<kvlayout::Outlier*>(vsoff + chunk + 4),
                            kS * 4 * kRec - kPrivWords - (chunk + 4))
                : stage_csr(V, sh, begin, cnt, soff, srec, rcap);
  }
  chunk_softmax<kW, false>(sc, 1, cnt, G, warp, lane, stat, GM);
  __syncthreads();

  // ---- Pass 3: P V on the tensor cores, a warp per 16-token k-tile; then corrections ----
  {
    float acc[8][4];
#pragma unroll
    for (int mt = 0; mt < 8; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[mt][e] = 0.f;
    float pm = 0.f;  // sum over the lane's tokens of p m for head gid
    const uint32_t* vcodes = V.codes + sh * V.max_tokens * V.wpr;
    const uint32_t* vmeta = reinterpret_cast<const uint32_t*>(V.meta) + sh * V.max_tokens;
    const char* vtab = reinterpret_cast<const char*>(VP ? rec : vlut2);
    const uint32_t lane4 = 4u * lane;
    const float vqa = QN ? V.qa : 1.f, vqb = QN ? V.qb : 0.f;
    const int ntile = (cnt + 15) / 16;
    // Tokens 2 t4, 2 t4 + 1, 2 t4 + 8, 2 t4 + 9 of a tile; channels 16 gid .. 16 gid + 15.
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
    // Staged builds: buffer b of this warp (codes and meta), b = (kt16 / kW) & 1.
    // Rows are 64 / 32 B of a 16-byte aligned allocation (V.codes: cudaMalloc, packed_cache.cpp).
    uint32_t* const sbuf0 = klut2 + warp * kTileW;
    uint32_t* const sbuf1 =
        (buf_st0 ? reinterpret_cast<uint32_t*>(st0) : rec + kS * 4 * kRec - kW * kTileW) + warp * kTileW;
    uint32_t* smeta = reinterpret_cast<uint32_t*>(khm) + warp * 16;  // + b * kW * 16
    // Tile kt16 into buffer b: the 16 tokens' rows (token min(tt, cnt - 1), as load_tile) and meta.
    auto stage_tile = [&](int kt16, int b) {
      uint32_t* dst = b ? sbuf1 : sbuf0;
      if constexpr (BITS == 4) {
#pragma unroll
        for (int k = 0; k < 2; ++k) {
          const int q = lane + 32 * k, tt = q >> 2, c = q & 3;
          const int j = begin + min(kt16 * 16 + tt, cnt - 1);
          st_cp16(dst + 16 * tile_row4(tt) + 4 * (c ^ (tt & 2)), vcodes + static_cast<int64_t>(j) * 16 + 4 * c);
        }
      } else {
        const int tt = lane >> 1, c = lane & 1;
        const int j = begin + min(kt16 * 16 + tt, cnt - 1);
        st_cp16(dst + 8 * tile_row2(tt) + 4 * c, vcodes + static_cast<int64_t>(j) * 8 + 4 * c);
      }
      if (lane < 16) st_cp4(smeta + b * kW * 16 + lane, vmeta + begin + min(kt16 * 16 + lane, cnt - 1));
    };
    if constexpr (ST) {
      // One commit group per tile slot, empty ones too, so that wait_group 1 in the loop always
      // means "this warp's tile kt16 has landed" (groups issued: 2 + tiles done).
      if (warp < ntile) stage_tile(warp, 0);
      st_commit();
      if (warp + kW < ntile) stage_tile(warp + kW, 1);
      st_commit();
    } else {
      if (warp < ntile) load_tile(warp);
    }
    for (int kt16 = warp; kt16 < ntile; kt16 += kW) {
      uint32_t w[4][2], mvs[4];
      if constexpr (ST) {
        const int b = (kt16 / kW) & 1;
        st_wait<1>();
        __syncwarp();  // the other lanes' copies of this tile landed too
        const uint32_t* src = b ? sbuf1 : sbuf0;
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          const int tt = 2 * t4 + (x & 1) + 8 * (x >> 1);
          if constexpr (BITS == 4) {
            const uint2 c2 = *reinterpret_cast<const uint2*>(src + 16 * tile_row4(tt) + 4 * ((gid >> 1) ^ (tt & 2)) +
                                                             2 * (gid & 1));
            w[x][0] = c2.x;
            w[x][1] = c2.y;
          } else {
            w[x][0] = src[8 * tile_row2(tt) + gid];
            w[x][1] = 0;
          }
          mvs[x] = smeta[b * kW * 16 + tt];
        }
        __syncwarp();  // buffer b read by every lane before tile kt16 + 2 kW overwrites it
        if (kt16 + 2 * kW < ntile) stage_tile(kt16 + 2 * kW, b);
        st_commit();
      } else {
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          w[x][0] = nw[x][0];
          w[x][1] = nw[x][1];
          mvs[x] = nmv[x];
        }
        if (kt16 + kW < ntile) load_tile(kt16 + kW);
      }
      float pw[4];
#pragma unroll
      for (int x = 0; x < 4; ++x) {
        const int tt = kt16 * 16 + 2 * t4 + (x & 1) + 8 * (x >> 1);
        const bool in = tt < cnt;
        const int j = begin + (in ? tt : cnt - 1);
        const uint32_t mv = mvs[x];
        // Sinks, tokens past the end and heads >= G: weight 0 and no m term (their meta is not
        // read into the sums: a sink's meta need not be finite).
        const bool dense = in && j >= V.n_sink && gid < G;
        pw[x] = 0.f;
        if (dense) {
          const float p = sc[tt * GM + gid];
          const float mid = h2f(static_cast<uint16_t>(mv & 0xFFFFu)), half = h2f(static_cast<uint16_t>(mv >> 16));
          pw[x] = p * (vqa * half);
          pm = fmaf(p, fmaf(vqa, mid, vqb), pm);
        }
      }
      const uint32_t b0 = pack_h2(pw[0], pw[1]), b1 = pack_h2(pw[2], pw[3]);
#pragma unroll
      for (int mt = 0; mt < 8; ++mt) {
        uint32_t h[4];
#pragma unroll
        for (int x = 0; x < 4; ++x)
          h[x] = VP ? lut_lane(vtab, w[x][0], w[x][1], mt, lane4) : lut_get<BITS>(vtab, w[x][0], w[x][1], mt, t4x4);
        // Row gid = channel 16 gid + 2 mt (low halves), row gid + 8 = the next channel.
        mma16816(acc[mt], __byte_perm(h[0], h[1], 0x5410), __byte_perm(h[0], h[1], 0x7632),
                 __byte_perm(h[2], h[3], 0x5410), __byte_perm(h[2], h[3], 0x7632), b0, b1);
      }
    }
    if constexpr (ST) st_wait<0>();  // only empty groups remain; none outlives the loop
    // sum p m of head gid: over the 4 lanes t4 of the group, then into pmid.
    pm += __shfl_xor_sync(0xffffffffu, pm, 1);
    pm += __shfl_xor_sync(0xffffffffu, pm, 2);
    if (t4 == 0 && gid < G) atomicAdd(&pmid[gid], pm);
    // Sinks and value outliers into corr (fp32, shared atomics; p still in sc).
    const int ns_end = min(end, V.n_sink);
    for (int idx = threadIdx.x; idx < (ns_end - begin) * G * kD; idx += kT) {
      const int j = begin + idx / (G * kD), g = (idx / kD) % G, d = idx % kD;
      atomicAdd(&corr[g * kD + d], sc[(j - begin) * GM + g] * h2f(V.sink[(sh * V.n_sink + j) * kD + d]));
    }
    if (V.outliers) {
      // Thread per token as before (token base + threadIdx.x, stride kT), the loops warp-uniform
      // so that warp_channel_add can sum the lanes that share a channel (its comment: the CAS
      // loops of contended shared atomics were half of this kernel's time at G = 4).
      for (int jb = max(begin, V.n_sink) + warp * 32; jb < end; jb += kT) {  // warp-uniform
        const int j = jb + lane;
        const bool in = j < end;
        const uint32_t r0 = in ? vsoff[j - begin] : 0u, r1 = in ? vsoff[j - begin + 1] : 0u;
        float mid = 0.f, half = 0.f;
        if (r1 > r0) {
          const uint32_t mv = vmeta[j];
          mid = h2f(static_cast<uint16_t>(mv & 0xFFFFu));
          half = h2f(static_cast<uint16_t>(mv >> 16));
        }
        const uint32_t nmax = __reduce_max_sync(0xffffffffu, r1 - r0);
        for (uint32_t k = 0; k < nmax; ++k) {  // warp-uniform
          const bool on = r0 + k < r1;
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
          warp_channel_add<GM>(corr, on, i, delta, sc + (j - begin) * GM, G, lane);
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
      float o = corr[i] + pmid[g];
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

template <int BITS, int GM, bool QN, int VAR>
cudaError_t launch(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, const Plan& p,
                   float* part_o, float* part_ml, bool kout_stage, cudaStream_t stream) {
  const size_t smem = smem_bytes(GM, p.chunk);
  cudaError_t e = cudaFuncSetAttribute(kvquant_fold_kernel<BITS, GM, QN, VAR>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  kvquant_fold_kernel<BITS, GM, QN, VAR><<<dim3(p.splits, k.kv_heads, a.rows), kT, smem, stream>>>(
      k, v, a, p.chunk, p.splits, part_o, part_ml, kout_stage);
  if ((e = launch_status()) != cudaSuccess) return e;
  splitk_combine_kernel<__half><<<dim3(a.n_heads, a.rows), 128, 0, stream>>>(
      part_o, part_ml, static_cast<__half*>(a.out), a.n_heads, kD, p.splits);
  return launch_status();
}

template <int BITS, bool QN, int VAR>
cudaError_t dispatch_gm(int gm, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, const Plan& p,
                        float* o, float* ml, bool ks, cudaStream_t stream) {
  switch (gm) {
    case 1: return launch<BITS, 1, QN, VAR>(k, v, a, p, o, ml, ks, stream);
    case 2: return launch<BITS, 2, QN, VAR>(k, v, a, p, o, ml, ks, stream);
    case 4: return launch<BITS, 4, QN, VAR>(k, v, a, p, o, ml, ks, stream);
    case 8: return launch<BITS, 8, QN, VAR>(k, v, a, p, o, ml, ks, stream);
  }
  return cudaErrorInvalidValue;
}
template <bool QN, int VAR>
cudaError_t dispatch_bits(int bits, int gm, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a,
                          const Plan& p, float* o, float* ml, bool ks, cudaStream_t stream) {
  return bits == 4 ? dispatch_gm<4, QN, VAR>(gm, k, v, a, p, o, ml, ks, stream)
                   : dispatch_gm<2, QN, VAR>(gm, k, v, a, p, o, ml, ks, stream);
}

}  // namespace

size_t workspace_fold(const PackedSide& k, const PackedDecodeArgs& a, int max_len, int sm_count) {
  if (k.kv_heads <= 0 || a.rows <= 0 || max_len <= 0 || a.n_heads % k.kv_heads != 0) return 0;
  const Plan p = make_plan(k.kv_heads, a.rows, gm_of(a.n_heads / k.kv_heads), max_len, sm_count);
  return static_cast<size_t>(a.rows) * a.n_heads * p.splits * (kD + 2) * sizeof(float);
}

namespace {
// The staged builds (VAR | kStage) exist only for kvq-kvbench's default KVQuant cells, to keep
// the compile time down: 2 and 4 bits without Q-Norm (kvquant:bits=N's default, qnorm=0),
// kvq-fold2 at GM = 1 (llama2-7b, G = 1) and kvq-foldm at GM = 4 (llama3-8b, G = 4; also G = 3).
template <int VAR>
constexpr int kStageGm = VAR == 1 ? 1 : 4;

template <int VAR>
cudaError_t run_fold_any(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len, int sm_count,
                         void* ws, size_t ws_bytes, bool ks, bool stage, cudaStream_t stream) {
  if (!fits(Act::kF16, k, v, a)) return cudaErrorInvalidValue;
  if (a.rows == 0) return cudaSuccess;
  if (max_len <= 0 || ws_bytes < workspace_fold(k, a, max_len, sm_count)) return cudaErrorInvalidValue;
  const int gm = gm_of(a.n_heads / k.kv_heads);
  const Plan p = make_plan(k.kv_heads, a.rows, gm, max_len, sm_count);
  float* part_o = static_cast<float*>(ws);
  float* part_ml = part_o + static_cast<size_t>(a.rows) * a.n_heads * p.splits * kD;
  const bool qn = k.qa != 1.f || k.qb != 0.f || v.qa != 1.f || v.qb != 0.f;
  if (stage && !qn && gm == kStageGm<VAR>)  // same plan, same shared memory as the default build
    return k.bits == 4 ? launch<4, kStageGm<VAR>, false, VAR | kStage>(k, v, a, p, part_o, part_ml, ks, stream)
                       : launch<2, kStageGm<VAR>, false, VAR | kStage>(k, v, a, p, part_o, part_ml, ks, stream);
  return qn ? dispatch_bits<true, VAR>(k.bits, gm, k, v, a, p, part_o, part_ml, ks, stream)
            : dispatch_bits<false, VAR>(k.bits, gm, k, v, a, p, part_o, part_ml, ks, stream);
}
}  // namespace

bool stage_built(int bits, int group, bool qnorm, bool foldm) {
  return (bits == 2 || bits == 4) && !qnorm && gm_of(group) == (foldm ? kStageGm<2> : kStageGm<1>);
}

cudaError_t run_fold2(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len, int sm_count,
                      void* ws, size_t ws_bytes, cudaStream_t stream, bool kout_stage, bool stage) {
  return run_fold_any<1>(k, v, a, max_len, sm_count, ws, ws_bytes, kout_stage, stage, stream);
}
cudaError_t run_foldm(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len, int sm_count,
                      void* ws, size_t ws_bytes, cudaStream_t stream, bool kout_stage, bool stage) {
  return run_fold_any<2>(k, v, a, max_len, sm_count, ws, ws_bytes, kout_stage, stage, stream);
}

}  // namespace kvq::kern::kvquant_decode
