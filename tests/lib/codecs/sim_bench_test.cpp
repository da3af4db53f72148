// A benchmark, not a test (hidden tag [.simbench]; run `kvq_test_lib "[.simbench]"`):
// host time of the simulated-quantization observer per 1024-token window at the testbed
// model's shape (6 layers, 6 heads x 64, MHA, rotate-half RoPE), hooks only (no forward
// pass), for the PPL table's codecs: KVQuant 4/3/2 bits with defaults, KVQuant 3 bits
// with calibrated parameters (non-uniform LUT, static key ranges: the --profile path),
// and MiKV int2 (H2O importance included). Inputs are synthetic N(0, 1) rows with outlier
// channels (what the timings depend on is the shape, not the values). Prints ms/window
// (wall and process CPU time) for the current OpenMP thread count (OMP_NUM_THREADS).
#include <omp.h>

#include <chrono>
#include <cmath>
#include <ctime>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "formats/model_config.h"
#include "lib/codecs/codec.h"
#include "lib/codecs/sim_observer.h"
#include "tests/catch.h"
#include "tests/lib/codecs/codec_test_util.h"
#include "tests/support/test_support.h"

using namespace kvq::codecs;

TEST_CASE("simulated quantization host time per testbed window", "[.simbench]") {
  kvq::ModelConfig cfg;
  cfg.n_layers = 6;
  cfg.n_heads = 6;
  cfg.n_kv_heads = 6;
  cfg.head_dim = 64;
  cfg.hidden = 384;
  cfg.max_position = 1024;
  const int T = 1024, QD = cfg.q_dim(), KV = cfg.kv_dim();
  const uint64_t seed = kvq_test::test_seed(7);
  std::mt19937_64 rng(seed);
  std::vector<std::vector<float>> q, k, v;
  for (int l = 0; l < cfg.n_layers; ++l) {
    q.push_back(kvq_codec_test::make_rows(rng, T, QD));
    k.push_back(kvq_codec_test::make_rows(rng, T, KV));
    v.push_back(kvq_codec_test::make_rows(rng, T, KV));
  }
  // Calibrated parameters as a profile carries them (3 bits).
  SimOptions calib;
  for (int l = 0; l < cfg.n_layers; ++l) {
    CodecParams kp, vp;
    std::vector<float> lut;
    for (int i = 0; i < 8; ++i) lut.push_back(std::tanh(-1.6f + 3.2f * i / 7.0f) / std::tanh(1.6f));
    lut.front() = -1.0f;
    lut.back() = 1.0f;
    kp.tensors["lut"] = vp.tensors["lut"] = lut;
    std::vector<float> lo(KV), hi(KV);
    for (int c = 0; c < KV; ++c) {
      const float r = c % 13 == 5 ? 40.0f : 2.5f;
      lo[c] = -r;
      hi[c] = r;
    }
    kp.tensors["k_lo"] = lo;
    kp.tensors["k_hi"] = hi;
    calib.k_params.push_back(kp);
    calib.v_params.push_back(vp);
  }
  struct Row {
    const char* spec;
    bool calibrated;
  };
  const int reps = 3;
  std::printf("[simbench] seed %llu, %d threads, T=%d, %d layers x %d heads x %d\n",
              static_cast<unsigned long long>(seed), omp_get_max_threads(), T, cfg.n_layers,
              cfg.n_kv_heads, cfg.head_dim);
  for (const Row& r : {Row{"kvquant:bits=4", false}, Row{"kvquant:bits=3", false},
                       Row{"kvquant:bits=2", false}, Row{"kvquant:bits=3", true},
                       Row{"mikv:lo=int2", false}}) {
    SimQuantObserver obs(cfg, parse_codec_spec(r.spec), r.calibrated ? calib : SimOptions{});
    double best = 1e30, best_cpu = 1e30;
    for (int rep = 0; rep < reps; ++rep) {
      std::vector<std::vector<float>> kk = k, vv = v;
      const auto t0 = std::chrono::steady_clock::now();
      const std::clock_t c0 = std::clock();
      for (int l = 0; l < cfg.n_layers; ++l) {
        obs.on_qkv(l, 0, 0, kvq::ConstMatrixView{q[l].data(), T, QD, QD},
                   kvq::MatrixView{kk[l].data(), T, KV, KV}, kvq::MatrixView{vv[l].data(), T, KV, KV});
        obs.on_k_post_rope(l, 0, 0, kvq::ConstMatrixView{q[l].data(), T, QD, QD},
                           kvq::MatrixView{kk[l].data(), T, KV, KV});
      }
      const double ms =
          std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      best = std::min(best, ms);
      best_cpu = std::min(best_cpu, 1000.0 * static_cast<double>(std::clock() - c0) / CLOCKS_PER_SEC);
    }
    std::printf("[simbench] %-16s %-10s %8.1f ms/window wall, %8.1f ms CPU (best of %d)\n", r.spec,
                r.calibrated ? "calibrated" : "defaults", best, best_cpu, reps);
    REQUIRE(obs.stats().bits_per_element() > 0);
  }
}
