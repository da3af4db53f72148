// Weighted one-dimensional k-means: what fits KVQuant's non-uniform (NUQ) signposts.
// KVQuant minimises sum_i F_i (A_i - Q(A_i))^2 over 2^b signposts with scikit-learn's
// Lloyd (k-means++ seeding), which only finds a local optimum. In one dimension the
// optimal clusters are contiguous intervals of the sorted points, so the global optimum
// is a dynamic program over a sorted sequence (Bellman 1973; Wang & Song, Ckmeans.1d.dp,
// 2011). We run that program on a fine weighted histogram of the points (each bin keeps
// the exact weight, weighted sum and weighted sum of squares of its points, so the DP
// cost of a partition at bin boundaries IS its cost on the raw points), then polish with
// Lloyd on the raw points, which can only lower the cost further.
//
// Goals: the exact solver's cost on the raw points is <= the best of 10 k-means++ Lloyd
// runs (tested on random and adversarial data); results are bit-identical for the same
// inputs on any thread count (fixed-size chunks, partial sums added in chunk order).
// Non-goals: more than one dimension; k above a few hundred (the DP is O(k B log B));
// more than 2^32 points.
//
// Points with weight 0 take part in nothing. NaN/Inf points or negative/NaN weights,
// k < 1, or a zero total weight throw kvq::InvalidArgument.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "calib/rng.h"

namespace kvq::calib {

struct KMeans1D {
  std::vector<double> centroids;  // ascending, exactly k entries (see exact_kmeans)
  double cost = 0.0;              // sum_i w_i (x_i - nearest centroid)^2 on the raw points
  int iterations = 0;             // Lloyd iterations run (0 for a pure DP result)
};

// Points x with weights w; w empty means every weight is 1.
struct WeightedPoints {
  std::span<const float> x;
  std::span<const float> w;
  double weight(size_t i) const { return w.empty() ? 1.0 : static_cast<double>(w[i]); }
};

// Throws InvalidArgument unless every x is finite, every w finite and >= 0, w.size() is
// 0 or x.size(), and the total weight is > 0. Returns the total weight.
double validate_points(const WeightedPoints& p);

// sum_i w_i (x_i - c(x_i))^2 with c(x) the nearest centroid (centroids need not be sorted).
double kmeans_cost(const WeightedPoints& p, std::span<const double> centroids);

// k-means++ seeding (Arthur & Vassilvitskii 2007) with weights: the first centre is drawn
// with probability proportional to w_i, each next one proportional to w_i D(x_i)^2.
// Returns min(k, number of distinct positive-weight points) centres, ascending.
std::vector<double> kmeans_plus_plus(const WeightedPoints& p, int k, SplitMix64& rng);

struct LloydOptions {
  int max_iterations = 300;
  // When set, receives the cost after every iteration (index 0 = the initial centroids).
  std::vector<double>* cost_trace = nullptr;
};

// Lloyd from `init`: assign each point to its nearest centroid, move each centroid to the
// weighted mean of its points (an empty cluster keeps its centroid), until no centroid
// moves or max_iterations. The cost never increases (each step minimises it over one of
// the two variables with the other fixed).
KMeans1D lloyd(const WeightedPoints& p, std::vector<double> init, const LloydOptions& opt = {});

// The best (lowest cost) of `restarts` k-means++ + Lloyd runs with seeds derived from
// `seed`: what scikit-learn's KMeans(n_init=restarts) does.
KMeans1D kmeans_plus_plus_lloyd(const WeightedPoints& p, int k, uint64_t seed, int restarts,
                                const LloydOptions& opt = {});

// Per bin, ascending in x, only bins that hold positive weight.
struct WeightedHistogram {
  std::vector<double> weight;  // sum w_i
  std::vector<double> sum;     // sum w_i x_i
  std::vector<double> sum_sq;  // sum w_i x_i^2
  bool exact = false;          // true when every bin holds a single distinct value
};

// When the points have at most max_bins distinct values, one bin per distinct value
// (exact). Otherwise the bin edges are the union of max_bins/2 equal-width bins over
// [min, max] and max_bins/2 quantile bins of a fixed strided sample (sorted): equal width
// alone collapses data whose range is stretched by a few far points into one bin;
// quantiles alone starve sparse tails. Either way at most max_bins bins.
WeightedHistogram build_histogram(const WeightedPoints& p, int max_bins);

// The k-cluster partition of the bins into contiguous runs that minimises the summed
// within-cluster weighted squared error, by dynamic programming with the
// divide-and-conquer optimisation (the optimal split point is monotone because the 1-D
// cluster cost satisfies the quadrangle inequality). O(k B log B) time, O(k B) memory.
// Centroids are the weighted means of the runs; cost is the DP optimum (equal to the cost
// on the raw points of the bin partition). When there are fewer bins than k, the last
// centroid is repeated so that exactly k are returned (the cost is unchanged).
KMeans1D optimal_kmeans_histogram(const WeightedHistogram& h, int k);

struct ExactOptions {
  int max_bins = 1 << 16;
  int polish_iterations = 300;
};

// build_histogram + optimal_kmeans_histogram + Lloyd polish on the raw points.
// The result's cost is on the raw points. Same as ExactKMeans(p, opt).solve(k).
KMeans1D exact_kmeans(const WeightedPoints& p, int k, const ExactOptions& opt = {});

// exact_kmeans for several k on the same points: the points are validated and binned
// once (the histogram does not depend on k), with the points of each bin listed once
// (bin-major, ascending index) for the coarse-to-fine refinement, which then reads only
// the points of the bins it refines instead of scanning all points per round. Why: NUQ
// signposts are fitted for 2, 3 and 4 bits on the same points, and rebuilding the
// histogram per bit width was ~30% of kvq-calibrate (profile in docs/results.md, "Calibration").
// solve() is const and touches no shared mutable state, so several k may be solved on
// different threads at once; results are bit-identical to exact_kmeans. The points are
// not copied: p's arrays must outlive the object.
class ExactKMeans {
 public:
  explicit ExactKMeans(const WeightedPoints& p, const ExactOptions& opt = {});
  KMeans1D solve(int k) const;
  const WeightedHistogram& histogram() const { return h_; }

 private:
  WeightedPoints p_;
  ExactOptions opt_;
  WeightedHistogram h_;
  // Binned path only: the points of bin f are bin_points_[bin_begin_[f] .. bin_begin_[f+1]).
  std::vector<int64_t> bin_begin_;
  std::vector<uint32_t> bin_points_;
};

}  // namespace kvq::calib
