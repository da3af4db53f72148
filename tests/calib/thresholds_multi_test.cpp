// select_ranks and per_channel_order_stats (one gather and one multi-rank selection per
// channel for every fraction) against the one-rank-at-a-time definitions: equal values,
// on awkward sizes, ties, signed zeros absent, sink rows excluded.
#include <algorithm>
#include <cmath>
#include <vector>

#include "calib/rng.h"
#include "calib/thresholds.h"
#include "formats/error.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::calib;

TEST_CASE("select_ranks puts every asked rank's order statistic in place", "[thresholds]") {
  const uint64_t seed = kvq_test::test_seed(72);
  SplitMix64 r(seed);
  for (int n : {1, 2, 3, 7, 127, 129, 4097}) {
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = static_cast<float>(std::floor(r.uniform() * 50.0) - 25.0);  // many ties
    std::vector<float> sorted = v;
    std::sort(sorted.begin(), sorted.end());
    std::vector<int64_t> ranks;
    for (int64_t i = 0; i < n; ++i) {
      if (i == 0 || i == n - 1 || r.uniform() < 0.05) ranks.push_back(i);
    }
    std::vector<float> w = v;
    select_ranks(w, ranks);
    for (int64_t k : ranks) CHECK(w[static_cast<size_t>(k)] == sorted[static_cast<size_t>(k)]);
    std::sort(w.begin(), w.end());
    CHECK(w == sorted);  // a permutation of the input
  }
  std::vector<float> v{3, 1, 2};
  const int64_t bad1[] = {1, 1};
  const int64_t bad2[] = {0, 3};
  CHECK_THROWS_AS(select_ranks(v, bad1), InvalidArgument);
  CHECK_THROWS_AS(select_ranks(v, bad2), InvalidArgument);
}

TEST_CASE("per_channel_order_stats equals per_channel_thresholds for every fraction",
          "[thresholds]") {
  const uint64_t seed = kvq_test::test_seed(73);
  SplitMix64 r(seed);
  const double tails[] = {0.0005, 0.0025, 0.005, 0.01, 0.025, 0.0};
  for (int cols : {1, 17, 33}) {
    for (int sink : {0, 1}) {
      std::vector<std::vector<float>> seqs;
      std::vector<RowsView> views;
      for (int64_t rows : {129, 3, 401}) {
        std::vector<float> m(static_cast<size_t>(rows * cols));
        for (float& x : m) {
          x = static_cast<float>(r.uniform() * 2 - 1);
          if (r.uniform() < 0.2) x = std::round(x * 4.0f) / 4.0f;  // ties
        }
        for (int c = 0; c < cols; ++c) m[static_cast<size_t>(c)] = 1000.0f;
        seqs.push_back(std::move(m));
      }
      const int64_t rows_list[3] = {129, 3, 401};
      for (int i = 0; i < 3; ++i) views.push_back({seqs[static_cast<size_t>(i)].data(), rows_list[i], cols});
      const ChannelOrderStats st = per_channel_order_stats(views, sink, tails);
      REQUIRE(st.lo.size() == std::size(tails));
      for (size_t f = 0; f < std::size(tails); ++f) {
        const ChannelThresholds t = per_channel_thresholds(views, sink, tails[f]);
        CHECK(st.rows == t.rows);
        CHECK(st.tail_count[f] == t.tail_count);
        CHECK(st.lo[f] == t.lo);
        CHECK(st.hi[f] == t.hi);
        CHECK(st.min == t.min);
        CHECK(st.max == t.max);
        // And against a plain sort of each column.
        for (int c = 0; c < cols; ++c) {
          std::vector<float> col;
          for (int i = 0; i < 3; ++i) {
            for (int64_t row = sink; row < rows_list[i]; ++row) col.push_back(seqs[static_cast<size_t>(i)][static_cast<size_t>(row * cols + c)]);
          }
          std::sort(col.begin(), col.end());
          const int64_t m = tail_count(static_cast<int64_t>(col.size()), tails[f]);
          CHECK(st.lo[f][static_cast<size_t>(c)] == col[static_cast<size_t>(m)]);
          CHECK(st.hi[f][static_cast<size_t>(c)] == col[col.size() - 1 - static_cast<size_t>(m)]);
          CHECK(st.min[static_cast<size_t>(c)] == col.front());
          CHECK(st.max[static_cast<size_t>(c)] == col.back());
        }
      }
      const ChannelOrderStats none = per_channel_order_stats(views, sink, {});
      CHECK(none.lo.empty());
      CHECK(none.min == st.min);
    }
  }
  const double bad[] = {0.5};
  std::vector<float> m(6, 0.0f);
  const RowsView one[] = {{m.data(), 3, 2}};
  CHECK_THROWS_AS(per_channel_order_stats(one, 0, bad), InvalidArgument);
}
