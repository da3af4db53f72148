// llama.cpp's KV cache types q8_0 and q4_0: `q8_0`, `q4_0`. Blocks of 32 consecutive
// values of a token's [n_kv_heads * head_dim] row (with head_dim a multiple of 32 a block
// never spans two heads, as in llama.cpp; smaller heads, e.g. stories260K's 8, share a
// block), each with an fp16 scale d. Block structs and the rounding are
// kernels/kv_layout.h's, which follow ggml's quantize_row_q8_0_ref / quantize_row_q4_0_ref
// exactly so that our blocks are llama.cpp's bytes:
//   q8_0: d = amax / 127, id = d ? 1/d : 0 (of the fp32 d), q = roundf(x * id) (half away
//         from zero), x' = q * fp16(d).
//   q4_0: max = the value of largest magnitude (first one on ties, sign kept),
//         d = max / -8, id as above, q = min(15, (int8)(x * id + 8.5)) (truncation),
//         x' = (q - 8) * fp16(d).
// Post-RoPE keys, like llama.cpp's cache. 8.5 and 4.5 bits per element.
#include <cmath>
#include <cstring>
#include <string>

#include "formats/dtype.h"
#include "formats/error.h"
#include "lib/codecs/chunked.h"
#include "lib/codecs/factories.h"

namespace kvq::codecs {

namespace {

using kvlayout::BlockQ4_0;
using kvlayout::BlockQ8_0;

class GgmlCodec final : public ChunkedCodec {
 public:
  GgmlCodec(std::string method, KvSide side, int layer, const KvShape& shape)
      : ChunkedCodec(method, side, layer, shape), q8_(method == "q8_0") {}

  std::string describe() const override { return method(); }
  int bits() const override { return q8_ ? 8 : 4; }
  RopeStage stage() const override {
    return side() == KvSide::kKey ? RopeStage::kPostRope : RopeStage::kPreRope;
  }
  size_t block_bytes() const { return q8_ ? sizeof(BlockQ8_0) : sizeof(BlockQ4_0); }
  int64_t bytes_for(int64_t T) const override {
    return T * (shape().dim() / 32) * static_cast<int64_t>(block_bytes());
  }
  CodecParams params() const override { return {}; }

  void encode(CodecState&, const float* rows, int64_t, int64_t n, const AppendContext&,
              Chunk& out) const override {
    const int64_t nb = n * shape().dim() / 32;
    out.raw.resize(nb * block_bytes());
    for (int64_t b = 0; b < nb; ++b) {
      const float* x = rows + b * 32;
      if (q8_) {
        BlockQ8_0 blk{};
        float amax = 0.0f;
        for (int j = 0; j < 32; ++j) amax = std::max(amax, std::fabs(x[j]));
        const float d = amax / 127.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        blk.d = float_to_half(d);
        for (int j = 0; j < 32; ++j) blk.qs[j] = kvlayout::q8_0_code(x[j], id);
        std::memcpy(out.raw.data() + b * sizeof blk, &blk, sizeof blk);
      } else {
        BlockQ4_0 blk{};
        float amax = 0.0f, max = 0.0f;
        for (int j = 0; j < 32; ++j)
          if (amax < std::fabs(x[j])) {
            amax = std::fabs(x[j]);
            max = x[j];
          }
        const float d = max / -8.0f;
        const float id = d != 0.0f ? 1.0f / d : 0.0f;
        blk.d = float_to_half(d);
        for (int j = 0; j < 16; ++j)
          blk.qs[j] = static_cast<uint8_t>(kvlayout::q4_0_code(x[j], id) |
                                           (kvlayout::q4_0_code(x[j + 16], id) << 4));
        std::memcpy(out.raw.data() + b * sizeof blk, &blk, sizeof blk);
      }
    }
  }
  void decode(const CodecState&, const Chunk& c, float* out) const override {
    const int64_t nb = c.n * shape().dim() / 32;
    for (int64_t b = 0; b < nb; ++b) {
      float* y = out + b * 32;
      if (q8_) {
        BlockQ8_0 blk;
        std::memcpy(&blk, c.raw.data() + b * sizeof blk, sizeof blk);
        const float d = half_to_float(blk.d);
        for (int j = 0; j < 32; ++j) y[j] = static_cast<float>(blk.qs[j]) * d;
      } else {
        BlockQ4_0 blk;
        std::memcpy(&blk, c.raw.data() + b * sizeof blk, sizeof blk);
        const float d = half_to_float(blk.d);
        for (int j = 0; j < 16; ++j) {
          y[j] = static_cast<float>((blk.qs[j] & 0x0f) - 8) * d;
          y[j + 16] = static_cast<float>((blk.qs[j] >> 4) - 8) * d;
        }
      }
    }
  }

 private:
  bool q8_;
};

}  // namespace

std::unique_ptr<Codec> make_ggml_codec(const CodecSpec& spec, KvSide side, int layer,
                                       const KvShape& shape, const CodecParams&) {
  spec.check_known({});
  if (shape.dim() % 32 != 0)
    throw InvalidArgument("--kv", spec.text + ": a token row of " + std::to_string(shape.dim()) +
                                      " values is not a whole number of 32-value blocks");
  return std::make_unique<GgmlCodec>(spec.method, side, layer, shape);
}

}  // namespace kvq::codecs
