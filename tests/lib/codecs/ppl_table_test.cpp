// The perplexity table of issue 4 (not run by ctest: hidden tag [.ppl]): the testbed model
// on WikiText-2 (ids in wikitext2_test.ids.u32, windows of 1024, simulated quantization,
// every token quantized) for every codec at 4/3/2 bits with default parameters.
//   KVQ_PPL_WINDOWS=N (default 8; 0 = all 333)  KVQ_PPL_SPECS="int4;kivi:bits=2" (optional)
//   OMP_NUM_THREADS=16 build/tests/kvq_test_lib "[.ppl]"
// Prints a markdown table on stdout: PPL, change vs the unquantized model, and the bits per
// element the caches held (measured: codes, scales, zeros, outliers, fp16 parts).
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <sstream>
#include <string>
#include <vector>

#include "lib/backend.h"
#include "lib/codecs/sim_observer.h"
#include "lib/cpu_backend.h"
#include "lib/model.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

TEST_CASE("perplexity table, testbed model, WikiText-2, seqlen 1024", "[.ppl]") {
  auto model = kvq::load_model(kvq_test::shared_path("models/kvq-testbed-llama2-23m").string());
  auto be = kvq::make_cpu_backend(model);
  const std::vector<uint8_t> raw = kvq_test::read_bytes(
      kvq_test::shared_path("models/kvq-testbed-llama2-23m/wikitext2_test.ids.u32"));
  std::vector<int32_t> ids(raw.size() / 4);
  std::memcpy(ids.data(), raw.data(), ids.size() * 4);
  const int T = 1024;
  const int all = static_cast<int>(ids.size() / T);
  int windows = 8;
  if (const char* w = std::getenv("KVQ_PPL_WINDOWS")) windows = std::atoi(w);
  if (windows <= 0 || windows > all) windows = all;
  std::vector<std::string> specs = {"none", "fp16", "fp8:e4m3", "fp8:e5m2", "q8_0", "int8", "q4_0"};
  for (int b : {4, 3, 2}) {
    const std::string s = std::to_string(b);
    for (const std::string& m :
         {"int" + s, "int" + s + ":axis=channel", "kivi:bits=" + s, "kvquant:bits=" + s,
          "kvquant:bits=" + s + ",outliers=0", "wkvquant:bits=" + s, "mikv:lo=int" + s,
          "hadamard:bits=" + s})
      specs.push_back(m);
  }
  if (const char* e = std::getenv("KVQ_PPL_SPECS")) {
    specs.clear();
    std::stringstream ss(e);
    for (std::string item; std::getline(ss, item, ';');)
      if (!item.empty()) specs.push_back(item);
  }
  std::printf("testbed kvq-testbed-llama2-23m, WikiText-2 test, %d windows of %d tokens (%lld "
              "predictions each), simulated, every token quantized unless the codec asks POQ\n\n",
              windows, T, static_cast<long long>(T - 1));
  std::printf("| --kv | bits/elem | PPL | dPPL |\n|---|---:|---:|---:|\n");
  double base = 0;
  for (const std::string& spec : specs) {
    std::unique_ptr<kvq::codecs::SimQuantObserver> obs;
    if (spec != "none")
      obs = std::make_unique<kvq::codecs::SimQuantObserver>(model->config(),
                                                            kvq::codecs::parse_codec_spec(spec));
    kvq::NllResult total;
    const auto t0 = std::chrono::steady_clock::now();
    for (int w = 0; w < windows; ++w)
      total += kvq::window_nll(*be, std::span<const int32_t>(ids.data() + static_cast<size_t>(w) * T, T),
                               1, T, obs.get());
    const double s = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    const double ppl = std::exp(total.mean());
    if (spec == "none") base = ppl;
    std::fprintf(stderr, "[ppl] %s: %.3f (%.1f s)\n", spec.c_str(), ppl, s);
    std::printf("| %s | %.3f | %.3f | %+.3f |\n", spec.c_str(),
                obs ? obs->stats().bits_per_element() : 32.0, ppl, base > 0 ? ppl - base : 0.0);
    std::fflush(stdout);
    REQUIRE(std::isfinite(ppl));
  }
}
