// WKVQuant, KV side (arXiv 2402.12065): `wkvquant[:bits=4,group=G,poq=1]`.
//   Static channel smoothing: per channel a shift delta_c and a scale s_c (profile tensors
//     `delta` and `s`, learned by CRR calibration; defaults 0 and 1, i.e. no smoothing):
//     x' = (x - delta_c) * (1 / s_c), the reciprocal taken once per channel in fp32.
//   Dynamic token-wise quantization of x': asymmetric uniform per token with groups of G
//     channels inside a head (G default head_dim), fp16 scale + zero per group.
//   Dequantization undoes the smoothing: x = fma(x'', s_c, delta_c).
//   Past-only quantization (poq=1, default): the current token attends to its own key and
//     value at full precision; only past entries come from the quantized cache. In the
//     teacher-forced pass this is the observer's past_only() flag; a decode kernel gets it
//     for free by using the fresh K/V of the current step.
//   Keys are quantized post-RoPE (what a cache holds).
// Bytes: static 8 per channel (delta, s as fp32) + per token the codes and group metadata.
#include <cmath>
#include <string>

#include "formats/error.h"
#include "lib/codecs/chunked.h"
#include "lib/codecs/factories.h"

namespace kvq::codecs {

namespace {

class WkvQuantCodec final : public ChunkedCodec {
 public:
  WkvQuantCodec(KvSide side, int layer, const KvShape& shape, int bits, int group, bool poq,
                std::vector<float> delta, std::vector<float> s)
      : ChunkedCodec("wkvquant", side, layer, shape), bits_(bits), group_(group), poq_(poq),
        delta_(std::move(delta)), s_(std::move(s)), inv_s_(s_.size()) {
    for (size_t c = 0; c < s_.size(); ++c) inv_s_[c] = 1.0f / s_[c];
  }

  std::string describe() const override {
    return "wkvquant:bits=" + std::to_string(bits_) + ",group=" + std::to_string(group_) +
           ",poq=" + (poq_ ? "1" : "0");
  }
  int bits() const override { return bits_; }
  RopeStage stage() const override {
    return side() == KvSide::kKey ? RopeStage::kPostRope : RopeStage::kPreRope;
  }
  bool past_only() const override { return poq_; }

  int64_t static_bytes() const { return 8 * shape().dim(); }
  int64_t bytes_for(int64_t T) const override {
    return static_bytes() + T * (4 * token_group_words(shape(), bits_) +
                                 2 * token_group_halves(shape(), group_, false));
  }
  CodecParams params() const override {
    CodecParams p;
    p.numbers = {{"bits", bits_}, {"group", group_}, {"poq", poq_ ? 1 : 0}};
    p.tensors = {{"delta", delta_}, {"s", s_}};
    return p;
  }
  std::unique_ptr<CodecState> new_state() const override {
    auto st = std::make_unique<CodecState>();
    st->static_bytes = static_cast<size_t>(static_bytes());
    return st;
  }

  void encode(CodecState&, const float* rows, int64_t, int64_t n, const AppendContext&,
              Chunk& out) const override {
    const int dim = shape().dim();
    std::vector<float> x(static_cast<size_t>(n) * dim);
    for (int64_t t = 0; t < n; ++t)
      for (int c = 0; c < dim; ++c) x[t * dim + c] = (rows[t * dim + c] - delta_[c]) * inv_s_[c];
    encode_token_groups(x.data(), n, shape(), group_, bits_, false, out.codes, out.halves);
  }
  void decode(const CodecState&, const Chunk& c, float* out) const override {
    const int dim = shape().dim();
    decode_token_groups(c.codes.data(), c.halves.data(), c.n, shape(), group_, bits_, false, out);
    for (int64_t t = 0; t < c.n; ++t)
      for (int ch = 0; ch < dim; ++ch)
        out[t * dim + ch] = fmaf(out[t * dim + ch], s_[ch], delta_[ch]);
  }

 private:
  int bits_, group_;
  bool poq_;
  std::vector<float> delta_, s_, inv_s_;
};

}  // namespace

std::unique_ptr<Codec> make_wkvquant_codec(const CodecSpec& spec, KvSide side, int layer,
                                           const KvShape& shape, const CodecParams& given) {
  spec.check_known({"bits", "group", "poq"});
  const int bits = bits_option(spec, 4);
  const int group = channel_group_option(spec, shape, 0);
  const size_t dim = static_cast<size_t>(shape.dim());
  std::vector<float> delta(dim, 0.0f), s(dim, 1.0f);
  const std::string where = "--kv " + spec.text + " (layer " + std::to_string(layer) + ", " +
                            std::string(side_name(side)) + ")";
  if (const auto* d = given.tensor("delta")) {
    if (d->size() != dim)
      throw InvalidArgument(where, "delta has " + std::to_string(d->size()) + " entries, expected " +
                                       std::to_string(dim));
    delta = *d;
  }
  if (const auto* g = given.tensor("s")) {
    if (g->size() != dim)
      throw InvalidArgument(where, "s has " + std::to_string(g->size()) + " entries, expected " +
                                       std::to_string(dim));
    for (size_t c = 0; c < dim; ++c)
      if (!((*g)[c] > 0.0f) || !std::isfinite((*g)[c]))
        throw InvalidArgument(where, "smoothing scale s must be positive and finite (channel " +
                                         std::to_string(c) + ")");
    s = *g;
  }
  return std::make_unique<WkvQuantCodec>(side, layer, shape, bits, group,
                                         spec.get_bool("poq", true), std::move(delta),
                                         std::move(s));
}

}  // namespace kvq::codecs
