// Decode attention specialised for KVQuant packed caches: pre-RoPE NUQ keys with static
// per-channel ranges, per-token NUQ values, CSR sparse outliers and fp16 sinks, all in one
// launch. fits(): kernels/kv_decode_kvquant.cu; the builds: kv_decode_kvquant_fold.cu (kvq-fold2,
// the default at G = 1; kvq-foldm, the default at G > 1); design, instruction and byte counts
// there, the routing in lib/cuda/packed_cache.cpp (else the general kernel of
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

// The three-pass tensor-core builds with the codec's affine maps folded into tables
// (kernels/kv_decode_kvquant_fold.cu): workspace bytes for max_len tokens (split-K partials).
size_t workspace_fold(const PackedSide& k, const PackedDecodeArgs& a, int max_len, int sm_count);
// The same build with the lane's key coefficients in registers (the stage anchors in the A rows)
// and lane-private 4-bit key and value tables (h54; packed_cache.cpp's default at G = 1, also
// KVQ_KV_DECODE=kvq-fold2): the cases of fits(), workspace_fold() bytes in `workspace`.
// kout_stage (both builds): the key-outlier pass's R(j) composed from the stage anchor R(j0) and
// an fp32 sincosf of (j - j0) f (h65); false: anchor() per record, the angle reduced in double
// (packed_cache.cpp's KVQ_KVQ_KOUT=old). Both builds sum the value-outlier corrections' shared
// channels by one gather per warp step where that takes fewer shuffle levels than a butterfly
// per channel (warp_channel_add, kv_decode_kvquant_common.cuh: h72, the only path since h81).
cudaError_t run_fold2(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                      int sm_count, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                      bool kout_stage = true);
// The same tables with the key pass transposed (h56, KVQ_KV_DECODE=kvq-foldm; packed_cache.cpp's
// default at G > 1): tokens as the mma's M, the G query heads as its N columns, plus kvq-fold2's
// lane-private 4-bit value table. Same cases, same workspace_fold().
cudaError_t run_foldm(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                      int sm_count, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                      bool kout_stage = true);

}  // namespace kvq::kern::kvquant_decode
