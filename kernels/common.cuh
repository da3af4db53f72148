// Device-side helpers shared by kvq's kernels (nvcc only): the 16-bit element types behind
// kern::Act, conversions, warp reductions, the launch-status helper and the PDL launch.
#pragma once

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "kernels/ops.cuh"

namespace kvq::kern {

template <typename T> __device__ __forceinline__ float to_f(T v);
template <> __device__ __forceinline__ float to_f<__half>(__half v) { return __half2float(v); }
template <> __device__ __forceinline__ float to_f<__nv_bfloat16>(__nv_bfloat16 v) {
  return __bfloat162float(v);
}
// Round to nearest, ties to even (the hardware conversions __float2half_rn / _rn).
template <typename T> __device__ __forceinline__ T from_f(float v);
template <> __device__ __forceinline__ __half from_f<__half>(float v) { return __float2half_rn(v); }
template <> __device__ __forceinline__ __nv_bfloat16 from_f<__nv_bfloat16>(float v) {
  return __float2bfloat16_rn(v);
}

__device__ __forceinline__ float warp_sum(float v) {
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The status of the launch just made (configuration errors show here; faults later).
inline cudaError_t launch_status() { return cudaGetLastError(); }

// Whether the current device runs programmatic dependent launch (sm_90 and newer; asked once
// per process). A failed query counts as no and clears its error.
inline bool device_has_pdl() {
  static const bool hopper = [] {
    int dev = 0, major = 0;
    if (cudaGetDevice(&dev) != cudaSuccess ||
        cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) != cudaSuccess) {
      cudaGetLastError();
      return false;
    }
    return major >= 9;
  }();
  return hopper;
}

// Launches `kernel` on `stream` with programmatic stream serialization: its blocks may start
// while the previous kernel of the stream finishes, and must execute griddepcontrol.wait
// before reading that kernel's output (the split-K combines after the decode kernels, whose
// blocks execute griddepcontrol.launch_dependents). Only where device_has_pdl(); the
// arguments must have the kernel's parameter types exactly.
template <typename... Params, typename... Args>
cudaError_t launch_pdl(void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
                       Args... args) {
  cudaLaunchConfig_t cfg = {};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = stream;
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  const cudaError_t e = cudaLaunchKernelEx(&cfg, kernel, args...);
  return e != cudaSuccess ? e : launch_status();
}

inline unsigned blocks_for(size_t count, unsigned threads) {
  size_t b = (count + threads - 1) / threads;
  return static_cast<unsigned>(b > 65535u * 16u ? 65535u * 16u : (b == 0 ? 1 : b));
}

// The end of one split-K chunk in the decode kernels (attention_decode.cu, kv_decode_packed.cu,
// kv_decode_more.cu), which share one thread layout: LPR lanes per cache row, lane (lr, lc)
// of a warp holding acc[g][0..7] = its rows' partial P.V for query head g, channels
// lc*8 .. lc*8+7. The partials are added across the warp's rows (shuffles), staged per warp
// in `red` (row stride `stride` >= D floats, GMAX*WARPS*stride of them), added over the
// block's warps in warp order, and written, with the chunk's (max, sum) from `stat`, as split
// `s` of query heads head0 .. head0+G-1 (layout: splitk_combine_kernel below). The order of
// every addition is fixed, so the result does not depend on scheduling.
template <int GMAX, int THREADS>
__device__ __forceinline__ void store_split_partials(float (&acc)[GMAX][8], int LPR, int lr, int lc, int warp,
                                                     int G, int D, int stride, float* red, const float* stat,
                                                     int64_t head0, int splits, int s, float* part_o,
                                                     float* part_ml) {
  constexpr int kWarps = THREADS / 32;
#pragma unroll
  for (int g = 0; g < GMAX; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e)
#pragma unroll
      for (int o = LPR; o < 32; o <<= 1) acc[g][e] += __shfl_xor_sync(0xffffffffu, acc[g][e], o);
  if (lr == 0) {
#pragma unroll
    for (int g = 0; g < GMAX; ++g)
      if (g < G)
#pragma unroll
        for (int e = 0; e < 8; ++e) red[(warp * G + g) * stride + lc * 8 + e] = acc[g][e];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * D; i += THREADS) {
    const int g = i / D, d = i % D;
    float v = 0.f;
    for (int w = 0; w < kWarps; ++w) v += red[(w * G + g) * stride + d];
    part_o[((head0 + g) * splits + s) * D + d] = v;
  }
  if (threadIdx.x < G) {
    part_ml[((head0 + threadIdx.x) * splits + s) * 2] = stat[2 * threadIdx.x];
    part_ml[((head0 + threadIdx.x) * splits + s) * 2 + 1] = stat[2 * threadIdx.x + 1];
  }
}

// Split-K combine shared by the decode kernels (attention_decode.cu over the fp16 cache,
// kv_decode_packed.cu over packed caches): one block per (query head, row) merges the
// chunks' partial results, out = sum_s w_s o_s / sum_s w_s l_s with w_s = exp(m_s - m).
// part_o: [rows, n_heads, splits, D] fp32 unnormalised outputs, part_ml: [rows, n_heads,
// splits, 2] (max score, sum of exp(score - max)); a chunk with no keys has m = -inf.
// out: [rows, n_heads, D] (row-major, one query per row).
template <typename T>
__global__ void splitk_combine_kernel(const float* part_o, const float* part_ml, T* out,
                                      int n_heads, int D, int splits) {
  const int h = blockIdx.x, r = blockIdx.y;
  const int64_t head = static_cast<int64_t>(r) * n_heads + h;
  const float* ml = part_ml + head * splits * 2;
  float m = -INFINITY;
  for (int s = 0; s < splits; ++s) m = fmaxf(m, ml[2 * s]);
  float l = 0.f;
  for (int s = 0; s < splits; ++s)
    l += ml[2 * s] == -INFINITY ? 0.f : expf(ml[2 * s] - m) * ml[2 * s + 1];
  T* o_row = out + head * D;
  for (int d = threadIdx.x; d < D; d += blockDim.x) {
    float o = 0.f;
    for (int s = 0; s < splits; ++s)
      if (ml[2 * s] != -INFINITY) o += expf(ml[2 * s] - m) * part_o[(head * splits + s) * D + d];
    o_row[d] = from_f<T>(o / l);
  }
}

// Dispatches a template on the element type: DISPATCH_ACT(act, T, body).
#define KVQ_DISPATCH_ACT(act, T, ...)                     \
  do {                                                    \
    if ((act) == ::kvq::kern::Act::kF16) {                \
      using T = __half;                                   \
      __VA_ARGS__;                                        \
    } else {                                              \
      using T = __nv_bfloat16;                            \
      __VA_ARGS__;                                        \
    }                                                     \
  } while (0)

}  // namespace kvq::kern
