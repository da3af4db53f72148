// gpu_memory_in_use (lib/backend_factory.h), the figure behind kvq-eval's peak-GPU column:
// true with the device's total for a CUDA backend, false for the CPU backend, and the
// memory in use grows by at least the KV cache a reset allocates and falls back when the
// backend is destroyed (kvq-eval gives every compare row a fresh backend on that basis).
// Compiled everywhere; not yet run on a GPU (2026-11-22).
#include <cstdio>
#include <memory>

#include "lib/backend_factory.h"
#include "lib/cpu_backend.h"
#include "lib/cuda/cuda_backend.h"
#include "lib/model.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

TEST_CASE("gpu_memory_in_use: CUDA backend yes, CPU backend no, a reset's cache shows", "[gpu]") {
  const kvq::ModelConfig cfg = kvq::synthetic_config("testbed-23m");
  size_t used0 = 0, used1 = 0, total = 0;
  {
    auto be = kvq::make_synthetic_cuda_backend(cfg, 1);
    REQUIRE(kvq::gpu_memory_in_use(*be, used0, total));
    CHECK(total > 0);
    CHECK(used0 > 0);
    CHECK(used0 <= total);
    // K and V caches of 8192 tokens, 16-bit: 2 x layers x kv_heads x 8192 x head_dim x 2 B
    // (6 x 6 x 8192 x 64 x 4 = 75.5 MB for the testbed). The driver rounds allocations up
    // (2 MiB pages), so the growth is at least the cache bytes.
    const size_t cache = size_t(2) * cfg.n_layers * cfg.n_kv_heads * 8192 * cfg.head_dim * 2;
    be->reset(1, 8192);
    REQUIRE(kvq::gpu_memory_in_use(*be, used1, total));
    std::printf("gpu_memory_in_use: %zu bytes with weights, %zu after a %zu-byte KV reset, of %zu\n", used0, used1,
                cache, total);
    CHECK(used1 >= used0 + cache);
  }
  // Destroyed, its buffers are freed: a fresh backend (weights only) uses less than the old
  // one did with its cache.
  {
    auto be = kvq::make_synthetic_cuda_backend(cfg, 1);
    size_t used2 = 0;
    REQUIRE(kvq::gpu_memory_in_use(*be, used2, total));
    CHECK(used2 < used1);
  }
  auto cpu_model = kvq::load_model(kvq_test::shared_path("models/stories260K/stories260K.bin").string());
  auto cpu = kvq::make_cpu_backend(cpu_model);
  size_t u = 123, t = 456;
  CHECK_FALSE(kvq::gpu_memory_in_use(*cpu, u, t));
  CHECK(u == 123);  // nothing written
  CHECK(t == 456);
}
