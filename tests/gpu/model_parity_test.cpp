// Whole-model checks of the CUDA backend: logits against the CPU reference (stories260K,
// testbed), against reference.json (Hugging Face), WikiText-2 perplexity, incremental
// decoding against the full forward, batching, hooks, greedy generation and the error paths
// (out of memory, unsupported shapes).
//
// Tolerances. The GPU rounds the GEMM inputs (normed activations, attention output, SwiGLU
// output), the KV cache and the weights of fp32 checkpoints to fp16: unit roundoff
// u = 2^-11 = 4.9e-4 at ~7 points per layer. Independent roundings add like a random walk,
// so logits move by about u * sqrt(7 L) relative (L = 6: ~3e-3) before any amplification.
// The gates are 1e-2 = 20 u for logits (relative L2 over the whole [n, vocab] block) and
// 0.2% for perplexity (issue 3); the measured values are printed so the margin shows.
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <memory>
#include <vector>

#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "lib/backend.h"
#include "lib/backend_factory.h"
#include "lib/cpu_backend.h"
#include "lib/cuda/cuda_backend.h"
#include "lib/generate.h"
#include "lib/model.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

namespace {

constexpr double kLogitRelTol = 1e-2;

double rel_err(const std::vector<float>& got, const std::vector<float>& ref, size_t off = 0, size_t n = 0) {
  if (n == 0) n = ref.size() - off;
  double num = 0, den = 0;
  for (size_t i = off; i < off + n; ++i) {
    const double d = double(got[i]) - ref[i];
    num += d * d;
    den += double(ref[i]) * ref[i];
  }
  return std::sqrt(num / den);
}

int argmax(const float* p, int n) {
  int b = 0;
  for (int i = 1; i < n; ++i)
    if (p[i] > p[b]) b = i;
  return b;
}

std::shared_ptr<const kvq::Model> testbed() {
  static auto m = kvq::load_model(kvq_test::shared_path("models/kvq-testbed-llama2-23m").string());
  return m;
}
std::shared_ptr<const kvq::Model> stories() {
  static auto m = kvq::load_model(kvq_test::shared_path("models/stories260K/stories260K.bin").string());
  return m;
}
nlohmann::json reference() {
  std::ifstream f(kvq_test::shared_path("models/kvq-testbed-llama2-23m/reference.json"));
  return nlohmann::json::parse(f);
}
std::vector<int32_t> wikitext_ids() {
  auto bytes = kvq_test::read_bytes(kvq_test::shared_path("models/kvq-testbed-llama2-23m/wikitext2_test.ids.u32"));
  std::vector<int32_t> ids(bytes.size() / 4);
  std::memcpy(ids.data(), bytes.data(), ids.size() * 4);
  return ids;
}

const std::vector<int32_t> kStoriesIds = {1, 403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317,
                                          426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295,
                                          433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426};

std::vector<float> full_logits(kvq::Backend& b, const std::vector<int32_t>& ids) {
  b.reset(1, static_cast<int>(ids.size()) + 8);
  return b.forward(ids, static_cast<int>(ids.size())).data;
}

}  // namespace

TEST_CASE("cuda model: stories260K logits and NLL match the CPU reference", "[gpu]") {
  auto cpu = kvq::make_cpu_backend(stories());
  auto gpu = kvq::make_cuda_backend(stories());
  std::printf("device: %s\n", gpu->name().c_str());
  const auto ref = full_logits(*cpu, kStoriesIds);
  const auto got = full_logits(*gpu, kStoriesIds);
  const double e = rel_err(got, ref);
  std::printf("[stories260K] GPU vs CPU logits: relative L2 error %.3g over %zu logits (gate %.0e)\n", e,
              ref.size(), kLogitRelTol);
  CHECK(e < kLogitRelTol);
  const auto nll = kvq::window_nll(*gpu, kStoriesIds, 1, static_cast<int>(kStoriesIds.size()));
  std::printf("[stories260K] GPU mean NLL %.6f (oracle 0.32410, fp32 weights; GPU rounds them to fp16)\n", nll.mean());
  // fp16 weights move the NLL by ~u relative per layer input; 0.32410 +- 1% covers it.
  CHECK(std::fabs(nll.mean() - 0.32410) < 3.3e-3);
}

TEST_CASE("cuda model: testbed logits vs CPU reference and reference.json (HF)", "[gpu]") {
  const auto refj = reference();
  const auto& lc = refj["logits_check"];
  std::vector<int32_t> ids = lc["input_ids"].get<std::vector<int32_t>>();
  auto cpu = kvq::make_cpu_backend(testbed());
  auto gpu = kvq::make_cuda_backend(testbed());
  const auto ref = full_logits(*cpu, ids);
  const auto got = full_logits(*gpu, ids);
  const int V = testbed()->config().vocab;
  const double e = rel_err(got, ref);
  std::printf("[testbed] GPU vs CPU logits (64 positions): relative L2 error %.3g\n", e);
  CHECK(e < kLogitRelTol);
  // HF numbers: fp32 with TF32 matmuls (~3e-4 abs). Our fp16 path: |logit| ~ 10 times the
  // relative error above -> a few 1e-2 absolute at most; gate 0.1 + 1% relative.
  const auto first8 = lc["last_logits_first8"].get<std::vector<double>>();
  const size_t last = (ids.size() - 1) * V;
  double worst = 0;
  for (int i = 0; i < 8; ++i) {
    const double d = std::fabs(got[last + i] - first8[i]);
    worst = std::max(worst, d);
    CHECK(d <= 0.1 + 0.01 * std::fabs(first8[i]));
  }
  std::printf("[testbed] last position first 8 logits: max |GPU - HF| = %.4g (CPU - HF: %.4g)\n", worst,
              [&] { double w = 0; for (int i = 0; i < 8; ++i) w = std::max(w, std::fabs(ref[last + i] - first8[i])); return w; }());
  if (const char* hf = std::getenv("KVQ_HF_REF")) {
    // Strict fp32 transformers logits of the same 64 ids (scripts/gpu/hf_reference.py).
    std::ifstream f(hf);
    const auto j = nlohmann::json::parse(f);
    auto bytes = kvq_test::read_bytes(j["logits_f32"].get<std::string>());
    std::vector<float> hfl(bytes.size() / 4);
    std::memcpy(hfl.data(), bytes.data(), hfl.size() * 4);
    REQUIRE(hfl.size() == got.size());
    const double eg = rel_err(got, hfl), ec = rel_err(ref, hfl);
    std::printf("[testbed] vs transformers fp32 logits: GPU relative L2 error %.3g, CPU %.3g (gate %.0e)\n", eg, ec,
                kLogitRelTol);
    CHECK(eg < kLogitRelTol);
  }
  const auto am = lc["argmax"].get<std::vector<int>>();
  int same_hf = 0, same_cpu = 0;
  for (size_t p = 0; p < ids.size(); ++p) {
    const int g = argmax(got.data() + p * V, V);
    same_hf += g == am[p];
    same_cpu += g == argmax(ref.data() + p * V, V);
  }
  std::printf("[testbed] greedy argmax agreement: GPU==HF %d/64, GPU==CPU %d/64\n", same_hf, same_cpu);
  // A near-tie may flip under fp16; more than two flips would be a bug.
  CHECK(same_hf >= 62);
}

TEST_CASE("cuda model: incremental decoding reproduces the full forward position by position", "[gpu]") {
  const auto ids = reference()["logits_check"]["input_ids"].get<std::vector<int32_t>>();
  auto gpu = kvq::make_cuda_backend(testbed());
  const int V = testbed()->config().vocab, N = static_cast<int>(ids.size());
  const auto full = full_logits(*gpu, ids);
  gpu->reset(1, N);
  // Uneven chunks: 17 (prefill kernel), then 1-token steps (decode kernel), then 5, 1, ...
  std::vector<float> inc;
  int p = 0;
  const int chunks[] = {17, 1, 1, 1, 5, 1, 3};
  for (int c = 0; p < N; ++c) {
    const int len = c < 7 ? std::min(chunks[c], N - p) : 1;
    std::vector<int32_t> chunk(ids.begin() + p, ids.begin() + p + len);
    auto lg = gpu->forward(chunk, len);
    inc.insert(inc.end(), lg.data.begin(), lg.data.end());
    p += len;
  }
  REQUIRE(gpu->cache_len(0) == N);
  double worst = 0;
  for (int i = 0; i < N; ++i) worst = std::max(worst, rel_err(inc, full, static_cast<size_t>(i) * V, V));
  std::printf("[testbed] incremental vs full forward: max per-position relative L2 error %.3g (gate %.0e)\n", worst,
              kLogitRelTol);
  CHECK(worst < kLogitRelTol);
}

TEST_CASE("cuda model: a batch of two sequences equals each alone, slots and truncate", "[gpu]") {
  const auto ids = reference()["logits_check"]["input_ids"].get<std::vector<int32_t>>();
  auto gpu = kvq::make_cuda_backend(testbed());
  const int V = testbed()->config().vocab;
  std::vector<int32_t> a(ids.begin(), ids.begin() + 20), b(ids.begin() + 30, ids.begin() + 50);
  gpu->reset(2, 64);
  auto la = gpu->forward(a, 20).data;
  gpu->truncate(0, 0);
  auto lb = gpu->forward(b, 20).data;
  gpu->reset(2, 64);
  std::vector<int32_t> both(b);
  both.insert(both.end(), a.begin(), a.end());
  const int slots[] = {1, 0};
  kvq::ForwardOptions opt;
  opt.slots = slots;
  auto l2 = gpu->forward(both, 20, opt).data;
  std::vector<float> rb(l2.begin(), l2.begin() + 20 * V), ra(l2.begin() + 20 * V, l2.end());
  const double ea = rel_err(ra, la), eb = rel_err(rb, lb);
  std::printf("[testbed] batch of 2 vs alone: relative errors %.3g, %.3g\n", ea, eb);
  CHECK(ea < 1e-3);  // same kernels, same GEMM shapes up to cuBLAS' choice of algorithm
  CHECK(eb < 1e-3);
  // Then decode one step on both slots at different lengths.
  gpu->truncate(1, 10);
  const int32_t next[] = {ids[10], ids[20]};
  const int s2[] = {1, 0};
  opt.slots = s2;
  opt.last_only = true;
  auto step = gpu->forward(next, 1, opt);
  REQUIRE(gpu->cache_len(1) == 11);
  REQUIRE(gpu->cache_len(0) == 21);
  auto cpu = kvq::make_cpu_backend(testbed());
  cpu->reset(1, 32);
  std::vector<int32_t> pre(ids.begin() + 30, ids.begin() + 40);
  pre.push_back(ids[10]);
  auto ref = cpu->forward(pre, 11, kvq::ForwardOptions{nullptr, true}).data;
  std::vector<float> got(step.data.begin(), step.data.begin() + V);
  const double e = rel_err(got, ref);
  std::printf("[testbed] decode step after truncate vs CPU: relative error %.3g\n", e);
  CHECK(e < kLogitRelTol);
}

TEST_CASE("cuda model: WikiText-2 perplexity of the testbed matches reference.json", "[gpu]") {
  const auto refj = reference();
  const auto ids = wikitext_ids();
  REQUIRE(ids.size() == 341469);
  auto gpu = kvq::make_cuda_backend(testbed());
  for (int T : {256, 1024}) {
    const int windows = T == 256 ? 32 : static_cast<int>(ids.size() / T);
    const double want = T == 256 ? refj["wikitext2_test_ppl_seqlen256_first32"].get<double>()
                                 : refj["wikitext2_test_ppl_seqlen1024"].get<double>();
    kvq::NllResult total;
    const int batch = 16;
    for (int w0 = 0; w0 < windows; w0 += batch) {
      const int rows = std::min(batch, windows - w0);
      std::vector<int32_t> chunk(ids.begin() + static_cast<size_t>(w0) * T,
                                 ids.begin() + static_cast<size_t>(w0 + rows) * T);
      total += kvq::window_nll(*gpu, chunk, rows, T);
    }
    const double ppl = std::exp(total.mean());
    std::printf("[testbed] WikiText-2 PPL seqlen %d, %d windows: GPU %.4f vs reference %.4f (%+.4f%%)\n", T,
                windows, ppl, want, 100 * (ppl / want - 1));
    CHECK(std::fabs(ppl / want - 1) < 0.002);
  }
}

namespace {

// Records pre-RoPE K of layer 1 and the post-RoPE Q of layer 0; optionally asks for POQ.
struct Recorder : kvq::ForwardObserver {
  bool poq = false, zero_v = false;
  std::vector<float> k1, q0;
  bool past_only() const override { return poq; }
  void on_qkv(int layer, int, int, kvq::ConstMatrixView, kvq::MatrixView k, kvq::MatrixView v) override {
    if (layer == 1)
      for (int r = 0; r < k.rows; ++r) k1.insert(k1.end(), k.row(r), k.row(r) + k.cols);
    if (zero_v)
      for (int r = 0; r < v.rows; ++r)
        for (int c = 0; c < v.cols; ++c) v.at(r, c) = 0.f;
  }
  void on_k_post_rope(int layer, int, int, kvq::ConstMatrixView q, kvq::MatrixView) override {
    if (layer == 0)
      for (int r = 0; r < q.rows; ++r) q0.insert(q0.end(), q.row(r), q.row(r) + q.cols);
  }
};

}  // namespace

TEST_CASE("cuda model: observer hooks see what the CPU hooks see, POQ identity is a no-op", "[gpu]") {
  const auto ids = reference()["logits_check"]["input_ids"].get<std::vector<int32_t>>();
  auto cpu = kvq::make_cpu_backend(testbed());
  auto gpu = kvq::make_cuda_backend(testbed());
  Recorder rc, rg;
  cpu->reset(1, 64);
  gpu->reset(1, 64);
  kvq::ForwardOptions oc, og;
  oc.observer = &rc;
  og.observer = &rg;
  cpu->forward(ids, 64, oc);
  auto plain = gpu->forward(ids, 64, og).data;
  REQUIRE(rg.k1.size() == rc.k1.size());
  const double ek = rel_err(rg.k1, rc.k1), eq = rel_err(rg.q0, rc.q0);
  std::printf("[testbed] hooks GPU vs CPU: layer-1 pre-RoPE K rel err %.3g, layer-0 post-RoPE Q %.3g\n", ek, eq);
  CHECK(ek < kLogitRelTol);
  CHECK(eq < kLogitRelTol);
  Recorder poq;
  poq.poq = true;
  gpu->reset(1, 64);
  og.observer = &poq;
  auto lp = gpu->forward(ids, 64, og).data;
  const double ep = rel_err(lp, plain);
  std::printf("[testbed] POQ with an identity observer vs no POQ: rel err %.3g\n", ep);
  CHECK(ep < 2e-3);  // only the diagonal term's rounding path differs
  Recorder zv;
  zv.zero_v = true;
  gpu->reset(1, 64);
  og.observer = &zv;
  auto lz = gpu->forward(ids, 64, og).data;
  CHECK(rel_err(lz, plain) > 0.05);  // writes through the hook reach the cache
}

TEST_CASE("cuda model: greedy generation matches the CPU reference and HF", "[gpu]") {
  const auto ids = reference()["logits_check"]["input_ids"].get<std::vector<int32_t>>();
  std::vector<int32_t> prompt(ids.begin(), ids.begin() + 16);
  auto gpu = kvq::make_cuda_backend(testbed());
  auto cpu = kvq::make_cpu_backend(testbed());
  kvq::GenerateOptions go;
  go.max_new_tokens = 64;
  go.stop_at_eos = false;
  const auto g = kvq::generate(*gpu, {prompt}, go)[0].tokens;
  const auto c = kvq::generate(*cpu, {prompt}, go)[0].tokens;
  size_t agree = 0;
  while (agree < std::min(g.size(), c.size()) && g[agree] == c[agree]) ++agree;
  std::printf("[testbed] greedy 64: GPU and CPU agree on the first %zu tokens\n", agree);
  CHECK(agree == 64);
  if (const char* hf = std::getenv("KVQ_HF_REF")) {
    std::ifstream f(hf);
    if (f) {
      const auto j = nlohmann::json::parse(f);
      const auto want = j["greedy64_fp32"].get<std::vector<int32_t>>();
      size_t a = 0;
      while (a < std::min(g.size(), want.size()) && g[a] == want[a]) ++a;
      std::printf("[testbed] greedy 64: GPU and transformers (fp32) agree on the first %zu tokens\n", a);
      CHECK(a == 64);
    }
  } else {
    std::printf("[testbed] KVQ_HF_REF not set: transformers greedy comparison skipped\n");
  }
}

TEST_CASE("cuda model: out of memory and unsupported shapes are clear errors", "[gpu]") {
  auto gpu = kvq::make_cuda_backend(testbed());
  try {
    gpu->reset(1 << 20, 1 << 20);  // 6 layers x 2^40 tokens x 768 bytes: far beyond any GPU
    FAIL("no exception");
  } catch (const kvq::ResourceError& e) {
    std::printf("OOM message: %s\n", e.what());
    CHECK_THAT(std::string(e.what()), kvq_test::HasSubstr("asked"));
    CHECK_THAT(std::string(e.what()), kvq_test::HasSubstr("free of"));
  }
  // The backend is still usable after the failed allocation.
  gpu->reset(1, 8);
  const int32_t t[] = {1, 2, 3};
  CHECK(gpu->forward(t, 3).n == 3);
  kvq::ModelConfig c = kvq::synthetic_config("testbed-23m");
  c.head_dim = 136;
  c.n_heads = 2;
  c.n_kv_heads = 2;
  CHECK_THROWS_AS(kvq::make_synthetic_cuda_backend(c, 1), kvq::UnsupportedError);
  CHECK_THROWS_AS(kvq::synthetic_config("gpt2"), kvq::InvalidArgument);
  const int32_t bad[] = {40000};
  CHECK_THROWS_AS(gpu->forward(bad, 1), kvq::InvalidArgument);
  CHECK_THROWS_AS(kvq::make_backend("nope", testbed()), kvq::InvalidArgument);
  CHECK(kvq::make_backend("auto", testbed())->name().rfind("cuda", 0) == 0);
}

TEST_CASE("cuda model: synthetic llama shapes run and are deterministic", "[gpu]") {
  kvq::ModelConfig c = kvq::synthetic_config("testbed-23m");
  c.n_kv_heads = 2;  // GQA 3:1
  auto a = kvq::make_synthetic_cuda_backend(c, 7);
  auto b = kvq::make_synthetic_cuda_backend(c, 7);
  const int32_t t[] = {1, 5, 9, 200, 31999};
  a->reset(1, 8);
  b->reset(1, 8);
  auto la = a->forward(t, 5).data, lb = b->forward(t, 5).data;
  CHECK(la == lb);
  double sq = 0;
  for (float v : la) sq += double(v) * v;
  CHECK(sq > 0);
}
