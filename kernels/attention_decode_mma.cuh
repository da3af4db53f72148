// The tensor-core decode attention over the 16-bit KV cache (kernels/attention_decode_mma.cu),
// called by attention_decode() (kernels/attention_decode.cu), which keeps the three-pass
// CUDA-core kernel as the fallback for what this one does not take. nvcc only.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

#include "kernels/ops.cuh"

namespace kvq::kern::decode_mma {

// True when the kernel takes this call: one query per row (a.n == 1), head_dim 32, 64 or 128,
// n_heads / kv_heads <= 8, and q, caches, k_self / v_self 16-byte aligned (cp.async).
bool fits(const AttentionArgs& a);

// Workspace bytes for `rows` sequences of up to max_len keys (the split-K partials).
size_t workspace(const AttentionArgs& a, int max_len, int sm_count);

// Requires fits(a) and workspace_bytes >= workspace(a, max_len, sm_count).
cudaError_t run(Act act, const AttentionArgs& a, int max_len, int sm_count, void* workspace,
                size_t workspace_bytes, cudaStream_t stream);

}  // namespace kvq::kern::decode_mma
