// NUQ signposts, Q-Norm and the point extraction that feeds them; Fisher information and
// the calibration pipeline on stories260K: determinism (identical bytes twice) and resume
// after a stop at a layer boundary (identical bytes again).
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <vector>

#include "calib/calibrate.h"
#include "calib/fisher.h"
#include "calib/rng.h"
#include "calib/serial_products.h"
#include "calib/signposts.h"
#include "formats/calibration.h"
#include "formats/dtype.h"
#include "formats/error.h"
#include "formats/fingerprint.h"
#include "lib/backward/cpu_gradient.h"
#include "lib/model.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::calib;

TEST_CASE("signposts are strictly increasing floats in [-1, 1]", "[signposts]") {
  const uint64_t seed = kvq_test::test_seed(41);
  SplitMix64 r(seed);
  for (int bits : {2, 3, 4}) {
    std::vector<float> u, w;
    for (int i = 0; i < 5003; ++i) {
      u.push_back(static_cast<float>(std::tanh(3 * (r.uniform() - 0.5))));
      w.push_back(static_cast<float>(r.uniform()));
    }
    u[0] = -1.0f;
    u[1] = 1.0f;
    const SignpostFit f = fit_signposts(u, w, bits);
    REQUIRE(f.signposts.size() == static_cast<size_t>(1 << bits));
    CHECK(f.weighted);
    for (size_t i = 0; i < f.signposts.size(); ++i) {
      CHECK(f.signposts[i] >= -1.0f);
      CHECK(f.signposts[i] <= 1.0f);
      if (i > 0) CHECK(f.signposts[i] > f.signposts[i - 1]);
    }
  }
  // Fewer distinct values than signposts: still strictly increasing, the data values kept.
  std::vector<float> u{1.0f, 1.0f, 0.0f, 1.0f}, w{1, 1, 1, 1};
  const SignpostFit f = fit_signposts(u, w, 3);
  for (size_t i = 1; i < f.signposts.size(); ++i) CHECK(f.signposts[i] > f.signposts[i - 1]);
  CHECK(f.signposts.back() == 1.0f);
  CHECK(std::find(f.signposts.begin(), f.signposts.end(), 0.0f) != f.signposts.end());
  // Zero Fisher weights everywhere: unit weights, flagged.
  std::vector<float> zero(4, 0.0f);
  CHECK_FALSE(fit_signposts(u, zero, 2).weighted);
  CHECK_THROWS_AS(fit_signposts({}, {}, 2), InvalidArgument);
}

TEST_CASE("nearest_signpost picks the nearest, the lower one on ties", "[signposts]") {
  const std::vector<float> lut{-1.0f, -0.5f, 0.5f, 1.0f};
  CHECK(nearest_signpost(lut, -2.0f) == 0);
  CHECK(nearest_signpost(lut, -0.76f) == 0);
  CHECK(nearest_signpost(lut, -0.75f) == 0);  // tie between -1 and -0.5
  CHECK(nearest_signpost(lut, -0.74f) == 1);
  CHECK(nearest_signpost(lut, 0.0f) == 1);    // tie between -0.5 and 0.5
  CHECK(nearest_signpost(lut, 0.9f) == 3);
  CHECK(nearest_signpost(lut, 5.0f) == 3);
}

TEST_CASE("value points: round_half_even(f * head_dim) outliers per token and head",
          "[signposts]") {
  CHECK(value_outliers_per_head(0.01, 64) == 1);   // 0.64
  CHECK(value_outliers_per_head(0.01, 128) == 1);  // 1.28
  CHECK(value_outliers_per_head(0.01, 8) == 0);    // 0.08
  CHECK(value_outliers_per_head(0.0390625, 64) == 2);  // exactly 2.5 -> 2 (even)
  // One token, two heads of 4: head 0 has an outlier 9, head 1 ties |-3| = |3|.
  const std::vector<float> v{0.0f, 9.0f, 1.0f, -1.0f, -3.0f, 3.0f, 0.5f, 1.0f};
  std::vector<float> u, w;
  append_value_points(v.data(), nullptr, 1, 8, 4, 0.25, u, w);  // 1 outlier per head
  // head 0: rest {0, 1, -1}: mid 0, half 1 -> u = 0, 1, -1. head 1: the lower channel of
  // the tie (-3) is the outlier; rest {3, 0.5, 1}: mid 1.75, half 1.25.
  REQUIRE(u.size() == 6);
  CHECK(u[0] == 0.0f);
  CHECK(u[1] == 1.0f);
  CHECK(u[2] == -1.0f);
  CHECK(u[3] == 1.0f);
  CHECK(u[4] == kvq_test::Approx(-1.0f));
  CHECK(u[5] == kvq_test::Approx((1.0f - 1.75f) / 1.25f));
}

TEST_CASE("value points use the codec's fp16 mid/half and reciprocal", "[signposts]") {
  // One head of 4, no outliers: min -0.2002, max 0.7 -> half 0.4501 in fp32, but the
  // codec stores half as fp16 (0.450195...) and mid as fp16 (0.249878...), and multiplies
  // by the float reciprocal: the maximum then maps just below 1, not to 1.
  const std::vector<float> v{0.1f, 0.7f, 0.3337f, -0.2002f};
  std::vector<float> u, w;
  append_value_points(v.data(), nullptr, 1, 4, 4, 0.0, u, w);
  REQUIRE(u.size() == 4);
  const float mid = half_to_float(float_to_half(0.5f * (0.7f + -0.2002f)));
  const float half = half_to_float(float_to_half(0.5f * (0.7f - -0.2002f)));
  REQUIRE(half != 0.5f * (0.7f - -0.2002f));  // the case is only a test when fp16 rounds
  const float inv = 1.0f / half;
  for (int i = 0; i < 4; ++i) {
    const float e = std::min(1.0f, std::max(-1.0f, (v[i] - mid) * inv));
    CHECK(u[i] == e);
  }
  CHECK(u[1] < 1.0f);
}

TEST_CASE("Q-Norm restores the mean and standard deviation", "[signposts]") {
  const uint64_t seed = kvq_test::test_seed(42);
  SplitMix64 r(seed);
  const int rows = 301, dim = 7;
  std::vector<float> k(rows * dim);
  for (float& x : k) x = static_cast<float>(r.uniform() * 4 - 1);
  std::vector<float> lo(dim, -1.0f), hi(dim, 3.0f);
  const std::vector<float> lut{-1.0f, -0.2f, 0.3f, 1.0f};
  QNormAccumulator acc;
  qnorm_add_keys(k.data(), rows, dim, lo, hi, lut, acc);
  CHECK(acc.count() == rows * dim);
  const auto [a, b] = acc.fit();
  CHECK(a > 0.0f);
  // Apply and compare moments (double sums of 2107 terms: 1e-6 relative is ample).
  double so = 0, so2 = 0, sd = 0, sd2 = 0;
  for (int i = 0; i < rows * dim; ++i) {
    const float mid = 1.0f, half = 2.0f;
    const float d = lut[nearest_signpost(lut, (k[i] - mid) / half)] * half + mid;
    const double y = static_cast<double>(a) * d + b;
    so += k[i];
    so2 += double(k[i]) * k[i];
    sd += y;
    sd2 += y * y;
  }
  const double n = rows * dim;
  CHECK(sd / n == kvq_test::Approx(so / n).epsilon(1e-5));
  CHECK(std::sqrt(sd2 / n - (sd / n) * (sd / n)) ==
        kvq_test::Approx(std::sqrt(so2 / n - (so / n) * (so / n))).epsilon(1e-5));
  CHECK(QNormAccumulator().fit() == std::pair<float, float>{1.0f, 0.0f});
}

namespace {

std::string stories() { return kvq_test::shared_path("models/stories260K/stories260K.bin").string(); }

std::vector<int32_t> random_ids(uint64_t seed, int n) {
  SplitMix64 r(seed);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int32_t& t : ids) t = static_cast<int32_t>(r.below(512));
  return ids;
}

Calibration base_for(const std::string& model_path) {
  Calibration c;
  c.fingerprint = compute_fingerprint(model_path);
  c.provenance = {"test/random", std::string(64, '0'), 3, 40, 7, "kvq-calibrate", "0.1.0", "test"};
  return c;
}

}  // namespace

TEST_CASE("sample_starts: seeded, in range, rejects short streams", "[fisher]") {
  const auto a = sample_starts(1000, 100, 16, 0);
  const auto b = sample_starts(1000, 100, 16, 0);
  CHECK(a == b);
  CHECK(sample_starts(1000, 100, 16, 1) != a);
  for (int64_t s : a) {
    CHECK(s >= 0);
    CHECK(s < 1000 - 100 - 1);
  }
  CHECK_THROWS_AS(sample_starts(101, 100, 1, 0), InvalidArgument);
}

TEST_CASE("Fisher information is the sum of squared backward-pass gradients", "[fisher]") {
  auto model = load_model(stories());
  const std::vector<int32_t> ids = random_ids(kvq_test::test_seed(43), 300);
  const std::vector<int64_t> starts{5, 100, 5};
  const FisherInfo f = fisher_information(model, ids, starts, 40);
  REQUIRE(f.k.size() == 5);
  REQUIRE(f.loss.size() == 3);
  CHECK(f.loss[0] == f.loss[2]);
  // Independently: the same sequence twice plus one other, with Eigen's products on one
  // thread as fisher_information runs them (a product split over threads groups its float
  // sums differently: calib/serial_products.h).
  const SerialEigenProducts serial;
  const CpuGradient<float> g(model);
  std::vector<CpuGradient<float>::Mat> dk5(5), dk100(5);
  g.backward(std::span(ids).subspan(5, 40), [&](const CpuGradient<float>::LayerView& v) { dk5[v.layer] = *v.dk_pre_rope; });
  g.backward(std::span(ids).subspan(100, 40), [&](const CpuGradient<float>::LayerView& v) { dk100[v.layer] = *v.dk_pre_rope; });
  for (int l = 0; l < 5; ++l) {
    for (int i = 0; i < 40 * 32; ++i) {
      const double e = 2.0 * dk5[l].data()[i] * dk5[l].data()[i] + double(dk100[l].data()[i]) * dk100[l].data()[i];
      // Sums of the same three squares in another order: equal to ~1 ulp of float.
      CHECK(std::fabs(f.k[l][i] - e) <= 0x1.0p-23 * e);
    }
    // The last position's key reaches no scored prediction: zero Fisher information.
    for (int c = 0; c < 32; ++c) CHECK(f.k[l][39 * 32 + c] == 0.0f);
  }
}

TEST_CASE("calibration pipeline: deterministic bytes and resume after a stop", "[calibrate]") {
  auto model = load_model(stories());
  const std::vector<int32_t> ids = random_ids(kvq_test::test_seed(44), 400);
  const auto dir = kvq_test::scratch_dir("calib-pipeline");
  CalibrateOptions o;
  o.seqlen = 40;
  o.starts = sample_starts(static_cast<int64_t>(ids.size()), o.seqlen, 3, 7);
  o.bits = {2, 3};
  o.output = (dir / "a.kvqc").string();
  const CalibrateSummary sa = run_calibration(model, ids, o, base_for(stories()));
  CHECK(sa.complete_layers == 5);
  CHECK_FALSE(std::filesystem::exists(o.output + ".work"));
  const Calibration ca = read_calibration(o.output);
  CHECK(ca.complete_layers == 5);
  CHECK(ca.nuq_bits == std::vector<int>{2, 3});
  CHECK(ca.tensor("layers.4.k.b3.signposts").data.size() == 8);
  CHECK(ca.tensor("layers.0.k.outlier_threshold").shape == std::vector<int64_t>{5, 2, 32});
  // Same inputs: identical bytes.
  o.output = (dir / "b.kvqc").string();
  run_calibration(model, ids, o, base_for(stories()));
  CHECK(kvq_test::read_bytes(dir / "a.kvqc") == kvq_test::read_bytes(dir / "b.kvqc"));
  // Stop after 2 layers, resume: identical bytes, nothing recaptured.
  o.output = (dir / "c.kvqc").string();
  o.stop_after_layers = 2;
  const CalibrateSummary s1 = run_calibration(model, ids, o, base_for(stories()));
  CHECK(s1.complete_layers == 2);
  CHECK(read_calibration(o.output).complete_layers == 2);
  CHECK(std::filesystem::exists(o.output + ".work"));
  o.stop_after_layers = 0;
  o.resume = true;
  const CalibrateSummary s2 = run_calibration(model, ids, o, base_for(stories()));
  CHECK(s2.resumed_layers == 2);
  CHECK(s2.resumed_sequences == 3);
  CHECK(s2.seq_loss == sa.seq_loss);
  CHECK(kvq_test::read_bytes(dir / "a.kvqc") == kvq_test::read_bytes(dir / "c.kvqc"));
  // Resuming with other settings is refused.
  o.output = (dir / "d.kvqc").string();
  o.stop_after_layers = 1;
  o.resume = false;
  run_calibration(model, ids, o, base_for(stories()));
  o.resume = true;
  o.sink = 2;
  CHECK_THROWS_AS(run_calibration(model, ids, o, base_for(stories())), InvalidArgument);
}
