// Launch interface of the packed KV-cache kernels (kernels/kv_quant.cu: append/quantize,
// kernels/kv_decode_packed.cu: decode attention over packed K/V). Plain declarations that
// nvcc and g++ both compile; every launcher enqueues on `stream` and returns a status
// (kernels never throw). lib/cuda/packed_cache.{h,cpp} owns the buffers and the checks.
//
// Device layout of one side (keys or values) of one layer, head-major so that the block
// of a decode kernel that serves kv head h reads one contiguous run per buffer:
//   codes : [slots, H, max_tokens, wpr] uint32, wpr = kvlayout::packed_words(bits, hd),
//           each (token, head) row a kv_layout.h bit stream (code c at bit c*bits)
//   meta  : [slots, H, max_tokens, mpr] binary16, per-token parameters:
//           kTokenAsym: (scale, zero) per group of `group` channels; kTokenSym: scale per
//           group; kLutToken (KVQuant values): (mid, half)
//   cmeta : [slots, H, max_tokens / group, hd, 2] binary16 (kChannelAsym, KIVI keys):
//           (scale, zero) per channel and group of `group` tokens by absolute position
//   resid : [slots, H, resid_cap, hd] binary16 ring (KIVI residual): token j at j % cap
//   sink  : [slots, H, n_sink, hd] binary16 (KVQuant attention sinks)
//   off   : [slots, H, max_tokens + 1] uint32 CSR offsets of sparse outliers per token
//   rec   : [slots, H, out_cap] kvlayout::Outlier records (index = column in the
//           [H * hd] token row, as the CPU reference stores it)
// Which tokens are quantized is a function of the length, the same in append and decode:
//   kChannelAsym with resid (KIVI keys): j < floor(len / resid_cap) * resid_cap;
//   kTokenAsym with resid (KIVI values): j < len - resid_cap; otherwise every token
//   at or beyond n_sink.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/kv_layout.h"
#include "kernels/ops.cuh"

namespace kvq::kern {

enum class KvFormat : int {
  kTokenAsym = 0,    // uniform asymmetric per token, groups of `group` channels
  kTokenSym = 1,     // uniform symmetric per token
  kChannelAsym = 2,  // asymmetric per channel, groups of `group` tokens (KIVI keys)
  kLutChannel = 3,   // KVQuant keys: NUQ LUT, static per-channel (mid, half), pre-RoPE
  kLutToken = 4,     // KVQuant values: NUQ LUT, per-token (mid, half)
};

struct PackedSide {
  KvFormat format = KvFormat::kTokenAsym;
  int bits = 4;
  int group = 0;        // channels (token formats) or tokens (kChannelAsym)
  int head_dim = 0, kv_heads = 0, max_tokens = 0, slots = 0;
  int wpr = 0;          // code words per (token, head) row
  int mpr = 0;          // meta halves per (token, head) row
  uint32_t* codes = nullptr;
  uint16_t* meta = nullptr;
  uint16_t* cmeta = nullptr;
  uint16_t* resid = nullptr;
  int resid_cap = 0;    // 0: no full-precision residual
  uint16_t* sink = nullptr;
  int n_sink = 0;
  // KVQuant
  const float* lut = nullptr;   // [2^bits]
  const float* kmid = nullptr;  // [H * hd] per range set (kLutChannel)
  const float* khalf = nullptr;
  float qa = 1.f, qb = 0.f;     // Q-Norm
  const float* lo = nullptr;    // [H * hd] key outlier thresholds (kLutChannel)
  const float* hi = nullptr;
  // kmid/khalf/lo/hi of slot s start at s * range_stride: 0 = one set for every slot
  // (calibrated), H * hd = per slot (frozen from each sequence's first append).
  int64_t range_stride = 0;
  int topk = 0;                 // value outliers per (token, head) (kLutToken)
  bool outliers = false;
  uint32_t* off = nullptr;
  kvlayout::Outlier* rec = nullptr;
  int64_t out_cap = 0;          // records per (slot, head)
  int* overflow = nullptr;      // set to 1 when a record would pass out_cap
  // WKVQuant smoothing (token formats): x' = (x - delta_c) * inv_s_c before quantizing,
  // x = fma(x'', s_c, delta_c) after. null: none.
  const float* delta = nullptr;
  const float* s = nullptr;
  const float* inv_s = nullptr;
};

// Appends rows [n, ld] fp32 (device) of one slot at positions old_len .. old_len + n - 1:
// quantizes what becomes final, moves the rest into the residual ring, exactly as the CPU
// reference of the codec (lib/codecs/) does. `scratch` must hold n * H * 4 bytes.
cudaError_t kv_append(const PackedSide& p, int slot, const float* rows, int n, int64_t ld,
                      int64_t old_len, void* scratch, cudaStream_t stream);

// Benchmark data: dst[r, c] = scale * u(seed, r, c), u uniform in [-1, 1) from a counter
// hash; columns with c % period == 0 (period > 0) multiplied by `outlier`.
cudaError_t kv_fill_random(float* dst, int64_t rows, int cols, uint64_t seed, float scale,
                           int period, float outlier, cudaStream_t stream);

// Benchmarks: evicts L2 by reading `bytes` of buf (zeroed by the caller, a multiple of 16
// bytes, 16-byte aligned) so the lines it leaves are clean: a later kernel's reads evict them
// without write-backs (a memset scrub would leave up to the whole L2 dirty).
cudaError_t kv_l2_scrub(const void* buf, size_t bytes, unsigned* sink, cudaStream_t stream);

// One decode step over a packed cache, for both families of caches (kv_more.cuh's
// MoreDecodeArgs is this struct): one new query per row, attending to its slot's first
// len[r] tokens.
struct DecodeRowsArgs {
  const void* q = nullptr;        // [rows, n_heads, head_dim] Act, post-RoPE
  void* out = nullptr;            // [rows, n_heads, head_dim] Act
  const int32_t* slot = nullptr;  // [rows]
  const int32_t* len = nullptr;   // [rows]: row r attends to tokens 0 .. len[r]-1 of its slot
  int rows = 0, n_heads = 0;
  float scale = 0.f;
};

// The step for kv_ops.cuh's formats: pre-RoPE keys and the benchmarks' kernel choice.
struct PackedDecodeArgs : DecodeRowsArgs {
  const double* inv_freq = nullptr;  // [head_dim/2]: keys are pre-RoPE (KVQuant), else null
  bool rope_interleaved = false;
  // Kernel choice (benchmarks): 0 auto (the tensor-core kernel, kv_decode_mma.cu /
  // kv_decode_stream.cu, where it applies, else the fast kernel without prefetch, else the
  // general one), 1 the general kernel, 2 fast without prefetch (2 blocks/SM), 3 fast with
  // prefetch, 4 the tensor-core kernel where it applies (as auto). Values 5-7 (version 3's
  // builds) were retired after dfabb0b (notes/kv-cuda-perf.md, "Retired kernels").
  int variant = 0;
};

size_t kv_decode_workspace(const PackedSide& k, const PackedDecodeArgs& a, int max_len,
                           int sm_count);

// Decode attention over packed K and V: split-K over the context (one block per chunk x
// kv head x row), dequantization in registers, LUT + RoPE fused for pre-RoPE keys,
// sparse outliers patched in the same pass, fp32 softmax, then a combine kernel.
cudaError_t kv_decode_attention(Act act, const PackedSide& k, const PackedSide& v,
                                const PackedDecodeArgs& a, int max_len, int sm_count,
                                void* workspace, size_t workspace_bytes, cudaStream_t stream);

}  // namespace kvq::kern
