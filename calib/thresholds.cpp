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
  t.tail_count = tail_count(n, tail_fraction);
  t.lo = order_statistic(v, t.tail_count);
  t.hi = order_statistic(v, n - 1 - t.tail_count);
  return t;
}

int64_t tail_count(int64_t n, double tail_fraction) {
  // floor(p * n) computed so that e.g. 0.005 * 200 = 1 exactly despite 0.005 being
  // inexact in binary: the tiny relative slack covers the representation error only.
  const int64_t m = static_cast<int64_t>(std::floor(tail_fraction * static_cast<double>(n) *
                                                    (1.0 + 4 * 0x1.0p-53)));
  return std::min(m, (n - 1) / 2);
}

void select_ranks(std::span<float> v, std::span<const int64_t> ranks) {
  const int64_t n = static_cast<int64_t>(v.size());
  for (size_t i = 0; i < ranks.size(); ++i) {
    if (ranks[i] < 0 || ranks[i] >= n || (i > 0 && ranks[i] <= ranks[i - 1])) {
      throw InvalidArgument("order statistic", "ranks must be ascending, distinct and within the " +
                                                   std::to_string(n) + " values");
    }
  }
  // Frames: select ranks[a, b) within v[lo, hi). After nth_element at the middle rank r,
  // v[lo, r) <= v[r] <= v(r, hi), so the ranks on either side are found in those parts.
  struct Frame { size_t a, b; int64_t lo, hi; };
  std::vector<Frame> stack{{0, ranks.size(), 0, n}};
  while (!stack.empty()) {
    const Frame f = stack.back();
    stack.pop_back();
    if (f.a >= f.b) continue;
    const size_t m = f.a + (f.b - f.a) / 2;
    const int64_t r = ranks[m];
    std::nth_element(v.begin() + f.lo, v.begin() + r, v.begin() + f.hi);
    stack.push_back({f.a, m, f.lo, r});
    stack.push_back({m + 1, f.b, r + 1, f.hi});
  }
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
  const double f[1] = {tail_fraction};
  ChannelOrderStats st = per_channel_order_stats(seqs, sink, f);
  ChannelThresholds out;
  out.min = std::move(st.min);
  out.max = std::move(st.max);
  out.lo = std::move(st.lo[0]);
  out.hi = std::move(st.hi[0]);
  out.tail_count = st.tail_count[0];
  out.rows = st.rows;
  return out;
}

ChannelOrderStats per_channel_order_stats(std::span<const RowsView> seqs, int sink,
                                          std::span<const double> tail_fractions) {
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
  for (double tf : tail_fractions) {
    if (!(tf >= 0.0 && tf < 0.5)) {
      throw InvalidArgument("thresholds", "tail fraction " + std::to_string(tf) + " outside [0, 0.5)");
    }
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
  ChannelOrderStats out;
  out.rows = rows;
  out.min.resize(cols);
  out.max.resize(cols);
  std::vector<int64_t> ranks;
  for (double tf : tail_fractions) {
    const int64_t m = tail_count(rows, tf);
    out.tail_count.push_back(m);
    out.lo.emplace_back(cols);
    out.hi.emplace_back(cols);
    ranks.push_back(m);
    ranks.push_back(rows - 1 - m);
  }
  std::sort(ranks.begin(), ranks.end());
  ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
  // Columns in blocks of kBlock: the gather reads each row's kBlock consecutive floats
  // (one 64-byte line) once, instead of one strided pass over all rows per column.
  constexpr int kBlock = 16;
  const int nblocks = (cols + kBlock - 1) / kBlock;
#pragma omp parallel if (rows * cols >= (int64_t{1} << 16))
  {
    std::vector<float> buf(static_cast<size_t>(kBlock) * rows);
#pragma omp for schedule(static)
    for (int blk = 0; blk < nblocks; ++blk) {
      const int c0 = blk * kBlock, nc = std::min(kBlock, cols - c0);
      int64_t r = 0;
      for (const RowsView& s : seqs) {
        for (int64_t t = sink; t < s.rows; ++t, ++r) {
          const float* row = s.data + t * cols + c0;
          for (int j = 0; j < nc; ++j) buf[static_cast<size_t>(j) * rows + r] = row[j];
        }
      }
      for (int j = 0; j < nc; ++j) {
        const std::span<float> col(buf.data() + static_cast<size_t>(j) * rows, static_cast<size_t>(rows));
        const auto [mn, mx] = std::minmax_element(col.begin(), col.end());
        out.min[c0 + j] = *mn;
        out.max[c0 + j] = *mx;
        select_ranks(col, ranks);
        for (size_t f = 0; f < tail_fractions.size(); ++f) {
          out.lo[f][c0 + j] = col[static_cast<size_t>(out.tail_count[f])];
          out.hi[f][c0 + j] = col[static_cast<size_t>(rows - 1 - out.tail_count[f])];
        }
      }
    }
  }
  return out;
}

}  // namespace kvq::calib
