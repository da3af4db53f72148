// RoPE frequencies and the CPU rotation (see rope.h).
#include "lib/rope.h"

#include <cmath>
#include <numbers>
#include <string>

#include "formats/error.h"

namespace kvq {

std::vector<double> rope_inv_freq(const RopeConfig& rope, int head_dim) {
  if (head_dim <= 0 || head_dim % 2 != 0)
    throw InvalidArgument("rope", "head_dim must be even and positive, got " +
                                      std::to_string(head_dim));
  if (!(rope.theta > 0.0))
    throw InvalidArgument("rope", "rope theta must be positive, got " + std::to_string(rope.theta));
  const int half = head_dim / 2;
  std::vector<double> inv(half);
  for (int i = 0; i < half; ++i)
    inv[i] = 1.0 / std::pow(rope.theta, static_cast<double>(2 * i) / head_dim);
  switch (rope.scaling) {
    case RopeScalingType::kNone:
      break;
    case RopeScalingType::kLinear:
      if (!(rope.factor > 0.0))
        throw InvalidArgument("rope", "linear rope scaling factor must be positive");
      for (double& f : inv) f /= rope.factor;
      break;
    case RopeScalingType::kLlama3: {
      if (!(rope.factor > 0.0) || !(rope.high_freq_factor > rope.low_freq_factor) ||
          !(rope.low_freq_factor > 0.0) || rope.original_max_position <= 0)
        throw InvalidArgument("rope", "llama3 rope scaling needs factor > 0, "
                                      "high_freq_factor > low_freq_factor > 0 and "
                                      "original_max_position > 0");
      const double old_ctx = static_cast<double>(rope.original_max_position);
      const double low_wavelen = old_ctx / rope.low_freq_factor;
      const double high_wavelen = old_ctx / rope.high_freq_factor;
      for (double& f : inv) {
        const double wavelen = 2.0 * std::numbers::pi / f;
        if (wavelen > low_wavelen) {
          f /= rope.factor;
        } else if (wavelen >= high_wavelen) {
          const double s = (old_ctx / wavelen - rope.low_freq_factor) /
                           (rope.high_freq_factor - rope.low_freq_factor);
          f = (1.0 - s) * f / rope.factor + s * f;
        }
      }
      break;
    }
  }
  return inv;
}

RopeTable::RopeTable(const RopeConfig& rope, int head_dim, int max_pos)
    : head_dim_(head_dim), max_pos_(max_pos), layout_(rope.layout) {
  const std::vector<double> inv = rope_inv_freq(rope, head_dim);
  const int half = head_dim / 2;
  cos_.resize(static_cast<size_t>(max_pos) * half);
  sin_.resize(cos_.size());
  for (int p = 0; p < max_pos; ++p) {
    for (int i = 0; i < half; ++i) {
      const double a = static_cast<double>(p) * inv[i];
      cos_[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(a));
      sin_[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(a));
    }
  }
}

void RopeTable::apply(float* x, int n, int heads, int64_t stride, int pos0) const {
  if (pos0 < 0 || pos0 + n > max_pos_)
    throw InvalidArgument("rope", "positions " + std::to_string(pos0) + ".." +
                                      std::to_string(pos0 + n - 1) + " outside the table of " +
                                      std::to_string(max_pos_));
  const int half = head_dim_ / 2;
  for (int r = 0; r < n; ++r) {
    const float* c = cos_row(pos0 + r);
    const float* s = sin_row(pos0 + r);
    float* row = x + static_cast<int64_t>(r) * stride;
    for (int h = 0; h < heads; ++h) {
      float* v = row + static_cast<int64_t>(h) * head_dim_;
      if (layout_ == RopeLayout::kRotateHalf) {
        for (int i = 0; i < half; ++i) {
          const float a = v[i], b = v[i + half];
          v[i] = a * c[i] - b * s[i];
          v[i + half] = b * c[i] + a * s[i];
        }
      } else {
        for (int i = 0; i < half; ++i) {
          const float a = v[2 * i], b = v[2 * i + 1];
          v[2 * i] = a * c[i] - b * s[i];
          v[2 * i + 1] = b * c[i] + a * s[i];
        }
      }
    }
  }
}

}  // namespace kvq
