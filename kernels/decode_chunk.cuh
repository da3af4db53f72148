// The steps of one split-K chunk that the three-pass decode kernels share (nvcc only):
// attention_decode.cu (fp16/bf16 cache), kv_decode_more.cu (kv_more.cuh's packed caches) and,
// with the same block layout, kv_decode_packed.cu's kernels. A block of WARPS warps serves the
// G query heads of one kv head over cache rows [begin, end) of one sequence:
//   pass 1  scores of the chunk's rows -> sc[g][j - begin]        (in each kernel: its loader)
//   pass 2  chunk_softmax: sc -> exp(sc - max), (max, sum) -> stat (here)
//   pass 3  P V into registers                                      (in each kernel)
//   then    store_split_partials (common.cuh), or store_empty_split (here) for a chunk with no
//           visible rows.
// Why passes 1 and 3 stay in the kernels: their per-row arithmetic is the same fma chain, but
// the fp16 kernel spells it `acc += p * v` (contracted to fma by nvcc) and the packed kernels
// `fmaf(p, v, acc)`; nvcc's loop unroller treats the two differently, so one shared spelling
// changed the unrolling of the row loop in one kernel or the other (measured with nvcc -ptx,
// sm_90: +1888 fma.rn.f32 in attention_decode.cu with fmaf, 200 changed lines in
// kv_decode_more.cu with +=), and pass 1 of the fp16 kernel also applies the sliding window.
// The two helpers below leave the normalized PTX of both kernels unchanged.
#pragma once

#include <cstdint>

#include "kernels/common.cuh"

namespace kvq::kern {

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
// The caller synchronizes the block before (sc written) and after (sc, stat read).
template <int WARPS, bool MASKED>
__device__ __forceinline__ void chunk_softmax(float* sc, int chunk, int cnt, int G, int warp, int lane,
                                              float* stat) {
  for (int g = warp; g < G; g += WARPS) {
    float m = -INFINITY;
    for (int i = lane; i < cnt; i += 32) m = fmaxf(m, sc[g * chunk + i]);
    m = warp_max(m);
    float sum = 0.f;
    for (int i = lane; i < cnt; i += 32) {
      const float p = (MASKED && m == -INFINITY) ? 0.f : expf(sc[g * chunk + i] - m);
      sc[g * chunk + i] = p;
      sum += p;
    }
    sum = warp_sum(sum);
    if (lane == 0) {
      stat[2 * g] = m;
      stat[2 * g + 1] = sum;
    }
  }
}

}  // namespace kvq::kern
