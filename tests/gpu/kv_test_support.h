// Host helpers shared by the packed-KV GPU tests (kv_packed_test.cpp, kv_kvquant_test.cpp):
// an environment variable set for one scope (the decode reads its A/B switches per call), and
// the random K/V rows with planted outliers, exact ties and a constant token.
#pragma once

#include <cmath>
#include <cstdlib>
#include <random>
#include <string>
#include <vector>

namespace kvq_test {

// Sets (value != null) or unsets `name` for the scope and restores what was there on the way
// out, a failed REQUIRE included.
struct EnvGuard {
  std::string name, old;
  bool had = false;
  EnvGuard(const char* n, const char* value) : name(n) {
    if (const char* e = std::getenv(n)) {
      old = e;
      had = true;
    }
    if (value)
      setenv(n, value, 1);
    else
      unsetenv(n);
  }
  EnvGuard(const EnvGuard&) = delete;
  EnvGuard& operator=(const EnvGuard&) = delete;
  ~EnvGuard() {
    if (had)
      setenv(name.c_str(), old.c_str(), 1);
    else
      unsetenv(name.c_str());
  }
};

// Keys/values [T, dim] (heads of hd channels): N(0, 1), channel 5 of every head x8 when
// `outliers` (outlier channel), every third token on a 1/8 grid (exact ties for min/max and
// top-k), token 2 constant 0.75.
inline std::vector<float> make_rows(std::mt19937_64& rng, int T, int dim, int hd, bool outliers) {
  std::normal_distribution<float> nd(0.f, 1.f);
  std::vector<float> x(static_cast<size_t>(T) * dim);
  for (int t = 0; t < T; ++t)
    for (int c = 0; c < dim; ++c) {
      float v = nd(rng);
      if (outliers && c % hd == 5) v *= 8.f;
      if (t % 3 == 1) v = std::nearbyint(v * 8.f) / 8.f;
      if (t == 2) v = 0.75f;
      x[static_cast<size_t>(t) * dim + c] = v;
    }
  return x;
}

}  // namespace kvq_test
