// One interface for every GPU packed KV cache, and the caches of the codecs that
// lib/cuda/packed_cache.h (PackedKvCache) does not serve: fp16, q8_0 / q4_0, fp8 (e4m3 /
// e5m2, per-head scales), intB axis=channel, the randomized-Hadamard codec and MiKV.
// make_packed_cache() picks the implementation: PackedKvCache (behind an adapter) for the
// codecs it serves, else the caches here (kernels/kv_more.cuh, kv_quant_more.cu,
// kv_decode_more.cu). Like PackedKvCache they hold exactly the bytes the CPU reference
// (lib/codecs/) holds, bit for bit (tests/gpu/kv_more_test.cpp), and decode attention
// reads them directly.
//
// Notes per codec:
//   fp8: the per-head scales are the profile's, else frozen per slot from its first append
//     (fp8.cpp); intB axis=channel: the incomplete newest group is held as fp16 and its
//     provisional codes and ranges are re-encoded at every append, so decode sees it
//     quantized with the range of the tokens present, as the CPU reference's readers do;
//   hadamard: decode rotates the query instead of the keys and the output instead of the
//     values;
//   mikv: the caller gives the importance of every token so far (PackedAppendExtras) and,
//     for the balancer, the queries of the first append; the choice of high-precision
//     tokens is made on the host exactly as mikv.cpp makes it (it is a sort of the few
//     tokens that leave the recent window). A balancer given by a profile is not visible
//     through MikvCodec::params(), so the GPU computes it from the queries (or uses 1).
//     Records are allocated at the size of the larger precision (slot_bytes() counts the
//     CPU's compact bytes).
// Goals: the real memory layout and read path for every codec. Non-goals: speed parity
// with the tuned kernels of kv_decode_packed.cu, paged allocation.
// The header needs no CUDA headers (tools include it); streams are passed as void*.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "lib/codecs/chunked.h"
#include "lib/codecs/codec.h"

namespace kvq::cuda {

// Host inputs some codecs read while appending (MiKV).
struct PackedAppendExtras {
  // Accumulated attention of every token so far, [size(slot) + n, n_kv_heads] row-major,
  // as AppendContext::importance. null: all tokens equally important.
  const float* importance = nullptr;
  // Queries of the appended tokens at the key codec's stage, [n, n_heads * head_dim]
  // (MiKV's balancer, read at a slot's first append). null: none.
  const float* queries = nullptr;
};

class PackedCache {
 public:
  virtual ~PackedCache() = default;
  // Appends n tokens of keys and values to `slot`: device fp32 [n, ld] each, at the key
  // codec's RoPE stage.
  virtual void append(int slot, const float* k_dev, const float* v_dev, int n, int64_t ld,
                      const PackedAppendExtras& extras) = 0;
  // The same from host memory.
  virtual void append_host(int slot, const float* k, const float* v, int n, int64_t ld,
                           const PackedAppendExtras& extras) = 0;
  virtual int64_t size(int slot) const = 0;
  virtual int max_tokens() const = 0;
  // Selects the slots of the next decode calls (row r reads slots[r]) and sizes the workspace.
  virtual void prepare(const std::vector<int>& slots) = 0;
  // q: [rows, n_heads, head_dim] fp16 (bf16 when `bf16`), device; out: same shape.
  virtual void decode(const void* q_dev, void* out_dev, bool bf16, void* stream) = 0;
  // Bytes the prepared decode reads (codes, scales, full-precision parts, flags).
  virtual double decode_bytes() const = 0;
  // Bytes one slot holds at its current size, as the CPU cache's bytes() counts them.
  virtual size_t slot_bytes(int slot) const = 0;
  // Final tokens [t0, t1) of one side in the CPU reference's chunk order (bit-exact tests).
  virtual codecs::Chunk download(bool key, int slot, int64_t t0, int64_t t1) const = 0;
  // Tokens of `slot` that are final on one side (the rest sit in an fp16 window).
  virtual int64_t quantized_tokens(bool key, int slot) const = 0;
};

// Empty when make_packed_cache can serve this key/value pair, else why not.
std::string packed_cache_unsupported_reason(const codecs::Codec& k, const codecs::Codec& v);

// The GPU packed cache for a key and a value codec (arguments as PackedKvCache's). Throws
// UnsupportedError naming the codec when neither implementation serves the pair.
std::unique_ptr<PackedCache> make_packed_cache(const codecs::Codec& k, const codecs::Codec& v,
                                               int slots, int max_tokens, int n_heads,
                                               std::vector<double> inv_freq = {},
                                               bool rope_interleaved = false, int device = 0);

}  // namespace kvq::cuda
