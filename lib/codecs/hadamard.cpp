// Calibration-free randomized Hadamard rotation + uniform int-b (QuaRot / TurboQuant
// style): `hadamard[:bits=4,seed=0]`. Per head, y = H D x / sqrt(head_dim) with D a
// diagonal of random signs (splitmix64 of seed, layer and side; one vector of head_dim
// signs shared by all heads of the layer and side; profile tensor `signs` overrides) and
// H the Walsh-Hadamard matrix applied by the fast transform (head_dim must be a power of
// two). The rotation is orthogonal, so it spreads outlier channels over the head; y is
// quantized per token and head (one group of head_dim, asymmetric, fp16 scale + zero),
// and dequantization rotates back: x' = D H y' / sqrt(head_dim). A decode kernel would
// rotate the query instead of each key (q . k = (HDq) . (HDk) / head_dim) and the
// attention output instead of each value. Post-RoPE keys.
#include <cmath>
#include <string>

#include "formats/error.h"
#include "lib/codecs/chunked.h"
#include "lib/codecs/factories.h"

namespace kvq::codecs {

namespace {

uint64_t splitmix64(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

// In-place unnormalized fast Walsh-Hadamard transform of n = 2^k values.
void fwht(float* x, int n) {
  for (int len = 1; len < n; len <<= 1)
    for (int i = 0; i < n; i += len << 1)
      for (int j = i; j < i + len; ++j) {
        const float a = x[j], b = x[j + len];
        x[j] = a + b;
        x[j + len] = a - b;
      }
}

class HadamardCodec final : public ChunkedCodec {
 public:
  HadamardCodec(KvSide side, int layer, const KvShape& shape, int bits, uint64_t seed,
                std::vector<float> signs)
      : ChunkedCodec("hadamard", side, layer, shape), bits_(bits), seed_(seed),
        signs_(std::move(signs)), norm_(1.0f / std::sqrt(static_cast<float>(shape.head_dim))) {}

  std::string describe() const override {
    return "hadamard:bits=" + std::to_string(bits_) + ",seed=" + std::to_string(seed_);
  }
  int bits() const override { return bits_; }
  RopeStage stage() const override {
    return side() == KvSide::kKey ? RopeStage::kPostRope : RopeStage::kPreRope;
  }
  int64_t bytes_for(int64_t T) const override {
    return T * (4 * token_group_words(shape(), bits_) +
                2 * token_group_halves(shape(), shape().head_dim, false));
  }
  CodecParams params() const override {
    CodecParams p;
    p.numbers = {{"bits", bits_}, {"seed", static_cast<double>(seed_)}};
    p.tensors["signs"] = signs_;
    return p;
  }

  void encode(CodecState&, const float* rows, int64_t, int64_t n, const AppendContext&,
              Chunk& out) const override {
    const int dim = shape().dim(), hd = shape().head_dim;
    std::vector<float> y(rows, rows + n * dim);
    for (int64_t r = 0; r < n * shape().n_kv_heads; ++r) {
      float* v = y.data() + r * hd;
      for (int i = 0; i < hd; ++i) v[i] *= signs_[i];
      fwht(v, hd);
      for (int i = 0; i < hd; ++i) v[i] *= norm_;
    }
    encode_token_groups(y.data(), n, shape(), hd, bits_, false, out.codes, out.halves);
  }
  void decode(const CodecState&, const Chunk& c, float* out) const override {
    const int hd = shape().head_dim;
    decode_token_groups(c.codes.data(), c.halves.data(), c.n, shape(), hd, bits_, false, out);
    for (int64_t r = 0; r < c.n * shape().n_kv_heads; ++r) {
      float* v = out + r * hd;
      fwht(v, hd);
      for (int i = 0; i < hd; ++i) v[i] *= norm_ * signs_[i];
    }
  }

 private:
  int bits_;
  uint64_t seed_;
  std::vector<float> signs_;
  float norm_;
};

}  // namespace

std::unique_ptr<Codec> make_hadamard_codec(const CodecSpec& spec, KvSide side, int layer,
                                           const KvShape& shape, const CodecParams& given) {
  spec.check_known({"bits", "seed"});
  const int hd = shape.head_dim;
  if ((hd & (hd - 1)) != 0)
    throw InvalidArgument("--kv", spec.text + ": head_dim " + std::to_string(hd) +
                                      " is not a power of two (fast Walsh-Hadamard transform)");
  const int bits = bits_option(spec, 4);
  const uint64_t seed = static_cast<uint64_t>(spec.get_int("seed", 0, 0, 0x7fffffff));
  std::vector<float> signs(hd);
  if (const auto* g = given.tensor("signs")) {
    if (g->size() != static_cast<size_t>(hd))
      throw InvalidArgument("--kv", spec.text + ": signs has " + std::to_string(g->size()) +
                                        " entries, expected " + std::to_string(hd));
    for (float v : *g)
      if (v != 1.0f && v != -1.0f)
        throw InvalidArgument("--kv", spec.text + ": signs must be +1 or -1");
    signs = *g;
  } else {
    uint64_t s = seed * 0x100000001b3ull + static_cast<uint64_t>(layer) * 2 +
                 (side == KvSide::kKey ? 0 : 1);
    for (int i = 0; i < hd; ++i) signs[i] = (splitmix64(s) >> 63) ? -1.0f : 1.0f;
  }
  return std::make_unique<HadamardCodec>(side, layer, shape, bits, seed, std::move(signs));
}

}  // namespace kvq::codecs
