// NUQ signposts and Q-Norm (see signposts.h).
#include "calib/signposts.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "calib/kmeans1d.h"
#include "formats/dtype.h"
#include "formats/error.h"

namespace kvq::calib {

namespace {

// The dense mask, mid and half of one value vector (one token, one head).
struct ValueVec {
  float mid = 0, half = 0;
  std::vector<char> outlier;
  std::vector<int> idx;  // scratch, kept between calls to avoid an allocation per vector
};

// The k entries of largest |x| (ties: lower channel first) are outliers. The order is a
// strict total order, so the set is unique and nth_element (O(hd)) picks the same set as
// a sort would.
void value_vector(const float* x, int hd, int k, ValueVec& r) {
  r.mid = r.half = 0;
  r.outlier.assign(static_cast<size_t>(hd), 0);
  if (k > 0) {
    r.idx.resize(static_cast<size_t>(hd));
    std::iota(r.idx.begin(), r.idx.end(), 0);
    const int kk = std::min(k, hd);
    std::nth_element(r.idx.begin(), r.idx.begin() + (kk - 1), r.idx.end(), [&](int a, int b) {
      const float fa = std::fabs(x[a]), fb = std::fabs(x[b]);
      return fa > fb || (fa == fb && a < b);
    });
    for (int i = 0; i < kk; ++i) r.outlier[static_cast<size_t>(r.idx[static_cast<size_t>(i)])] = 1;
  }
  float mn = INFINITY, mx = -INFINITY;
  for (int c = 0; c < hd; ++c) {
    if (r.outlier[static_cast<size_t>(c)]) continue;
    mn = std::min(mn, x[c]);
    mx = std::max(mx, x[c]);
  }
  if (mn <= mx) {
    // The codec stores mid and half as fp16 per (token, head) and normalizes with those
    // (lib/codecs/kvquant.cpp), so the fit does too: with fp32 mid/half the points near
    // +-1 could land on the other side of a signpost boundary than at run time.
    r.mid = half_to_float(float_to_half(0.5f * (mn + mx)));
    r.half = half_to_float(float_to_half(0.5f * (mx - mn)));
  }
}

float clamp1(float u) { return std::min(1.0f, std::max(-1.0f, u)); }

}  // namespace

void append_key_points(const float* k, const float* grad, int64_t rows, int dim,
                       const std::vector<float>& lo, const std::vector<float>& hi,
                       std::vector<float>& u, std::vector<float>& w) {
  for (int64_t t = 0; t < rows; ++t) {
    for (int c = 0; c < dim; ++c) {
      const float x = k[t * dim + c];
      if (x < lo[c] || x > hi[c]) continue;
      const float mid = 0.5f * (lo[c] + hi[c]), half = 0.5f * (hi[c] - lo[c]);
      if (!(half > 0.0f)) continue;
      u.push_back(clamp1((x - mid) * (1.0f / half)));  // the codec's reciprocal
      const float g = grad ? grad[t * dim + c] : 1.0f;
      w.push_back(g * g);
    }
  }
}

int value_outliers_per_head(double fraction, int head_dim) {
  return static_cast<int>(std::nearbyint(fraction * head_dim));  // default mode: to even
}

void append_value_points(const float* v, const float* grad, int64_t rows, int dim, int head_dim,
                         double fraction, std::vector<float>& u, std::vector<float>& w) {
  const int k = value_outliers_per_head(fraction, head_dim);
  ValueVec vv;
  for (int64_t t = 0; t < rows; ++t) {
    for (int h0 = 0; h0 < dim; h0 += head_dim) {
      const float* x = v + t * dim + h0;
      value_vector(x, head_dim, k, vv);
      if (!(vv.half > 0.0f)) continue;
      for (int c = 0; c < head_dim; ++c) {
        if (vv.outlier[static_cast<size_t>(c)]) continue;
        u.push_back(clamp1((x[c] - vv.mid) * (1.0f / vv.half)));
        const float g = grad ? grad[t * dim + h0 + c] : 1.0f;
        w.push_back(g * g);
      }
    }
  }
}

void check_weighting(const SignpostWeighting& o, const char* where) {
  if (!(o.clip_quantile > 0.0 && o.clip_quantile <= 1.0)) {
    throw InvalidArgument(where, "Fisher clip quantile " + std::to_string(o.clip_quantile) + " outside (0, 1]");
  }
  if (!(o.uniform_mix >= 0.0 && o.uniform_mix < 1.0)) {
    throw InvalidArgument(where, "uniform mix " + std::to_string(o.uniform_mix) + " outside [0, 1)");
  }
}

float clip_weights(std::vector<float>& w, double q) {
  if (!(q < 1.0)) return INFINITY;
  std::vector<float> pos;
  for (float x : w) {
    if (x > 0.0f) pos.push_back(x);
  }
  if (pos.empty()) return INFINITY;
  const size_t rank = static_cast<size_t>(std::floor(q * static_cast<double>(pos.size() - 1)));
  std::nth_element(pos.begin(), pos.begin() + static_cast<std::ptrdiff_t>(rank), pos.end());
  const float t = pos[rank];
  for (float& x : w) x = std::min(x, t);
  return t;
}

void append_uniform_mix(std::vector<float>& u, std::vector<float>& w, double eps) {
  if (!(eps > 0.0)) return;
  if (!(eps < 1.0)) throw InvalidArgument("uniform mix", "share " + std::to_string(eps) + " outside [0, 1)");
  if (u.empty()) return;  // no data points: fit_signposts reports it
  double total = 0.0;
  for (float x : w) total += x;
  if (!(total > 0.0)) {
    std::fill(w.begin(), w.end(), 1.0f);
    total = static_cast<double>(w.size());
  }
  const int m = kUniformMixPoints;
  const float each = static_cast<float>(eps / (1.0 - eps) * total / m);
  u.reserve(u.size() + m);
  w.reserve(w.size() + m);
  for (int j = 0; j < m; ++j) {
    u.push_back(static_cast<float>(-1.0 + (2.0 * j + 1.0) / m));
    w.push_back(each);
  }
}

void apply_weighting(std::vector<float>& u, std::vector<float>& w, const SignpostWeighting& o) {
  check_weighting(o, "signpost weighting");
  clip_weights(w, o.clip_quantile);
  append_uniform_mix(u, w, o.uniform_mix);
}

SignpostFit fit_signposts(const std::vector<float>& u, const std::vector<float>& w, int bits) {
  if (u.empty()) throw InvalidArgument("signposts", "no calibration points to fit signposts on");
  if (bits < 1 || bits > 8) throw InvalidArgument("--bits", "bits " + std::to_string(bits) + " outside 1..8");
  return SignpostFitter(u, w).fit(bits);
}

SignpostFitter::SignpostFitter(const std::vector<float>& u, const std::vector<float>& w) {
  if (u.empty()) throw InvalidArgument("signposts", "no calibration points to fit signposts on");
  weighted_ = std::any_of(w.begin(), w.end(), [](float x) { return x > 0.0f; });
  km_ = weighted_ ? std::make_unique<ExactKMeans>(WeightedPoints{u, w})
                  : std::make_unique<ExactKMeans>(WeightedPoints{u, {}});
}

SignpostFit SignpostFitter::fit(int bits) const {
  if (bits < 1 || bits > 8) throw InvalidArgument("--bits", "bits " + std::to_string(bits) + " outside 1..8");
  SignpostFit fit;
  const int k = 1 << bits;
  const KMeans1D km = km_->solve(k);
  fit.weighted = weighted_;
  fit.cost = km.cost;
  std::vector<float> s(km.centroids.size());
  for (size_t i = 0; i < s.size(); ++i) s[i] = std::min(1.0f, std::max(-1.0f, static_cast<float>(km.centroids[i])));
  // Strictly increasing within [-1, 1]: push repeats up to the next float, then, if that
  // ran past 1, pull the top down the same way.
  for (size_t i = 1; i < s.size(); ++i) {
    if (!(s[i] > s[i - 1])) s[i] = std::nextafter(s[i - 1], 2.0f);
  }
  if (s.back() > 1.0f) {
    s.back() = 1.0f;
    for (size_t i = s.size() - 1; i-- > 0;) {
      if (!(s[i] < s[i + 1])) s[i] = std::nextafter(s[i + 1], -2.0f);
    }
  }
  fit.signposts = std::move(s);
  return fit;
}

namespace {

// Builds each sequence's points on its own thread, then concatenates in sequence order.
template <typename F>
void points_side_by_side(size_t nseq, std::vector<float>& u, std::vector<float>& w, F append_one) {
  std::vector<std::vector<float>> su(nseq), sw(nseq);
#pragma omp parallel for schedule(dynamic, 1) if (nseq > 1)
  for (int64_t i = 0; i < static_cast<int64_t>(nseq); ++i) {
    append_one(static_cast<size_t>(i), su[static_cast<size_t>(i)], sw[static_cast<size_t>(i)]);
  }
  size_t total = u.size();
  for (const auto& v : su) total += v.size();
  u.reserve(total);
  w.reserve(total);
  for (size_t i = 0; i < nseq; ++i) {
    u.insert(u.end(), su[i].begin(), su[i].end());
    w.insert(w.end(), sw[i].begin(), sw[i].end());
    std::vector<float>().swap(su[i]);
    std::vector<float>().swap(sw[i]);
  }
}

}  // namespace

void key_points(std::span<const PointRows> seqs, int dim, const std::vector<float>& lo,
                const std::vector<float>& hi, std::vector<float>& u, std::vector<float>& w) {
  points_side_by_side(seqs.size(), u, w, [&](size_t i, std::vector<float>& su, std::vector<float>& sw) {
    append_key_points(seqs[i].x, seqs[i].grad, seqs[i].rows, dim, lo, hi, su, sw);
  });
}

void value_points(std::span<const PointRows> seqs, int dim, int head_dim, double fraction,
                  std::vector<float>& u, std::vector<float>& w) {
  points_side_by_side(seqs.size(), u, w, [&](size_t i, std::vector<float>& su, std::vector<float>& sw) {
    append_value_points(seqs[i].x, seqs[i].grad, seqs[i].rows, dim, head_dim, fraction, su, sw);
  });
}

int nearest_signpost(const std::vector<float>& lut, float u) {
  // Branch-free lower_bound (the same index as std::lower_bound): Q-Norm calls this for
  // every dense element and bit width, and std::lower_bound's branches mispredict on
  // random data (10% of kvq-calibrate's CPU time, perf, testbed 8 x 1024).
  if (lut.empty()) return 0;
  const float* base = lut.data();
  size_t len = lut.size();
  while (len > 1) {
    const size_t half = len / 2;
    base = base[half - 1] < u ? base + half : base;
    len -= half;
  }
  const size_t lb = static_cast<size_t>(base - lut.data()) + (*base < u ? 1 : 0);
  if (lb == 0) return 0;
  if (lb == lut.size()) return static_cast<int>(lut.size()) - 1;
  const int hi = static_cast<int>(lb);
  return (u - lut[static_cast<size_t>(hi - 1)] <= lut[static_cast<size_t>(hi)] - u) ? hi - 1 : hi;
}

void QNormAccumulator::add(double o, double d) {
  ++n_;
  so_ += o;
  so2_ += o * o;
  sd_ += d;
  sd2_ += d * d;
}

std::pair<float, float> QNormAccumulator::fit() const {
  if (n_ == 0) return {1.0f, 0.0f};
  const double n = static_cast<double>(n_);
  const double mo = so_ / n, md = sd_ / n;
  const double vo = std::max(0.0, so2_ / n - mo * mo), vd = std::max(0.0, sd2_ / n - md * md);
  const double a = vd > 0 ? std::sqrt(vo / vd) : 1.0;
  if (!(a > 0.0) || !std::isfinite(a)) return {1.0f, static_cast<float>(mo - md)};
  return {static_cast<float>(a), static_cast<float>(mo - a * md)};
}

void qnorm_add_keys(const float* k, int64_t rows, int dim, const std::vector<float>& lo,
                    const std::vector<float>& hi, const std::vector<float>& lut,
                    QNormAccumulator& acc) {
  for (int64_t t = 0; t < rows; ++t) {
    for (int c = 0; c < dim; ++c) {
      const float x = k[t * dim + c];
      if (x < lo[c] || x > hi[c]) continue;
      const float mid = 0.5f * (lo[c] + hi[c]), half = 0.5f * (hi[c] - lo[c]);
      const float d = half > 0.0f
                          ? lut[static_cast<size_t>(nearest_signpost(lut, clamp1((x - mid) * (1.0f / half))))] * half + mid
                          : mid;
      acc.add(x, d);
    }
  }
}

void qnorm_add_values(const float* v, int64_t rows, int dim, int head_dim, double fraction,
                      const std::vector<float>& lut, QNormAccumulator& acc) {
  const int k = value_outliers_per_head(fraction, head_dim);
  ValueVec vv;
  for (int64_t t = 0; t < rows; ++t) {
    for (int h0 = 0; h0 < dim; h0 += head_dim) {
      const float* x = v + t * dim + h0;
      value_vector(x, head_dim, k, vv);
      for (int c = 0; c < head_dim; ++c) {
        if (vv.outlier[static_cast<size_t>(c)]) continue;
        const float d = vv.half > 0.0f
                            ? lut[static_cast<size_t>(nearest_signpost(lut, clamp1((x[c] - vv.mid) * (1.0f / vv.half))))] * vv.half + vv.mid
                            : vv.mid;
        acc.add(x[c], d);
      }
    }
  }
}

}  // namespace kvq::calib
