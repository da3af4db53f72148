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
// stage (both builds; h82, packed_cache.cpp's opt-in KVQ_KVQ_STAGE=1): the build whose pass 1b
// key code words and pass 3 value tiles are copied into shared memory by cp.async ahead of use
// (kv_decode_kvquant_fold.cu, VAR | kStage), bit-identical outputs; where stage_built() is false
// the default build runs.
cudaError_t run_fold2(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                      int sm_count, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                      bool kout_stage = true, bool stage = false);
// The same tables with the key pass transposed (h56, KVQ_KV_DECODE=kvq-foldm; packed_cache.cpp's
// default at G > 1): tokens as the mma's M, the G query heads as its N columns, plus kvq-fold2's
// lane-private 4-bit value table. Same cases, same workspace_fold().
cudaError_t run_foldm(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                      int sm_count, void* workspace, size_t workspace_bytes, cudaStream_t stream,
                      bool kout_stage = true, bool stage = false);
// True when run_fold2 (foldm false) / run_foldm (true) has a staged build for `bits`, G = `group`
// query heads per kv head and Q-Norm present (qa != 1 or qb != 0 on either side) or not: only
// kvq-kvbench's default KVQuant cells (2 and 4 bits, no Q-Norm, G = 1 / G = 3..4).
bool stage_built(int bits, int group, bool qnorm, bool foldm);

}  // namespace kvq::kern::kvquant_decode
