// The steps of one split-K chunk that the three-pass decode kernels share (nvcc only):
// attention_decode.cu (fp16/bf16 cache), kv_decode_more.cu (kv_more.cuh's packed caches) and,
// with the same block layout, kv_decode_packed.cu's general kernel. A block of WARPS warps
// serves the G query heads of one kv head over cache rows [begin, end) of one sequence; lane
// (lr, lc) of a warp holds channels lc*8 .. lc*8+7 of one row (lpr = head_dim / 8 lanes a row).
// What differs between the kernels is how a row of K or V is loaded, so the loaders stay in
// the kernels and these helpers take the loaded values:
//   pass 1  store_scores   q . k of one row for every query head -> sc[g][j - begin]
//   pass 2  chunk_softmax  sc -> exp(sc - max), the chunk's (max, sum) -> stat
//   pass 3  add_pv         acc[g][:] += p[g][j - begin] * v of one row (pv_rows: the lane's
//                          row loop around it, the V loader a lambda)
//   then    store_split_partials (common.cuh), or store_empty_split for a chunk with no
//           visible rows.
// On the host, split_plan sizes the chunks (the same rule for all three kernels; only the
// blocks per SM they aim at differ).
// The fp16 kernel uses store_empty_split and chunk_softmax only. Its passes 1 and 3 are the
// same fma chains, but it spells them `acc += p * v` (contracted to fma by nvcc) and masks
// a sliding window in pass 1; with fmaf spelled out (as here) nvcc unrolled its row loop
// differently (nvcc -ptx, sm_90: 6902 -> 8790 fma.rn.f32 over its 32 instantiations), so it
// keeps its own. Every helper here leaves the normalized PTX of the kernels that use it
// unchanged (sm_90 and compute_80, checked before/after), so results are bit-identical.
#pragma once

#include <algorithm>
#include <cstdint>

#include "kernels/common.cuh"

namespace kvq::kern {

// Host: how a decode step is cut into chunks of keys (flash-decoding). The grid has
// splits x kv_heads x rows blocks; short caches are cut finer until there are about
// blocks_per_sm blocks per SM, chunks are whole multiples of 64 keys, at least 64 and at
// most 2048, and G * chunk scores fit in the kernel's max_chunk_floats of shared memory.
// kv_heads, rows >= 1 (the launchers return before planning an empty step).
struct SplitPlan {
  int chunk = 0, splits = 0;
};

inline SplitPlan split_plan(int kv_heads, int rows, int group, int max_len, int sm_count, int blocks_per_sm,
                            int max_chunk_floats) {
  const int per_split = kv_heads * rows;
  const int want = std::max(1, (blocks_per_sm * std::max(sm_count, 1) + per_split - 1) / per_split);
  int chunk = (max_len + want - 1) / want;
  chunk = ((chunk + 63) / 64) * 64;
  const int cap = std::min(2048, (max_chunk_floats / group) / 64 * 64);
  chunk = std::max(64, std::min(chunk, cap));
  return {chunk, (max_len + chunk - 1) / chunk};
}

// Split `s` of query heads head0 .. head0+G-1 for a chunk with no visible rows: o = 0 and
// (m, l) = (-inf, 0), which splitk_combine_kernel and its variants skip.
// part_o: [rows * n_heads, splits, D], part_ml: [rows * n_heads, splits, 2] fp32.
template <int THREADS>
__device__ __forceinline__ void store_empty_split(int G, int D, int64_t head0, int splits, int s,
                                                  float* part_o, float* part_ml) {
  for (int i = threadIdx.x; i < G * D; i += THREADS)
    part_o[((head0 + i / D) * splits + s) * D + i % D] = 0.f;
  if (threadIdx.x < G) {
    part_ml[((head0 + threadIdx.x) * splits + s) * 2] = -INFINITY;
    part_ml[((head0 + threadIdx.x) * splits + s) * 2 + 1] = 0.f;
  }
}

// Pass 2: per query head g (warp w takes g = w, w + WARPS, ...), p = exp(s - max) over the
// chunk's cnt scores sc[g * chunk + 0 .. cnt-1] in place, and stat[2g] = max, stat[2g + 1] =
// sum of p (lane-strided partial sums, then warp_sum's butterfly). MASKED: the kernel can mask
// every row of a head (sliding window), so max may be -inf and p must be 0 there instead of
// exp(-inf - -inf) = NaN; kernels without masking pass false and pay no compare.
// `chunk` is only the stride between two heads' score rows (>= cnt): the split-K kernels pass
// their chunk length, kv_decode_stream.cu's KIVI tail its residual capacity R (n <= R rows).
// `step` is the stride between two scores of one head: 1 for those head-major rows; KVQuant's
// three-pass kernels keep token-major scores sc[t * GM + g] and pass chunk = 1, step = GM.
// The caller synchronizes the block before (sc written) and after (sc, stat read).
template <int WARPS, bool MASKED>
__device__ __forceinline__ void chunk_softmax(float* sc, int chunk, int cnt, int G, int warp, int lane,
                                              float* stat, int step = 1) {
  for (int g = warp; g < G; g += WARPS) {
    float m = -INFINITY;
    for (int i = lane; i < cnt; i += 32) m = fmaxf(m, sc[g * chunk + i * step]);
    m = warp_max(m);
    float sum = 0.f;
    for (int i = lane; i < cnt; i += 32) {
      const float p = (MASKED && m == -INFINITY) ? 0.f : expf(sc[g * chunk + i * step] - m);
      sc[g * chunk + i * step] = p;
      sum += p;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      stat[2 * g] = m;
      stat[2 * g + 1] = sum;
    }
  }
}

// Pass 1 for one cache row j held by the lpr lanes of a row group: q . k for each query head
// (products added in channel order with fmaf, then a butterfly over the row's lanes), stored
// scaled as sc[g * chunk + (j - begin)] by lane lc == 0 of a row that exists (row_ok).
// qv: [GMAX][8] this lane's channels of each query head (zero for g >= G), kv: [8].
template <int GMAX>
__device__ __forceinline__ void store_scores(const float (&qv)[GMAX][8], const float (&kv)[8], int lpr, int G,
                                             int lc, bool row_ok, float scale, float* sc, int chunk, int j,
                                             int begin) {
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
    float dot = 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) dot = fmaf(qv[g][e], kv[e], dot);
    for (int o = lpr / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
    if (g < G && lc == 0 && row_ok) sc[g * chunk + (j - begin)] = dot * scale;
  }
}

// Pass 3 for one existing cache row j: acc[g][e] = fmaf(p, v[e], acc[g][e]) with p =
// sc[g * chunk + (j - begin)] after pass 2 (0 for g >= G). acc: [GMAX][8] this lane's channels.
template <int GMAX>
__device__ __forceinline__ void add_pv(float (&acc)[GMAX][8], const float (&vv)[8], const float* sc, int chunk,
                                       int j, int begin, int G) {
#pragma unroll
  for (int g = 0; g < GMAX; ++g) {
    const float p = g < G ? sc[g * chunk + (j - begin)] : 0.f;
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = fmaf(p, vv[e], acc[g][e]);
  }
}

// Pass 3 over the lane's rows of [begin, end): acc = 0, then add_pv for rows j = j0 + lr, j0 =
// first, first + step, ... (first = begin + warp * rows per warp instruction, step = all warps'
// rows per instruction), v of row j from load(j, v[8]). kv_decode_more.cu's kernel and
// kv_decode_packed.cu's general kernel (their loaders differ).
template <int GMAX, typename Load>
__device__ __forceinline__ void pv_rows(float (&acc)[GMAX][8], int first, int step, int lr, int begin, int end,
                                        const float* sc, int chunk, int G, Load&& load) {
#pragma unroll
  for (int g = 0; g < GMAX; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.f;
  for (int j0 = first; j0 < end; j0 += step) {
    const int j = j0 + lr;
    if (j < end) {
      float vv[8];
      load(j, vv);
      add_pv<GMAX>(acc, vv, sc, chunk, j, begin, G);
    }
  }
}

}  // namespace kvq::kern
