// MiKV's outlier-aware query-key channel balancer (METHODS.md, MiKV):
//   b_c = sqrt(max|Q_c| / max|K_c|)  per layer, key/value head and channel;
// keys are divided by b_c and queries multiplied by it, which leaves every score q.k
// unchanged and flattens the key outlier channels before quantization.
//
// Decisions where the paper is silent:
// - Post-RoPE. The cache MiKV quantizes holds post-RoPE keys, and q.k = sum_c q_c k_c is
//   only invariant under per-channel scaling of the vectors that are actually multiplied,
//   i.e. after RoPE (a pre-RoPE scaling would be mixed across channel pairs by the
//   rotation unless both channels of a pair had the same b).
// - GQA: a key/value head g serves the query heads h with h / (n_heads / n_kv_heads) == g
//   (the grouping lib/observer.h and Hugging Face use); max|Q_c| for head g is the maximum
//   over all of those query heads, because the one scaled key serves all of them.
// - Every token counts, the first ones too: MiKV keeps no attention-sink tokens apart.
// - A channel whose max|Q| or max|K| is 0 (or not finite) gets b_c = 1.
#pragma once

#include <cstdint>
#include <vector>

namespace kvq::calib {

class BalancerStats {
 public:
  BalancerStats() = default;
  BalancerStats(int n_layers, int n_heads, int n_kv_heads, int head_dim);

  // q: [rows, n_heads*head_dim] post-RoPE queries, k: [rows, n_kv_heads*head_dim]
  // post-RoPE keys, row-major with the given strides (in floats).
  void add(int layer, const float* q, int64_t q_stride, const float* k, int64_t k_stride,
           int64_t rows);

  // [n_kv_heads * head_dim], kv head g at [g*head_dim, (g+1)*head_dim).
  std::vector<float> balancers(int layer) const;

  // Raw maxima (for checkpoints and the calibration file).
  std::vector<float>& max_abs_q(int layer) { return max_q_[layer]; }  // [n_heads*head_dim]
  std::vector<float>& max_abs_k(int layer) { return max_k_[layer]; }  // [n_kv_heads*head_dim]
  const std::vector<float>& max_abs_q(int layer) const { return max_q_[layer]; }
  const std::vector<float>& max_abs_k(int layer) const { return max_k_[layer]; }

  int n_layers() const { return static_cast<int>(max_q_.size()); }

 private:
  int n_heads_ = 0, n_kv_heads_ = 0, head_dim_ = 0;
  std::vector<std::vector<float>> max_q_, max_k_;
};

}  // namespace kvq::calib
