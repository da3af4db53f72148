// The machinery every codec's packed cache shares (internal to lib/codecs/): tokens are
// encoded in chunks (one token, a group of G tokens, a KIVI residual of R tokens) into
// packed arrays, with an optional full-precision window of pending tokens held as fp16,
// and static parameters frozen from the first append. Codecs supply freeze / encode /
// decode and the window rule; the cache does the bookkeeping, the byte count and the
// range reads. Also the scalar group quantizers written once here (kernels/kv_layout.h
// holds the rules they follow).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "kernels/kv_layout.h"
#include "lib/codecs/codec.h"

namespace kvq::codecs {

// One encoded run of tokens [pos0, pos0 + n). Every array is real packed storage and is
// counted by nbytes(); what a codec leaves empty costs nothing.
struct Chunk {
  int64_t pos0 = 0;
  int64_t n = 0;
  std::vector<uint32_t> codes;    // packed 2/3/4/8-bit codes (kv_layout.h blocks)
  std::vector<uint16_t> halves;   // binary16: scales, zeros, ranges, full-precision rows
  std::vector<uint8_t> raw;       // byte data: fp8 codes, q8_0/q4_0 blocks, flags
  std::vector<kvlayout::Outlier> outliers;
  std::vector<uint32_t> row_counts;  // outliers per token (CSR row lengths), n entries

  size_t nbytes() const {
    return codes.size() * 4 + halves.size() * 2 + raw.size() + outliers.size() * 4 +
           row_counts.size() * 4;
  }
};

// Per-cache mutable state a codec keeps (static parameters frozen at the first append).
struct CodecState {
  virtual ~CodecState() = default;
  size_t static_bytes = 0;
  int64_t counter = 0;  // codec-defined (MiKV: high-precision tokens so far)
  // Derived states override: a reader encodes the window on a copy (see ChunkedCache).
  virtual std::unique_ptr<CodecState> clone() const { return std::make_unique<CodecState>(*this); }
};

class ChunkedCodec : public Codec {
 public:
  std::unique_ptr<KvCache> make_cache() const override;

  virtual std::unique_ptr<CodecState> new_state() const { return std::make_unique<CodecState>(); }
  // Called at the first append (pos0 = 0) with the values the encoder will see, and
  // again at each later append until it returns true (KVQuant cannot take ranges from a
  // first append made only of sink tokens).
  virtual bool freeze(CodecState& st, ConstMatrixView rows, int64_t pos0,
                      const AppendContext& ctx) const {
    (void)st; (void)rows; (void)pos0; (void)ctx;
    return true;
  }
  // True when tokens can wait in a full-precision window. Such codecs see every row
  // rounded to fp16 first (the window holds fp16), so a prefill and token-by-token
  // appends quantize the same values.
  virtual bool uses_window() const { return false; }
  // With `pending` tokens in the window after an append (of `total` so far), how many of
  // the oldest to encode now.
  virtual int64_t to_encode(int64_t pending, int64_t total) const {
    (void)total;
    return pending;
  }
  // Readers see window tokens quantized (encoded on the fly as one chunk) instead of
  // full precision: uniform per-channel's partial last group.
  virtual bool quantize_window_on_read() const { return false; }

  // rows: [n, dim] contiguous; writes everything into `out` (empty on entry).
  virtual void encode(CodecState& st, const float* rows, int64_t pos0, int64_t n,
                      const AppendContext& ctx, Chunk& out) const = 0;
  // out: [chunk.n, dim] contiguous.
  virtual void decode(const CodecState& st, const Chunk& c, float* out) const = 0;

 protected:
  using Codec::Codec;
};

// ---- group quantizers shared by the codecs (rules: kernels/kv_layout.h) ----

// Asymmetric: one group of n values at x[i * stride]; writes n codes into q and returns
// the stored scale/zero (binary16 bits).
kvlayout::ScaleZero quantize_group_asym(const float* x, int64_t n, int64_t stride, int bits,
                                        uint32_t* q);
void dequantize_group_asym(const uint32_t* q, int64_t n, kvlayout::ScaleZero sz, float* y,
                           int64_t stride);
// Symmetric: returns the stored scale (binary16 bits).
uint16_t quantize_group_sym(const float* x, int64_t n, int64_t stride, int bits, uint32_t* q);
void dequantize_group_sym(const uint32_t* q, int64_t n, uint16_t scale, int bits, float* y,
                          int64_t stride);

// Per-token quantization of rows [n, dim] with groups of `group` channels inside each
// head: codes packed per (token, head) row, group metadata appended to `halves` (asym:
// scale, zero per group; sym: scale).
void encode_token_groups(const float* rows, int64_t n, const KvShape& shape, int group,
                         int bits, bool sym, std::vector<uint32_t>& codes,
                         std::vector<uint16_t>& halves);
void decode_token_groups(const uint32_t* codes, const uint16_t* halves, int64_t n,
                         const KvShape& shape, int group, int bits, bool sym, float* rows);
// Words and halves per token of encode_token_groups.
int64_t token_group_words(const KvShape& shape, int bits);
int64_t token_group_halves(const KvShape& shape, int group, bool sym);

// Per-channel quantization of rows [n, dim] as one group along tokens (every channel
// gets its own range over the n tokens): codes packed per (token, head) row as above,
// metadata per channel appended to `halves`.
void encode_channel_group(const float* rows, int64_t n, const KvShape& shape, int bits,
                          bool sym, std::vector<uint32_t>& codes, std::vector<uint16_t>& halves);
void decode_channel_group(const uint32_t* codes, const uint16_t* halves, int64_t n,
                          const KvShape& shape, int bits, bool sym, float* rows);

// fp16 storage of rows (full-precision parts).
void rows_to_halves(const float* rows, int64_t count, std::vector<uint16_t>& out);
void halves_to_rows(const uint16_t* h, int64_t count, float* rows);

// "--kv SPEC (layer L, k)" for error messages.
std::string codec_where(const Codec& c);

}  // namespace kvq::codecs
