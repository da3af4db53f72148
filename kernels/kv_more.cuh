// Launch interface of the GPU packed caches for the codecs that kernels/kv_ops.cuh does not
// serve: fp16, q8_0 / q4_0, fp8 (e4m3 / e5m2, per-head scales), intB axis=channel, the
// randomized-Hadamard codec and MiKV (kernels/kv_quant_more.cu: append; kernels/
// kv_decode_more.cu: decode attention). Plain declarations that nvcc and g++ both compile;
// launchers enqueue on `stream` and return a status, kernels never throw.
// lib/cuda/packed_more.{h,cpp} owns the buffers, the host-side decisions (MiKV's choice of
// high-precision tokens, its balancer) and the checks.
//
// Device layout of one side (keys or values) of one layer, head-major like kv_ops.cuh so
// that the block serving kv head h reads one contiguous run per buffer:
//   data : [slots, H, max_tokens, row_bytes] one record per (token, head):
//          kF16       hd binary16 values
//          kQ8_0      hd int8 codes (llama.cpp's qs of the head's hd/32 blocks, in order)
//          kQ4_0      hd/2 bytes: the head's blocks' qs (byte j of a block: element j in the
//                     low nibble, j + 16 in the high one, as block_q4_0)
//          kFp8       hd fp8 bytes
//          kChannel, kHadamard: kv_layout.h packed codes (wpr words)
//          kMikv      the larger of its two records: hd binary16 (hi=fp16) or packed codes
//   meta : [slots, H, max_tokens, mpr] binary16: q8_0 / q4_0 the block scales d (hd/32);
//          kHadamard and kMikv integer records (scale, zero) of the whole head
//   cmeta: [slots, H, max_tokens / group, hd, sym ? 1 : 2] binary16 (kChannel): per
//          channel and group of `group` tokens by absolute position; the newest incomplete
//          group holds the provisional range of the tokens present, recomputed at every
//          append from the fp16 window (the CPU reference quantizes it on read the same way)
//   ring : binary16 window: kChannel [slots, H, group, hd] (token j at j % group, the
//          tokens of the incomplete group); kMikv [slots, H, ring_cap, hd] (the `recent`
//          newest tokens, token j at j % ring_cap)
//   flag : [slots, H, max_tokens] uint8 (kMikv): 1 = high-precision record
// The split between binary16 window and records is a function of the length only:
//   kMikv: tokens j >= len - ring_cap are read from the ring; every other format reads
//   every token from its records (kChannel's incomplete group included).
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/kv_layout.h"
#include "kernels/kv_ops.cuh"
#include "kernels/ops.cuh"

namespace kvq::kern {

enum class MoreFormat : int {
  kF16 = 0,
  kQ8_0 = 1,
  kQ4_0 = 2,
  kFp8 = 3,       // e4m3 or e5m2 (e5m2 flag), x' = fp8(x * inv_scale[h]) * scale[h]
  kChannel = 4,   // uniform per channel, groups of `group` tokens, asym or sym
  kHadamard = 5,  // y = norm * H (signs . x), uniform asym per (token, head)
  kMikv = 6,      // per (token, head): hi (fp16 or int8) or lo (int-b) record, asym
};

struct MoreSide {
  MoreFormat format = MoreFormat::kF16;
  int head_dim = 0, kv_heads = 0, max_tokens = 0, slots = 0;
  int bits = 16;       // code bits of packed records (kChannel, kHadamard, kMikv lo)
  int group = 0;       // kChannel: tokens per group
  bool sym = false;    // kChannel
  bool e5m2 = false;   // kFp8
  int row_bytes = 0;   // bytes per record in `data` (a multiple of 4)
  int mpr = 0;         // meta halves per record
  uint8_t* data = nullptr;
  uint16_t* meta = nullptr;
  uint16_t* cmeta = nullptr;
  uint16_t* ring = nullptr;
  int ring_cap = 0;
  float* scale = nullptr;      // kFp8: [slots, H]
  float* inv_scale = nullptr;  // kFp8: [slots, H]
  const float* signs = nullptr;  // kHadamard: [hd] +-1
  float norm = 1.f;              // kHadamard: fp32(1 / sqrt(fp32(hd))), as hadamard.cpp
  float* b = nullptr;            // kMikv keys: balancer [slots, H * hd] (null: none)
  float* inv_b = nullptr;        // kMikv keys: 1 / b, same shape
  uint8_t* flag = nullptr;       // kMikv
  int hi_bits = 16;              // kMikv: 16 (fp16) or 8
};

// Appends rows [n, ld] fp32 (device) of one slot at positions old_len .. old_len + n - 1,
// encoding exactly what the CPU reference (lib/codecs/) encodes. kMikv: `flags` [(enc1 -
// enc0), H] (device) are the host's choice for the tokens [enc0, enc1) that leave the
// window in this append. kFp8 scales must be set before (more_fp8_scales or uploaded).
cudaError_t more_append(const MoreSide& p, int slot, const float* rows, int n, int64_t ld,
                        int64_t old_len, const uint8_t* flags, int64_t enc0, int64_t enc1,
                        cudaStream_t stream);

// kFp8 without given scales: scale[slot, h] = amax over rows [n, ld] of head h / max finite
// (1 when amax is 0), inv_scale = 1 / scale, as fp8.cpp's freeze.
cudaError_t more_fp8_scales(const MoreSide& p, int slot, const float* rows, int n, int64_t ld,
                            cudaStream_t stream);

// q, out, slot, len, rows, n_heads, scale: kv_ops.cuh's DecodeRowsArgs (the same decode step;
// these formats have no pre-RoPE keys and one kernel).
using MoreDecodeArgs = DecodeRowsArgs;

size_t more_decode_workspace(const MoreSide& k, const MoreDecodeArgs& a, int max_len,
                             int sm_count);

// Decode attention over packed K and V (split-K over the context, one block of 4 warps per
// chunk x kv head x row serving the GQA group; a combine kernel merges the chunks).
// Hadamard keys: the query is rotated once (same signs and transform as the keys);
// Hadamard values: the merged output is rotated back. Scores, softmax and accumulators fp32.
cudaError_t more_decode_attention(Act act, const MoreSide& k, const MoreSide& v,
                                  const MoreDecodeArgs& a, int max_len, int sm_count,
                                  void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace kvq::kern
