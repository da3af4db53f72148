// Exact order-statistic thresholds; see thresholds.h for the definitions.
#include "calib/thresholds.h"

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <numeric>

#include "formats/error.h"

namespace kvq::calib {

OutlierSpec parse_outlier_spec(const std::string& text, const std::string& flag) {
  std::string t = text;
  bool percent = false;
  if (!t.empty() && t.back() == '%') {
    percent = true;
    t.pop_back();
  }
  char* end = nullptr;
  const double v = t.empty() ? std::nan("") : std::strtod(t.c_str(), &end);
  if (t.empty() || end != t.c_str() + t.size() || !std::isfinite(v)) {
    throw InvalidArgument(flag, "cannot parse '" + text + "' as a fraction",
                          "write a percentage like 1% or a fraction like 0.01");
  }
  const double f = percent ? v / 100.0 : v;
  if (f < 0.0 || f >= 1.0) {
    throw InvalidArgument(flag, "'" + text + "' is outside [0%, 100%)");
  }
  return OutlierSpec{f};
}

float order_statistic(std::span<float> v, int64_t rank) {
  if (rank < 0 || rank >= static_cast<int64_t>(v.size())) {
    throw InvalidArgument("order statistic", "rank " + std::to_string(rank) + " of " +
                                                 std::to_string(v.size()) + " values");
  }
  std::nth_element(v.begin(), v.begin() + rank, v.end());
  return v[static_cast<size_t>(rank)];
}

TailThresholds tail_thresholds(std::span<float> v, double tail_fraction) {
  const int64_t n = static_cast<int64_t>(v.size());
  if (n == 0) throw InvalidArgument("thresholds", "no values");
  if (!(tail_fraction >= 0.0 && tail_fraction < 0.5)) {
    throw InvalidArgument("thresholds", "tail fraction " + std::to_string(tail_fraction) +
                                            " outside [0, 0.5)");
  }
  for (int64_t i = 0; i < n; ++i) {
    if (std::isnan(v[static_cast<size_t>(i)])) {
      throw InvalidArgument("thresholds", "value " + std::to_string(i) + " is NaN");
    }
  }
  TailThresholds t;
  // floor(p * n) computed so that e.g. 0.005 * 200 = 1 exactly despite 0.005 being
  // inexact in binary: the tiny relative slack covers the representation error only.
  t.tail_count = static_cast<int64_t>(std::floor(tail_fraction * static_cast<double>(n) *
                                                 (1.0 + 4 * 0x1.0p-53)));
  t.tail_count = std::min(t.tail_count, (n - 1) / 2);
  t.lo = order_statistic(v, t.tail_count);
  t.hi = order_statistic(v, n - 1 - t.tail_count);
  return t;
}

double weighted_quantile(std::span<const float> x, std::span<const float> w, double q) {
  if (x.size() != w.size()) {
    throw InvalidArgument("weighted quantile", std::to_string(x.size()) + " values but " +
                                                   std::to_string(w.size()) + " weights");
  }
  if (!(q >= 0.0 && q <= 1.0)) throw InvalidArgument("weighted quantile", "q outside [0, 1]");
  std::vector<size_t> order;
  order.reserve(x.size());
  double total = 0.0;
  for (size_t i = 0; i < x.size(); ++i) {
    if (std::isnan(x[i]) || !(w[i] >= 0.0f) || !std::isfinite(w[i])) {
      throw InvalidArgument("weighted quantile", "entry " + std::to_string(i) +
                                                     " has a NaN value or a bad weight");
    }
    if (w[i] > 0.0f) {
      order.push_back(i);
      total += w[i];
    }
  }
  if (order.empty()) throw InvalidArgument("weighted quantile", "zero total weight");
  std::sort(order.begin(), order.end(), [&](size_t a, size_t b) {
    return x[a] < x[b] || (x[a] == x[b] && a < b);
  });
  const double target = q * total;
  double acc = 0.0;
  for (size_t i : order) {
    acc += w[i];
    if (acc >= target) return x[i];
  }
  return x[order.back()];
}

ChannelThresholds per_channel_thresholds(std::span<const RowsView> seqs, int sink,
                                         double tail_fraction) {
  if (sink < 0) throw InvalidArgument("--sink", "negative sink token count");
  if (seqs.empty()) throw InvalidArgument("thresholds", "no sequences");
  const int cols = seqs[0].cols;
  int64_t rows = 0;
  for (const RowsView& s : seqs) {
    if (s.cols != cols) throw InvalidArgument("thresholds", "sequences with different widths");
    rows += std::max<int64_t>(0, s.rows - sink);
  }
  if (rows == 0) {
    throw InvalidArgument("thresholds", "no tokens left after excluding " +
                                            std::to_string(sink) + " sink token(s) per sequence");
  }
  if (!(tail_fraction >= 0.0 && tail_fraction < 0.5)) {
    throw InvalidArgument("thresholds", "tail fraction " + std::to_string(tail_fraction) +
                                            " outside [0, 0.5)");
  }
  // NaN check up front: nothing may throw inside the parallel region below.
  for (size_t si = 0; si < seqs.size(); ++si) {
    const RowsView& s = seqs[si];
    for (int64_t i = 0; i < s.rows * cols; ++i) {
      if (std::isnan(s.data[i])) {
        throw InvalidArgument("thresholds", "sequence " + std::to_string(si) + ", row " +
                                                std::to_string(i / cols) + ", channel " +
                                                std::to_string(i % cols) + " is NaN");
      }
    }
  }
  ChannelThresholds out;
  out.rows = rows;
  out.min.resize(cols);
  out.max.resize(cols);
  out.lo.resize(cols);
  out.hi.resize(cols);
  std::vector<int64_t> tail(cols, 0);
#pragma omp parallel if (rows * cols >= (int64_t{1} << 16))
  {
    std::vector<float> col(rows);
#pragma omp for schedule(static)
    for (int c = 0; c < cols; ++c) {
      int64_t r = 0;
      for (const RowsView& s : seqs) {
        for (int64_t t = sink; t < s.rows; ++t) col[r++] = s.data[t * cols + c];
      }
      const auto [mn, mx] = std::minmax_element(col.begin(), col.end());
      out.min[c] = *mn;
      out.max[c] = *mx;
      const TailThresholds th = tail_thresholds(col, tail_fraction);
      out.lo[c] = th.lo;
      out.hi[c] = th.hi;
      tail[c] = th.tail_count;
    }
  }
  out.tail_count = tail[0];
  return out;
}

}  // namespace kvq::calib
