// Decode attention: one new query per sequence over its whole KV cache (flash-decoding).
// attention_decode() below picks the kernel:
//  - the tensor-core kernel (kernels/attention_decode_mma.cu: per-warp cp.async pipelines,
//    scores and P V on mma.sync, online softmax, split-K with a PDL-launched combine) wherever
//    decode_mma::fits() holds: head_dim 32, 64 or 128, G = n_heads / kv_heads <= 8, 16-byte
//    aligned pointers; except MHA (G = 1) with at least one (row, kv head) pair per SM and
//    >= 32K keys, where the CUDA-core kernel measured 2.8-3.8% faster (H100, 2026-11-23,
//    llama2-7b batch 8: 32K 1437 vs 1478 us, 128K 5622 vs 5838 us, 100-103% of the copy
//    bandwidth: its one-stream-at-a-time 2048-key chunks read faster than the new kernel's K
//    and V streams together; 64K equal; notes/s6/results-h53.md);
//  - otherwise the three-pass CUDA-core kernel of this file (head_dim 8..128 in steps of 8).
// KVQ_ATTN_DECODE (read per call, for A/B in one process): unset or "new" = the rule above,
// "old" = this file's kernel everywhere, "new-w4s2" .. "new-w8s3" = the tensor-core kernel
// wherever it fits (the MHA exception above off), in one build variant (warps per block,
// pipeline depth: its tuning A/B, kernels/attention_decode_mma.cu); any other value is an
// error (cudaErrorInvalidValue), so a typo cannot time the same kernel twice. The workspace
// covers every kernel's plan.
//
// The CUDA-core kernel: the keys of a sequence are cut into chunks, one block per (chunk, kv
// head, sequence); a block serves all G query heads that share its kv head (GQA), so each K/V
// byte is read once per step, which is the floor for this memory-bound kernel (METHODS.md,
// "Memory arithmetic"). A second kernel (splitk_combine_kernel, kernels/common.cuh, shared with
// kv_decode_packed.cu) merges the chunks' (max, sum, output) triples.
//
// Inside a block (4 warps): a row of head_dim 16-bit values is read by DP/8 lanes with one
// 16-byte load each, so a warp instruction covers 32/(DP/8) whole rows, fully coalesced.
// Pass 1 writes the chunk's scores for every head to shared memory, pass 2 turns them into
// exp(s - max) per head, pass 3 accumulates P V in fp32 registers and reduces across lanes
// and warps. The empty-chunk write and pass 2 are kernels/decode_chunk.cuh's, shared with
// kv_decode_more.cu and kv_decode_packed.cu.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels/attention_decode_mma.cuh"
#include "kernels/common.cuh"
#include "kernels/decode_chunk.cuh"

namespace kvq::kern {
namespace {

constexpr int kThreads = 128;
constexpr int kWarps = kThreads / 32;
constexpr int kMaxChunkFloats = 8192;  // G * chunk scores in shared memory (32 KB)

using DecodePlan = SplitPlan;

int padded_dim(int head_dim) {
  return head_dim <= 16 ? 16 : head_dim <= 32 ? 32 : head_dim <= 64 ? 64 : 128;
}

DecodePlan plan(const AttentionArgs& a, int max_len, int sm_count) {
  // Two blocks per SM at least: short caches are cut finer so the chip fills.
  return split_plan(a.kv_heads, a.rows, a.n_heads / a.kv_heads, max_len, sm_count, 2, kMaxChunkFloats);
}

size_t smem_bytes(int group, int chunk, int dp) {
  return (static_cast<size_t>(group) * chunk + static_cast<size_t>(kWarps) * group * dp +
          2 * group) * sizeof(float);
}

template <typename T>
__device__ __forceinline__ void load8(const T* p, bool ok, float (&v)[8]) {
  uint4 raw = make_uint4(0, 0, 0, 0);
  if (ok) raw = *reinterpret_cast<const uint4*>(p);
  const T* e = reinterpret_cast<const T*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) v[i] = to_f(e[i]);
}

// part_o: [rows, n_heads, splits, head_dim], part_ml: [rows, n_heads, splits, 2] fp32.
template <typename T, int DP, int GMAX>
__global__ void __launch_bounds__(kThreads)
attention_decode_kernel(AttentionArgs a, int chunk, int splits, float* part_o, float* part_ml) {
  constexpr int LPR = DP / 8;       // lanes per row
  constexpr int RPW = 32 / LPR;     // rows per warp instruction
  extern __shared__ __align__(16) float sm[];
  const int G = a.n_heads / a.kv_heads;
  const int D = a.head_dim;
  float* sc = sm;                                  // [G][chunk]
  float* red = sm + G * chunk;                     // [kWarps][G][DP]
  float* stat = red + kWarps * G * DP;             // [G][2]

  const int s = blockIdx.x, kvh = blockIdx.y, r = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int lr = lane / LPR, lc = lane % LPR;
  const int pos = a.pos0[r];
  const int begin = s * chunk;
  const int end = min(pos + 1, begin + chunk);
  const int lo = a.window > 0 ? max(0, pos - a.window + 1) : 0;
  const int64_t head0 = static_cast<int64_t>(r) * a.n_heads + kvh * G;  // first query head

  if (begin >= end || end <= lo) {  // nothing to see in this chunk
    store_empty_split<kThreads>(G, D, head0, splits, s, part_o, part_ml);
    return;
  }
  const int slot = a.slot[r];
  const int64_t cache_base = (static_cast<int64_t>(slot) * a.kv_heads + kvh) * a.max_tokens * D;
  const T* kc = static_cast<const T*>(a.k_cache) + cache_base;
  const T* vc = static_cast<const T*>(a.v_cache) + cache_base;
  const T* q = static_cast<const T*>(a.q);
  const bool self = a.k_self != nullptr;
  const int64_t self_off = (static_cast<int64_t>(r) * a.kv_heads + kvh) * D;
  const bool col_ok = lc * 8 < D;

  // Pass 1: scores.
  {
    float qv[GMAX][8];
#pragma unroll
    for (int g = 0; g < GMAX; ++g) load8(q + (head0 + g) * D + lc * 8, g < G && col_ok, qv[g]);
    for (int j0 = begin + warp * RPW; j0 < end; j0 += kWarps * RPW) {
      const int j = j0 + lr;
      const bool row_ok = j < end;
      const T* src = (self && j == pos) ? static_cast<const T*>(a.k_self) + self_off
                                        : kc + static_cast<int64_t>(j) * D;
      float kv[8];
      load8(src + lc * 8, row_ok && col_ok, kv);
#pragma unroll
      for (int g = 0; g < GMAX; ++g) {
        float dot = 0.f;
#pragma unroll
        for (int e = 0; e < 8; ++e) dot += qv[g][e] * kv[e];
#pragma unroll
        for (int o = LPR / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
        if (g < G && lc == 0 && row_ok) sc[g * chunk + (j - begin)] = j < lo ? -INFINITY : dot * a.scale;
      }
    }
  }
  __syncthreads();

  // Pass 2: p = exp(s - max) per head, and the chunk's sum.
  // A window can mask a head's whole chunk: its max is -inf and p = 0.
  chunk_softmax<kWarps, true>(sc, chunk, end - begin, G, warp, lane, stat);
  __syncthreads();

  // Pass 3: P V.
  float acc[GMAX][8];
#pragma unroll
  for (int g = 0; g < GMAX; ++g)
#pragma unroll
    for (int e = 0; e < 8; ++e) acc[g][e] = 0.f;
  for (int j0 = begin + warp * RPW; j0 < end; j0 += kWarps * RPW) {
    const int j = j0 + lr;
    const bool row_ok = j < end;
    const T* src = (self && j == pos) ? static_cast<const T*>(a.v_self) + self_off
                                      : vc + static_cast<int64_t>(j) * D;
    float vv[8];
    load8(src + lc * 8, row_ok && col_ok, vv);
#pragma unroll
    for (int g = 0; g < GMAX; ++g) {
      const float p = (g < G && row_ok) ? sc[g * chunk + (j - begin)] : 0.f;
#pragma unroll
      for (int e = 0; e < 8; ++e) acc[g][e] += p * vv[e];
    }
  }
  store_split_partials<GMAX, kThreads>(acc, LPR, lr, lc, warp, G, D, DP, red, stat, head0, splits, s, part_o,
                                     part_ml);
}

template <typename T, int DP, int GMAX>
cudaError_t launch_decode(const AttentionArgs& a, const DecodePlan& p, float* part_o,
                          float* part_ml, cudaStream_t stream) {
  const int group = a.n_heads / a.kv_heads;
  const size_t smem = smem_bytes(group, p.chunk, DP);
  cudaError_t e = cudaFuncSetAttribute(attention_decode_kernel<T, DP, GMAX>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  dim3 grid(p.splits, a.kv_heads, a.rows);
  attention_decode_kernel<T, DP, GMAX><<<grid, kThreads, smem, stream>>>(a, p.chunk, p.splits,
                                                                        part_o, part_ml);
  e = launch_status();
  if (e != cudaSuccess) return e;
  splitk_combine_kernel<T><<<dim3(a.n_heads, a.rows), 128, 0, stream>>>(
      part_o, part_ml, static_cast<T*>(a.out), a.n_heads, a.head_dim, p.splits);
  return launch_status();
}

template <typename T, int DP>
cudaError_t dispatch_group(const AttentionArgs& a, const DecodePlan& p, float* o, float* ml,
                           cudaStream_t stream) {
  const int group = a.n_heads / a.kv_heads;
  if (group == 1) return launch_decode<T, DP, 1>(a, p, o, ml, stream);
  if (group == 2) return launch_decode<T, DP, 2>(a, p, o, ml, stream);
  if (group <= 4) return launch_decode<T, DP, 4>(a, p, o, ml, stream);
  return launch_decode<T, DP, 8>(a, p, o, ml, stream);
}

template <typename T>
cudaError_t dispatch_dim(const AttentionArgs& a, const DecodePlan& p, float* o, float* ml,
                         cudaStream_t stream) {
  switch (padded_dim(a.head_dim)) {
    case 16: return dispatch_group<T, 16>(a, p, o, ml, stream);
    case 32: return dispatch_group<T, 32>(a, p, o, ml, stream);
    case 64: return dispatch_group<T, 64>(a, p, o, ml, stream);
    default: return dispatch_group<T, 128>(a, p, o, ml, stream);
  }
}

}  // namespace

namespace {

enum class Pick { kNew, kForceNew, kOld, kBad };

// KVQ_ATTN_DECODE, read per call (see the header).
Pick picked() {
  const char* e = std::getenv("KVQ_ATTN_DECODE");
  if (e == nullptr || *e == '\0' || std::strcmp(e, "new") == 0) return Pick::kNew;
  // "new-<variant>": the tensor-core kernel's build variants (its tuning A/B); decode_mma::run
  // rejects names it does not know.
  if (std::strncmp(e, "new-", 4) == 0) return Pick::kForceNew;
  if (std::strcmp(e, "old") == 0) return Pick::kOld;
  return Pick::kBad;
}

size_t old_workspace(const AttentionArgs& a, int max_len, int sm_count) {
  const DecodePlan p = plan(a, max_len, sm_count);
  return static_cast<size_t>(a.rows) * a.n_heads * p.splits * (a.head_dim + 2) * sizeof(float);
}

}  // namespace

size_t attention_decode_workspace(const AttentionArgs& a, int max_len, int sm_count) {
  if (a.kv_heads <= 0 || a.rows <= 0 || max_len <= 0) return 0;
  // Both kernels' needs, so that switching KVQ_ATTN_DECODE between calls never needs more.
  size_t bytes = old_workspace(a, max_len, sm_count);
  if (decode_mma::fits(a)) bytes = std::max(bytes, decode_mma::workspace(a, max_len, sm_count));
  return bytes;
}

cudaError_t attention_decode(Act act, const AttentionArgs& a, int max_len, int sm_count,
                             void* workspace, size_t workspace_bytes, cudaStream_t stream) {
  if (a.head_dim % 8 != 0 || a.head_dim > kMaxHeadDim || a.head_dim <= 0 || a.kv_heads <= 0 ||
      a.n_heads % a.kv_heads != 0 || a.n_heads / a.kv_heads > kMaxGroup || a.n != 1)
    return cudaErrorInvalidValue;
  if (a.rows == 0) return cudaSuccess;
  const Pick pick = picked();
  if (pick == Pick::kBad) return cudaErrorInvalidValue;
  // The MHA exception of the header: long caches with a (row, kv head) pair per SM or more.
  const bool old_faster = a.n_heads == a.kv_heads && a.rows * a.kv_heads >= sm_count && max_len >= 32768;
  if ((pick == Pick::kForceNew || (pick == Pick::kNew && !old_faster)) && decode_mma::fits(a))
    return decode_mma::run(act, a, max_len, sm_count, workspace, workspace_bytes, stream);
  if (max_len <= 0 || workspace_bytes < old_workspace(a, max_len, sm_count)) return cudaErrorInvalidValue;
  const DecodePlan p = plan(a, max_len, sm_count);
  float* part_o = static_cast<float*>(workspace);
  float* part_ml = part_o + static_cast<size_t>(a.rows) * a.n_heads * p.splits * a.head_dim;
  if (act == Act::kF16) return dispatch_dim<__half>(a, p, part_o, part_ml, stream);
  return dispatch_dim<__nv_bfloat16>(a, p, part_o, part_ml, stream);
}

}  // namespace kvq::kern
