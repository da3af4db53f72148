// A standard normal draw from calib's SplitMix64 (Box-Muller, u1 in (0, 1]) for the calib
// tests: std::normal_distribution is implementation-defined, this gives the same data on
// every platform.
#pragma once

#include <cmath>

#include "calib/rng.h"

namespace kvq_test {

inline double normal(kvq::calib::SplitMix64& r) {
  const double u1 = 1.0 - r.uniform(), u2 = r.uniform();
  return std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586 * u2);
}

}  // namespace kvq_test
