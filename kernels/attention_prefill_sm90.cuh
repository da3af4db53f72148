// The two prefill-attention paths behind kern::attention_prefill (kernels/ops.cuh) and how
// it picks one: plain C++ declarations (nvcc and g++), so that tests and benchmarks can
// run either path on the same inputs.
//  - attention_prefill_fa2 (kernels/attention_prefill.cu): mma.sync, FlashAttention-2
//    style; every head_dim the interface allows, any CUDA GPU kvq builds for.
//  - attention_prefill_sm90 (kernels/attention_prefill_sm90.cu): warpgroup MMA (wgmma,
//    sm_90a only), head_dim 64 and 128; the same arguments and semantics (causal, GQA,
//    sliding window, past-only diagonal, chunks over a cached prefix).
//  - attention_prefill_fa3 (kernels/attention_prefill_sm90_fa3.cu): wgmma with a producer
//    warpgroup and two consumer warpgroups (FlashAttention-3 style), head_dim 128 only.
// kern::attention_prefill, with KVQ_PREFILL unset, takes the fa3 path where
// attention_prefill_fa3_usable(), else the sm90 path where attention_prefill_sm90_usable(),
// else FA2; KVQ_PREFILL=fa2 / sm90 / fa3 asks for one path (falling back the same way).
#pragma once

#include "kernels/ops.cuh"

namespace kvq::kern {

// FlashAttention-2 kernel on mma.sync: the portable path (same contract as
// attention_prefill).
cudaError_t attention_prefill_fa2(Act act, const AttentionArgs& a, cudaStream_t stream);

// True when the wgmma kernel can run `a` on the current device: head_dim == 128, a compute
// capability 9.0 device, and the sm_90a image present in this build.
bool attention_prefill_sm90_usable(const AttentionArgs& a);

// The wgmma kernel; cudaErrorNotSupported when !attention_prefill_sm90_usable(a),
// cudaErrorInvalidValue for shapes attention_prefill rejects too.
cudaError_t attention_prefill_sm90(Act act, const AttentionArgs& a, cudaStream_t stream);

// The FlashAttention-3 style kernel (kernels/attention_prefill_sm90_fa3.cu: producer
// warpgroup, two consumer warpgroups in ping-pong, 128-key tiles), head_dim 128 only; usable
// where attention_prefill_sm90_usable() holds and head_dim == 128. KVQ_PREFILL=fa3 asks for it.
bool attention_prefill_fa3_usable(const AttentionArgs& a);
// Same contract; cudaErrorNotSupported when !attention_prefill_fa3_usable(a).
cudaError_t attention_prefill_fa3(Act act, const AttentionArgs& a, cudaStream_t stream);

}  // namespace kvq::kern
