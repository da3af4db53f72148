// Uniform int-b quantization (b in 2, 3, 4, 8), the plain baseline: `intB[:axis=token|
// channel,group=G,sym=0|1,stage=pre|post]`.
//   axis=token (default): one range per token and group of G channels inside a head
//     (G default head_dim); every token is encoded on append.
//   axis=channel: one range per channel and group of G tokens (G default 128), by
//     absolute position: tokens [0, G), [G, 2G), ... A group is encoded when complete;
//     until then its tokens wait as fp16 and readers see them quantized with the range of
//     the tokens present (so every token is quantized, in the simulated protocol too).
//     Only complete groups are final; that is the difference from KIVI, whose residual
//     stays full precision.
//   sym=0 (default): asymmetric, scale + zero (2 x fp16) per group; sym=1: scale only.
//   stage: post (default) quantizes keys after RoPE, as a plain cache holds them.
// Bytes per token (axis=token): n_kv_heads * 4 * b * ceil(head_dim/32) for the codes plus
// 2 or 4 bytes per group.
#include <string>

#include "formats/error.h"
#include "lib/codecs/chunked.h"
#include "lib/codecs/factories.h"

namespace kvq::codecs {

namespace {

class UniformCodec final : public ChunkedCodec {
 public:
  UniformCodec(KvSide side, int layer, const KvShape& shape, int bits, bool per_channel,
               int group, bool sym, RopeStage stage)
      : ChunkedCodec("int" + std::to_string(bits), side, layer, shape),
        bits_(bits), per_channel_(per_channel), group_(group), sym_(sym), stage_(stage) {}

  std::string describe() const override {
    return method() + ":axis=" + (per_channel_ ? "channel" : "token") +
           ",group=" + std::to_string(group_) + ",sym=" + (sym_ ? "1" : "0") +
           (side() == KvSide::kKey
                ? std::string(",stage=") + (stage_ == RopeStage::kPreRope ? "pre" : "post")
                : std::string());
  }
  int bits() const override { return bits_; }
  RopeStage stage() const override { return side() == KvSide::kKey ? stage_ : RopeStage::kPreRope; }

  int64_t bytes_for(int64_t T) const override {
    const KvShape& s = shape();
    const int64_t words = token_group_words(s, bits_);
    if (!per_channel_) return T * (4 * words + 2 * token_group_halves(s, group_, sym_));
    const int64_t full = T / group_, rest = T % group_;
    return full * (group_ * 4 * words + 2 * s.dim() * (sym_ ? 1 : 2)) + rest * 2 * s.dim();
  }
  CodecParams params() const override {
    CodecParams p;
    p.numbers = {{"bits", bits_}, {"per_channel", per_channel_ ? 1 : 0},
                 {"group", group_}, {"sym", sym_ ? 1 : 0}};
    return p;
  }

  bool uses_window() const override { return per_channel_; }
  int64_t to_encode(int64_t pending, int64_t) const override {
    return per_channel_ ? pending / group_ * group_ : pending;
  }
  bool quantize_window_on_read() const override { return per_channel_; }

  void encode(CodecState&, const float* rows, int64_t, int64_t n, const AppendContext&,
              Chunk& out) const override {
    if (!per_channel_) {
      encode_token_groups(rows, n, shape(), group_, bits_, sym_, out.codes, out.halves);
      return;
    }
    for (int64_t t = 0; t < n; t += group_) {
      const int64_t m = std::min<int64_t>(group_, n - t);
      encode_channel_group(rows + t * shape().dim(), m, shape(), bits_, sym_, out.codes,
                           out.halves);
    }
  }
  void decode(const CodecState&, const Chunk& c, float* out) const override {
    if (!per_channel_) {
      decode_token_groups(c.codes.data(), c.halves.data(), c.n, shape(), group_, bits_, sym_,
                          out);
      return;
    }
    const int dim = shape().dim();
    const int64_t words = token_group_words(shape(), bits_);
    const int64_t meta = static_cast<int64_t>(dim) * (sym_ ? 1 : 2);
    for (int64_t t = 0, g = 0; t < c.n; t += group_, ++g) {
      const int64_t m = std::min<int64_t>(group_, c.n - t);
      decode_channel_group(c.codes.data() + t * words, c.halves.data() + g * meta, m, shape(),
                           bits_, sym_, out + t * dim);
    }
  }

 private:
  int bits_;
  bool per_channel_;
  int group_;
  bool sym_;
  RopeStage stage_;
};

}  // namespace

std::unique_ptr<Codec> make_uniform_codec(const CodecSpec& spec, KvSide side, int layer,
                                          const KvShape& shape, const CodecParams&) {
  spec.check_known({"axis", "group", "sym", "stage"});
  const int bits = spec.method[3] - '0';
  const std::string axis = spec.get("axis", "token");
  if (axis != "token" && axis != "channel")
    throw InvalidArgument("--kv", spec.text + ": axis=" + axis + ": expected token or channel");
  const bool per_channel = axis == "channel";
  const int group = per_channel ? spec.get_int("group", 128, 1, 1 << 20)
                                : channel_group_option(spec, shape, 0);
  const std::string stage = spec.get("stage", "post");
  if (stage != "pre" && stage != "post")
    throw InvalidArgument("--kv", spec.text + ": stage=" + stage + ": expected pre or post");
  return std::make_unique<UniformCodec>(side, layer, shape, bits, per_channel, group,
                                        spec.get_bool("sym", false),
                                        stage == "pre" ? RopeStage::kPreRope
                                                       : RopeStage::kPostRope);
}

}  // namespace kvq::codecs
