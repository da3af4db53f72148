// Static per-channel key ranges for KVQuant with a Fisher-weighted allocation of the
// outlier budget (kvq-calibrate writes them as the `outlier_threshold` row of the fit
// fraction; kvq-convert makes that row the profile's static key range).
//
// KVQuant stores about 1% of the key values sparse (METHODS.md, KVQuant 5) and quantizes
// the rest of each channel over [lo_c, hi_c]. Plain percentiles give every channel the same
// share (0.5% per tail). Channels differ: a heavy-tailed channel's range shrinks a lot when
// a few more points go sparse, a compact one's hardly at all, and channels differ in how
// much the loss cares (Fisher information). So we spend the same total budget where it
// buys most:
//   minimise  sum_c W_c (hi_c - lo_c)^2   subject to  sum_c m_c <= sum_c 2 floor(p n_c)
// with W_c = sum of the channel's Fisher weights F = (dL/dK)^2 and m_c the channel's
// outlier count. (hi - lo)^2 W / (12 (2^b-1)^2) is the high-resolution Fisher-weighted
// error of a b-bit quantizer over that range, so the allocation does not depend on b.
// For a count m the best interval is the shortest one that leaves m points out (any split
// between the tails). Counts are taken from a grid j * q / 4, j = 0..16, q = 2 floor(p n)
// (0 .. 4x the uniform share); a Lagrange multiplier on the count, found by bisection,
// picks one grid point per channel. When that allocation does not beat the uniform share
// with shortest intervals (the relaxation can leave budget unused), the uniform one is kept.
//
// Measured (testbed, 16 x 1024 tokens of kvq-docs calib.txt): the summed W r^2 drops by
// 7-33% per layer against the uniform share (docs/calibrate.md, "Static key ranges").
// Deterministic: fixed orders, no threads inside a channel; channels run in parallel, each
// writing only its own outputs.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "calib/thresholds.h"

namespace kvq::calib {

struct KeyRangeFit {
  std::vector<float> lo, hi;        // [cols]: values outside [lo, hi] are outliers
  std::vector<int64_t> outliers;    // [cols]: outliers of each channel on the calibration rows
  int64_t budget = 0;               // sum_c 2 floor(p n)
  double cost = 0, uniform_cost = 0;  // sum_c W_c r_c^2: this fit / uniform share, shortest intervals
  bool allocated = false;           // false: the uniform share was kept
  bool weighted = true;             // false: every weight was 0, unit weights used
};

// keys[i] and grads[i] (same shape) are the non-sink rows of sequence i; grads may be
// empty (unit weights). tail_fraction p as in thresholds.h (0.005 for 1% outliers).
KeyRangeFit fisher_key_ranges(std::span<const RowsView> keys, std::span<const RowsView> grads,
                              double tail_fraction);

}  // namespace kvq::calib
