// Shared helpers for the codec tests: random KV rows with planted outlier channels,
// constant and zero rows; per-group error bounds derived from the quantization rule.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "formats/dtype.h"
#include "lib/codecs/codec.h"

namespace kvq_codec_test {

inline float f16(float x) { return kvq::half_to_float(kvq::float_to_half(x)); }

// |x| * 2^-11 bounds the fp16 rounding error of a normal x; 2^-25 covers subnormals.
inline float f16_err(float x) { return std::fabs(x) * 0x1p-11f + 0x1p-25f; }

// A few ulps of the largest magnitude involved: the fp32 arithmetic of (x - z) * inv and
// fma(q, s, z) (each correctly rounded, so 2 ulps of the operands plus 2 of the result).
inline float slop(float mag) { return 8.0f * mag * 0x1p-24f + 1e-30f; }

// Rows [T, dim]: N(0, 1) with every 13th channel scaled by 20 (outlier channels), row 2
// constant, row 4 all zeros (when T is large enough).
inline std::vector<float> make_rows(std::mt19937_64& rng, int64_t T, int dim) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> x(static_cast<size_t>(T) * dim);
  for (int64_t t = 0; t < T; ++t)
    for (int c = 0; c < dim; ++c) x[t * dim + c] = nd(rng) * (c % 13 == 5 ? 20.0f : 1.0f);
  if (T > 2) std::fill(x.begin() + 2 * dim, x.begin() + 3 * dim, 0.75f);
  if (T > 4) std::fill(x.begin() + 4 * dim, x.begin() + 5 * dim, 0.0f);
  return x;
}

// The bound of uniform asymmetric quantization (kernels/kv_layout.h) for one group:
// rounding s/2, plus what the fp16 zero and scale cost at the clamped ends:
// |mn - zf| + L * |s - sf|, plus fp32 slop.
inline float asym_bound(const std::vector<float>& g, int bits) {
  const float mn = *std::min_element(g.begin(), g.end());
  const float mx = *std::max_element(g.begin(), g.end());
  const float L = static_cast<float>((1 << bits) - 1);
  const float s = (mx - mn) / L;
  const float sf = f16(s), zf = f16(mn);
  return sf / 2 + std::fabs(mn - zf) + L * std::fabs(s - sf) +
         slop(std::max(std::fabs(mn), std::fabs(mx)) + L * sf);
}

inline float sym_bound(const std::vector<float>& g, int bits) {
  float amax = 0;
  for (float v : g) amax = std::max(amax, std::fabs(v));
  const float P = static_cast<float>((1 << (bits - 1)) - 1);
  const float s = amax / P, sf = f16(s);
  return sf / 2 + P * std::fabs(s - sf) + slop(amax + P * sf);
}

}  // namespace kvq_codec_test
