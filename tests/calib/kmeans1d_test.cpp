// Property tests of the weighted 1-D k-means (STYLE.md: "weighted k-means cost never
// increases and centroids are weighted means"), the exact DP against brute force and
// against the best of 10 k-means++ Lloyd runs, and determinism across thread counts.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include <omp.h>

#include "calib/kmeans1d.h"
#include "calib/rng.h"
#include "formats/error.h"
#include "tests/calib/normal.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::calib;
using kvq_test::normal;

namespace {

struct Data {
  std::vector<float> x, w;
  WeightedPoints points() const { return {x, w}; }
};

// A mixture of `modes` Gaussians of random centre/width, heavy-tailed Fisher-like weights
// (squared normals, some exactly 0), like what calibration feeds the solver.
Data mixture(SplitMix64& r, int n, int modes) {
  std::vector<double> mu(modes), sd(modes);
  for (int m = 0; m < modes; ++m) {
    mu[m] = 2.0 * r.uniform() - 1.0;
    sd[m] = 0.01 + 0.2 * r.uniform();
  }
  Data d;
  for (int i = 0; i < n; ++i) {
    const int m = static_cast<int>(r.below(modes));
    d.x.push_back(static_cast<float>(mu[m] + sd[m] * normal(r)));
    const double g = normal(r);
    d.w.push_back(r.uniform() < 0.05 ? 0.0f : static_cast<float>(g * g));
  }
  if (std::all_of(d.w.begin(), d.w.end(), [](float v) { return v == 0.0f; })) d.w[0] = 1.0f;
  return d;
}

// Cost tolerance for comparing two double sums of n non-negative terms computed in
// different orders: each sum is within n * 2^-53 (relative) of the exact value.
double sum_tol(double cost, size_t n) { return 2.0 * static_cast<double>(n + 1) * 0x1.0p-53 * cost; }

// Brute force: the best partition of the sorted distinct values into <= k contiguous runs.
double brute_force_cost(const Data& d, int k) {
  std::vector<std::pair<float, double>> v;
  for (size_t i = 0; i < d.x.size(); ++i) {
    if (d.w[i] > 0) v.emplace_back(d.x[i], d.w[i]);
  }
  std::sort(v.begin(), v.end());
  const int n = static_cast<int>(v.size());
  auto cost = [&](int a, int b) {  // points [a, b)
    double w = 0, s = 0;
    for (int i = a; i < b; ++i) {
      w += v[i].second;
      s += v[i].second * v[i].first;
    }
    const double mean = s / w;
    double c = 0;
    for (int i = a; i < b; ++i) c += v[i].second * (v[i].first - mean) * (v[i].first - mean);
    return c;
  };
  double best = std::numeric_limits<double>::infinity();
  // Each of the n-1 gaps is a cut or not: 2^(n-1) partitions.
  for (uint32_t mask = 0; mask < (1u << (n - 1)); ++mask) {
    if (__builtin_popcount(mask) + 1 > k) continue;
    double c = 0;
    int start = 0;
    for (int g = 0; g < n - 1; ++g) {
      if (mask & (1u << g)) {
        c += cost(start, g + 1);
        start = g + 1;
      }
    }
    c += cost(start, n);
    best = std::min(best, c);
  }
  return best;
}

}  // namespace

TEST_CASE("Lloyd cost never increases across iterations", "[kmeans]") {
  const uint64_t seed = kvq_test::test_seed(11);
  SplitMix64 r(seed);
  for (int n : {1, 3, 7, 127, 129, 4097}) {
    for (int k : {1, 2, 4, 8, 16}) {
      const Data d = mixture(r, n, 1 + static_cast<int>(r.below(6)));
      SplitMix64 rr(r.next());
      // A deliberately poor start (all centroids from one corner) makes Lloyd take steps.
      std::vector<double> init;
      for (int j = 0; j < k; ++j) init.push_back(-2.0 - 0.01 * j);
      std::vector<double> trace;
      LloydOptions opt;
      opt.cost_trace = &trace;
      const KMeans1D res = lloyd(d.points(), init, opt);
      INFO("n=" << n << " k=" << k);
      REQUIRE(trace.size() >= 2);
      for (size_t i = 1; i < trace.size(); ++i) {
        CHECK(trace[i] <= trace[i - 1] + sum_tol(trace[i - 1], d.x.size()));
      }
      CHECK(res.cost == trace.back());
      (void)rr;
    }
  }
}

TEST_CASE("converged centroids are the weighted means of their points", "[kmeans]") {
  const uint64_t seed = kvq_test::test_seed(12);
  SplitMix64 r(seed);
  for (int n : {3, 7, 129, 4097, 100003}) {
    const int k = 1 + static_cast<int>(r.below(16));
    const Data d = mixture(r, n, 1 + static_cast<int>(r.below(8)));
    for (int solver = 0; solver < 2; ++solver) {
      const KMeans1D res = solver == 0 ? kmeans_plus_plus_lloyd(d.points(), k, r.next(), 1)
                                       : exact_kmeans(d.points(), k);
      INFO("n=" << n << " k=" << k << " solver=" << (solver == 0 ? "lloyd" : "exact"));
      // Independent naive assignment to the nearest centroid and weighted means.
      std::vector<double> w(res.centroids.size(), 0.0), s(res.centroids.size(), 0.0);
      double maxabs = 0;
      for (size_t i = 0; i < d.x.size(); ++i) {
        size_t best = 0;
        for (size_t j = 1; j < res.centroids.size(); ++j) {
          if (std::fabs(d.x[i] - res.centroids[j]) < std::fabs(d.x[i] - res.centroids[best])) best = j;
        }
        w[best] += d.w[i];
        s[best] += static_cast<double>(d.w[i]) * d.x[i];
        maxabs = std::max(maxabs, std::fabs(static_cast<double>(d.x[i])));
      }
      for (size_t j = 0; j < res.centroids.size(); ++j) {
        if (w[j] == 0) continue;  // an empty (or duplicated padding) centroid
        // Two sums of n products in different orders: |error| <= 2 n 2^-53 max|x|.
        CHECK(std::fabs(res.centroids[j] - s[j] / w[j]) <= 2.0 * n * 0x1.0p-53 * maxabs + 1e-300);
      }
    }
  }
}

TEST_CASE("the histogram DP is optimal: equals brute force on small inputs", "[kmeans]") {
  const uint64_t seed = kvq_test::test_seed(13);
  SplitMix64 r(seed);
  for (int trial = 0; trial < 60; ++trial) {
    const int n = 1 + static_cast<int>(r.below(12));
    const int k = 1 + static_cast<int>(r.below(5));
    Data d = mixture(r, n, 3);
    if (trial % 3 == 0) {  // ties: few distinct values
      for (float& x : d.x) x = std::round(x * 2.0f) / 2.0f;
    }
    ExactOptions o;
    o.polish_iterations = 0;
    const KMeans1D dp = exact_kmeans(d.points(), k, o);
    const double bf = brute_force_cost(d, k);
    INFO("trial " << trial << " n=" << n << " k=" << k);
    CHECK(dp.centroids.size() == static_cast<size_t>(k));
    CHECK(std::fabs(dp.cost - bf) <= 1e-12 * std::max(1.0, bf) + sum_tol(bf, d.x.size()) * 8);
  }
}

TEST_CASE("the exact solver beats or ties the best of 10 k-means++ Lloyd runs", "[kmeans]") {
  const uint64_t seed = kvq_test::test_seed(14);
  SplitMix64 r(seed);
  struct Case {
    const char* name;
    Data d;
  };
  std::vector<Case> cases;
  for (int n : {7, 129, 4097, 50000}) cases.push_back({"mixture", mixture(r, n, 12)});
  {  // more points than histogram bins: exercises the equal-width + quantile edges
    Data d = mixture(r, 200003, 20);
    cases.push_back({"large mixture (histogram path)", d});
  }
  {  // one far point stretches the range: equal-width bins alone would collapse the rest
    Data d = mixture(r, 150001, 10);
    d.x[77] = 1e6f;
    cases.push_back({"far outlier", d});
  }
  {  // heavy tail (Student-t with 2 degrees of freedom), unit weights
    Data d;
    for (int i = 0; i < 70001; ++i) {
      const double z = normal(r), a = normal(r), b = normal(r);
      d.x.push_back(static_cast<float>(z / std::sqrt((a * a + b * b) / 2)));
    }
    cases.push_back({"student-t", d});
  }
  {  // a dense cluster and a few heavy isolated points: Lloyd tends to waste centroids
    Data d;
    for (int i = 0; i < 3000; ++i) {
      d.x.push_back(static_cast<float>(0.001 * normal(r)));
      d.w.push_back(1.0f);
    }
    for (int i = 0; i < 12; ++i) {
      d.x.push_back(static_cast<float>(-1.0 + 2.0 * i / 11.0));
      d.w.push_back(50.0f);
    }
    cases.push_back({"dense core + heavy isolated points", d});
  }
  {  // fewer distinct values than k
    Data d;
    for (int i = 0; i < 1000; ++i) {
      d.x.push_back(static_cast<float>(r.below(3)));
      d.w.push_back(static_cast<float>(1 + r.below(4)));
    }
    cases.push_back({"3 distinct values", d});
  }
  for (const Case& c : cases) {
    for (int bits : {2, 3, 4}) {
      const int k = 1 << bits;
      const KMeans1D exact = exact_kmeans(c.d.points(), k);
      const KMeans1D best = kmeans_plus_plus_lloyd(c.d.points(), k, r.next(), 10);
      // Recompute both costs with the same function so only the centroids differ.
      const double ce = kmeans_cost(c.d.points(), exact.centroids);
      const double cl = kmeans_cost(c.d.points(), best.centroids);
      std::printf("[kmeans] %-36s n=%-7zu k=%-2d exact %.9g  best-of-10 Lloyd %.9g  (%.4f%%)\n",
                  c.name, c.d.x.size(), k, ce, cl, cl > 0 ? 100.0 * (cl - ce) / cl : 0.0);
      INFO(c.name << " n=" << c.d.x.size() << " k=" << k);
      CHECK(ce <= cl + sum_tol(cl, c.d.x.size()));
      CHECK(exact.cost == ce);
    }
  }
}

TEST_CASE("k-means is deterministic across runs and thread counts", "[kmeans]") {
  const uint64_t seed = kvq_test::test_seed(15);
  SplitMix64 r(seed);
  const Data d = mixture(r, 300007, 9);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const KMeans1D a = exact_kmeans(d.points(), 8);
  const KMeans1D la = kmeans_plus_plus_lloyd(d.points(), 8, 42, 3);
  omp_set_num_threads(std::max(2, saved));
  const KMeans1D b = exact_kmeans(d.points(), 8);
  const KMeans1D lb = kmeans_plus_plus_lloyd(d.points(), 8, 42, 3);
  omp_set_num_threads(saved);
  CHECK(a.centroids == b.centroids);
  CHECK(a.cost == b.cost);
  CHECK(la.centroids == lb.centroids);
  CHECK(la.cost == lb.cost);
}

TEST_CASE("k-means rejects bad input with a typed error", "[kmeans]") {
  std::vector<float> x{0.0f, 1.0f, std::nanf(""), 2.0f};
  std::vector<float> w{1, 1, 1, 1};
  CHECK_THROWS_AS(exact_kmeans({x, w}, 4), InvalidArgument);
  try {
    exact_kmeans({x, w}, 4);
  } catch (const InvalidArgument& e) {
    CHECK_THAT(std::string(e.what()), kvq_test::HasSubstr("point 2"));
  }
  x[2] = 0.5f;
  w[1] = -1.0f;
  CHECK_THROWS_AS(exact_kmeans({x, w}, 4), InvalidArgument);
  w = {0, 0, 0, 0};
  CHECK_THROWS_AS(exact_kmeans({x, w}, 4), InvalidArgument);
  w = {1, 1, 1};
  CHECK_THROWS_AS(exact_kmeans({x, w}, 4), InvalidArgument);
  w = {1, 1, 1, 1};
  CHECK_THROWS_AS(exact_kmeans({x, w}, 0), InvalidArgument);
  CHECK_THROWS_AS(lloyd({x, w}, {}), InvalidArgument);
}
