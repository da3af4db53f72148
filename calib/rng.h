// The seeded random numbers calibration uses (k-means++ seeding, calibration sequence
// starts). Why not <random>: std::uniform_*_distribution is implementation-defined, so the
// same seed gives different numbers with libstdc++ and libc++, and kvq-calibrate promises
// identical bytes for identical inputs and seed. SplitMix64 (Steele, Lea, Flood 2014) is
// fully specified here, passes BigCrush, and is all k-means++ and start sampling need.
#pragma once

#include <cstdint>

namespace kvq::calib {

class SplitMix64 {
 public:
  explicit SplitMix64(uint64_t seed) : state_(seed) {}

  uint64_t next() {
    uint64_t z = (state_ += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }

  // Uniform in [0, 1): the top 53 bits as a double (exact, no rounding).
  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }

  // Uniform integer in [0, n) for n >= 1, without modulo bias (Lemire's multiply-shift
  // with rejection of the biased low range).
  uint64_t below(uint64_t n) {
    const uint64_t threshold = (0 - n) % n;  // 2^64 mod n
    for (;;) {
      const unsigned __int128 m = static_cast<unsigned __int128>(next()) * n;
      if (static_cast<uint64_t>(m) >= threshold) return static_cast<uint64_t>(m >> 64);
    }
  }

 private:
  uint64_t state_;
};

}  // namespace kvq::calib
