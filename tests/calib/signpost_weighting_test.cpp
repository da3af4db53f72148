// Robust signpost weights (calib/signposts.h SignpostWeighting): the clipped Fisher
// weights hit their quantile, the uniform share holds exactly eps of the total weight and
// pulls a k-means fit towards the uniform quantizer, defaults leave the fit bit-identical,
// bad values are typed errors; the calibration file keeps the settings and a --resume
// with other settings is refused.
#include <algorithm>
#include <cmath>
#include <filesystem>
#include <numeric>
#include <vector>

#include "calib/calibrate.h"
#include "calib/fisher.h"
#include "calib/rng.h"
#include "calib/signposts.h"
#include "formats/calibration.h"
#include "formats/error.h"
#include "formats/fingerprint.h"
#include "lib/model.h"
#include "tests/calib/normal.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::calib;

TEST_CASE("clip_weights clips at the exact quantile of the positive weights", "[signposts][weighting]") {
  const uint64_t seed = kvq_test::test_seed(4301);
  SplitMix64 r(seed);
  for (int n : {1, 3, 7, 127, 129, 4097}) {
    std::vector<float> w(static_cast<size_t>(n));
    // Heavy-tailed like g^2 of a Gaussian gradient, with zeros mixed in.
    for (float& x : w) {
      const double g = kvq_test::normal(r);
      x = r.uniform() < 0.1 ? 0.0f : static_cast<float>(g * g * g * g);
    }
    for (double q : {0.5, 0.9, 0.99, 0.999}) {
      std::vector<float> c = w;
      const float t = clip_weights(c, q);
      std::vector<float> pos;
      for (float x : w) {
        if (x > 0) pos.push_back(x);
      }
      if (pos.empty()) {
        CHECK(std::isinf(t));
        CHECK(c == w);
        continue;
      }
      std::sort(pos.begin(), pos.end());
      const size_t rank = static_cast<size_t>(std::floor(q * static_cast<double>(pos.size() - 1)));
      INFO("seed " << seed << " n " << n << " q " << q);
      CHECK(t == pos[rank]);
      for (size_t i = 0; i < w.size(); ++i) CHECK(c[i] == std::min(w[i], t));
      // At most (1 - q) of the positive weights exceed the threshold before clipping.
      const auto above = std::count_if(w.begin(), w.end(), [&](float x) { return x > t; });
      CHECK(static_cast<double>(above) <= (1.0 - q) * static_cast<double>(pos.size()) + 1.0);
    }
    std::vector<float> c = w;
    CHECK(std::isinf(clip_weights(c, 1.0)));
    CHECK(c == w);
  }
}

TEST_CASE("append_uniform_mix adds an exact eps share of evenly spaced points", "[signposts][weighting]") {
  const uint64_t seed = kvq_test::test_seed(4302);
  SplitMix64 r(seed);
  std::vector<float> u0, w0;
  for (int i = 0; i < 3001; ++i) {
    u0.push_back(static_cast<float>(std::tanh(kvq_test::normal(r))));
    w0.push_back(static_cast<float>(r.uniform()));
  }
  for (double eps : {0.01, 0.25, 0.5, 0.9}) {
    std::vector<float> u = u0, w = w0;
    append_uniform_mix(u, w, eps);
    REQUIRE(u.size() == u0.size() + kUniformMixPoints);
    const double data = std::accumulate(w0.begin(), w0.end(), 0.0);
    double added = 0;
    for (size_t j = 0; j < kUniformMixPoints; ++j) {
      const float x = u[u0.size() + j];
      CHECK(x == static_cast<float>(-1.0 + (2.0 * j + 1.0) / kUniformMixPoints));
      CHECK(w[u0.size() + j] == w[u0.size()]);
      added += w[u0.size() + j];
    }
    INFO("seed " << seed << " eps " << eps);
    // float rounding of the common weight only: relative 2^-24.
    CHECK(std::fabs(added / (data + added) - eps) <= eps * 1e-6);
  }
  // eps 0: nothing; zero weights: set to 1 first (fit_signposts' fallback), then mixed.
  std::vector<float> u = u0, w = w0;
  append_uniform_mix(u, w, 0.0);
  CHECK(u.size() == u0.size());
  std::vector<float> z(u0.size(), 0.0f);
  u = u0;
  append_uniform_mix(u, z, 0.5);
  REQUIRE(z.size() == u0.size() + kUniformMixPoints);
  CHECK(std::all_of(z.begin(), z.begin() + static_cast<std::ptrdiff_t>(u0.size()), [](float x) { return x == 1.0f; }));
  const double added = std::accumulate(z.begin() + static_cast<std::ptrdiff_t>(u0.size()), z.end(), 0.0);
  CHECK(added == kvq_test::Approx(static_cast<double>(u0.size())).epsilon(1e-6));
  // No points: nothing appended, so fitting still reports "no points".
  std::vector<float> eu, ew;
  append_uniform_mix(eu, ew, 0.5);
  CHECK(eu.empty());
  CHECK_THROWS_AS(append_uniform_mix(u, w, 1.0), InvalidArgument);
}

TEST_CASE("the uniform share pulls the signposts towards the uniform quantizer", "[signposts][weighting]") {
  const uint64_t seed = kvq_test::test_seed(4303);
  SplitMix64 r(seed);
  // Bell-shaped points in [-1, 1]: raw k-means contracts the inner signposts.
  std::vector<float> u0, w0;
  for (int i = 0; i < 20011; ++i) {
    u0.push_back(static_cast<float>(std::max(-1.0, std::min(1.0, 0.35 * kvq_test::normal(r)))));
    const double g = kvq_test::normal(r);
    w0.push_back(static_cast<float>(g * g));
  }
  for (int bits : {2, 3}) {
    const int k = 1 << bits;
    // The k-means optimum of U[-1, 1]: cell midpoints -1 + (2 i + 1) / k.
    auto dist = [&](const std::vector<float>& s) {
      double d = 0;
      for (int i = 0; i < k; ++i) d = std::max(d, std::fabs(s[static_cast<size_t>(i)] - (-1.0 + (2.0 * i + 1.0) / k)));
      return d;
    };
    double last = INFINITY;
    for (double eps : {0.0, 0.3, 0.7, 0.98}) {
      std::vector<float> u = u0, w = w0;
      apply_weighting(u, w, SignpostWeighting{1.0, eps});
      const double d = dist(fit_signposts(u, w, bits).signposts);
      INFO("seed " << seed << " bits " << bits << " eps " << eps << " max distance " << d);
      CHECK(d < last);
      last = d;
    }
    CHECK(last < 0.02);
  }
}

TEST_CASE("default weighting reproduces the raw Fisher fit; bad values are typed errors", "[signposts][weighting]") {
  const uint64_t seed = kvq_test::test_seed(4304);
  SplitMix64 r(seed);
  std::vector<float> u0, w0;
  for (int i = 0; i < 999; ++i) {
    u0.push_back(static_cast<float>(2 * r.uniform() - 1));
    w0.push_back(static_cast<float>(r.uniform()));
  }
  std::vector<float> u = u0, w = w0;
  apply_weighting(u, w, SignpostWeighting{});
  CHECK(u == u0);
  CHECK(w == w0);
  CHECK(fit_signposts(u, w, 3).signposts == fit_signposts(u0, w0, 3).signposts);
  CHECK(SignpostWeighting{}.is_default());
  CHECK_THROWS_AS(check_weighting(SignpostWeighting{0.0, 0.0}, "x"), InvalidArgument);
  CHECK_THROWS_AS(check_weighting(SignpostWeighting{1.5, 0.0}, "x"), InvalidArgument);
  CHECK_THROWS_AS(check_weighting(SignpostWeighting{1.0, -0.1}, "x"), InvalidArgument);
  CHECK_THROWS_AS(check_weighting(SignpostWeighting{1.0, 1.0}, "x"), InvalidArgument);
  try {
    check_weighting(SignpostWeighting{1.0, 1.0}, "--uniform-mix");
  } catch (const InvalidArgument& e) {
    CHECK_THAT(std::string(e.what()), kvq_test::HasSubstr("--uniform-mix"));
  }
}

TEST_CASE("the calibration file keeps the weighting and --resume refuses other settings", "[signposts][weighting]") {
  const std::string model_path = kvq_test::shared_path("models/stories260K/stories260K.bin").string();
  const std::shared_ptr<const Model> model = load_model(model_path);
  const std::string dir = kvq_test::scratch_dir("signpost_weighting").string();
  SplitMix64 r(kvq_test::test_seed(4305));
  std::vector<int32_t> ids(600);
  for (int32_t& t : ids) t = static_cast<int32_t>(r.below(512));
  CalibrateOptions o;
  o.seqlen = 33;
  o.starts = sample_starts(static_cast<int64_t>(ids.size()), o.seqlen, 3, 7);
  o.bits = {2};
  o.output = dir + "/w.kvqc";
  o.weighting = SignpostWeighting{0.99, 0.25};
  Calibration base;
  base.fingerprint = compute_fingerprint(model_path);
  base.provenance = {"test/random", std::string(64, '0'), 3, 33, 7, "kvq-calibrate", "0.1.0", "test"};
  run_calibration(model, ids, o, base);
  const Calibration c = read_calibration(o.output);
  CHECK(c.signpost_clip_quantile == 0.99);
  CHECK(c.signpost_uniform_mix == 0.25);
  // Another weighting, --resume: refused, the file untouched.
  const std::vector<uint8_t> before = kvq_test::read_bytes(o.output);
  CalibrateOptions o2 = o;
  o2.resume = true;
  o2.weighting = SignpostWeighting{};
  CHECK_THROWS_AS(run_calibration(model, ids, o2, base), InvalidArgument);
  CHECK(kvq_test::read_bytes(o.output) == before);
  // The default weighting writes no signpost_weighting key (older files keep their bytes).
  o2.resume = false;
  o2.output = dir + "/d.kvqc";
  run_calibration(model, ids, o2, base);
  const Calibration d = read_calibration(o2.output);
  CHECK(d.signpost_clip_quantile == 1.0);
  CHECK(d.signpost_uniform_mix == 0.0);
  CHECK(calibration_document(d).find("signpost_weighting") == std::string::npos);
  CHECK(calibration_document(c).find("signpost_weighting") != std::string::npos);
  // A file whose weighting is out of range is a FormatError naming the file and the key.
  for (const auto& [clip, mix] : {std::pair{0.0, 0.0}, std::pair{1.0, 1.0}, std::pair{0.5, 1.5}}) {
    Calibration bad = d;
    bad.signpost_clip_quantile = clip;
    bad.signpost_uniform_mix = mix;
    const std::string path = dir + "/bad.kvqc";
    write_calibration(path, bad);
    INFO("clip " << clip << " mix " << mix);
    CHECK_THROWS_AS(read_calibration(path), FormatError);
    try {
      read_calibration(path);
    } catch (const FormatError& e) {
      CHECK_THAT(std::string(e.what()), kvq_test::HasSubstr("bad.kvqc"));
      CHECK_THAT(std::string(e.what()), kvq_test::HasSubstr("signpost_weighting"));
    }
  }
}
