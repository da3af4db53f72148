// KVQuant's NUQ signposts and Q-Norm, from calibration activations and their Fisher
// information. The normalisation follows what lib/codecs/kvquant.cpp does at run time, so
// the signposts are fitted on the distribution the codec will quantize:
//   keys (pre-RoPE): per channel c, static range [lo_c, hi_c] (the calibration's
//     thresholds of the fit fraction, calib/key_ranges.h); dense points
//     u = (x - mid) * (1 / half) with mid = (lo+hi)/2, half = (hi-lo)/2 in fp32 (the
//     codec's float reciprocal); x outside [lo_c, hi_c] is an outlier and not a point.
//   values: per token and head, the k = round_half_even(f * head_dim) entries of largest
//     |x| (ties: lower channel first) are outliers; mid/half from the rest, rounded to
//     fp16 as the codec stores them, then the same reciprocal.
// Each point is weighted by its Fisher information F = (dL/dx)^2 from the same sequence
// (KVQuant weights every activation by its own squared gradient); sink tokens are not
// given to these functions at all. Channels/vectors with half == 0 give no points.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "calib/kmeans1d.h"

namespace kvq::calib {

// Appends the dense key points of rows [rows, dim] (row-major) and their weights g^2.
// grad may be nullptr (unit weights).
void append_key_points(const float* k, const float* grad, int64_t rows, int dim,
                       const std::vector<float>& lo, const std::vector<float>& hi,
                       std::vector<float>& u, std::vector<float>& w);

// round_half_even(f * head_dim), as the codec counts value outliers per token and head.
int value_outliers_per_head(double fraction, int head_dim);

// Appends the dense value points of rows [rows, dim] (dim = heads * head_dim).
void append_value_points(const float* v, const float* grad, int64_t rows, int dim, int head_dim,
                         double fraction, std::vector<float>& u, std::vector<float>& w);

// 2^bits signposts from Fisher-weighted exact k-means (calib/kmeans1d.h) over the points,
// as floats, strictly increasing, within [-1, 1]. When the points have fewer distinct
// values than 2^bits (or k-means gives centroids that round to the same float), the
// repeated ones are moved to the neighbouring floats so that a LUT stays strictly
// increasing (the codec requires it); their cells are then empty, which costs nothing.
// All-zero weights (no gradient reached these points) fall back to unit weights.
// Throws InvalidArgument when there are no points.
struct SignpostFit {
  std::vector<float> signposts;
  double cost = 0.0;        // weighted k-means cost on the points
  bool weighted = true;     // false when the unit-weight fallback was used
};
SignpostFit fit_signposts(const std::vector<float>& u, const std::vector<float>& w, int bits);

// fit_signposts for several bit widths on the same points: the points are validated and
// binned once (calib/kmeans1d.h ExactKMeans) and each fit(bits) reuses them. fit() is
// const and may run on several threads at once; fit(b) is bit-identical to
// fit_signposts(u, w, b). u and w are not copied and must outlive the object.
class SignpostFitter {
 public:
  SignpostFitter(const std::vector<float>& u, const std::vector<float>& w);
  SignpostFit fit(int bits) const;

 private:
  bool weighted_ = true;
  std::unique_ptr<ExactKMeans> km_;
};

// Robust k-means weights (docs/calibrate.md, "Robust signpost weights"). KVQuant weights
// each point by its own diagonal Fisher information F = g^2, a heavy-tailed estimate from
// few sequences: a handful of high-gradient points can pull a signpost, and the fit is
// optimal for the calibration text's distribution only. Two guards, both off by default
// (the defaults reproduce KVQuant's fit bit for bit):
//   clip_quantile q < 1: every weight above the q-quantile of the positive weights is
//     set to that quantile (winsorised F);
//   uniform_mix eps > 0: the k-means sees (1 - eps) P_F + eps U[-1, 1] instead of P_F
//     (Huber's eps-contamination: the expected distortion stays bounded when the
//     evaluated text puts mass where the calibration text had little).
struct SignpostWeighting {
  double clip_quantile = 1.0;  // in (0, 1]; 1: no clipping
  double uniform_mix = 0.0;    // in [0, 1)
  bool is_default() const { return clip_quantile >= 1.0 && uniform_mix <= 0.0; }
  bool operator==(const SignpostWeighting&) const = default;
};

// InvalidArgument (naming `where`) unless 0 < clip_quantile <= 1 and 0 <= uniform_mix < 1.
void check_weighting(const SignpostWeighting& o, const char* where);

// Clips w in place at the q-quantile of its positive entries (the order statistic of
// rank floor(q (n - 1)) among the n positive weights; exact, so deterministic) and
// returns that threshold; q >= 1 or no positive weight: w unchanged, +inf.
float clip_weights(std::vector<float>& w, double q);

// Number of evenly spaced points that carry the uniform share (kUniformMixPoints,
// u_j = -1 + (2 j + 1) / M, exact in float): dense enough that the k-means of the uniform
// part alone lands within 1/M of the continuous optimum at 8 bits.
inline constexpr int kUniformMixPoints = 4096;

// Appends the uniform share: M points u_j, each with weight eps / (1 - eps) * W / M where
// W is the total weight already in w (summed in index order in double), so that the points
// then hold the mixture (1 - eps) P_F + eps U. When W == 0 (no gradient reached these
// points) every existing weight is first set to 1, as fit_signposts' fallback would do.
// eps == 0 or no points in u: nothing appended.
void append_uniform_mix(std::vector<float>& u, std::vector<float>& w, double eps);

// clip_weights then append_uniform_mix, as kvq-calibrate applies them to each layer's key
// and value points before the k-means.
void apply_weighting(std::vector<float>& u, std::vector<float>& w, const SignpostWeighting& o);

// One sequence's rows for the point builders below.
struct PointRows {
  const float* x = nullptr;     // [rows, dim]
  const float* grad = nullptr;  // [rows, dim] or nullptr (unit weights)
  int64_t rows = 0;
};

// The points of several sequences, in sequence order: the same arrays as calling
// append_key_points / append_value_points once per sequence, built side by side
// (one sequence per thread) and concatenated.
void key_points(std::span<const PointRows> seqs, int dim, const std::vector<float>& lo,
                const std::vector<float>& hi, std::vector<float>& u, std::vector<float>& w);
void value_points(std::span<const PointRows> seqs, int dim, int head_dim, double fraction,
                  std::vector<float>& u, std::vector<float>& w);

// Index of the nearest signpost (lut ascending), the lower one on a tie.
int nearest_signpost(const std::vector<float>& lut, float u);

// Q-Norm: x'' = a x' + b on dequantized dense values so that their mean and standard
// deviation match the originals' (KVQuant's Q-Norm; the codec's fit, done offline).
class QNormAccumulator {
 public:
  void add(double original, double dequantized);
  // (a, b); (1, 0) when nothing was added or the dequantized values are constant.
  std::pair<float, float> fit() const;
  int64_t count() const { return n_; }

 private:
  int64_t n_ = 0;
  double so_ = 0, so2_ = 0, sd_ = 0, sd2_ = 0;
};

// Feeds the dense (non-outlier) key elements of rows through the b-bit NUQ quantizer
// (clamp, nearest signpost, dequantize) into acc.
void qnorm_add_keys(const float* k, int64_t rows, int dim, const std::vector<float>& lo,
                    const std::vector<float>& hi, const std::vector<float>& lut,
                    QNormAccumulator& acc);
void qnorm_add_values(const float* v, int64_t rows, int dim, int head_dim, double fraction,
                      const std::vector<float>& lut, QNormAccumulator& acc);

}  // namespace kvq::calib
