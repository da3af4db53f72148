// The reference point: keys and values stored as IEEE binary16, as an fp16 model's cache
// holds them (16 bits per element, no metadata). Post-RoPE keys, like every engine.
#include <string>

#include "lib/codecs/chunked.h"
#include "lib/codecs/factories.h"

namespace kvq::codecs {

namespace {

class Fp16Codec final : public ChunkedCodec {
 public:
  Fp16Codec(KvSide side, int layer, const KvShape& shape)
      : ChunkedCodec("fp16", side, layer, shape) {}

  std::string describe() const override { return "fp16"; }
  int bits() const override { return 16; }
  RopeStage stage() const override {
    return side() == KvSide::kKey ? RopeStage::kPostRope : RopeStage::kPreRope;
  }
  int64_t bytes_for(int64_t T) const override { return 2 * T * shape().dim(); }
  CodecParams params() const override { return {}; }

  void encode(CodecState&, const float* rows, int64_t, int64_t n, const AppendContext&,
              Chunk& out) const override {
    rows_to_halves(rows, n * shape().dim(), out.halves);
  }
  void decode(const CodecState&, const Chunk& c, float* out) const override {
    halves_to_rows(c.halves.data(), c.n * shape().dim(), out);
  }
};

}  // namespace

std::unique_ptr<Codec> make_fp16_codec(const CodecSpec& spec, KvSide side, int layer,
                                       const KvShape& shape, const CodecParams&) {
  spec.check_known({});
  return std::make_unique<Fp16Codec>(side, layer, shape);
}

}  // namespace kvq::codecs
