// Calibration -> profile (formats/profile_convert.h): spec parsing, the derivations of
// docs/calibration-format.md checked against the calibration's numbers (threshold rows,
// MiKV balancers, FP8 and vLLM scales recomputed here), and every refusal with its message.
#include <cmath>

#include "formats/error.h"
#include "formats/profile_convert.h"
#include "tests/catch.h"
#include "tests/formats/expect_error.h"
#include "tests/formats/profile_fixtures.h"
#include "tests/support/test_support.h"

using namespace kvq;
using kvq_test::expect_error;
using kvq_test::HasSubstr;

namespace {

const Calibration& calib() {
  static const Calibration c = [] {
    Calibration x = kvq_test::synthetic_calibration(kvq_test::tiny_fingerprint(), kvq_test::test_seed(77), 3);
    x.file_sha256 = std::string(64, 'f');
    return x;
  }();
  return c;
}

Profile make(const std::string& spec, const Calibration* c = &calib(), std::vector<std::string>* notes = nullptr) {
  const ModelFingerprint fp = kvq_test::tiny_fingerprint();
  return make_profile(parse_profile_spec(spec), c, c == nullptr ? &fp : nullptr, kvq_test::golden_writer(), notes);
}

std::string make_error(const std::string& spec, const Calibration* c = &calib()) {
  return expect_error<InvalidArgument>([&] { make(spec, c); }).what();
}

}  // namespace

TEST_CASE("convert: profile specs and fractions", "[convert]") {
  const ProfileSpec s = parse_profile_spec("kvquant:bits=3,outliers=1%,sink=2");
  CHECK(s.method == Method::kKvquant);
  CHECK(s.options.at("bits") == "3");
  CHECK(s.options.at("outliers") == "1%");
  CHECK(parse_profile_spec("q8_0").options.empty());
  CHECK_THAT(std::string(expect_error<InvalidArgument>([] { parse_profile_spec("gptq:bits=3"); }).what()),
             HasSubstr("unknown method 'gptq'"));
  CHECK_THAT(std::string(expect_error<InvalidArgument>([] { parse_profile_spec("kivi:outliers=1%"); }).what()),
             HasSubstr("option 'outliers' does not apply to kivi (it takes: bits, key-bits, value-bits, group, residual, sink)"));
  CHECK_THAT(std::string(expect_error<InvalidArgument>([] { parse_profile_spec("kivi:bits"); }).what()),
             HasSubstr("'bits' in 'kivi:bits' is not KEY=VALUE"));
  CHECK_THAT(std::string(expect_error<InvalidArgument>([] { parse_profile_spec("kivi:bits=2,bits=4"); }).what()),
             HasSubstr("given twice"));
  // "1%" must equal the literal 0.01 that a calibration file stores, bit for bit.
  CHECK(*parse_fraction("1%") == 0.01);
  CHECK(*parse_fraction("0.1%") == 0.001);
  CHECK(*parse_fraction("0.5%") == 0.005);
  CHECK(*parse_fraction("0.01") == 0.01);
  CHECK(*parse_fraction("0") == 0.0);
  for (const char* bad : {"", "%", "-1%", "1e-2", "abc", "1%%", "0x1"}) {
    INFO(bad);
    CHECK_FALSE(parse_fraction(bad).has_value());
  }
}

TEST_CASE("convert: kvquant takes signposts, threshold rows and Q-Norm from the calibration", "[convert]") {
  const Calibration& c = calib();
  const Profile p = make("kvquant:key-bits=4,value-bits=2,outliers=5%,qnorm=1");
  CHECK(p.keys.bits == 4);
  CHECK(p.values.bits == 2);
  CHECK(p.keys.pre_rope);
  CHECK(p.keys.range == RangeSource::kStatic);
  CHECK(p.values.range == RangeSource::kDynamic);
  CHECK(p.keys.outlier_fraction == 0.05);
  CHECK(p.options.sink_tokens == c.sink_tokens);
  REQUIRE(p.calibration.has_value());
  CHECK(p.calibration->file_sha256 == c.file_sha256);
  CHECK(p.calibration->provenance == c.provenance);
  const int64_t d = 16;
  for (int i = 0; i < 3; ++i) {
    CHECK(p.tensor(profile_tensor_name(i, KvKind::kKeys, "signposts")) == c.tensor(calibration_bits_name(i, KvKind::kKeys, 4, "signposts")));
    CHECK(p.tensor(profile_tensor_name(i, KvKind::kValues, "signposts")) == c.tensor(calibration_bits_name(i, KvKind::kValues, 2, "signposts")));
    CHECK(p.tensor(profile_tensor_name(i, KvKind::kValues, "qnorm")) == c.tensor(calibration_bits_name(i, KvKind::kValues, 2, "qnorm")));
    // 5% is row 2 of the [3, 2, 16] thresholds.
    const FloatTensor& all = c.tensor(calibration_tensor_name(i, 'k', "outlier_threshold"));
    const FloatTensor& th = p.tensor(profile_tensor_name(i, KvKind::kKeys, "outlier_threshold"));
    REQUIRE(th.shape == std::vector<int64_t>{2, d});
    for (int64_t j = 0; j < 2 * d; ++j) CHECK(th.data[static_cast<size_t>(j)] == all.data[static_cast<size_t>(2 * 2 * d + j)]);
    CHECK(p.tensor(profile_tensor_name(i, KvKind::kKeys, "channel_range")) == th);
  }
  // Without outliers the static range is the calibrated min/max and no thresholds exist.
  const Profile q = make("kvquant:bits=2,outliers=0");
  CHECK(q.tensor("layers.1.k.channel_range") == c.tensor("layers.1.k.channel_range"));
  CHECK(q.find("layers.1.k.outlier_threshold") == nullptr);
  // Uniform kvquant (nuq=0) has no signposts and takes any width up to 8.
  const Profile u = make("kvquant:bits=6,nuq=0");
  CHECK(u.find("layers.0.k.signposts") == nullptr);
  CHECK(u.tensors.size() == 3 * 2);
  // nuq=keys: the key signposts only; values use uniform codes (and may take any width).
  const Profile k = make("kvquant:key-bits=3,value-bits=6,nuq=keys");
  CHECK(k.keys.nuq);
  CHECK_FALSE(k.values.nuq);
  for (int i = 0; i < 3; ++i) {
    CHECK(k.tensor(profile_tensor_name(i, KvKind::kKeys, "signposts")) ==
          c.tensor(calibration_bits_name(i, KvKind::kKeys, 3, "signposts")));
    CHECK(k.find(profile_tensor_name(i, KvKind::kValues, "signposts")) == nullptr);
  }
  const Profile v = make("kvquant:bits=2,nuq=values");
  CHECK_FALSE(v.keys.nuq);
  CHECK(v.values.nuq);
  CHECK(v.find("layers.0.k.signposts") == nullptr);
  CHECK(v.tensor("layers.0.v.signposts") == c.tensor(calibration_bits_name(0, KvKind::kValues, 2, "signposts")));
  // "both" and "1" are the default.
  CHECK(make("kvquant:bits=3,nuq=both").tensors == make("kvquant:bits=3").tensors);
}

TEST_CASE("convert: notes when options differ from the calibration's", "[convert]") {
  std::vector<std::string> notes;
  make("kvquant:bits=3,outliers=0.1%,sink=0", &calib(), &notes);
  REQUIRE(notes.size() == 2);
  CHECK_THAT(notes[0], HasSubstr("outliers 0.1% differ from the 1% the signposts were fitted with"));
  CHECK_THAT(notes[1], HasSubstr("sink 0 differs from the 1 sink tokens"));
}

TEST_CASE("convert: MiKV balancers follow sqrt(max|Q| / max|K|) per key channel", "[convert]") {
  const Calibration& c = calib();
  const Profile p = make("mikv:bits=3");
  CHECK(p.options.balancer);
  CHECK(p.options.mikv_high_share == 0.2);
  // 4 query heads share 2 kv heads: key channel (h, j) sees query heads 2h and 2h+1.
  for (int i = 0; i < 3; ++i) {
    const FloatTensor& q = c.tensor(calibration_tensor_name(i, 'q', "post_rope_absmax"));
    const FloatTensor& k = c.tensor(calibration_tensor_name(i, 'k', "post_rope_absmax"));
    const FloatTensor& b = p.tensor(profile_balancer_name(i));
    for (int h = 0; h < 2; ++h) {
      for (int j = 0; j < 8; ++j) {
        const double qmax = std::max(q.data[static_cast<size_t>((2 * h) * 8 + j)], q.data[static_cast<size_t>((2 * h + 1) * 8 + j)]);
        const double expect = std::sqrt(qmax / k.data[static_cast<size_t>(h * 8 + j)]);
        // One double division and sqrt, rounded once to float: within half an ulp.
        CHECK(std::fabs(b.data[static_cast<size_t>(h * 8 + j)] - expect) <= 0.5 * std::ldexp(1.0, std::ilogb(expect) - 23));
      }
    }
  }
  // A channel whose key absmax is 0 has nothing to flatten: balancer 1.
  Calibration z = calib();
  z.tensors.at("layers.0.k.post_rope_absmax").data[3] = 0.0f;
  CHECK(make("mikv:bits=2", &z).tensor("layers.0.balancer").data[3] == 1.0f);
  // Without the balancer MiKV is calibration-free.
  const Profile free = make("mikv:bits=2,balancer=0,high=int8", nullptr);
  CHECK(free.tensors.empty());
  CHECK_FALSE(free.calibration.has_value());
  CHECK(free.options.mikv_high == MikvHigh::kInt8);
}

TEST_CASE("convert: FP8 per-head scales and vLLM scales are absmax / max finite", "[convert]") {
  const Calibration& c = calib();
  for (const char* fmt : {"e4m3", "e5m2"}) {
    const double fmax = std::string(fmt) == "e4m3" ? 448.0 : 57344.0;
    const Profile p = make(std::string("fp8:fp8-format=") + fmt);
    CHECK(p.keys.fp8_scale == Fp8Scale::kPerHead);
    for (int i = 0; i < 3; ++i) {
      const FloatTensor& ka = c.tensor(calibration_tensor_name(i, 'k', "post_rope_absmax"));
      const FloatTensor& s = p.tensor(profile_tensor_name(i, KvKind::kKeys, "fp8_scale"));
      REQUIRE(s.shape == std::vector<int64_t>{2});
      for (int h = 0; h < 2; ++h) {
        float m = 0;
        for (int j = 0; j < 8; ++j) m = std::max(m, ka.data[static_cast<size_t>(h * 8 + j)]);
        CHECK(s.data[static_cast<size_t>(h)] == static_cast<float>(m / fmax));
      }
    }
  }
  const Profile dyn = make("fp8", nullptr);
  CHECK(dyn.keys.fp8_scale == Fp8Scale::kDynamic);
  CHECK(dyn.tensors.empty());
  CHECK_THAT(make_error("fp8:scale=per-head", nullptr), HasSubstr("scale=per-head needs a calibration file"));

  const FloatTensors v = vllm_kv_scales(c, Fp8Format::kE4M3);
  REQUIRE(v.size() == 6);
  for (int i = 0; i < 3; ++i) {
    const FloatTensor& ks = v.at("model.layers." + std::to_string(i) + ".self_attn.k_scale");
    const FloatTensor& vs = v.at("model.layers." + std::to_string(i) + ".self_attn.v_scale");
    CHECK(ks.shape.empty());
    REQUIRE(ks.data.size() == 1);
    float km = 0, vm = 0;
    for (float x : c.tensor(calibration_tensor_name(i, 'k', "post_rope_absmax")).data) km = std::max(km, x);
    for (float x : c.tensor(calibration_tensor_name(i, 'v', "absmax")).data) vm = std::max(vm, x);
    CHECK(ks.data[0] == static_cast<float>(km / 448.0));
    CHECK(vs.data[0] == static_cast<float>(vm / 448.0));
  }
  const Calibration part = kvq_test::synthetic_calibration(kvq_test::tiny_fingerprint(), 1, 2);
  CHECK_THAT(std::string(expect_error<InvalidArgument>([&] { vllm_kv_scales(part, Fp8Format::kE4M3); }).what()),
             HasSubstr("needs a complete calibration, this one has 2 of 3 layers"));
}

TEST_CASE("convert: calibration-free methods and their schemes", "[convert]") {
  const Profile kivi = make("kivi:bits=4,group=16,residual=64", nullptr);
  CHECK(kivi.keys.axis == QuantAxis::kChannel);
  CHECK(kivi.keys.group == 16);
  CHECK(kivi.values.axis == QuantAxis::kToken);
  CHECK(kivi.options.residual == 64);
  CHECK_FALSE(kivi.calibration.has_value());
  CHECK(make("q8_0", nullptr).keys == KindScheme{8, QuantAxis::kToken, 32, true});
  CHECK(make("q4_0", nullptr).values.bits == 4);
  CHECK(make("int:bits=3,axis=channel", nullptr).keys.group == 128);
  CHECK(make("hadamard:bits=2,seed=99", nullptr).options.hadamard_seed == 99);
  // A calibration given to a calibration-free method is not recorded as its source.
  CHECK_FALSE(make("kivi:bits=2").calibration.has_value());
}

TEST_CASE("convert: refusals name the problem", "[convert]") {
  CHECK_THAT(make_error("kvquant:bits=5"), HasSubstr("5 bits: the calibration has signposts for 2, 3, 4 bits"));
  CHECK_THAT(make_error("kvquant:bits=3,outliers=2%"), HasSubstr("outliers 2%: the calibration has key thresholds for"));
  CHECK_THAT(make_error("kvquant:bits=3", nullptr), HasSubstr("needs a calibration file (--calib)"));
  CHECK_THAT(make_error("kvquant:bits=4,nuq=0,qnorm=1"), HasSubstr("qnorm=1 needs nuq=1"));
  CHECK_THAT(make_error("kvquant:bits=3,nuq=keys,qnorm=1"), HasSubstr("qnorm=1 needs nuq=1"));
  CHECK_THAT(make_error("kvquant:bits=3,nuq=half"), HasSubstr("nuq=half: expected one of"));
  CHECK_THAT(make_error("kvquant:key-bits=6,value-bits=3,nuq=keys"), HasSubstr("6 bits: the calibration has signposts for"));
  CHECK_THAT(make_error("wkvquant:bits=2"), HasSubstr("2 bits: the calibration has WKVQuant fits for 3, 4 bits"));
  Calibration no_wkv = kvq_test::synthetic_calibration(kvq_test::tiny_fingerprint(), 3, 3, false);
  CHECK_THAT(make_error("wkvquant:bits=4", &no_wkv), HasSubstr("the calibration has no WKVQuant fit"));
  CHECK_THAT(make_error("mikv:bits=8"), HasSubstr("8 bits is not supported (choose 2, 3, 4)"));
  CHECK_THAT(make_error("kivi:bits=2,group=32,residual=100", nullptr), HasSubstr("residual 100 must be a multiple of group 32"));
  CHECK_THAT(make_error("hadamard:seed=4294967296", nullptr), HasSubstr("seed=4294967296: expected an integer in [0, 2147483647]"));
  CHECK_THAT(make_error("int:bits=5", nullptr), HasSubstr("5 bits is not supported"));
  CHECK_THAT(make_error("int:symmetric=maybe", nullptr), HasSubstr("symmetric=maybe: expected 1/0"));
  const Calibration part = kvq_test::synthetic_calibration(kvq_test::tiny_fingerprint(), 1, 1);
  CHECK_THAT(make_error("kvquant:bits=3", &part), HasSubstr("needs a complete calibration, this one has 1 of 3 layers"));
  // --calib and --model that disagree.
  ModelFingerprint other = kvq_test::tiny_fingerprint();
  other.head_dim = 16;
  CHECK_THAT(std::string(expect_error<InvalidArgument>([&] {
               make_profile(parse_profile_spec("kivi"), &calib(), &other, {}, nullptr);
             }).what()),
             HasSubstr("calibration is for another model: head_dim: calibration has 8, model has 16"));
}

TEST_CASE("convert: output templates", "[convert]") {
  CHECK(expand_output_template("out/{method}-{bits}.kvqp", make("kvquant:bits=3")) == "out/kvquant-3.kvqp");
  CHECK(expand_output_template("{method}{bits}{bits}", make("kvquant:key-bits=4,value-bits=2")) == "kvquantk4v2k4v2");
  CHECK(expand_output_template("plain.kvqp", make("q8_0", nullptr)) == "plain.kvqp");
  CHECK(expand_output_template("{bits}", make("fp8", nullptr)) == "8");
}
