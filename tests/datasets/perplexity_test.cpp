// Window cutting and the perplexity evaluator's bookkeeping, on a fake backend whose
// NLL for (input, target) is a known function, so the expected PPL is worked out here in
// double independently of any model. The real models are checked end to end in
// tests/cli/eval_*.sh and tests/lib.
#include <cmath>
#include <random>
#include <string>
#include <vector>

#include "datasets/perplexity.h"
#include "datasets/windows.h"
#include "formats/error.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::datasets;
using kvq_test::HasSubstr;

namespace {

// nll(input, target) = 0.001 * ((input * 31 + target) % 997) + 0.5: positive, varied.
double fake_nll(int32_t in, int32_t tgt) { return 0.001 * ((in * 31 + tgt) % 997) + 0.5; }

class FakeBackend final : public Backend {
 public:
  explicit FakeBackend(int window) { cfg_.vocab = 5000; cfg_.max_position = window; }
  std::string name() const override { return "fake"; }
  const ModelConfig& config() const override { return cfg_; }
  void reset(int batch, int max_tokens) override {
    batch_ = batch;
    max_tokens_ = max_tokens;
    ++resets;
  }
  int batch() const override { return batch_; }
  int max_tokens() const override { return max_tokens_; }
  int cache_len(int) const override { return 0; }
  void truncate(int, int) override {}
  Logits forward(std::span<const int32_t>, int, const ForwardOptions&) override {
    throw UnsupportedError("fake", "forward");
  }
  NllResult forward_nll(std::span<const int32_t> tokens, std::span<const int32_t> targets, int n,
                        const ForwardOptions& opt) override {
    REQUIRE(tokens.size() == targets.size());
    REQUIRE(tokens.size() % static_cast<size_t>(n) == 0);
    calls.push_back(static_cast<int>(tokens.size()) / n);
    NllResult r;
    for (size_t i = 0; i < tokens.size(); ++i) {
      const double x = fake_nll(tokens[i], targets[i]);
      r.sum += x;
      r.count += 1;
      if (opt.per_token) r.per_token.push_back(static_cast<float>(x));
    }
    return r;
  }
  std::vector<int> calls;  // rows per forward_nll call
  int resets = 0;

 private:
  ModelConfig cfg_;
  int batch_ = 0;
  int max_tokens_ = 0;
};

}  // namespace

TEST_CASE("cut_windows: non-overlapping, tail dropped, capped", "[windows]") {
  // The testbed's reference counts for WikiText-2 test (341,469 ids).
  CHECK(cut_windows(341469, 256).size() == 1333);
  CHECK(cut_windows(341469, 512).size() == 666);
  CHECK(cut_windows(341469, 1024).size() == 333);
  CHECK(cut_windows(341469, 256, 32).size() == 32);
  const auto w = cut_windows(129, 7);
  REQUIRE(w.size() == 18);
  for (size_t i = 0; i < w.size(); ++i) {
    CHECK(w[i].begin == 7 * i);
    CHECK(w[i].length == 7);
  }
  CHECK(cut_windows(6, 7).empty());
  CHECK(cut_windows(7, 7).size() == 1);
  CHECK(cut_windows(100, 7, 0).empty());
  CHECK(cut_windows(100, 7, 1000).size() == 14);
  CHECK_THROWS_AS(cut_windows(100, 1), InvalidArgument);
}

TEST_CASE("evaluate_perplexity: PPL = exp(mean NLL over positions 1..L-1 of each window)", "[ppl]") {
  std::mt19937 rng(static_cast<uint32_t>(kvq_test::test_seed(2)));
  std::uniform_int_distribution<int32_t> tok(0, 4999);
  for (int seqlen : {2, 3, 7, 127, 129}) {
    for (int64_t max_windows : {int64_t{-1}, int64_t{1}, int64_t{5}}) {
      for (int batch : {1, 3}) {
        const size_t n = 1000 + static_cast<size_t>(seqlen) / 2;  // a tail that is dropped
        std::vector<int32_t> ids(n);
        for (auto& t : ids) t = tok(rng);
        int64_t windows = static_cast<int64_t>(n) / seqlen;
        if (max_windows >= 0) windows = std::min(windows, max_windows);
        double sum = 0;
        int64_t count = 0;
        for (int64_t w = 0; w < windows; ++w) {
          for (int i = 1; i < seqlen; ++i) {  // window w predicts its own positions 1..L-1
            const size_t at = static_cast<size_t>(w * seqlen + i);
            sum += fake_nll(ids[at - 1], ids[at]);
            ++count;
          }
        }
        FakeBackend be(4096);
        std::vector<PerplexityProgress> seen;
        PerplexityOptions opt;
        opt.seqlen = seqlen;
        opt.max_windows = max_windows;
        opt.batch = batch;
        opt.progress = [&](const PerplexityProgress& p) { seen.push_back(p); };
        const auto r = evaluate_perplexity(be, ids, opt);
        INFO("seqlen " << seqlen << " max_windows " << max_windows << " batch " << batch);
        CHECK(r.windows == windows);
        CHECK(r.tokens_scored == count);
        CHECK(r.tokens_scored == windows * (seqlen - 1));
        CHECK(r.tokens_available == static_cast<int64_t>(n));
        // Same additions in the same order would be exact; batching regroups them, so allow
        // the double rounding of ~1e4 additions of numbers < 2: relative 1e4 * 2^-53.
        CHECK(r.mean_nll == kvq_test::Approx(sum / count).epsilon(1e-12));
        CHECK(r.ppl == kvq_test::Approx(std::exp(sum / count)).epsilon(1e-12));
        // One mean per window, in stream order (fp32 per-token values: float rounding).
        REQUIRE(r.window_nll.size() == static_cast<size_t>(windows));
        for (int64_t w = 0; w < windows; ++w) {
          double ws = 0;
          for (int i = 1; i < seqlen; ++i) {
            const size_t at = static_cast<size_t>(w * seqlen + i);
            ws += static_cast<float>(fake_nll(ids[at - 1], ids[at]));
          }
          CHECK(r.window_nll[static_cast<size_t>(w)] == kvq_test::Approx(ws / (seqlen - 1)).epsilon(1e-12));
        }
        REQUIRE(!seen.empty());
        CHECK(seen.back().windows_done == windows);
        CHECK(seen.back().windows_total == windows);
        CHECK(seen.back().eta_s == 0.0);
        CHECK(seen.back().ppl == kvq_test::Approx(r.ppl).epsilon(1e-12));
        CHECK(seen.size() == static_cast<size_t>((windows + batch - 1) / batch));
        for (size_t k = 0; k < be.calls.size(); ++k) {
          CHECK(be.calls[k] == std::min<int64_t>(batch, windows - static_cast<int64_t>(k) * batch));
        }
      }
    }
  }
}

TEST_CASE("evaluate_perplexity rejects a too-long seqlen and a too-short stream", "[ppl][errors]") {
  FakeBackend be(64);
  std::vector<int32_t> ids(100, 3);
  PerplexityOptions opt;
  opt.seqlen = 65;
  CHECK_THROWS_AS(evaluate_perplexity(be, ids, opt), InvalidArgument);
  CHECK_THROWS_WITH(evaluate_perplexity(be, ids, opt), HasSubstr("window of 64"));
  opt.seqlen = 64;
  std::vector<int32_t> few(63, 3);
  CHECK_THROWS_WITH(evaluate_perplexity(be, few, opt), HasSubstr("63 tokens, fewer than one window of 64"));
  opt.batch = 0;
  CHECK_THROWS_AS(evaluate_perplexity(be, ids, opt), InvalidArgument);
}
