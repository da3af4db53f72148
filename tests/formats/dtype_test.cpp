// fp16/bf16 conversions: exhaustive over all 65536 half patterns, and round-half-to-even
// on the exact midpoints, which is what makes CPU and GPU codes agree bit for bit.
#include <cmath>
#include <random>

#include "formats/dtype.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;

TEST_CASE("half round-trips every finite pattern and keeps NaN", "[dtype]") {
  for (uint32_t h = 0; h < 65536; ++h) {
    const float f = half_to_float(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      CHECK(std::isnan(half_to_float(float_to_half(f))));
      continue;
    }
    REQUIRE(float_to_half(f) == h);
  }
}

TEST_CASE("float_to_half rounds midpoints to even", "[dtype]") {
  // 1 + 2^-11 is halfway between 1 and 1 + 2^-10: rounds down to the even 1.
  CHECK(float_to_half(1.0f + std::ldexp(1.0f, -11)) == 0x3c00);
  // 1 + 3*2^-11 is halfway between 1+2^-10 (odd) and 1+2^-9 (even): rounds up.
  CHECK(float_to_half(1.0f + 3 * std::ldexp(1.0f, -11)) == 0x3c02);
  // Subnormal midpoint: 2^-25 is half the smallest subnormal: rounds to zero.
  CHECK(float_to_half(std::ldexp(1.0f, -25)) == 0x0000);
  CHECK(float_to_half(3 * std::ldexp(1.0f, -25)) == 0x0002);
  CHECK(float_to_half(65504.0f) == 0x7bff);
  CHECK(float_to_half(65520.0f) == 0x7c00);  // ties away from max to inf (even)
  CHECK(float_to_half(-1e9f) == 0xfc00);
}

TEST_CASE("float_to_half matches nearest-value search on random floats", "[dtype]") {
  std::mt19937 rng(static_cast<uint32_t>(kvq_test::test_seed(1)));
  std::uniform_real_distribution<float> exp_dist(-26.0f, 16.0f);
  for (int i = 0; i < 100000; ++i) {
    const float x = std::ldexp(1.0f + std::generate_canonical<float, 24>(rng),
                               static_cast<int>(exp_dist(rng)));
    const uint16_t h = float_to_half(x);
    const double err = std::fabs(static_cast<double>(half_to_float(h)) - x);
    // No neighbouring half is closer.
    for (int d : {-1, 1}) {
      const uint16_t n = static_cast<uint16_t>(h + d);
      if ((n & 0x7c00) == 0x7c00) continue;
      REQUIRE(std::fabs(static_cast<double>(half_to_float(n)) - x) >= err);
    }
  }
}

TEST_CASE("bf16 conversion rounds half to even", "[dtype]") {
  CHECK(float_to_bf16(1.0f) == 0x3f80);
  CHECK(float_to_bf16(bits_float(0x3f808000u)) == 0x3f80);  // midpoint, even below
  CHECK(float_to_bf16(bits_float(0x3f818000u)) == 0x3f82);  // midpoint, even above
  CHECK(std::isnan(bf16_to_float(float_to_bf16(std::nanf("")))));
}

TEST_CASE("dtype names round-trip", "[dtype]") {
  for (auto t : {DType::kF32, DType::kF16, DType::kBF16, DType::kI64, DType::kU8,
                 DType::kF8E4M3, DType::kBool}) {
    REQUIRE(parse_dtype(dtype_name(t)) == t);
  }
  CHECK_FALSE(parse_dtype("F17").has_value());
  CHECK(dtype_size(DType::kBF16) == 2);
}
