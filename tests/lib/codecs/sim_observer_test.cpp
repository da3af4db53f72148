// The simulated-quantization observer on stories260K (GQA 8/4 heads, head_dim 8,
// interleaved RoPE): every codec gives a finite NLL, 8-bit codecs stay close to the
// unquantized model (bound below), POQ keeps the diagonal at full precision, and the
// observer's bytes agree with the codecs' own formulas.
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "formats/error.h"
#include "lib/backend.h"
#include "lib/codecs/sim_observer.h"
#include "lib/cpu_backend.h"
#include "lib/model.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq::codecs;

namespace {

const std::vector<int32_t> kIds = {
    1,   403, 407, 261, 378, 432, 383, 286, 261, 376, 298, 315, 421, 395, 317,
    426, 338, 401, 396, 267, 337, 410, 408, 419, 292, 411, 322, 265, 282, 295,
    433, 426, 385, 328, 432, 358, 394, 261, 370, 432, 352, 266, 268, 388, 426};

struct Fixture {
  std::shared_ptr<const kvq::Model> model =
      kvq::load_model(kvq_test::shared_path("models/stories260K/stories260K.bin").string());
  std::unique_ptr<kvq::Backend> be = kvq::make_cpu_backend(model);

  kvq::NllResult nll(kvq::ForwardObserver* obs) {
    return kvq::window_nll(*be, kIds, 1, static_cast<int>(kIds.size()), obs, true);
  }
};

double mean_abs_diff(const kvq::NllResult& a, const kvq::NllResult& b) {
  double s = 0;
  for (size_t i = 0; i + 1 < a.per_token.size(); ++i) s += std::fabs(a.per_token[i] - b.per_token[i]);
  return s / static_cast<double>(a.per_token.size() - 1);
}

}  // namespace

TEST_CASE("stories260K runs through every codec with a finite NLL", "[codecs][sim]") {
  Fixture f;
  const kvq::NllResult ref = f.nll(nullptr);
  std::printf("[sim stories260K] %-44s NLL %.5f\n", "none (fp32)", ref.mean());
  for (const char* spec : {"fp16", "int8", "int4", "int3", "int2", "int4:axis=channel,group=8",
                           "kivi:bits=2,group=8,residual=16", "kivi:bits=4", "kvquant:bits=4",
                           "kvquant:bits=3", "kvquant:bits=2,qnorm=1", "wkvquant:bits=4",
                           "wkvquant:bits=2", "mikv:lo=int2,recent=8", "mikv:hi=int8,lo=int3",
                           "q8_0", "q4_0", "fp8:e4m3", "fp8:e5m2", "hadamard:bits=4",
                           "hadamard:bits=2"}) {
    SimQuantObserver obs(f.model->config(), parse_codec_spec(spec));
    const kvq::NllResult r = f.nll(&obs);
    std::printf("[sim stories260K] %-44s NLL %.5f  %.3f bits/elem\n", spec, r.mean(),
                obs.stats().bits_per_element());
    INFO(spec);
    REQUIRE(std::isfinite(r.mean()));
    REQUIRE(r.count == 44);
    // The observer saw 44 positions x 5 layers x 2 sides of 4 x 8 values.
    REQUIRE(obs.stats().elements == 44.0 * 5 * 2 * 32);
    // Its bytes are the codecs' own counts where those are data-independent.
    const int64_t kb = obs.k_codec(0).bytes_for(44), vb = obs.v_codec(0).bytes_for(44);
    if (kb >= 0 && vb >= 0) REQUIRE(obs.stats().bytes == 5.0 * static_cast<double>(kb + vb));
  }
}

TEST_CASE("8-bit codecs stay within the first-order bound of the 4-bit change", "[codecs][sim]") {
  // First order, a token's NLL change is linear in the K/V errors, and int8's rounding
  // step is 15/255 = 1/17 of int4's for the same groups (q8_0 vs q4_0: 7/127.. per block,
  // 1/16 of the step); so mean |dNLL| of the 8-bit codec must be below that of its
  // 4-bit sibling divided by 17 (16), times 2 for the second-order terms and the fact
  // that the errors are not at their maxima in the same places.
  Fixture f;
  const kvq::NllResult ref = f.nll(nullptr);
  for (const auto& [s8, s4, ratio] : std::vector<std::tuple<const char*, const char*, double>>{
           {"int8", "int4", 15.0 / 255.0}, {"q8_0", "q4_0", 1.0 / 16.0},
           {"kvquant:bits=8", "kvquant:bits=4", 15.0 / 255.0}}) {
    SimQuantObserver o8(f.model->config(), parse_codec_spec(s8));
    SimQuantObserver o4(f.model->config(), parse_codec_spec(s4));
    const double d8 = mean_abs_diff(f.nll(&o8), ref), d4 = mean_abs_diff(f.nll(&o4), ref);
    std::printf("[sim stories260K] mean |dNLL| %s %.3g, %s %.3g (ratio %.3f, bound %.3f)\n", s8, d8,
                s4, d4, d8 / d4, 2 * ratio);
    INFO(s8 << " vs " << s4);
    REQUIRE(d4 > 0);
    REQUIRE(d8 <= 2 * ratio * d4);
  }
}

TEST_CASE("POQ keeps the diagonal at full precision", "[codecs][sim]") {
  Fixture f;
  const kvq::NllResult ref = f.nll(nullptr);
  SimOptions poq;
  poq.past_only = true;
  SimQuantObserver a(f.model->config(), parse_codec_spec("int2"), poq);
  SimQuantObserver b(f.model->config(), parse_codec_spec("int2"));
  const kvq::NllResult ra = f.nll(&a), rb = f.nll(&b);
  REQUIRE(a.past_only());
  REQUIRE_FALSE(b.past_only());
  // Position 0 attends only to itself: with POQ it sees the exact key and value.
  REQUIRE(ra.per_token[0] == ref.per_token[0]);
  REQUIRE(rb.per_token[0] != ref.per_token[0]);
  // WKVQuant asks for POQ by itself.
  SimQuantObserver w(f.model->config(), parse_codec_spec("wkvquant"));
  REQUIRE(w.past_only());
  REQUIRE(f.nll(&w).per_token[0] == ref.per_token[0]);
}

TEST_CASE("chunked forwards continue the observer's caches, a gap is an error", "[codecs][sim]") {
  Fixture f;
  const int T = static_cast<int>(kIds.size());
  SimQuantObserver one(f.model->config(), parse_codec_spec("int4"));
  SimQuantObserver two(f.model->config(), parse_codec_spec("int4"));
  f.be->reset(1, T);
  kvq::ForwardOptions o1;
  o1.observer = &one;
  const kvq::Logits full = f.be->forward(kIds, T, o1);
  f.be->reset(1, T);
  kvq::ForwardOptions o2;
  o2.observer = &two;
  const kvq::Logits a = f.be->forward(std::span<const int32_t>(kIds.data(), 20), 20, o2);
  const kvq::Logits b = f.be->forward(std::span<const int32_t>(kIds.data() + 20, T - 20), T - 20, o2);
  // int4 per token encodes each token alone: chunking changes nothing.
  for (int i = 0; i < T - 20; ++i)
    for (int v = 0; v < full.vocab; ++v) REQUIRE(b.at(0, i)[v] == kvq_test::Approx(full.at(0, 20 + i)[v]).margin(1e-4));
  (void)a;
  // A chunk that does not continue what the observer saw is refused.
  SimQuantObserver fresh(f.model->config(), parse_codec_spec("int4"));
  kvq::ForwardOptions o3;
  o3.observer = &fresh;
  f.be->reset(1, T);
  f.be->forward(std::span<const int32_t>(kIds.data(), 5), 5, {});
  REQUIRE_THROWS_AS(f.be->forward(std::span<const int32_t>(kIds.data() + 5, 5), 5, o3),
                    kvq::InvalidArgument);
}
