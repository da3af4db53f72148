// Fisher-weighted allocation of KVQuant's key outlier budget (see key_ranges.h).
#include "calib/key_ranges.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <utility>

#include "formats/error.h"

namespace kvq::calib {

namespace {

constexpr int kGrid = 16;     // candidate counts j * q / 4, j = 0..kGrid
constexpr int kUniform = 4;   // j of the uniform share q = 2 floor(p n)

struct Channel {
  double weight = 0;                            // W_c
  int64_t count[kGrid + 1] = {};                // outliers allowed at grid point j
  float lo[kGrid + 1] = {}, hi[kGrid + 1] = {};  // shortest interval leaving count[j] out
  double cost(int j) const {
    const double r = static_cast<double>(hi[j]) - lo[j];
    return weight * r * r;
  }
};

// Sorted values (ascending; ties in any order) and the channel's summed weight.
void fit_channel(std::vector<float>& v, double weight, double tail_fraction, Channel& ch) {
  std::sort(v.begin(), v.end());
  const int64_t n = static_cast<int64_t>(v.size());
  const int64_t q = 2 * tail_count(n, tail_fraction);
  ch.weight = weight;
  for (int j = 0; j <= kGrid; ++j) {
    // At most n - 1 points out (one stays dense).
    const int64_t m = std::min<int64_t>(n - 1, j * q / kUniform);
    ch.count[j] = m;
    // Shortest [v[a], v[n-1-(m-a)]] over a = 0..m; the first (lowest a) on ties.
    int64_t best_a = 0;
    float best = std::numeric_limits<float>::infinity();
    for (int64_t a = 0; a <= m; ++a) {
      const float w = v[static_cast<size_t>(n - 1 - (m - a))] - v[static_cast<size_t>(a)];
      if (w < best) {
        best = w;
        best_a = a;
      }
    }
    ch.lo[j] = v[static_cast<size_t>(best_a)];
    ch.hi[j] = v[static_cast<size_t>(n - 1 - (m - best_a))];
  }
}

// Each channel's grid point minimising cost + lambda * count (the lowest j on ties).
int64_t pick(const std::vector<Channel>& chs, double lambda, std::vector<int>& j_out) {
  int64_t used = 0;
  for (size_t c = 0; c < chs.size(); ++c) {
    int bj = 0;
    double bv = std::numeric_limits<double>::infinity();
    for (int j = 0; j <= kGrid; ++j) {
      const double v = chs[c].cost(j) + lambda * static_cast<double>(chs[c].count[j]);
      if (v < bv) {
        bv = v;
        bj = j;
      }
    }
    j_out[c] = bj;
    used += chs[c].count[bj];
  }
  return used;
}

}  // namespace

KeyRangeFit fisher_key_ranges(std::span<const RowsView> keys, std::span<const RowsView> grads,
                              double tail_fraction) {
  if (keys.empty()) throw InvalidArgument("key ranges", "no calibration rows");
  if (!grads.empty() && grads.size() != keys.size()) {
    throw InvalidArgument("key ranges", "gradients for " + std::to_string(grads.size()) + " of " +
                                            std::to_string(keys.size()) + " sequences");
  }
  const int cols = keys[0].cols;
  int64_t rows = 0;
  for (size_t i = 0; i < keys.size(); ++i) {
    if (keys[i].cols != cols || (!grads.empty() && (grads[i].cols != cols || grads[i].rows != keys[i].rows))) {
      throw InvalidArgument("key ranges", "sequence " + std::to_string(i) + " has another shape");
    }
    rows += keys[i].rows;
  }
  if (rows == 0 || cols <= 0) throw InvalidArgument("key ranges", "no calibration rows");

  // Summed Fisher weight per channel (double, rows in order).
  std::vector<double> weight(static_cast<size_t>(cols), 0.0);
  if (!grads.empty()) {
    for (const RowsView& g : grads)
      for (int64_t t = 0; t < g.rows; ++t)
        for (int c = 0; c < cols; ++c) {
          const double x = g.data[t * cols + c];
          weight[static_cast<size_t>(c)] += x * x;
        }
  }
  KeyRangeFit fit;
  fit.weighted = std::any_of(weight.begin(), weight.end(), [](double w) { return w > 0.0; });
  if (!fit.weighted) std::fill(weight.begin(), weight.end(), 1.0);

  std::vector<Channel> chs(static_cast<size_t>(cols));
#pragma omp parallel
  {
    std::vector<float> v;
#pragma omp for schedule(static)
    for (int c = 0; c < cols; ++c) {
      v.clear();
      v.reserve(static_cast<size_t>(rows));
      for (const RowsView& k : keys)
        for (int64_t t = 0; t < k.rows; ++t) v.push_back(k.data[t * cols + c]);
      fit_channel(v, weight[static_cast<size_t>(c)], tail_fraction, chs[static_cast<size_t>(c)]);
    }
  }
  for (const Channel& ch : chs) {
    fit.budget += ch.count[kUniform];
    fit.uniform_cost += ch.cost(kUniform);
  }

  // Bisection on lambda (geometric): pick(lambda) uses fewer outliers as lambda grows.
  // lambda_hi = the largest cost: every channel then takes j = 0 (unless free).
  std::vector<int> j_lo(chs.size()), j_hi(chs.size());
  double hi_l = 1.0;
  for (const Channel& ch : chs) hi_l = std::max(hi_l, ch.cost(0));
  double lo_l = hi_l * 1e-30;
  int64_t used_hi = pick(chs, hi_l, j_hi);
  if (pick(chs, lo_l, j_lo) <= fit.budget) {
    j_hi = j_lo;  // even the cheapest outliers fit: take the smallest lambda
    used_hi = fit.budget;
  } else {
    for (int it = 0; it < 200 && hi_l / lo_l > 1.0 + 1e-9; ++it) {
      const double mid = std::sqrt(lo_l * hi_l);
      std::vector<int> j_mid(chs.size());
      if (pick(chs, mid, j_mid) > fit.budget) {
        lo_l = mid;
      } else {
        hi_l = mid;
        j_hi = std::move(j_mid);
      }
    }
  }
  (void)used_hi;
  double cost = 0;
  for (size_t c = 0; c < chs.size(); ++c) cost += chs[c].cost(j_hi[c]);
  fit.allocated = cost < fit.uniform_cost;
  fit.cost = fit.allocated ? cost : fit.uniform_cost;
  fit.lo.resize(chs.size());
  fit.hi.resize(chs.size());
  for (size_t c = 0; c < chs.size(); ++c) {
    const int j = fit.allocated ? j_hi[c] : kUniform;
    fit.lo[c] = chs[c].lo[j];
    fit.hi[c] = chs[c].hi[j];
  }
  // Outliers on the calibration rows (ties at a threshold stay dense, so <= the count).
  fit.outliers.assign(chs.size(), 0);
  for (const RowsView& k : keys)
    for (int64_t t = 0; t < k.rows; ++t)
      for (int c = 0; c < cols; ++c) {
        const float x = k.data[t * cols + c];
        if (x < fit.lo[static_cast<size_t>(c)] || x > fit.hi[static_cast<size_t>(c)]) ++fit.outliers[static_cast<size_t>(c)];
      }
  return fit;
}

}  // namespace kvq::calib
