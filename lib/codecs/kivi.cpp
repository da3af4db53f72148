// KIVI (arXiv 2402.02750): `kivi[:bits=2,group=32,residual=128]`, asymmetric uniform,
// no calibration.
//   Keys: post-RoPE, per channel, in groups of G tokens by absolute position (one fp16
//     scale + zero per group and channel).
//   Values: per token, in groups of G channels inside a head (G > head_dim: one group per
//     head), one fp16 scale + zero per group.
//   Residual (full precision, held as fp16), following the official implementation:
//     keys: the newest T mod R tokens. The residual fills up to R tokens and is then
//       quantized as a whole (R / G key groups) and emptied, so after T tokens exactly
//       floor(T / R) * R keys are quantized.
//     values: the newest min(T, R) tokens. Per-token quantization needs no group, so the
//       oldest value leaves the window as soon as a new one arrives.
//   One append of a whole window (the simulated protocol) therefore holds exactly what
//   streaming decode holds after the same tokens, and the tests check that.
#include <algorithm>
#include <string>

#include "formats/error.h"
#include "lib/codecs/chunked.h"
#include "lib/codecs/factories.h"

namespace kvq::codecs {

namespace {

class KiviCodec final : public ChunkedCodec {
 public:
  KiviCodec(KvSide side, int layer, const KvShape& shape, int bits, int group, int residual)
      : ChunkedCodec("kivi", side, layer, shape), bits_(bits), group_(group),
        residual_(residual), vgroup_(std::min(group, shape.head_dim)) {}

  std::string describe() const override {
    return "kivi:bits=" + std::to_string(bits_) + ",group=" + std::to_string(group_) +
           ",residual=" + std::to_string(residual_);
  }
  int bits() const override { return bits_; }
  RopeStage stage() const override {
    return side() == KvSide::kKey ? RopeStage::kPostRope : RopeStage::kPreRope;
  }
  bool uses_window() const override { return true; }
  int64_t to_encode(int64_t pending, int64_t) const override {
    if (side() == KvSide::kKey) return pending / residual_ * residual_;
    return std::max<int64_t>(0, pending - residual_);
  }

  int64_t bytes_for(int64_t T) const override {
    const int dim = shape().dim();
    const int64_t words = token_group_words(shape(), bits_);
    if (side() == KvSide::kKey) {
      const int64_t q = T / residual_ * residual_;
      return q / group_ * (group_ * 4 * words + 4 * dim) + (T - q) * 2 * dim;
    }
    const int64_t q = std::max<int64_t>(0, T - residual_);
    return q * (4 * words + 2 * token_group_halves(shape(), vgroup_, false)) + (T - q) * 2 * dim;
  }
  CodecParams params() const override {
    CodecParams p;
    p.numbers = {{"bits", bits_}, {"group", group_}, {"residual", residual_}};
    return p;
  }

  void encode(CodecState&, const float* rows, int64_t, int64_t n, const AppendContext&,
              Chunk& out) const override {
    if (side() == KvSide::kValue) {
      encode_token_groups(rows, n, shape(), vgroup_, bits_, false, out.codes, out.halves);
      return;
    }
    for (int64_t t = 0; t < n; t += group_)  // n is a multiple of R, hence of G
      encode_channel_group(rows + t * shape().dim(), group_, shape(), bits_, false, out.codes,
                           out.halves);
  }
  void decode(const CodecState&, const Chunk& c, float* out) const override {
    if (side() == KvSide::kValue) {
      decode_token_groups(c.codes.data(), c.halves.data(), c.n, shape(), vgroup_, bits_, false,
                          out);
      return;
    }
    const int dim = shape().dim();
    const int64_t words = token_group_words(shape(), bits_);
    for (int64_t t = 0, g = 0; t < c.n; t += group_, ++g)
      decode_channel_group(c.codes.data() + t * words, c.halves.data() + g * 2 * dim, group_,
                           shape(), bits_, false, out + t * dim);
  }

 private:
  int bits_, group_, residual_, vgroup_;
};

}  // namespace

std::unique_ptr<Codec> make_kivi_codec(const CodecSpec& spec, KvSide side, int layer,
                                       const KvShape& shape, const CodecParams&) {
  spec.check_known({"bits", "group", "residual"});
  const int bits = bits_option(spec, 2);
  const int group = spec.get_int("group", 32, 1, 1 << 16);
  const int residual = spec.get_int("residual", 128, 1, 1 << 20);
  if (residual % group != 0)
    throw InvalidArgument("--kv", spec.text + ": residual=" + std::to_string(residual) +
                                      " is not a multiple of group=" + std::to_string(group));
  if (shape.head_dim % std::min(group, shape.head_dim) != 0)
    throw InvalidArgument("--kv", spec.text + ": group=" + std::to_string(group) +
                                      " does not divide head_dim " +
                                      std::to_string(shape.head_dim));
  return std::make_unique<KiviCodec>(side, layer, shape, bits, group, residual);
}

}  // namespace kvq::codecs
