// ExactKMeans (one histogram for every k) against exact_kmeans: bit-identical centroids
// and costs for several k, on the exact (few points) and the binned (many points) paths,
// also when the k are solved on several threads at once, as kvq-calibrate does.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "calib/kmeans1d.h"
#include "calib/rng.h"
#include "formats/error.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::calib;

namespace {

// Skewed points (cubes of uniforms, a few far outliers, repeated values) with squared
// Gaussian-like weights, some exactly 0.
void make_points(SplitMix64& r, int n, std::vector<float>& x, std::vector<float>& w) {
  x.clear();
  w.clear();
  for (int i = 0; i < n; ++i) {
    const double u = 2.0 * r.uniform() - 1.0;
    double v = u * u * u;
    if (r.uniform() < 0.001) v *= 40.0;                               // far points
    if (r.uniform() < 0.1) v = std::round(v * 16.0) / 16.0;            // ties
    x.push_back(static_cast<float>(v));
    const double g = r.uniform() - 0.5;
    w.push_back(r.uniform() < 0.03 ? 0.0f : static_cast<float>(g * g));
  }
  w[0] = 1.0f;
}

void check_same(const KMeans1D& a, const KMeans1D& b) {
  REQUIRE(a.centroids.size() == b.centroids.size());
  for (size_t j = 0; j < a.centroids.size(); ++j) CHECK(a.centroids[j] == b.centroids[j]);
  CHECK(a.cost == b.cost);
  CHECK(a.iterations == b.iterations);
}

}  // namespace

TEST_CASE("ExactKMeans reuses one histogram for every k, bit-identical to exact_kmeans",
          "[kmeans]") {
  const uint64_t seed = kvq_test::test_seed(71);
  SplitMix64 r(seed);
  // (n, max_bins): exact path (n <= max_bins), binned path with a small and the default
  // bin budget; awkward sizes.
  struct Case { int n, max_bins; };
  for (const Case c : {Case{127, 1 << 16}, Case{4097, 64}, Case{70001, 1 << 16}}) {
    std::vector<float> x, w;
    make_points(r, c.n, x, w);
    ExactOptions opt;
    opt.max_bins = c.max_bins;
    const ExactKMeans solver({x, w}, opt);
    CHECK(solver.histogram().exact == (c.n <= c.max_bins));
    const std::vector<int> ks{1, 3, 4, 8, 16, 33};
    std::vector<KMeans1D> ref;
    for (int k : ks) ref.push_back(exact_kmeans({x, w}, k, opt));
    // Serial, twice (solve has no state that a first call could change).
    for (int rep = 0; rep < 2; ++rep) {
      for (size_t i = 0; i < ks.size(); ++i) check_same(solver.solve(ks[i]), ref[i]);
    }
    // Concurrently, from several threads, in reverse order.
    std::vector<KMeans1D> par(ks.size());
#pragma omp parallel for schedule(dynamic, 1) num_threads(3)
    for (int i = static_cast<int>(ks.size()) - 1; i >= 0; --i) par[static_cast<size_t>(i)] = solver.solve(ks[static_cast<size_t>(i)]);
    for (size_t i = 0; i < ks.size(); ++i) check_same(par[i], ref[i]);
    std::printf("[kmeans reuse] n %d, max_bins %d: %zu bins, k=16 cost %.17g\n", c.n, c.max_bins,
                solver.histogram().weight.size(), ref[4].cost);
  }
}

TEST_CASE("ExactKMeans rejects bad input with a typed error", "[kmeans]") {
  std::vector<float> x{0.0f, 1.0f, NAN}, w{1.0f, 1.0f, 1.0f};
  CHECK_THROWS_AS(ExactKMeans({x, w}), InvalidArgument);
  x[2] = 2.0f;
  const ExactKMeans ok({x, w});
  CHECK_THROWS_AS(ok.solve(0), InvalidArgument);
  std::vector<float> zero(3, 0.0f);
  CHECK_THROWS_AS(ExactKMeans({x, zero}), InvalidArgument);
}

TEST_CASE("kmeans_cost equals a naive one-chunk sum with std::lower_bound assignment",
          "[kmeans]") {
  // Below 2^16 points the cost is one sequential sum in index order, so a naive loop with
  // std::lower_bound over the midpoints must give the same bits (the branch-free search
  // must pick the same centroid for every point, ties on a midpoint included).
  const uint64_t seed = kvq_test::test_seed(76);
  SplitMix64 r(seed);
  for (int k : {1, 2, 3, 16, 17}) {
    std::vector<double> c;
    for (int j = 0; j < k; ++j) c.push_back(std::round((2.0 * r.uniform() - 1.0) * 64.0) / 64.0);
    std::sort(c.begin(), c.end());
    std::vector<double> mid;
    for (size_t j = 0; j + 1 < c.size(); ++j) mid.push_back(c[j] + 0.5 * (c[j + 1] - c[j]));
    std::vector<float> x, w;
    for (int i = 0; i < 4097; ++i) {
      // A third of the points exactly on a midpoint or a centroid.
      const double pick = r.uniform();
      double v = 2.5 * r.uniform() - 1.25;
      if (pick < 0.15 && !mid.empty()) v = mid[r.below(mid.size())];
      else if (pick < 0.3) v = c[r.below(c.size())];
      x.push_back(static_cast<float>(v));
      w.push_back(static_cast<float>(r.uniform()));
    }
    double naive = 0.0;
    for (size_t i = 0; i < x.size(); ++i) {
      const double xi = x[i];
      const size_t j = static_cast<size_t>(std::lower_bound(mid.begin(), mid.end(), xi) - mid.begin());
      const double d = xi - c[j];
      naive += static_cast<double>(w[i]) * d * d;
    }
    CHECK(kmeans_cost({x, w}, c) == naive);
  }
}
