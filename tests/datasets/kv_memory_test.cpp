// kvq-eval's memory figures (datasets/kv_memory.h): byte sizes parsed exactly, KV bytes of
// a context against the bytes real caches hold after appending that many rows, the
// workspace formula at hand-worked shapes, and the budget bisection on linear costs.
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "datasets/kv_memory.h"
#include "formats/error.h"
#include "lib/codecs/codec.h"
#include "lib/codecs/sim_observer.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::datasets;
using kvq_test::HasSubstr;

namespace {

// A small GQA shape: 3 layers, 4 query heads over 2 KV heads of 32 (kv dim 64).
ModelConfig small_config() {
  ModelConfig c;
  c.n_layers = 3;
  c.hidden = 128;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 32;
  c.intermediate = 320;
  c.vocab = 1000;
  c.max_position = 4096;
  return c;
}

}  // namespace

TEST_CASE("parse_byte_size: binary and decimal units, exact bytes", "[kv_memory]") {
  CHECK(parse_byte_size("80GiB", "--memory-budget") == int64_t{80} << 30);  // 85 899 345 920
  CHECK(parse_byte_size("80 GiB", "--memory-budget") == int64_t{80} << 30);
  CHECK(parse_byte_size("80g", "--memory-budget") == int64_t{80} << 30);
  CHECK(parse_byte_size("24GB", "--memory-budget") == int64_t{24000000000});
  CHECK(parse_byte_size("512MiB", "--memory-budget") == int64_t{512} << 20);
  CHECK(parse_byte_size("1.5TiB", "--memory-budget") == int64_t{3} << 39);  // 1.5 x 2^40
  CHECK(parse_byte_size("123456", "--memory-budget") == 123456);
  CHECK(parse_byte_size("2kb", "--memory-budget") == 2000);
  for (const char* bad : {"", "GiB", "-1GB", "0", "0.1", "5XB", "1.2.3GB", "1e3GB", "nanGB"}) {
    try {
      parse_byte_size(bad, "--memory-budget");
      FAIL("no error for '" << bad << "'");
    } catch (const InvalidArgument& e) {
      CHECK_THAT(e.what(), HasSubstr("--memory-budget"));
    }
  }
}

TEST_CASE("kv_bytes_for_context: fp16 by hand, codecs equal to the bytes their caches hold", "[kv_memory]") {
  const ModelConfig cfg = small_config();
  // fp16: T x 2 sides x 3 layers x 64 x 2 bytes = 768 T.
  CHECK(kv_bytes_for_context(cfg, nullptr, 1, 0.0) == 768);
  CHECK(kv_bytes_for_context(cfg, nullptr, 1000, 0.0) == 768000);
  // The fp16 codec through the observer gives the same bytes.
  const codecs::SimQuantObserver fp16(cfg, codecs::parse_codec_spec("fp16"));
  CHECK(kv_bytes_for_context(cfg, &fp16, 1000, 0.0) == 768000);

  // Each codec against real caches: append T rows (fresh random data, printed seed) to a
  // cache of every layer and side and sum bytes(). Awkward T (1, 7, 129, 131) cross group
  // and residual boundaries.
  const uint64_t seed = kvq_test::test_seed(7001);
  std::printf("kv_bytes_for_context seed %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  for (const char* spec : {"int8", "int4:axis=channel,group=32", "int2", "kivi:bits=2,group=32,residual=64",
                           "q4_0", "fp8:e4m3", "wkvquant:bits=4"}) {
    const codecs::SimQuantObserver obs(cfg, codecs::parse_codec_spec(spec));
    for (int T : {1, 7, 129, 131}) {
      std::vector<float> rows(static_cast<size_t>(T) * cfg.kv_dim());
      for (auto& x : rows) x = normal(rng);
      const ConstMatrixView view{rows.data(), T, cfg.kv_dim(), cfg.kv_dim()};
      int64_t held = 0;
      for (int l = 0; l < cfg.n_layers; ++l) {
        for (const codecs::Codec* c : {&obs.k_codec(l), &obs.v_codec(l)}) {
          auto cache = c->make_cache();
          cache->append(view);
          held += static_cast<int64_t>(cache->bytes());
        }
      }
      INFO(spec << " T=" << T);
      CHECK(kv_bytes_for_context(cfg, &obs, T, 0.0) == held);
    }
  }
}

TEST_CASE("kv_bytes_for_context: a data-dependent codec uses the measured bits", "[kv_memory]") {
  const ModelConfig cfg = small_config();
  // KVQuant with key outliers: bytes_for is -1, the size depends on the data.
  const codecs::SimQuantObserver obs(cfg, codecs::parse_codec_spec("kvquant:bits=3,outliers=0.01"));
  REQUIRE(obs.k_codec(0).bytes_for(10) < 0);
  // 3.5 bits x (2 x 3 x 64 = 384 elements per token) / 8 = 168 bytes per token.
  CHECK(kv_bytes_for_context(cfg, &obs, 100, 3.5) == 16800);
  CHECK_THROWS_AS(kv_bytes_for_context(cfg, &obs, 100, 0.0), InvalidArgument);
}

TEST_CASE("activation_workspace_bytes: the CUDA step buffers by hand", "[kv_memory]") {
  const ModelConfig cfg = small_config();
  // per token: 6 x 128 + 4 x (128 + 128) + 4 x 128 + 10 x 320 + 4 = 768 + 1024 + 512 + 3200 + 4
  //          = 5508; logits block 1024 x 1000 x 4 = 4 096 000; last positions 2 x 128 = 256.
  CHECK(activation_workspace_bytes(cfg, 1) == 5508 + 4096000 + 256);
  CHECK(activation_workspace_bytes(cfg, 100) == 550800 + 4096000 + 256);
  // Prefill steps stop at 8192 tokens: longer contexts need no more.
  CHECK(activation_workspace_bytes(cfg, 8192) == activation_workspace_bytes(cfg, 100000));
  CHECK(activation_workspace_bytes(cfg, 8192) == 8192 * 5508 + 4096000 + 256);
  CHECK(activation_workspace_bytes(cfg, 1000, 64) == 64 * 5508 + 4096000 + 256);
}

TEST_CASE("longest_context: bisection on linear costs", "[kv_memory]") {
  auto kv = [](int64_t T) { return 10 * T; };
  auto ws = [](int64_t T) { return T < 50 ? T : int64_t{50}; };
  // 1000 + 10 T + min(T, 50) <= 2000: T = 90 gives 1000 + 900 + 50 = 1950, 91 gives 1960,
  // ... 95 gives 2000 (fits), 96 gives 2010.
  CHECK(longest_context(2000, 1000, kv, ws) == 95);
  CHECK(longest_context(2010, 1000, kv, ws) == 96);
  CHECK(longest_context(2009, 1000, kv, ws) == 95);
  CHECK(longest_context(1010, 1000, kv, ws) == 0);  // one token needs 1011
  CHECK(longest_context(1011, 1000, kv, ws) == 1);
  CHECK(longest_context(int64_t{1} << 60, 1000, kv, ws, 12345) == 12345);  // capped
  CHECK(longest_context(500, 1000, kv, ws) == 0);  // the weights alone do not fit

  // The testbed shape at fp16 in 80 GiB, by hand: weights 2 x 29 M params are tiny;
  // fp16 KV = 9216 B/token; workspace above 8192 tokens is constant, so
  // T = floor((budget - weights - ws) / 9216).
  ModelConfig tb = small_config();
  tb.n_layers = 6;
  tb.hidden = 384;
  tb.n_heads = 6;
  tb.n_kv_heads = 6;
  tb.head_dim = 64;
  tb.intermediate = 1024;
  tb.vocab = 32000;
  const int64_t budget = int64_t{80} << 30, weights = 2 * int64_t{29000000};
  const int64_t wsb = activation_workspace_bytes(tb, 8192);
  const int64_t T = longest_context(
      budget, weights, [&](int64_t t) { return kv_bytes_for_context(tb, nullptr, t, 0.0); },
      [&](int64_t t) { return activation_workspace_bytes(tb, t); });
  CHECK(kv_bytes_for_context(tb, nullptr, 1, 0.0) == 9216);
  CHECK(T == (budget - weights - wsb) / 9216);
}
