// RoPE: frequency scalings against values worked out by hand, and the two channel layouts
// doing the same rotation up to a permutation of channels.
#include <cmath>
#include <random>
#include <vector>

#include "formats/error.h"
#include "lib/rope.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using kvq_test::Approx;

TEST_CASE("rope: default inverse frequencies are theta^(-2i/d)", "[lib][rope]") {
  kvq::RopeConfig r;
  r.theta = 10000.0;
  const std::vector<double> f = kvq::rope_inv_freq(r, 8);
  REQUIRE(f.size() == 4);
  CHECK(f[0] == 1.0);
  CHECK(f[1] == Approx(0.1).epsilon(1e-15));    // 10000^(-2/8) = 10^-1
  CHECK(f[2] == Approx(0.01).epsilon(1e-15));   // 10^-2
  CHECK(f[3] == Approx(0.001).epsilon(1e-15));  // 10^-3
}

TEST_CASE("rope: linear scaling divides every frequency by the factor", "[lib][rope]") {
  kvq::RopeConfig r;
  r.theta = 10000.0;
  r.scaling = kvq::RopeScalingType::kLinear;
  r.factor = 4.0;
  const std::vector<double> f = kvq::rope_inv_freq(r, 8);
  CHECK(f[0] == 0.25);
  CHECK(f[2] == Approx(0.0025).epsilon(1e-15));
}

TEST_CASE("rope: llama3 scaling matches hand-computed frequencies (Llama 3.1 settings)",
          "[lib][rope]") {
  // theta 500000, head_dim 128, factor 8, low 1, high 4, original context 8192:
  // wavelengths below 8192/4 = 2048 keep their frequency, above 8192/1 are divided by 8,
  // between them s = (8192/wavelen - 1) / 3 blends: inv' = (1-s) inv/8 + s inv.
  // i = 30: inv = 500000^(-60/128) = 2.1311195e-3, wavelen = 2*pi/inv = 2948.30,
  //         s = (8192/2948.30 - 1)/3 = 0.592849, inv' = inv (0.407151/8 + 0.592849)
  //         = 1.3718936e-3.
  kvq::RopeConfig r;
  r.theta = 500000.0;
  r.scaling = kvq::RopeScalingType::kLlama3;
  r.factor = 8.0;
  r.low_freq_factor = 1.0;
  r.high_freq_factor = 4.0;
  r.original_max_position = 8192;
  const std::vector<double> f = kvq::rope_inv_freq(r, 128);
  REQUIRE(f.size() == 64);
  CHECK(f[0] == 1.0);                                                 // high band
  CHECK(f[10] == Approx(0.12868737343265052).epsilon(1e-12));         // high band
  CHECK(f[28] == Approx(0.0032114459947525913).epsilon(1e-12));       // high band edge
  CHECK(f[29] == Approx(0.002166570763503359).epsilon(1e-12));        // blend s = 0.8036
  CHECK(f[30] == Approx(0.0013718935677611381).epsilon(1e-12));       // blend s = 0.5928
  CHECK(f[33] == Approx(0.00031269375038406517).epsilon(1e-12));      // blend s = 0.1673
  CHECK(f[35] == Approx(9.556212353964683e-05).epsilon(1e-12));       // low band: /8
  CHECK(f[63] == Approx(3.068925988914511e-07).epsilon(1e-12));       // low band: /8
}

TEST_CASE("rope: bad settings are InvalidArgument", "[lib][rope]") {
  kvq::RopeConfig r;
  CHECK_THROWS_AS(kvq::rope_inv_freq(r, 7), kvq::InvalidArgument);
  r.scaling = kvq::RopeScalingType::kLlama3;
  r.low_freq_factor = 4.0;
  r.high_freq_factor = 1.0;
  CHECK_THROWS_AS(kvq::rope_inv_freq(r, 8), kvq::InvalidArgument);
  kvq::RopeTable t(kvq::RopeConfig{}, 8, 4);
  std::vector<float> x(8 * 2);
  CHECK_THROWS_AS(t.apply(x.data(), 2, 1, 8, 3), kvq::InvalidArgument);  // positions 3,4 of 4
}

TEST_CASE("rope: interleaved equals rotate-half after permuting channels", "[lib][rope]") {
  const uint64_t seed = kvq_test::test_seed(11);
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  const int d = 16, heads = 3, n = 7, pos0 = 5;
  kvq::RopeConfig half_cfg, inter_cfg;
  inter_cfg.layout = kvq::RopeLayout::kInterleaved;
  kvq::RopeTable rh(half_cfg, d, 64), il(inter_cfg, d, 64);
  std::vector<float> a(static_cast<size_t>(n) * heads * d);
  for (float& v : a) v = nd(rng);
  // Interleaved channel 2i holds rotate-half channel i, 2i+1 holds i + d/2.
  std::vector<float> b(a.size());
  for (int r = 0; r < n * heads; ++r)
    for (int i = 0; i < d / 2; ++i) {
      b[static_cast<size_t>(r) * d + 2 * i] = a[static_cast<size_t>(r) * d + i];
      b[static_cast<size_t>(r) * d + 2 * i + 1] = a[static_cast<size_t>(r) * d + i + d / 2];
    }
  rh.apply(a.data(), n, heads, heads * d, pos0);
  il.apply(b.data(), n, heads, heads * d, pos0);
  // Same products and sums on the same numbers in the same order: bit-identical.
  for (int r = 0; r < n * heads; ++r)
    for (int i = 0; i < d / 2; ++i) {
      CHECK(b[static_cast<size_t>(r) * d + 2 * i] == a[static_cast<size_t>(r) * d + i]);
      CHECK(b[static_cast<size_t>(r) * d + 2 * i + 1] == a[static_cast<size_t>(r) * d + i + d / 2]);
    }
}

TEST_CASE("rope: position p rotates pair i by p * inv_freq[i]", "[lib][rope]") {
  kvq::RopeConfig cfg;
  kvq::RopeTable t(cfg, 4, 100);
  // One head of 4 channels, pairs (0,2) and (1,3); x = (1, 0, 0, 1) at position 37.
  std::vector<float> x = {1.0f, 0.0f, 0.0f, 1.0f};
  t.apply(x.data(), 1, 1, 4, 37);
  const double a0 = 37.0, a1 = 37.0 / 100.0;  // 10000^(-2/4) = 1/100
  CHECK(x[0] == Approx(std::cos(a0)).margin(1e-6));
  CHECK(x[2] == Approx(std::sin(a0)).margin(1e-6));
  CHECK(x[1] == Approx(-std::sin(a1)).margin(1e-6));
  CHECK(x[3] == Approx(std::cos(a1)).margin(1e-6));
}
