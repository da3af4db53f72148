// A packed KV cache of one layer on the GPU: the device twin of a codec's CPU reference
// cache (lib/codecs/), built from the same Codec object and its parameters, holding
// exactly the codes, scales, zeros and outlier records the CPU would hold (bit-identical,
// tests/gpu/kv_packed_test.cpp), and the fused decode attention that reads them. Layouts:
// kernels/kv_ops.cuh. Decode kernels, picked per call where each fits (KVQ_KV_DECODE
// forces one for A/B runs; packed_cache.cpp says which values):
//   uniform per-token int2/int4 and KIVI at head_dim 128: the staged tensor-core kernel
//     (kernels/kv_decode_stream.cu, "version 4");
//   KVQuant at 2/4 bits, head_dim 128, rotate-half RoPE, fp16: its own tensor-core kernel
//     (kernels/kv_decode_kvquant_fold.cu: kvq-fold2 at G = 1, kvq-foldm at G > 1);
//   everything else: the CUDA-core fast or general kernels (kernels/kv_decode_packed.cu).
//
// Codecs with a GPU path (others throw UnsupportedError naming the codec):
//   intB axis=token (any group that is a multiple of 8, sym or asym, stage pre or post),
//   kivi (keys per channel in groups of G + fp16 residual ring, values per token),
//   kvquant (pre-RoPE keys with static ranges, NUQ LUT, dense-and-sparse outliers, fp16
//     sinks, Q-Norm given or identity; values dynamic with per-token top-k outliers),
//   wkvquant (smoothing + per-token groups; the decode kernel attends to the quantized
//     diagonal, i.e. poq is the caller's business).
// Not yet: intB axis=channel, q8_0/q4_0, fp8, hadamard, mikv, fp16.
//
// Goals: the real memory layout and the decode-time read path. Non-goals: the backend's
// forward pass (lib/cuda/cuda_backend.cpp still uses its fp16 cache), paged allocation.
// The header needs no CUDA headers (tools include it); streams are passed as void*.
#pragma once

#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "lib/codecs/chunked.h"
#include "lib/codecs/codec.h"

namespace kvq::cuda {

// Empty when the codec has a GPU path, else why not.
std::string packed_unsupported_reason(const codecs::Codec& codec);

class PackedKvCache {
 public:
  // k, v: the layer's key and value codecs (same shape). n_heads: query heads (GQA group
  // n_heads / n_kv_heads <= 8). inv_freq: RoPE inverse frequencies [head_dim/2]
  // (lib/rope.h rope_inv_freq), needed when the key codec stores pre-RoPE keys.
  PackedKvCache(const codecs::Codec& k, const codecs::Codec& v, int slots, int max_tokens,
                int n_heads, std::vector<double> inv_freq = {}, bool rope_interleaved = false,
                int device = 0);
  ~PackedKvCache();
  PackedKvCache(const PackedKvCache&) = delete;
  PackedKvCache& operator=(const PackedKvCache&) = delete;

  // Appends n tokens of keys and values to `slot`: device fp32 [n, ld] each (post-RoPE or
  // pre-RoPE as the key codec's stage() says). Throws InvalidArgument past max_tokens and
  // ResourceError when KVQuant outlier records overflow their capacity (checked with one
  // synchronization when `check` is set).
  void append(int slot, const float* k_dev, const float* v_dev, int n, int64_t ld,
              bool check = true);
  // The same from host memory.
  void append_host(int slot, const float* k, const float* v, int n, int64_t ld);
  int64_t size(int slot) const;
  int max_tokens() const;

  // Selects the rows of the next decode calls (row r reads slot slots[r] over its current
  // size) and sizes the workspace.
  void prepare(const std::vector<int>& slots);
  // q: [rows, n_heads, head_dim] fp16 (bf16 when `bf16`), device; out: same shape.
  void decode(const void* q_dev, void* out_dev, bool bf16 = false, void* stream = nullptr);
  // Whether decode() of the prepared rows runs KVQuant's own kernels (where
  // kernels/kv_decode_kvquant.cu's fits() holds) rather than kv_decode_attention's choice.
  bool decode_uses_kvquant_kernel(bool bf16 = false) const;
  // The KVQuant build that decode() launches for the prepared rows ("kvq-fold2" or "kvq-foldm",
  // KVQ_KV_DECODE's or the default for heads / kv heads), "" where the KVQuant kernels do not serve.
  std::string kvquant_decode_build(bool bf16 = false) const;
  // Bytes the prepared decode reads from the cache (codes, scales/zeros, channel
  // metadata, full-precision parts, outlier offsets and records; LUTs and per-channel
  // static parameters once per block are not counted: they are cache hits).
  double decode_bytes() const;
  // Device bytes held for one slot at its current size (what the CPU cache's bytes()
  // would count, with the GPU's per-head CSR offsets).
  size_t slot_bytes(int slot) const;

  // The quantized (final) tokens [t0, t1) of one side in the CPU reference's chunk order
  // (codes, halves, outliers, row_counts), for bit-exact comparisons.
  codecs::Chunk download(bool key, int slot, int64_t t0, int64_t t1) const;
  // Tokens of `slot` that are final on one side (the rest sit in the fp16 residual).
  int64_t quantized_tokens(bool key, int slot) const;

  struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};

// fp32 random rows on the device for benchmarks: dst[r, c] uniform in [-1, 1) times
// `scale`, columns c % period == 0 scaled by `outlier` (planted outlier channels).
void fill_random_rows(float* dst, int64_t rows, int cols, uint64_t seed, float scale,
                      int period, float outlier);

// Device memory owned by a unique_ptr (no CUDA headers for tools).
struct DeviceFree {
  void operator()(void* p) const;
};
using DeviceMemory = std::unique_ptr<void, DeviceFree>;
DeviceMemory device_alloc(size_t bytes, const char* what);
void copy_to_device(void* dst, const void* src, size_t bytes);

// The existing fp16 decode attention (kernels/attention_decode.cu) over a plain fp16
// cache [slots, kv_heads, max_tokens, head_dim], as a baseline with the same interface.
class Fp16DecodeBaseline {
 public:
  Fp16DecodeBaseline(int slots, int max_tokens, int n_heads, int kv_heads, int head_dim,
                     uint64_t seed, int device = 0);
  ~Fp16DecodeBaseline();
  void prepare(const std::vector<int>& slots, int len);
  void decode(const void* q_dev, void* out_dev, void* stream = nullptr);
  double decode_bytes() const;  // K and V bytes read

 private:
  struct State;
  std::unique_ptr<State> st_;
};

// A measured floor for reading a byte count, set beside a decode that reads as many: one
// streaming read (kern::kv_l2_scrub over a zeroed buffer: a 16-byte load per thread, nothing
// written), timed like the decode (same L2 state, same events). Bytes over the copy bandwidth
// leave out a launch's ramp and tail, which are most of a batch-1 decode at 32K tokens.
class ReadProbe {
 public:
  void reserve(size_t bytes);     // grows the buffer (allocates and zeroes: outside timing)
  void read(size_t bytes) const;  // the first `bytes` (rounded down to 16) of the buffer

 private:
  DeviceMemory buf_;
  size_t cap_ = 0;
};

// Evicts the device's L2 cache. A decoding model reads one layer's KV cache again only after
// every other layer's cache and weights have streamed through L2, so a benchmark that times
// back-to-back decodes of one cache smaller than L2 (H100: 50 MB, e.g. llama3-8b int4 at
// batch 1 up to ~45K tokens) would time L2 rather than HBM (METHOD.md: rotate or evict).
// Each call reads a zeroed buffer of 4x the L2 size (at least 256 MiB) on the default stream
// (kern::kv_l2_scrub: reads, so L2 is left clean; a memset would leave it dirty and the timed
// kernel would pay the write-backs); enqueued before a timed region, it also keeps the host's
// launch latency of the timed kernels out of the region (they are queued while it runs).
class L2Scrubber {
 public:
  explicit L2Scrubber(int device = 0);
  void operator()() const;

 private:
  ReadProbe probe_;  // the read itself: a ReadProbe reserved at the scrub size
  size_t bytes_ = 0;
};

// Median over `reps` timed runs (device events) after `warmup` runs, in milliseconds.
// `before`, when given, runs before each timed run, outside the events (an L2Scrubber).
double time_device_ms(const std::function<void()>& fn, int warmup, int reps,
                      const std::function<void()>& before = {});

}  // namespace kvq::cuda
