// FP8 KV cache with per-head scales, as vLLM / TensorRT-LLM ship it: `fp8[:e4m3|e5m2]`
// (also `fp8:format=e5m2`; default e4m3). One fp32 scale per key/value head, static: from
// the profile tensor `scale` [n_kv_heads] (vLLM's calibrated k_scale / v_scale), else
// from the first append, scale_h = amax_h / max_finite (448 or 57344; 1 when amax is 0).
// x' = fp8(x * (1 / scale_h)) * scale_h with kvlayout's own round-half-to-even conversion,
// saturating to the largest finite value (later tokens beyond the prefill's range clip).
// Post-RoPE keys. 8 bits per element + 4 bytes per head and layer.
#include <cmath>
#include <string>

#include "formats/error.h"
#include "lib/codecs/chunked.h"
#include "lib/codecs/factories.h"

namespace kvq::codecs {

namespace {

struct Fp8State final : CodecState {
  std::vector<float> scale, inv;
  std::unique_ptr<CodecState> clone() const override { return std::make_unique<Fp8State>(*this); }
};

class Fp8Codec final : public ChunkedCodec {
 public:
  Fp8Codec(KvSide side, int layer, const KvShape& shape, bool e4m3, std::vector<float> given)
      : ChunkedCodec("fp8", side, layer, shape), e4m3_(e4m3), given_(std::move(given)) {}

  std::string describe() const override { return e4m3_ ? "fp8:e4m3" : "fp8:e5m2"; }
  int bits() const override { return 8; }
  RopeStage stage() const override {
    return side() == KvSide::kKey ? RopeStage::kPostRope : RopeStage::kPreRope;
  }
  int64_t bytes_for(int64_t T) const override { return 4 * shape().n_kv_heads + T * shape().dim(); }
  CodecParams params() const override {
    CodecParams p;
    p.numbers = {{"e4m3", e4m3_ ? 1 : 0}};
    if (!given_.empty()) p.tensors["scale"] = given_;
    return p;
  }
  std::unique_ptr<CodecState> new_state() const override {
    auto st = std::make_unique<Fp8State>();
    st->static_bytes = 4 * shape().n_kv_heads;
    return st;
  }
  bool freeze(CodecState& base, ConstMatrixView rows, int64_t, const AppendContext&) const override {
    auto& st = static_cast<Fp8State&>(base);
    const int H = shape().n_kv_heads, hd = shape().head_dim;
    st.scale.assign(H, 1.0f);
    if (!given_.empty()) {
      st.scale = given_;
    } else {
      const float fmax = e4m3_ ? kvlayout::kE4M3Max : kvlayout::kE5M2Max;
      for (int h = 0; h < H; ++h) {
        float amax = 0.0f;
        for (int t = 0; t < rows.rows; ++t)
          for (int i = 0; i < hd; ++i) amax = std::max(amax, std::fabs(rows.at(t, h * hd + i)));
        if (amax > 0.0f) st.scale[h] = amax / fmax;
      }
    }
    st.inv.resize(H);
    for (int h = 0; h < H; ++h) st.inv[h] = 1.0f / st.scale[h];
    return true;
  }
  void encode(CodecState& base, const float* rows, int64_t, int64_t n, const AppendContext&,
              Chunk& out) const override {
    const auto& st = static_cast<const Fp8State&>(base);
    const int dim = shape().dim(), hd = shape().head_dim;
    out.raw.resize(static_cast<size_t>(n) * dim);
    for (int64_t i = 0; i < n * dim; ++i) {
      const float x = rows[i] * st.inv[(i % dim) / hd];
      out.raw[i] = e4m3_ ? kvlayout::float_to_e4m3(x) : kvlayout::float_to_e5m2(x);
    }
  }
  void decode(const CodecState& base, const Chunk& c, float* out) const override {
    const auto& st = static_cast<const Fp8State&>(base);
    const int dim = shape().dim(), hd = shape().head_dim;
    for (int64_t i = 0; i < c.n * dim; ++i) {
      const float v = e4m3_ ? kvlayout::e4m3_to_float(c.raw[i]) : kvlayout::e5m2_to_float(c.raw[i]);
      out[i] = v * st.scale[(i % dim) / hd];
    }
  }

 private:
  bool e4m3_;
  std::vector<float> given_;
};

}  // namespace

std::unique_ptr<Codec> make_fp8_codec(const CodecSpec& spec, KvSide side, int layer,
                                      const KvShape& shape, const CodecParams& given) {
  spec.check_known({"", "format"});
  std::string fmt = spec.has("format") ? spec.get("format", "") : spec.get("", "e4m3");
  if (spec.has("format") && spec.has(""))
    throw InvalidArgument("--kv", spec.text + ": give the fp8 format once");
  if (fmt != "e4m3" && fmt != "e5m2")
    throw InvalidArgument("--kv", spec.text + ": unknown fp8 format '" + fmt + "'",
                          "fp8 formats: e4m3, e5m2");
  std::vector<float> scale;
  if (const auto* g = given.tensor("scale")) {
    if (g->size() != static_cast<size_t>(shape.n_kv_heads))
      throw InvalidArgument("--kv", spec.text + ": scale has " + std::to_string(g->size()) +
                                        " entries, expected " + std::to_string(shape.n_kv_heads));
    for (float v : *g)
      if (!(v > 0.0f) || !std::isfinite(v))
        throw InvalidArgument("--kv", spec.text + ": fp8 scales must be positive and finite");
    scale = *g;
  }
  return std::make_unique<Fp8Codec>(side, layer, shape, fmt == "e4m3", std::move(scale));
}

}  // namespace kvq::codecs
