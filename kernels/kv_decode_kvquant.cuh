// Decode attention specialised for KVQuant packed caches: pre-RoPE NUQ keys with static
// per-channel ranges, per-token NUQ values, CSR sparse outliers and fp16 sinks, all in one
// launch. fits(): kernels/kv_decode_kvquant.cu; the builds: kv_decode_kvquant_fold.cu (default: kvq-fold2 at G = 1, kvq-fold at G > 1),
// kv_decode_kvquant_mma.cu and kv_decode_kvquant_stream.cu (design, instruction and byte counts there). Called by
// lib/cuda/packed_cache.cpp where fits() holds (else the general kernel of
// kernels/kv_decode_packed.cu serves KVQuant). nvcc and g++ both read this header.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

#include "kernels/kv_ops.cuh"

namespace kvq::kern::kvquant_decode {

// True when these kernels serve the pair: fp16 activations, KVQuant on both sides
// (kLutChannel keys, kLutToken values) with the same bit width 2 or 4, head_dim 128,
// rotate-half RoPE (inv_freq given, not interleaved), G = heads / kv heads in 1..8.
// 3 bits, head_dim 64, interleaved RoPE and bf16 take the general kernel.
bool fits(Act act, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a);

// The tensor-core build with the codec's affine maps folded into tables
// (kernels/kv_decode_kvquant_fold.cu; packed_cache.cpp's default, also KVQ_KV_DECODE=kvq-fold):
// same cases and split-K partials as run_mma below, its own split plan and workspace.
size_t workspace_fold(const PackedSide& k, const PackedDecodeArgs& a, int max_len, int sm_count);
cudaError_t run_fold(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                     int sm_count, void* workspace, size_t workspace_bytes, cudaStream_t stream);
// The same build with the lane's key coefficients in registers (the stage anchors in the A rows)
// and lane-private 4-bit key and value tables (h54; packed_cache.cpp's default at G = 1, also
// KVQ_KV_DECODE=kvq-fold2): same cases, same workspace_fold().
cudaError_t run_fold2(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                      int sm_count, void* workspace, size_t workspace_bytes, cudaStream_t stream);
// The same build with the key pass transposed (h56, KVQ_KV_DECODE=kvq-foldm, opt-in): tokens as
// the mma's M, the G query heads as its N columns (kvq-fold's records and fp16 values, half its
// key-pass mma), plus kvq-fold2's lane-private 4-bit value table. Same cases, same workspace_fold().
cudaError_t run_foldm(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                      int sm_count, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// The tensor-core build of session 5 (kernels/kv_decode_kvquant_mma.cu; KVQ_KV_DECODE=kvq-mma): workspace bytes for max_len tokens (its split-K partials) and the
// launch (decode kernel + split-K combine); `workspace` holds workspace_mma() bytes.
size_t workspace_mma(const PackedSide& k, const PackedDecodeArgs& a, int max_len, int sm_count);
cudaError_t run_mma(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                    int sm_count, void* workspace, size_t workspace_bytes, cudaStream_t stream);

// One pass per 64-token stage with an online softmax (kernels/kv_decode_kvquant_stream.cu,
// KVQ_KV_DECODE=kvq-stream): same cases, its own split plan and workspace.
size_t workspace_stream(const PackedSide& k, const PackedDecodeArgs& a, int max_len, int sm_count);
cudaError_t run_stream(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                       int sm_count, void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace kvq::kern::kvquant_decode
