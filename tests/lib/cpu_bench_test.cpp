// CPU forward throughput on the testbed model (not run by ctest: hidden tag [.bench]).
//   OMP_NUM_THREADS=2 build/tests/kvq_test_lib "[.bench]"
// Prints prefill tokens/s for one window of 1024 tokens (forward_nll, the PPL path) and
// decode tokens/s for 64 single-token steps after it.
#include <chrono>
#include <ctime>
#include <cstdio>
#include <cstring>
#include <vector>

#include <omp.h>

#include "lib/backend.h"
#include "lib/cpu_backend.h"
#include "lib/model.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

TEST_CASE("cpu throughput, testbed model, seqlen 1024", "[.bench]") {
  auto model = kvq::load_model(kvq_test::shared_path("models/kvq-testbed-llama2-23m").string());
  auto be = kvq::make_cpu_backend(model);
  const std::vector<uint8_t> raw =
      kvq_test::read_bytes(kvq_test::shared_path("models/kvq-testbed-llama2-23m/wikitext2_test.ids.u32"));
  const int T = 1024, reps = 3, decode = 64;
  std::vector<int32_t> ids(static_cast<size_t>(T) * (reps + 1));
  std::memcpy(ids.data(), raw.data(), ids.size() * 4);
  using clock = std::chrono::steady_clock;
  double best = 1e30;
  for (int r = 0; r < reps; ++r) {
    const auto t0 = clock::now();
    const std::clock_t c0 = std::clock();
    const kvq::NllResult res =
        kvq::window_nll(*be, std::span<const int32_t>(ids.data() + static_cast<size_t>(r) * T, T), 1, T);
    const double s = std::chrono::duration<double>(clock::now() - t0).count();
    const double cpu = static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC;
    best = std::min(best, s);
    // CPU seconds over all threads: wall x threads when the machine is idle; much less
    // when other processes share the cores (then wall time overstates the cost).
    std::printf("[bench] window %d: %d tokens in %.3f s wall, %.3f s CPU = %.1f tokens/s "
                "(NLL %.4f)\n", r, T - 1, s, cpu, (T - 1) / s, res.mean());
  }
  be->reset(1, T + decode);
  be->forward(std::span<const int32_t>(ids.data(), T), T, {.last_only = true});
  const auto t0 = clock::now();
  for (int i = 0; i < decode; ++i)
    be->forward(std::span<const int32_t>(ids.data() + T + i, 1), 1, {.last_only = true});
  const double ds = std::chrono::duration<double>(clock::now() - t0).count();
  std::printf("[bench] threads %d: prefill best %.1f tokens/s at seqlen %d; decode %.1f tokens/s "
              "(%.2f ms/token) at context %d..%d\n",
              omp_get_max_threads(), (T - 1) / best, T, decode / ds, 1e3 * ds / decode, T, T + decode);
  CHECK(best > 0.0);
}
