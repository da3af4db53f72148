// MiKV query-key balancers; see balancer.h.
#include "calib/balancer.h"

#include <algorithm>
#include <cmath>
#include <string>

#include "formats/error.h"

namespace kvq::calib {

BalancerStats::BalancerStats(int n_layers, int n_heads, int n_kv_heads, int head_dim)
    : n_heads_(n_heads), n_kv_heads_(n_kv_heads), head_dim_(head_dim) {
  if (n_layers < 1 || n_heads < 1 || n_kv_heads < 1 || head_dim < 1 ||
      n_heads % n_kv_heads != 0) {
    throw InvalidArgument("MiKV balancer", "bad shape: " + std::to_string(n_heads) +
                                               " query heads, " + std::to_string(n_kv_heads) +
                                               " kv heads, head_dim " + std::to_string(head_dim));
  }
  max_q_.assign(n_layers, std::vector<float>(static_cast<size_t>(n_heads) * head_dim, 0.0f));
  max_k_.assign(n_layers, std::vector<float>(static_cast<size_t>(n_kv_heads) * head_dim, 0.0f));
}

void BalancerStats::add(int layer, const float* q, int64_t q_stride, const float* k,
                        int64_t k_stride, int64_t rows) {
  if (layer < 0 || layer >= n_layers()) {
    throw InvalidArgument("MiKV balancer", "layer " + std::to_string(layer) + " out of range");
  }
  std::vector<float>& mq = max_q_[layer];
  std::vector<float>& mk = max_k_[layer];
  for (int64_t r = 0; r < rows; ++r) {
    const float* qr = q + r * q_stride;
    const float* kr = k + r * k_stride;
    for (size_t c = 0; c < mq.size(); ++c) mq[c] = std::max(mq[c], std::fabs(qr[c]));
    for (size_t c = 0; c < mk.size(); ++c) mk[c] = std::max(mk[c], std::fabs(kr[c]));
  }
}

std::vector<float> BalancerStats::balancers(int layer) const {
  const std::vector<float>& mq = max_q_.at(layer);
  const std::vector<float>& mk = max_k_.at(layer);
  const int group = n_heads_ / n_kv_heads_;
  std::vector<float> b(mk.size(), 1.0f);
  for (int g = 0; g < n_kv_heads_; ++g) {
    for (int c = 0; c < head_dim_; ++c) {
      float q = 0.0f;
      for (int h = g * group; h < (g + 1) * group; ++h) {
        q = std::max(q, mq[static_cast<size_t>(h) * head_dim_ + c]);
      }
      const float kk = mk[static_cast<size_t>(g) * head_dim_ + c];
      // sqrt in double then one rounding to float: the same value on every compiler.
      const double v = std::sqrt(static_cast<double>(q) / static_cast<double>(kk));
      if (q > 0.0f && kk > 0.0f && std::isfinite(v) && v > 0.0) {
        b[static_cast<size_t>(g) * head_dim_ + c] = static_cast<float>(v);
      }
    }
  }
  return b;
}

}  // namespace kvq::calib
