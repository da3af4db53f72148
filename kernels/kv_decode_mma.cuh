// Decode attention over packed uniform per-token KV caches on the tensor cores
// (kernels/kv_decode_mma.cu; design, instruction count and error bound there). Called by
// kv_decode_attention() (kernels/kv_decode_packed.cu), which picks it where fits() holds;
// nvcc and g++ both read this header.
#pragma once

#include <cstddef>

#include <cuda_runtime.h>

#include "kernels/kv_ops.cuh"

namespace kvq::kern::mma_decode {

// True when the tensor-core kernel serves this pair of sides: fp16 activations, post-RoPE
// keys, head_dim 128, 2 or 4 bits, no sinks, outliers, LUT or smoothing, and either
// uniform per-token codes (kTokenAsym or kTokenSym) on both sides with channel groups of
// 16..128, no residual ring, G = heads / kv heads <= 8 with G * (128 / key group) <= 16 and
// 2 * G * (128 / value group) <= 16; or KIVI with G <= 2, or G <= 4 with 32-channel value
// groups (stream_kivi_fits below).
bool fits(Act act, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a);

// The most splits run() uses for max_len tokens: the workspace and the offset of part_ml.
int max_splits(int max_len);

// Launches the kernel (version 4, kv_decode_stream.cu) and the split-K combine. part_o /
// part_ml: the workspace as kv_decode_attention lays it out, part_ml after max_splits()
// splits of part_o.
cudaError_t run(Act act, const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a,
                int max_len, int sm_count, float* part_o, float* part_ml, cudaStream_t stream);

// Version 4's own entry points (kv_decode_stream.cu), called by fits(), max_splits() and run():
// the KIVI pairs it serves (G <= 2, or G <= 4 with 32-channel value groups; key groups of
// 16..256 tokens, one residual length), the
// most splits it uses (one per 256 tokens + the KIVI tail), and the launch (stream kernel,
// KIVI tail kernel, split-K combine) into the workspace layout above.
bool stream_kivi_fits(const PackedSide& k, const PackedSide& v, int G);
int stream_max_splits(int max_len);
cudaError_t stream_run(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                       int sm_count, float* part_o, float* part_ml, cudaStream_t stream);

}  // namespace kvq::kern::mma_decode
