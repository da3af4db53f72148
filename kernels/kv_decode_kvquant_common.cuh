// Device pieces shared by KVQuant's tensor-core decode builds (kv_decode_kvquant_fold.cu:
// kvq-fold2 and kvq-foldm): the block shape, the slot order of rotate-half pairs, the per-block
// setup (LUTs, query), a stage's key-code loads, the value-outlier corrections summed per warp
// and channel, and the sink scores. nvcc only. The layouts descend from h45's kvq-mma
// (kernels/kv_decode_kvquant_mma.cu and kvq-stream's kv_decode_kvquant_stream.cu, both retired
// in session 7; the fold builds change the B channel order, kv_decode_kvquant_fold.cu):
//  - keys as m16n8k16 fragments whose register pairs hold the rotate-half partners of a
//    lane's channels, so RoPE is lane-local; a lane's 32 channels of its token are two aligned
//    loads (two uint2 at 4 bits, two words at 2 bits);
//  - RoPE split as R(j0 + u) = R(j0) R(u): per 64-token stage the query is rotated by R(j0)^T
//    (fp32, (cos, sin)(j0 f) of an angle reduced in double) and rounded to fp16 once, each key
//    by R(u) (u = offset in the stage);
//  - outliers and sinks as fp32 corrections after the dense pass: scale (R_j^T q)_c (k_out -
//    k_dense) per key record, p_jg (v_out - v_dense) per value record; a sink token's score is
//    recomputed from its fp16 row and its value row enters as p v, its dense value as 0;
//  - values as A fragments (m = channels, k = 16 tokens): lane (gid, t4) holds channels
//    16 gid + 2 mt (+1) of tokens 2 t4, 2 t4 + 1, 2 t4 + 8, 2 t4 + 9; B = the softmax weights
//    (n = heads). Error terms: tests/gpu/kv_kvquant_test.cpp's header.
#pragma once

#include <cmath>
#include <cstdint>

#include "kernels/common.cuh"
#include "kernels/kv_decode_mma_common.cuh"
#include "kernels/kv_ops.cuh"

namespace kvq::kern::kvquant_decode {

constexpr int kT = 256;  // threads per block (8 warps; 2 blocks per SM)
constexpr int kW = kT / 32;
constexpr int kD = 128;  // head_dim served
constexpr int kS = 64;   // RoPE stage: tokens sharing one query rotation

// Query heads per kv head rounded up to the template's head count.
inline int gm_of(int G) { return G == 1 ? 1 : G == 2 ? 2 : G <= 4 ? 4 : 8; }

__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// cos/sin of angle j * f, the angle reduced in double (as the general kernel's RoPE).
__device__ __forceinline__ void anchor(double f, int64_t j, float& c, float& s) {
  const double two_pi = 6.283185307179586476925286766559;
  const double t = static_cast<double>(j) * f;
  const double r = t - rint(t / two_pi) * two_pi;
  sincosf(static_cast<float>(r), &s, &c);
}

// Slot index of rotate-half pair i (0..63) in the lane order: i = 16 t4 + 2 kt + e ->
// (2 kt + e) * 4 + t4, so that the 4 lanes t4 of a fragment read consecutive entries.
__device__ __forceinline__ int pair_slot(int i) { return (i & 15) * 4 + (i >> 4); }

// Block setup before the first barrier: the two LUTs and the G query heads as fp32 (zero up to GM).
template <int BITS, int GM>
__device__ __forceinline__ void setup_luts_query(const PackedSide& K, const PackedSide& V,
                                                 const PackedDecodeArgs& a, int64_t head0, int G, float* klut,
                                                 float* vlut, float* qs) {
  if (threadIdx.x < (1 << BITS)) {
    klut[threadIdx.x] = K.lut[threadIdx.x];
    vlut[threadIdx.x] = V.lut[threadIdx.x];
  }
  const __half* q = static_cast<const __half*>(a.q) + head0 * kD;
  for (int i = threadIdx.x; i < GM * kD; i += kT) qs[i] = i < G * kD ? __half2float(q[i]) : 0.f;
}

// The lane's 32 key codes of token j (channels i and i + 64 of its pairs): kw[0..1] the low
// half's words, kw[2..3] the high half's (2 bits: one word each, the second zero).
template <int BITS>
__device__ __forceinline__ void load_key_codes(const uint32_t* kcodes, int j, int t4, uint32_t (&kw)[4]) {
  if constexpr (BITS == 4) {
    const uint2* row = reinterpret_cast<const uint2*>(kcodes + static_cast<int64_t>(j) * 16);
    const uint2 lo = __ldg(row + t4), hi = __ldg(row + 4 + t4);
    kw[0] = lo.x;
    kw[1] = lo.y;
    kw[2] = hi.x;
    kw[3] = hi.y;
  } else {
    const uint32_t* row = kcodes + static_cast<int64_t>(j) * 8;
    kw[0] = __ldg(row + t4);
    kw[1] = 0;
    kw[2] = __ldg(row + 4 + t4);
    kw[3] = 0;
  }
}

// Value-outlier corrections: every lane with `on` adds p[g] x delta to buf[g * kD + ch] for
// g < G (p: the lane's token's softmax weights, one per head, read only where `on`).
// Why not one atomicAdd per lane and head: a shared fp32 atomicAdd is a compare-and-swap loop on
// sm_90 (ATOMS.CAST.SPIN), and the lanes of a warp step mostly hold the same channel (an outlier
// channel is an outlier in most tokens; kvq-kvbench's planted channels put nearly every token's
// one value record there). ncu (H100, 2026-11-23, 2763772, llama3-8b 32K 4 bits): 46.7 CAS
// rounds per warp step and head, 48-56% of kvq-foldm's warp samples (b1, b8) and 33% of
// kvq-stream's (b1). So a lane alone on its channel adds its own products; lanes sharing one are
// summed by a warp butterfly (one channel per round, the lowest remaining lane's) and a single
// lane adds the G sums. The order of the fp32 additions changes, not their number per output.
// Measured (H100, 2026-11-23, archive of 1ef91a2, one process per shape, kvq-kvbench --ab
// KVQ_KVQ_VOUT=lane,warp, default builds, notes/s7/results-h62.md): llama3-8b 1.11-1.15x faster
// at batch 1 (32K-128K), 1.43-1.50x at batch 8; llama2-7b 1.15-1.21x. ncu after: 4.0 butterfly
// rounds per warp step (the planted channels of a head), pass 3's corrections still 32% of
// kvq-foldm's samples at b8 32K (next: the G heads' butterflies interleaved, fewer rounds).
// Must be reached by all 32 lanes of the warp (warp-uniform control flow).
// GM = 1: the butterfly of 1ef91a2; GM > 1: the GM heads' butterflies interleaved (GM independent
// shuffle chains per round instead of G serial ones: 1.04-1.09x faster than the serial order on
// llama3-8b, H100, archive of ae42267, one process, notes/s7/results-h62.md).
// Shared channels summed by one gather (h72, session 8; the only path since h81): all groups of
// the warp step at once where that takes fewer shuffle levels. The butterflies cost 5 dependent
// shuffle levels (GM shuffles each) per distinct shared channel, i.e. 5 x groups levels per warp
// step (kvq-kvbench's 4 planted channels per head: ~4 groups in most steps, 20 levels); a gather
// costs one level per peer: every lane walks the other lanes of its own peers set (lowest
// first), reading their products with one indexed shuffle per head per step, so a step of
// groups g_1..g_n takes max |g_i| - 1 levels for all groups together, and each group's lowest
// lane adds its GM sums. Taken when max |g_i| - 1 < 5 x groups (warp-uniform); else (one channel
// shared by the whole warp: 1 round of 5 levels, not 31) the butterfly per shared channel below.
// Each sum is the group's own products added in lane order: the same terms as the butterfly, in
// another order (fp32, covered by the test's bound). Measured against the butterfly alone (H100,
// 2026-11-23, f0c4e67, one process, kvq-kvbench --reps 20 --batch 1,8 --contexts 32768,131072
// --kv kvquant:bits=4 --kv kvquant:bits=2 --ab KVQ_KVQ_VSUM=bfly,gather, L2 cold, us): faster in
// all 16 cells, llama2-7b 1.03-1.05x (b1 32K 4 bits 189.6 -> 183.6, b8 128K 4 bits 5316.7 ->
// 5054.3), llama3-8b 1.004-1.03x (b1 32K 4 bits 82.5 -> 82.2, b8 128K 4 bits 1922.7 -> 1867.1).
// So it is the only path (h81); the KVQ_KVQ_VSUM switch and the butterfly-only build are last in f0c4e67.
template <int GM>
__device__ __forceinline__ void warp_channel_add(float* buf, bool on, int ch, float delta, const float* p, int G,
                                                 int lane) {
  const unsigned peers = __match_any_sync(0xffffffffu, on ? ch : -1);
  const bool grouped = on && __popc(peers) > 1;
  if (on && !grouped)
    for (int g = 0; g < G; ++g) atomicAdd(&buf[g * kD + ch], p[g] * delta);
  const bool lead = grouped && (peers & ((1u << lane) - 1u)) == 0u;
  const int groups = __popc(__ballot_sync(0xffffffffu, lead));
  const int most = static_cast<int>(__reduce_max_sync(0xffffffffu, grouped ? __popc(peers) : 0));
  if (most - 1 < 5 * groups) {  // warp-uniform; groups == 0 takes this branch and adds nothing
    float own[GM], t[GM];
#pragma unroll
    for (int g = 0; g < GM; ++g) t[g] = own[g] = grouped && g < G ? p[g] * delta : 0.f;
    unsigned rest = grouped ? peers & ~(1u << lane) : 0u;  // the other lanes of my group
    for (int it = 1; it < most; ++it) {                    // warp-uniform trip count
      const bool use = rest != 0u;
      const int src = use ? __ffs(rest) - 1 : lane;
      rest &= rest - 1u;
#pragma unroll
      for (int g = 0; g < GM; ++g) {
        const float x = __shfl_sync(0xffffffffu, own[g], src);
        if (use) t[g] += x;
      }
    }
    if (lead)
#pragma unroll
      for (int g = 0; g < GM; ++g)
        if (g < G) atomicAdd(&buf[g * kD + ch], t[g]);
    return;
  }
  // A large group among few (most - 1 >= 5 x groups): the butterfly per shared channel (h62).
  unsigned todo = __ballot_sync(0xffffffffu, grouped);
  while (todo) {  // warp-uniform
    const int src = __ffs(todo) - 1;
    const int c = __shfl_sync(0xffffffffu, ch, src);
    const bool mine = grouped && ch == c;
    if constexpr (GM == 1) {
      for (int g = 0; g < G; ++g) {  // warp-uniform
        const float t = warp_sum(mine ? p[g] * delta : 0.f);
        if (lane == src) atomicAdd(&buf[g * kD + c], t);
      }
    } else {
      float t[GM];
#pragma unroll
      for (int g = 0; g < GM; ++g) t[g] = mine && g < G ? p[g] * delta : 0.f;
#pragma unroll
      for (int o = 16; o > 0; o >>= 1)
#pragma unroll
        for (int g = 0; g < GM; ++g) t[g] += __shfl_xor_sync(0xffffffffu, t[g], o);
      if (lane == src)
#pragma unroll
        for (int g = 0; g < GM; ++g)
          if (g < G) atomicAdd(&buf[g * kD + c], t[g]);
    }
    todo &= ~__ballot_sync(0xffffffffu, mine);
  }
}

// Pass 1b of the three-pass builds: the scores of the chunk's sink tokens (j < n_sink, kept in
// fp16) recomputed in fp32 over [begin, end), R(j) applied to the key with the angle reduced in
// double, one warp per (token, head), written over the dense pass's score sc[(j - begin) * GM + g].
template <int GM>
__device__ __forceinline__ void sink_scores(const PackedSide& K, const PackedDecodeArgs& a, int64_t sh, int begin,
                                            int end, int G, const float* qs, float* sc, int warp, int lane) {
  const int ns_end = min(end, K.n_sink);
  for (int w = warp; w < (ns_end - begin) * G; w += kW) {
    const int j = begin + w / G, g = w % G;
    const uint16_t* row = K.sink + (sh * K.n_sink + j) * kD;
    float dot = 0.f;
    for (int i = lane; i < 64; i += 32) {
      float c, sn;
      anchor(a.inv_freq[i], j, c, sn);
      const float x0 = h2f(row[i]), x1 = h2f(row[i + 64]);
      dot = fmaf(qs[g * kD + i], fmaf(x0, c, -x1 * sn), dot);
      dot = fmaf(qs[g * kD + i + 64], fmaf(x1, c, x0 * sn), dot);
    }
    dot = warp_sum(dot);
    if (lane == 0) sc[(j - begin) * GM + g] = dot * a.scale;
  }
}

}  // namespace kvq::kern::kvquant_decode
