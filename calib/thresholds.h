// Percentile thresholds for KVQuant's dense-and-sparse outliers, per-channel ranges, and
// attention-sink exclusion. Everything here is an exact order statistic (nth_element), not
// an interpolated percentile: KVQuant's promise is "about 1% of values stored sparse",
// and an exact rank lets the tests check the count to the element.
//
// Definitions (n values, tail fraction p, m = floor(p * n)):
//   lo = the value of ascending rank m, hi = the value of ascending rank n-1-m.
//   A value is a low outlier when x < lo, a high outlier when x > hi. With distinct
//   values exactly m are below lo and exactly m above hi; ties at the threshold stay
//   dense (so at most m per tail). floor, not round: the outlier budget is a maximum.
// Default: 1% outliers in total, 0.5% per tail (METHODS.md, KVQuant 5).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace kvq::calib {

struct OutlierSpec {
  double total_fraction = 0.01;  // both tails together
  double tail_fraction() const { return total_fraction / 2; }
};

// Parses "1%", "0.5%" or a plain fraction "0.01"; throws InvalidArgument (where = flag)
// for anything outside [0, 1) or unparsable.
OutlierSpec parse_outlier_spec(const std::string& text, const std::string& flag = "--outliers");

// The value of ascending rank `rank` (0-based) of v. v is reordered (nth_element).
float order_statistic(std::span<float> v, int64_t rank);

struct TailThresholds {
  float lo = 0.0f, hi = 0.0f;
  int64_t tail_count = 0;  // m = floor(p * n)
};

// lo/hi as defined above; v is reordered. Throws InvalidArgument on empty input or NaN.
TailThresholds tail_thresholds(std::span<float> v, double tail_fraction);

// Weighted quantile: the smallest x_i such that the weight of {x_j <= x_i} >= q * W
// (q in [0, 1]; q = 0 gives the smallest positive-weight point). Points are not modified.
double weighted_quantile(std::span<const float> x, std::span<const float> w, double q);

// Per-channel statistics of a [tokens, channels] matrix over rows >= sink (the first
// `sink` rows of each sequence are attention-sink tokens: KVQuant keeps them in fp16 and
// leaves them out of calibration). Rows of several sequences are given as one matrix per
// sequence.
struct RowsView {
  const float* data = nullptr;  // rows * cols floats, row-major, contiguous
  int64_t rows = 0;
  int cols = 0;
};
struct ChannelThresholds {
  std::vector<float> min, max;  // over all non-sink rows
  std::vector<float> lo, hi;    // tail thresholds per channel
  int64_t tail_count = 0;       // per channel and tail
  int64_t rows = 0;             // non-sink rows seen
};
ChannelThresholds per_channel_thresholds(std::span<const RowsView> seqs, int sink,
                                         double tail_fraction);

// m = floor(p * n) as tail_thresholds counts it (at most (n-1)/2).
int64_t tail_count(int64_t n, double tail_fraction);

// Writes v[r] = the value of ascending rank r for every r in `ranks` (ascending, distinct,
// each in [0, v.size())); v is reordered. One nth_element per rank, each on the part of v
// that the previous ones left between two selected ranks (middle rank first), so a handful
// of ranks costs a few passes over v instead of one full pass per rank.
void select_ranks(std::span<float> v, std::span<const int64_t> ranks);

// Everything kvq-calibrate needs of one kind per channel in one pass over the data: the
// min/max and the tail thresholds for several tail fractions at once (each column is
// gathered once, blocked over 16 columns so that every row's cache line is read once,
// and its order statistics come from one select_ranks). lo[f][c], hi[f][c] equal
// per_channel_thresholds(seqs, sink, tail_fractions[f]).lo/hi[c] exactly.
struct ChannelOrderStats {
  std::vector<float> min, max;              // [cols]
  std::vector<std::vector<float>> lo, hi;   // [fractions][cols]
  std::vector<int64_t> tail_count;          // per fraction
  int64_t rows = 0;                         // non-sink rows seen
};
ChannelOrderStats per_channel_order_stats(std::span<const RowsView> seqs, int sink,
                                          std::span<const double> tail_fractions);

}  // namespace kvq::calib
