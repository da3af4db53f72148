// The `--kv METHOD[:k=v,...]` parser and make_codec's option checks: every example of
// the issue parses, bad names and values give InvalidArgument naming what is accepted.
#include <string>

#include "formats/error.h"
#include "lib/codecs/codec.h"
#include "tests/catch.h"

using namespace kvq::codecs;

namespace {

std::string error_of(const std::string& spec, KvShape shape = {4, 64, 8}) {
  try {
    make_codec(parse_codec_spec(spec), KvSide::kKey, 0, shape);
  } catch (const kvq::InvalidArgument& e) {
    return std::string(e.what()) + " | " + e.hint();
  } catch (const kvq::UnsupportedError& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("codec specs of the issue parse and describe themselves", "[codecs][spec]") {
  const KvShape shape{4, 64, 8};
  const std::pair<const char*, const char*> cases[] = {
      {"fp16", "fp16"},
      {"int4", "int4:axis=token,group=64,sym=0,stage=post"},
      {"int2:axis=channel,group=32,sym=0", "int2:axis=channel,group=32,sym=0,stage=post"},
      {"kivi:bits=2,group=32,residual=128", "kivi:bits=2,group=32,residual=128"},
      {"kvquant:bits=3,outliers=0.01,sink=1", "kvquant:bits=3,outliers=0.01,sink=1,qnorm=0"},
      {"wkvquant:bits=4,group=64", "wkvquant:bits=4,group=64,poq=1"},
      {"mikv:hi=int8,lo=int3,budget=0.2,recent=32", "mikv:hi=int8,lo=int3,budget=0.2,recent=32,balance=1"},
      {"q8_0", "q8_0"},
      {"q4_0", "q4_0"},
      {"fp8:e4m3", "fp8:e4m3"},
      {"FP8:E5M2", "fp8:e5m2"},
      {"hadamard:bits=4", "hadamard:bits=4,seed=0"},
      {" kivi : bits = 4 ", "kivi:bits=4,group=32,residual=128"},
  };
  for (const auto& [text, canon] : cases) {
    INFO(text);
    const auto spec = parse_codec_spec(text);
    const auto c = make_codec(spec, KvSide::kKey, 0, shape);
    REQUIRE(c->describe() == canon);
    // The canonical form parses to the same codec.
    REQUIRE(make_codec(parse_codec_spec(canon), KvSide::kKey, 0, shape)->describe() == canon);
  }
  REQUIRE(make_codec(parse_codec_spec("kvquant"), KvSide::kKey, 0, shape)->stage() == RopeStage::kPreRope);
  REQUIRE(make_codec(parse_codec_spec("kivi"), KvSide::kKey, 0, shape)->stage() == RopeStage::kPostRope);
  REQUIRE(codec_methods().size() == 13);
}

TEST_CASE("bad codec specs name the problem and what is accepted", "[codecs][spec]") {
  using kvq_test::HasSubstr;
  REQUIRE_THAT(error_of("int5"), HasSubstr("unknown KV codec 'int5'"));
  REQUIRE_THAT(error_of("int5"), HasSubstr("kvquant"));  // the hint lists methods
  REQUIRE_THAT(error_of(""), HasSubstr("empty codec spec"));
  REQUIRE_THAT(error_of("int4:"), HasSubstr("empty option"));
  REQUIRE_THAT(error_of("int4:group=32,,sym=1"), HasSubstr("empty option"));
  REQUIRE_THAT(error_of("int4:grup=32"), HasSubstr("unknown option 'grup'"));
  REQUIRE_THAT(error_of("int4:grup=32"), HasSubstr("axis, group, sym, stage"));
  REQUIRE_THAT(error_of("int4:group=48"), HasSubstr("does not divide head_dim 64"));
  REQUIRE_THAT(error_of("int4:axis=diagonal"), HasSubstr("expected token or channel"));
  REQUIRE_THAT(error_of("int4:sym=maybe"), HasSubstr("expected 0 or 1"));
  REQUIRE_THAT(error_of("kivi:bits=5"), HasSubstr("expected 2, 3, 4 or 8"));
  REQUIRE_THAT(error_of("kivi:bits=two"), HasSubstr("expected an integer"));
  REQUIRE_THAT(error_of("kivi:group=32,residual=100"), HasSubstr("not a multiple of group=32"));
  REQUIRE_THAT(error_of("kvquant:outliers=0.9"), HasSubstr("expected a number in"));
  REQUIRE_THAT(error_of("kvquant:bits=3,bits=4"), HasSubstr("given twice"));
  REQUIRE_THAT(error_of("mikv:lo=int8"), HasSubstr("expected int2, int3, int4"));
  REQUIRE_THAT(error_of("mikv:hi=bf16"), HasSubstr("expected fp16, int8"));
  REQUIRE_THAT(error_of("fp8:e3m4"), HasSubstr("unknown fp8 format 'e3m4'"));
  REQUIRE_THAT(error_of("fp16:bits=4"), HasSubstr("fp16 takes no options"));
  REQUIRE_THAT(error_of("hadamard", {4, 96, 4}), HasSubstr("not a power of two"));
  REQUIRE_THAT(error_of("q4_0", {1, 8, 1}), HasSubstr("32-value blocks"));
}

TEST_CASE("calibrated parameters are checked against the shape", "[codecs][spec]") {
  using kvq_test::HasSubstr;
  const KvShape shape{2, 64, 2};
  CodecParams p;
  p.tensors["lut"] = {-1.0f, 0.5f, 0.0f, 1.0f};
  try {
    make_codec(parse_codec_spec("kvquant:bits=2"), KvSide::kKey, 3, shape, &p);
    FAIL("accepted a non-increasing LUT");
  } catch (const kvq::InvalidArgument& e) {
    REQUIRE_THAT(e.what(), HasSubstr("layer 3, k"));
    REQUIRE_THAT(e.what(), HasSubstr("increase strictly"));
  }
  CodecParams s;
  s.tensors["s"] = std::vector<float>(127, 1.0f);
  REQUIRE_THROWS_AS(make_codec(parse_codec_spec("wkvquant"), KvSide::kValue, 0, shape, &s),
                    kvq::InvalidArgument);
  CodecParams f;
  f.tensors["scale"] = {1.0f, 0.0f};
  REQUIRE_THROWS_AS(make_codec(parse_codec_spec("fp8"), KvSide::kValue, 0, shape, &f),
                    kvq::InvalidArgument);
}
