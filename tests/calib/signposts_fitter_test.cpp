// SignpostFitter (one binning per kind for every bit width) and the side-by-side point
// builders against the one-shot functions: bit-identical signposts, costs and points;
// value outliers (nth_element) against a full sort with ties in |x|.
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "calib/rng.h"
#include "calib/signposts.h"
#include "formats/dtype.h"
#include "formats/error.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::calib;

TEST_CASE("SignpostFitter gives fit_signposts' results for every bit width", "[signposts]") {
  const uint64_t seed = kvq_test::test_seed(74);
  SplitMix64 r(seed);
  for (int n : {7, 5003, 70001}) {
    std::vector<float> u, w;
    for (int i = 0; i < n; ++i) {
      u.push_back(static_cast<float>(std::tanh(4 * (r.uniform() - 0.5))));
      const double g = r.uniform() - 0.5;
      w.push_back(static_cast<float>(g * g));
    }
    for (const bool zero : {false, true}) {
      std::vector<float> ww = zero ? std::vector<float>(u.size(), 0.0f) : w;
      const SignpostFitter fitter(u, ww);
      std::vector<SignpostFit> par(4);
#pragma omp parallel for num_threads(2)
      for (int b = 1; b <= 4; ++b) par[static_cast<size_t>(b - 1)] = fitter.fit(b);
      for (int b = 1; b <= 4; ++b) {
        const SignpostFit ref = fit_signposts(u, ww, b);
        const SignpostFit& f = par[static_cast<size_t>(b - 1)];
        CHECK(f.signposts == ref.signposts);
        CHECK(f.cost == ref.cost);
        CHECK(f.weighted == !zero);
      }
      CHECK_THROWS_AS(fitter.fit(9), InvalidArgument);
    }
  }
  CHECK_THROWS_AS(SignpostFitter({}, {}), InvalidArgument);
}

TEST_CASE("key_points/value_points equal per-sequence appends; value outliers by rank",
          "[signposts]") {
  const uint64_t seed = kvq_test::test_seed(75);
  SplitMix64 r(seed);
  const int head_dim = 7, dim = 3 * head_dim;
  std::vector<std::vector<float>> xs, gs;
  std::vector<PointRows> seqs;
  for (int64_t rows : {1, 129, 3, 17}) {
    std::vector<float> x(static_cast<size_t>(rows * dim)), g(x.size());
    for (float& v : x) v = static_cast<float>(std::round((r.uniform() * 2 - 1) * 4.0) / 4.0);  // |x| ties
    for (float& v : g) v = static_cast<float>(r.uniform() - 0.5);
    xs.push_back(std::move(x));
    gs.push_back(std::move(g));
  }
  const int64_t rows_list[4] = {1, 129, 3, 17};
  for (size_t i = 0; i < 4; ++i) seqs.push_back({xs[i].data(), gs[i].data(), rows_list[i]});
  std::vector<float> lo(dim), hi(dim);
  for (int c = 0; c < dim; ++c) {
    lo[static_cast<size_t>(c)] = c % 5 == 0 ? 0.0f : -0.75f;  // one constant-range channel below
    hi[static_cast<size_t>(c)] = c % 5 == 0 ? 0.0f : 0.75f;
  }
  for (const double fraction : {0.0, 0.15, 0.3}) {
    std::vector<float> ku, kw, vu, vw, ku2, kw2, vu2, vw2;
    key_points(seqs, dim, lo, hi, ku, kw);
    value_points(seqs, dim, head_dim, fraction, vu, vw);
    for (const PointRows& s : seqs) {
      append_key_points(s.x, s.grad, s.rows, dim, lo, hi, ku2, kw2);
      append_value_points(s.x, s.grad, s.rows, dim, head_dim, fraction, vu2, vw2);
    }
    CHECK(ku == ku2);
    CHECK(kw == kw2);
    CHECK(vu == vu2);
    CHECK(vw == vw2);
    // Naive value points: full sort by (|x| desc, channel asc), the first k are outliers.
    const int k = value_outliers_per_head(fraction, head_dim);
    std::vector<float> vu3;
    for (const PointRows& s : seqs) {
      for (int64_t t = 0; t < s.rows; ++t) {
        for (int h0 = 0; h0 < dim; h0 += head_dim) {
          const float* x = s.x + t * dim + h0;
          std::vector<int> idx(head_dim);
          std::iota(idx.begin(), idx.end(), 0);
          std::sort(idx.begin(), idx.end(), [&](int a, int b) {
            return std::fabs(x[a]) > std::fabs(x[b]) || (std::fabs(x[a]) == std::fabs(x[b]) && a < b);
          });
          std::vector<char> out(head_dim, 0);
          for (int i = 0; i < k; ++i) out[static_cast<size_t>(idx[static_cast<size_t>(i)])] = 1;
          float mn = INFINITY, mx = -INFINITY;
          for (int c = 0; c < head_dim; ++c) {
            if (!out[static_cast<size_t>(c)]) {
              mn = std::min(mn, x[c]);
              mx = std::max(mx, x[c]);
            }
          }
          // As the codec: mid and half stored as fp16, then the float reciprocal.
          const float mid = half_to_float(float_to_half(0.5f * (mn + mx)));
          const float half = half_to_float(float_to_half(0.5f * (mx - mn)));
          if (!(half > 0.0f)) continue;
          for (int c = 0; c < head_dim; ++c) {
            if (!out[static_cast<size_t>(c)]) vu3.push_back(std::min(1.0f, std::max(-1.0f, (x[c] - mid) * (1.0f / half))));
          }
        }
      }
    }
    CHECK(vu == vu3);
  }
}

TEST_CASE("nearest_signpost agrees with a std::lower_bound reference", "[signposts]") {
  const uint64_t seed = kvq_test::test_seed(77);
  SplitMix64 r(seed);
  for (int n : {1, 2, 3, 4, 7, 8, 16}) {
    std::vector<float> lut;
    for (int i = 0; i < n; ++i) lut.push_back(-1.0f + 2.0f * static_cast<float>(i + r.uniform()) / n);
    std::sort(lut.begin(), lut.end());
    for (int t = 0; t < 2000; ++t) {
      float u = static_cast<float>(2.5 * r.uniform() - 1.25);
      if (t % 5 == 0) u = lut[r.below(static_cast<uint64_t>(n))];                       // on a signpost
      if (t % 7 == 0 && n > 1) {                                                         // on a midpoint
        const size_t j = r.below(static_cast<uint64_t>(n - 1));
        u = lut[j] + 0.5f * (lut[j + 1] - lut[j]);
      }
      const auto it = std::lower_bound(lut.begin(), lut.end(), u);
      int ref;
      if (it == lut.begin()) ref = 0;
      else if (it == lut.end()) ref = n - 1;
      else {
        const int hi = static_cast<int>(it - lut.begin());
        ref = (u - lut[static_cast<size_t>(hi - 1)] <= lut[static_cast<size_t>(hi)] - u) ? hi - 1 : hi;
      }
      CHECK(nearest_signpost(lut, u) == ref);
    }
  }
}
