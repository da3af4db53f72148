// The KV-cache codec interface: one quantization method (METHODS.md) applied to one side
// (keys or values) of one layer. A codec makes packed caches (the real memory layout a
// decode kernel reads, kernels/kv_layout.h) and simulates quantization in place (the
// papers' perplexity protocol: quantize -> dequantize inside a full-sequence forward).
//
// simulate() is *defined* as: a fresh cache, one append of all rows, dequantize all. So
// the simulated window is exactly what a cache holds after a prefill of that window, and
// what streaming decode holds when appending token by token is documented per codec
// (they agree for every codec except MiKV's importance ranking, see mikv.cpp).
//
// Rows are [T, n_kv_heads * head_dim] row-major, head h at columns [h*head_dim, ...).
// Parameters are plain (CodecParams: name -> number / float tensor) so a profile can carry
// them; codecs fill what they were not given with documented defaults.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lib/observer.h"

namespace kvq::codecs {

enum class KvSide : uint8_t { kKey, kValue };
// Where a codec wants its keys: before or after rotary embedding. Values have no RoPE;
// a value codec reports kPreRope (it is applied at on_qkv).
enum class RopeStage : uint8_t { kPreRope, kPostRope };

std::string_view side_name(KvSide s);  // "k" / "v"

struct KvShape {
  int n_kv_heads = 0;
  int head_dim = 0;
  int n_heads = 0;  // query heads (MiKV's balancer reads queries); 0 = n_kv_heads
  int dim() const { return n_kv_heads * head_dim; }
};

// Name -> value maps: the serialisable form of every codec's parameters.
struct CodecParams {
  std::map<std::string, double> numbers;
  std::map<std::string, std::vector<float>> tensors;

  bool has(const std::string& k) const { return numbers.count(k) || tensors.count(k); }
  double number(const std::string& k, double fallback) const;
  const std::vector<float>* tensor(const std::string& k) const;
};

// `METHOD[:k=v,...]` as given to `kvq-eval --kv`. A bare option word (fp8:e4m3) is stored
// with the key "" and each codec says what it means.
struct CodecSpec {
  std::string text;    // as given
  std::string method;  // lower case
  std::vector<std::pair<std::string, std::string>> options;

  bool has(std::string_view key) const;
  std::string get(std::string_view key, std::string_view fallback) const;
  // Typed getters; throw InvalidArgument("--kv", ...) naming the option and what it accepts.
  int get_int(std::string_view key, int fallback, int lo, int hi) const;
  double get_double(std::string_view key, double fallback, double lo, double hi) const;
  bool get_bool(std::string_view key, bool fallback) const;
  // Throws for an option not in `known` (catches typos like grup=32).
  void check_known(std::initializer_list<std::string_view> known) const;
};

// Parses the spec text; throws InvalidArgument("--kv", ...) for bad syntax or an unknown
// method. Option values are checked when a codec is made (make_codec).
CodecSpec parse_codec_spec(std::string_view text);

// The method names parse_codec_spec accepts.
std::vector<std::string> codec_methods();

// Extra inputs some codecs read while appending.
struct AppendContext {
  // Queries of the appended tokens at the codec's RoPE stage, [n, n_heads * head_dim]
  // (MiKV's query-key balancer). data == nullptr: none given.
  ConstMatrixView queries;
  // Accumulated attention of every token so far, [pos0 + n, n_kv_heads] row-major
  // (MiKV's importance). nullptr: all tokens equally important.
  const float* importance = nullptr;
};

// A packed cache of one layer, one side, one sequence.
class KvCache {
 public:
  virtual ~KvCache() = default;
  // Appends rows [n, dim] (positions size() .. size()+n-1).
  virtual void append(ConstMatrixView rows, const AppendContext& ctx = {}) = 0;
  virtual int64_t size() const = 0;
  // Writes tokens [t0, t1) dequantized (in model space: balancers and rotations undone)
  // into out [t1 - t0, dim].
  virtual void dequantize(int64_t t0, int64_t t1, MatrixView out) const = 0;
  // Exact bytes held: codes, scales, zeros, outlier records and row offsets, full
  // precision (fp16) parts, and the static parameters (LUTs, ranges, balancers).
  virtual size_t bytes() const = 0;
  // Bytes of the static parameters alone (included in bytes()).
  virtual size_t static_bytes() const = 0;
};

class Codec {
 public:
  virtual ~Codec() = default;

  const std::string& method() const { return method_; }
  KvSide side() const { return side_; }
  int layer() const { return layer_; }
  const KvShape& shape() const { return shape_; }
  // Canonical spec with every default filled in, e.g. "kivi:bits=2,group=32,residual=128".
  virtual std::string describe() const = 0;
  // Nominal bits per stored code (16 for fp16, 8 for fp8/q8_0, b for int-b).
  virtual int bits() const = 0;

  virtual RopeStage stage() const = 0;
  // WKVQuant past-only quantization: attention uses the unquantized diagonal.
  virtual bool past_only() const { return false; }
  virtual bool needs_queries() const { return false; }
  virtual bool needs_importance() const { return false; }

  virtual std::unique_ptr<KvCache> make_cache() const = 0;

  // Quantize -> dequantize rows in place (one append of all rows to a fresh cache).
  // Returns the bytes that cache held.
  size_t simulate(MatrixView rows, const AppendContext& ctx = {}) const;

  // Exact bytes a cache holds after one append of T tokens, when the size does not depend
  // on the data; -1 when it does (KVQuant key outliers: see the cache's bytes()).
  virtual int64_t bytes_for(int64_t T) const = 0;
  // bytes_for(T) * 8 / (T * dim), or NaN when bytes_for is data-dependent.
  double bits_per_element(int64_t T) const;

  // The parameters in effect (given ones and defaults), serialisable.
  virtual CodecParams params() const = 0;

 protected:
  Codec(std::string method, KvSide side, int layer, KvShape shape)
      : method_(std::move(method)), side_(side), layer_(layer), shape_(shape) {}

 private:
  std::string method_;
  KvSide side_;
  int layer_;
  KvShape shape_;
};

// Builds the codec the spec names for one layer and side. `given` carries calibrated
// parameters (from a profile) and may be null: defaults are used for what it lacks.
// Throws InvalidArgument("--kv", ...) for bad option values or a shape the method cannot
// handle (e.g. Hadamard with head_dim not a power of two).
std::unique_ptr<Codec> make_codec(const CodecSpec& spec, KvSide side, int layer,
                                  const KvShape& shape, const CodecParams* given = nullptr);

}  // namespace kvq::codecs
