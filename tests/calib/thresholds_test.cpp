// Thresholds hit their target percentiles to the element (STYLE.md property tests), sink
// tokens are excluded, weighted quantiles match a replicated-points brute force, and the
// MiKV balancer maps GQA heads as documented and leaves attention scores unchanged.
#include <algorithm>
#include <cmath>
#include <vector>

#include "calib/balancer.h"
#include "calib/rng.h"
#include "calib/thresholds.h"
#include "formats/error.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::calib;

TEST_CASE("parse_outlier_spec reads percentages and fractions", "[thresholds]") {
  CHECK(parse_outlier_spec("1%").total_fraction == kvq_test::Approx(0.01));
  CHECK(parse_outlier_spec("0.5%").tail_fraction() == kvq_test::Approx(0.0025));
  CHECK(parse_outlier_spec("0.02").total_fraction == kvq_test::Approx(0.02));
  CHECK(parse_outlier_spec("0%").total_fraction == 0.0);
  CHECK_THROWS_AS(parse_outlier_spec("abc"), InvalidArgument);
  CHECK_THROWS_AS(parse_outlier_spec("100%"), InvalidArgument);
  CHECK_THROWS_AS(parse_outlier_spec("-1%"), InvalidArgument);
  CHECK_THROWS_AS(parse_outlier_spec("1%%"), InvalidArgument);
}

TEST_CASE("tail thresholds leave exactly floor(p n) distinct values in each tail",
          "[thresholds]") {
  const uint64_t seed = kvq_test::test_seed(21);
  SplitMix64 r(seed);
  for (int64_t n : {1, 7, 199, 200, 201, 4097, 32768, 100003}) {
    // Distinct values: a random permutation of 0..n-1 scaled (exactly representable).
    std::vector<float> v(n);
    for (int64_t i = 0; i < n; ++i) v[i] = static_cast<float>(i) * 0.25f - 100.0f;
    for (int64_t i = n - 1; i > 0; --i) std::swap(v[i], v[r.below(i + 1)]);
    const std::vector<float> orig = v;
    // p = 0.5% per tail = 1/200, so floor(p n) = n / 200 in integers.
    const TailThresholds t = tail_thresholds(v, 0.005);
    const int64_t m = n / 200;
    const auto below = std::count_if(orig.begin(), orig.end(), [&](float x) { return x < t.lo; });
    const auto above = std::count_if(orig.begin(), orig.end(), [&](float x) { return x > t.hi; });
    INFO("n=" << n);
    CHECK(t.tail_count == m);
    CHECK(below == m);
    CHECK(above == m);
  }
}

TEST_CASE("tail thresholds with ties keep at most floor(p n) per tail", "[thresholds]") {
  const uint64_t seed = kvq_test::test_seed(22);
  SplitMix64 r(seed);
  const int64_t n = 4099;
  std::vector<float> v(n);
  for (float& x : v) x = static_cast<float>(r.below(9)) - 4.0f;  // 9 levels, many ties
  const std::vector<float> orig = v;
  const TailThresholds t = tail_thresholds(v, 0.01);
  const int64_t m = n / 100;
  CHECK(std::count_if(orig.begin(), orig.end(), [&](float x) { return x < t.lo; }) <= m);
  CHECK(std::count_if(orig.begin(), orig.end(), [&](float x) { return x > t.hi; }) <= m);
  // ... and lo/hi are order statistics: at least m values <= lo, at least m >= hi.
  CHECK(std::count_if(orig.begin(), orig.end(), [&](float x) { return x <= t.lo; }) > m);
  CHECK(std::count_if(orig.begin(), orig.end(), [&](float x) { return x >= t.hi; }) > m);
}

TEST_CASE("tail thresholds reject NaN and bad fractions", "[thresholds]") {
  std::vector<float> v{1.0f, std::nanf(""), 2.0f};
  CHECK_THROWS_AS(tail_thresholds(v, 0.005), InvalidArgument);
  std::vector<float> ok{1.0f, 2.0f};
  CHECK_THROWS_AS(tail_thresholds(ok, 0.5), InvalidArgument);
  std::vector<float> empty;
  CHECK_THROWS_AS(tail_thresholds(empty, 0.005), InvalidArgument);
}

TEST_CASE("weighted quantile equals the quantile of replicated points", "[thresholds]") {
  const uint64_t seed = kvq_test::test_seed(23);
  SplitMix64 r(seed);
  for (int n : {1, 3, 7, 127}) {
    std::vector<float> x(n), w(n);
    std::vector<float> rep;
    for (int i = 0; i < n; ++i) {
      x[i] = static_cast<float>(r.below(50));
      w[i] = static_cast<float>(r.below(4));  // integer weights, zeros included
      for (int j = 0; j < static_cast<int>(w[i]); ++j) rep.push_back(x[i]);
    }
    if (rep.empty()) {
      w[0] = 1;
      rep.push_back(x[0]);
    }
    std::sort(rep.begin(), rep.end());
    for (double q : {0.0, 0.1, 0.5, 0.995, 1.0}) {
      // smallest x with count(<= x) >= q * N: rank ceil(q N) - 1 (at least 0).
      const int64_t N = static_cast<int64_t>(rep.size());
      const int64_t rank = std::max<int64_t>(0, static_cast<int64_t>(std::ceil(q * N)) - 1);
      INFO("n=" << n << " q=" << q);
      CHECK(weighted_quantile(x, w, q) == rep[rank]);
    }
  }
}

TEST_CASE("per-channel thresholds exclude sink rows and hit their percentiles",
          "[thresholds]") {
  const uint64_t seed = kvq_test::test_seed(24);
  SplitMix64 r(seed);
  const int cols = 7, sink = 1;
  std::vector<std::vector<float>> seqs;
  std::vector<RowsView> views;
  for (int64_t rows : {129, 3, 401}) {
    std::vector<float> m(rows * cols);
    for (float& x : m) x = static_cast<float>(r.uniform() * 2 - 1);
    for (int c = 0; c < cols; ++c) m[c] = 1000.0f;  // the sink row: huge, must not count
    seqs.push_back(std::move(m));
  }
  const int64_t rows_list[3] = {129, 3, 401};
  for (int i = 0; i < 3; ++i) views.push_back({seqs[i].data(), rows_list[i], cols});
  const ChannelThresholds t = per_channel_thresholds(views, sink, 0.01);
  const int64_t n = 128 + 2 + 400;
  CHECK(t.rows == n);
  CHECK(t.tail_count == n / 100);
  for (int c = 0; c < cols; ++c) {
    CHECK(t.max[c] < 1.0f);
    int64_t below = 0, above = 0;
    for (int i = 0; i < 3; ++i) {
      for (int64_t row = sink; row < rows_list[i]; ++row) {
        const float x = seqs[i][row * cols + c];
        below += x < t.lo[c];
        above += x > t.hi[c];
      }
    }
    CHECK(below == n / 100);
    CHECK(above == n / 100);
  }
  std::vector<RowsView> only_sink{{seqs[1].data(), 1, cols}};
  CHECK_THROWS_AS(per_channel_thresholds(only_sink, 1, 0.01), InvalidArgument);
}

TEST_CASE("MiKV balancers: GQA mapping and invariant scores", "[balancer]") {
  const uint64_t seed = kvq_test::test_seed(25);
  SplitMix64 r(seed);
  const int n_heads = 4, n_kv = 2, hd = 3, rows = 17;
  BalancerStats st(2, n_heads, n_kv, hd);
  std::vector<float> q(rows * n_heads * hd), k(rows * n_kv * hd);
  for (float& x : q) x = static_cast<float>(r.uniform() * 2 - 1);
  for (float& x : k) x = static_cast<float>(r.uniform() * 2 - 1);
  q[5 * n_heads * hd + 3 * hd + 1] = -9.0f;  // query head 3 (kv head 1), channel 1
  k[2 * n_kv * hd + 1 * hd + 2] = 16.0f;     // kv head 1, channel 2: a key outlier channel
  for (int c = 0; c < n_kv * hd; ++c) k[c + 7 * n_kv * hd] *= 1.0f;
  st.add(1, q.data(), n_heads * hd, k.data(), n_kv * hd, rows);
  const std::vector<float> b = st.balancers(1);
  REQUIRE(b.size() == static_cast<size_t>(n_kv * hd));
  // Expected from a naive recomputation: kv head g serves query heads 2g and 2g+1.
  for (int g = 0; g < n_kv; ++g) {
    for (int c = 0; c < hd; ++c) {
      float mq = 0, mk = 0;
      for (int t = 0; t < rows; ++t) {
        for (int h = 2 * g; h < 2 * g + 2; ++h) mq = std::max(mq, std::fabs(q[t * n_heads * hd + h * hd + c]));
        mk = std::max(mk, std::fabs(k[t * n_kv * hd + g * hd + c]));
      }
      CHECK(b[g * hd + c] == static_cast<float>(std::sqrt(static_cast<double>(mq) / mk)));
    }
  }
  CHECK(b[1 * hd + 1] == static_cast<float>(std::sqrt(9.0 / st.max_abs_k(1)[hd + 1])));
  // Scores q.k are unchanged by q*b, k/b (up to float rounding of 2 extra ops per term).
  for (int t = 0; t < rows; ++t) {
    for (int h = 0; h < n_heads; ++h) {
      const int g = h / (n_heads / n_kv);
      double s0 = 0, s1 = 0, mag = 0;
      for (int c = 0; c < hd; ++c) {
        const float qc = q[t * n_heads * hd + h * hd + c], kc = k[t * n_kv * hd + g * hd + c];
        s0 += static_cast<double>(qc) * kc;
        s1 += static_cast<double>(qc * b[g * hd + c]) * (kc / b[g * hd + c]);
        mag += std::fabs(static_cast<double>(qc) * kc);
      }
      CHECK(std::fabs(s0 - s1) <= 4 * 0x1.0p-24 * mag);
    }
  }
  // Layer 0 saw nothing: all maxima 0, so every balancer is 1.
  for (float v : st.balancers(0)) CHECK(v == 1.0f);
}
