// Fisher-weighted key ranges (calib/key_ranges.h): the outlier budget is never exceeded on
// the calibration rows, the weighted range cost never exceeds the uniform share's, each
// channel's range is the shortest interval for its outlier count (brute force), a
// heavy-tailed sensitive channel gets more of the budget, results do not depend on the
// thread count, and bad input is refused.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "calib/key_ranges.h"
#include "calib/rng.h"
#include "calib/thresholds.h"
#include "formats/error.h"
#include "tests/calib/normal.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::calib;
using kvq_test::normal;

namespace {

struct Data {
  int cols = 0;
  std::vector<std::vector<float>> k, g;
  std::vector<RowsView> kv, gv;
  void views() {
    kv.clear();
    gv.clear();
    for (size_t i = 0; i < k.size(); ++i) {
      const int64_t rows = static_cast<int64_t>(k[i].size()) / cols;
      kv.push_back({k[i].data(), rows, cols});
      gv.push_back({g[i].data(), rows, cols});
    }
  }
};

// Channel 0 heavy-tailed (Student-t-like: normal / sqrt(uniform)) and sensitive (large
// gradients); channel 1 skewed (exponential); the rest Gaussian with a random scale.
Data make_data(uint64_t seed, const std::vector<int64_t>& rows, int cols) {
  SplitMix64 r(seed);
  Data d;
  d.cols = cols;
  for (int64_t n : rows) {
    std::vector<float> k(static_cast<size_t>(n * cols)), g(k.size());
    for (int64_t t = 0; t < n; ++t)
      for (int c = 0; c < cols; ++c) {
        double x = normal(r);
        if (c == 0) x /= std::sqrt(std::max(1e-3, r.uniform()));
        if (c == 1) x = -std::log(1.0 - r.uniform());
        k[static_cast<size_t>(t * cols + c)] = static_cast<float>(x * (1.0 + 0.1 * c));
        g[static_cast<size_t>(t * cols + c)] = static_cast<float>(normal(r) * (c == 0 ? 10.0 : 1.0));
      }
    d.k.push_back(std::move(k));
    d.g.push_back(std::move(g));
  }
  d.views();
  return d;
}

std::vector<float> column(const Data& d, int c) {
  std::vector<float> v;
  for (const RowsView& k : d.kv)
    for (int64_t t = 0; t < k.rows; ++t) v.push_back(k.data[t * k.cols + c]);
  std::sort(v.begin(), v.end());
  return v;
}

}  // namespace

TEST_CASE("fisher key ranges: budget, cost, shortest intervals", "[key_ranges]") {
  const uint64_t seed = kvq_test::test_seed(24);
  std::printf("key_ranges seed %llu\n", static_cast<unsigned long long>(seed));
  for (const auto& shape : std::vector<std::pair<std::vector<int64_t>, int>>{
           {{1023, 1023, 1023}, 16}, {{129}, 7}, {{4097, 7}, 3}, {{1}, 5}, {{7, 3}, 2}}) {
    const Data d = make_data(seed + static_cast<uint64_t>(shape.second), shape.first, shape.second);
    const KeyRangeFit f = fisher_key_ranges(d.kv, d.gv, 0.005);
    INFO("rows " << shape.first[0] << " cols " << shape.second);
    int64_t n = 0;
    for (int64_t x : shape.first) n += x;
    CHECK(f.budget == shape.second * 2 * tail_count(n, 0.005));
    int64_t used = 0;
    for (int64_t x : f.outliers) used += x;
    CHECK(used <= f.budget);
    CHECK(f.cost <= f.uniform_cost);
    CHECK(f.weighted);
    for (int c = 0; c < shape.second; ++c) {
      const std::vector<float> v = column(d, c);
      REQUIRE(f.lo[c] <= f.hi[c]);
      // No interval leaving the same number of points out is shorter.
      const int64_t m = f.outliers[static_cast<size_t>(c)];
      float shortest = std::numeric_limits<float>::infinity();
      for (int64_t a = 0; a <= m; ++a) {
        shortest = std::min(shortest, v[static_cast<size_t>(static_cast<int64_t>(v.size()) - 1 - (m - a))] - v[static_cast<size_t>(a)]);
      }
      CHECK(f.hi[c] - f.lo[c] == shortest);
    }
  }
}

TEST_CASE("fisher key ranges: a heavy-tailed sensitive channel gets more of the budget",
          "[key_ranges]") {
  const uint64_t seed = kvq_test::test_seed(24);
  const Data d = make_data(seed, {1023, 1023, 1023, 1023}, 16);
  const KeyRangeFit f = fisher_key_ranges(d.kv, d.gv, 0.005);
  const int64_t share = 2 * tail_count(4 * 1023, 0.005);
  std::printf("key_ranges: channel 0 gets %lld outliers (uniform share %lld), cost %.6g vs uniform %.6g\n",
              static_cast<long long>(f.outliers[0]), static_cast<long long>(share), f.cost, f.uniform_cost);
  CHECK(f.allocated);
  CHECK(f.outliers[0] > share);
  CHECK(f.cost < f.uniform_cost);
}

TEST_CASE("fisher key ranges: thread count, unit-weight fallback, refusals", "[key_ranges]") {
  const uint64_t seed = kvq_test::test_seed(24);
  Data d = make_data(seed, {257, 129}, 9);
  const int saved = omp_get_max_threads();
  omp_set_num_threads(1);
  const KeyRangeFit one = fisher_key_ranges(d.kv, d.gv, 0.005);
  omp_set_num_threads(3);
  const KeyRangeFit three = fisher_key_ranges(d.kv, d.gv, 0.005);
  omp_set_num_threads(saved);
  CHECK(one.lo == three.lo);
  CHECK(one.hi == three.hi);
  CHECK(one.outliers == three.outliers);

  // No gradients, or all-zero gradients: unit weights, the same result either way.
  const KeyRangeFit none = fisher_key_ranges(d.kv, {}, 0.005);
  for (auto& g : d.g) std::fill(g.begin(), g.end(), 0.0f);
  d.views();
  const KeyRangeFit zero = fisher_key_ranges(d.kv, d.gv, 0.005);
  CHECK_FALSE(none.weighted);
  CHECK_FALSE(zero.weighted);
  CHECK(none.lo == zero.lo);
  CHECK(none.hi == zero.hi);

  // Tail fraction 0: no outliers, the full min/max.
  const KeyRangeFit full = fisher_key_ranges(d.kv, d.gv, 0.0);
  for (int c = 0; c < d.cols; ++c) {
    const std::vector<float> v = column(d, c);
    CHECK(full.lo[c] == v.front());
    CHECK(full.hi[c] == v.back());
    CHECK(full.outliers[c] == 0);
  }

  CHECK_THROWS_AS(fisher_key_ranges({}, {}, 0.005), InvalidArgument);
  std::vector<RowsView> one_grad{d.gv[0]};
  CHECK_THROWS_AS(fisher_key_ranges(d.kv, one_grad, 0.005), InvalidArgument);
}
