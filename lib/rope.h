// Rotary position embedding (RoPE): the inverse frequencies, with the linear and llama3
// scalings, computed once here for every backend, and the rotation itself for the CPU
// reference in both channel layouts (formats/model_config.h explains the layouts).
//
// Precision: frequencies, angles and their cos/sin are computed in double and rounded to
// float once. Hugging Face computes inv_freq and pos * inv_freq in fp32, which moves the
// angle by up to ~6e-8 * pos rad (6e-5 at 1024); llama2.c uses powf/cosf. Double keeps the
// reference independent of either and the difference is far below the fp16 noise of the
// weights.
#pragma once

#include <cstdint>
#include <vector>

#include "formats/model_config.h"

namespace kvq {

// head_dim/2 inverse frequencies: inv_freq[i] = theta^(-2i/head_dim), then scaled:
//  linear: inv_freq / factor (same as dividing positions by factor);
//  llama3: wavelengths 2*pi/inv_freq longer than original_max_position/low_freq_factor are
//          divided by factor, shorter than original_max_position/high_freq_factor kept,
//          and the band between interpolated with
//          s = (original_max_position/wavelen - low) / (high - low):
//          inv = (1-s) * inv/factor + s * inv.
std::vector<double> rope_inv_freq(const RopeConfig& rope, int head_dim);

// cos/sin of pos * inv_freq[i] for positions [0, max_pos), [max_pos, head_dim/2] each.
class RopeTable {
 public:
  RopeTable() = default;
  RopeTable(const RopeConfig& rope, int head_dim, int max_pos);

  int head_dim() const { return head_dim_; }
  int max_pos() const { return max_pos_; }
  RopeLayout layout() const { return layout_; }
  const float* cos_row(int pos) const { return cos_.data() + static_cast<size_t>(pos) * (head_dim_ / 2); }
  const float* sin_row(int pos) const { return sin_.data() + static_cast<size_t>(pos) * (head_dim_ / 2); }

  // Rotates rows of x in place: x is [n, heads * head_dim] with row stride `stride`
  // floats, row i at position pos0 + i (< max_pos). For pair (a, b) at frequency i:
  // a' = a cos - b sin, b' = b cos + a sin, where (a, b) = (x[i], x[i + d/2]) in the
  // rotate-half layout and (x[2i], x[2i+1]) in the interleaved one.
  void apply(float* x, int n, int heads, int64_t stride, int pos0) const;

 private:
  int head_dim_ = 0;
  int max_pos_ = 0;
  RopeLayout layout_ = RopeLayout::kRotateHalf;
  std::vector<float> cos_, sin_;
};

}  // namespace kvq
