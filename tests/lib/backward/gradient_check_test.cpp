// Gradient check of the CPU backward pass: dL/d(k_proj output) and dL/d(v_proj output)
// against central finite differences of the loss, on stories260K (GQA 8/4, interleaved
// RoPE) and the testbed model (MHA, rotate-half RoPE, tied embeddings).
//
// Tolerance, derived (fp64 variant, so the bound is tight enough to test every element):
// with step h, FD(h) = g + c h^2 + O(h^4) + rounding. The truncation term is estimated from
// the data by Richardson: c h^2 ~= (FD(2h) - FD(h)) / 3. The rounding term: each loss is
// a double computation whose relative error we budget at 1e4 * 2^-53 (longest
// accumulation chains: vocab 32000 log-sum-exp, hidden, sequence, layers -- the worst-case
// gamma_N bound with N = 1e4 is generous for sums accumulated in double), so FD(h) carries
// at most 2 * 1e4 * 2^-53 |L| / (2h). The check is
//   |g - FD(h)| <= 2 * (|FD(2h) - FD(h)| / 3) + 1e4 * 2^-53 |L| / h + 1e-12 |g|.
// The fp32 production path is then compared with the fp64 one norm-wise per layer.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <vector>

#include "calib/rng.h"
#include "formats/error.h"
#include "lib/backend.h"
#include "lib/backward/cpu_gradient.h"
#include "lib/cpu_backend.h"
#include "lib/model.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;

namespace {

struct LayerGrads {
  std::vector<CpuGradient<double>::Mat> dk, dv;
};

template <typename S>
std::vector<std::pair<typename CpuGradient<S>::Mat, typename CpuGradient<S>::Mat>> grads_of(
    const CpuGradient<S>& g, const std::vector<int32_t>& tokens, double* loss) {
  std::vector<std::pair<typename CpuGradient<S>::Mat, typename CpuGradient<S>::Mat>> out(
      static_cast<size_t>(g.config().n_layers));
  *loss = g.backward(tokens, [&](const typename CpuGradient<S>::LayerView& v) {
    out[static_cast<size_t>(v.layer)] = {*v.dk_pre_rope, *v.dv};
  });
  return out;
}

// Runs the FD check on `per_layer` random elements of K and V per layer; returns the max
// relative error over elements whose gradient is not tiny.
double fd_check(const std::string& model_path, int n_tokens, int per_layer,
                std::vector<int> layers, uint64_t seed) {
  auto model = load_model(model_path);
  const CpuGradient<double> g(model);
  const ModelConfig& cfg = g.config();
  kvq::calib::SplitMix64 rng(seed);
  std::vector<int32_t> tokens(static_cast<size_t>(n_tokens));
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng.below(static_cast<uint64_t>(cfg.vocab)));
  double loss = 0;
  const auto grads = grads_of(g, tokens, &loss);
  REQUIRE(std::isfinite(loss));
  if (layers.empty()) {
    for (int l = 0; l < cfg.n_layers; ++l) layers.push_back(l);
  }
  const double h = 1e-3;
  const double round_term = 1e4 * 0x1.0p-53 * std::fabs(loss) / h;
  double max_rel = 0.0;
  for (int l : layers) {
    for (char kind : {'k', 'v'}) {
      const auto& G = kind == 'k' ? grads[static_cast<size_t>(l)].first : grads[static_cast<size_t>(l)].second;
      const double gmax = G.cwiseAbs().maxCoeff();
      for (int e = 0; e < per_layer; ++e) {
        CpuGradient<double>::Perturbation p;
        p.layer = l;
        p.kind = kind;
        // Any row, the last one too: its key/value only reach position n-1, whose logits
        // have no target, so its gradient must come out exactly 0.
        p.row = static_cast<int>(rng.below(static_cast<uint64_t>(n_tokens)));
        p.col = static_cast<int>(rng.below(static_cast<uint64_t>(cfg.kv_dim())));
        auto fd = [&](double step) {
          p.delta = step;
          const double up = g.loss(tokens, &p);
          p.delta = -step;
          const double dn = g.loss(tokens, &p);
          return (up - dn) / (2 * step);
        };
        const double f1 = fd(h), f2 = fd(2 * h);
        const double an = G(p.row, p.col);
        const double tol = 2 * std::fabs(f2 - f1) / 3 + round_term + 1e-12 * std::fabs(an);
        const double err = std::fabs(an - f1);
        // Reported: relative error against the Richardson extrapolation (4 FD(h) - FD(2h)) / 3,
        // whose truncation error is O(h^4), so the figure shows the gradient's accuracy
        // rather than the O(h^2) error of FD(h) itself.
        const double rich = (4 * f1 - f2) / 3;
        const double rel = std::fabs(an - rich) / std::max(std::fabs(an), 1e-300);
        // Relative error is only meaningful for elements well above the rounding floor.
        if (std::fabs(an) > 100 * round_term) max_rel = std::max(max_rel, rel);
        std::printf("[gradcheck] layer %d d%c[%3d,%3d] analytic % .10e  fd(h) % .10e  |err| %.2e  tol %.2e  rel(Richardson) %.2e\n",
                    l, kind, p.row, p.col, an, f1, err, tol, rel);
        INFO("layer " << l << " kind " << kind << " row " << p.row << " col " << p.col);
        CHECK(err <= tol);
        (void)gmax;
      }
    }
  }
  return max_rel;
}

}  // namespace

TEST_CASE("backward matches finite differences on stories260K (GQA, interleaved RoPE)",
          "[backward]") {
  const uint64_t seed = kvq_test::test_seed(31);
  const double rel = fd_check(kvq_test::shared_path("models/stories260K/stories260K.bin").string(),
                              23, 6, {}, seed);
  std::printf("[gradcheck] stories260K: max relative error (vs Richardson FD) %.3e\n", rel);
}

TEST_CASE("backward matches finite differences on the testbed (MHA, rotate-half, tied)",
          "[backward]") {
  const uint64_t seed = kvq_test::test_seed(32);
  const double rel = fd_check(kvq_test::shared_path("models/kvq-testbed-llama2-23m").string(), 7,
                              2, {0, 5}, seed);
  std::printf("[gradcheck] testbed: max relative error (vs Richardson FD) %.3e\n", rel);
}

TEST_CASE("fp32 backward agrees with fp64 and its loss with the CPU forward", "[backward]") {
  const uint64_t seed = kvq_test::test_seed(33);
  auto model = load_model(kvq_test::shared_path("models/stories260K/stories260K.bin").string());
  const CpuGradient<float> g32(model);
  const CpuGradient<double> g64(model);
  kvq::calib::SplitMix64 rng(seed);
  std::vector<int32_t> tokens(129);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng.below(512));
  double l32 = 0, l64 = 0;
  const auto a = grads_of(g32, tokens, &l32);
  const auto b = grads_of(g64, tokens, &l64);
  // The loss of the CPU reference forward (lib/cpu_backend) on the same window.
  auto backend = make_cpu_backend(model);
  const NllResult nll = window_nll(*backend, tokens, 1, static_cast<int>(tokens.size()));
  std::printf("[gradcheck] loss fp32 %.9f  fp64 %.12f  cpu forward %.9f\n", l32, l64, nll.mean());
  // fp32 loss vs fp64: a mean of fp32 log-softmaxes, each good to a few ulp of the
  // logits' magnitude; 1e-5 relative is ~170 ulp of fp32.
  CHECK(std::fabs(l32 - l64) <= 1e-5 * std::fabs(l64));
  CHECK(std::fabs(nll.mean() - l64) <= 1e-5 * std::fabs(l64));
  for (size_t l = 0; l < a.size(); ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      const auto& x = kind == 0 ? a[l].first : a[l].second;
      const auto& y = kind == 0 ? b[l].first : b[l].second;
      const double rel = (x.template cast<double>() - y).norm() / y.norm();
      std::printf("[gradcheck] layer %zu d%c fp32 vs fp64 norm-wise relative error %.3e\n", l,
                  kind == 0 ? 'k' : 'v', rel);
      // fp32 forward+backward through 5 layers: a budget of 2^13 ulp (5e-4) norm-wise,
      // far above what fp32 GEMMs of length <= 172 and 129-token softmaxes produce.
      CHECK(rel < 0x1.0p-24 * 8192);
    }
  }
}

TEST_CASE("backward rejects bad sequences with typed errors", "[backward]") {
  auto model = load_model(kvq_test::shared_path("models/stories260K/stories260K.bin").string());
  const CpuGradient<float> g(model);
  std::vector<int32_t> one{1};
  CHECK_THROWS_AS(g.loss(one), InvalidArgument);
  std::vector<int32_t> bad{1, 512, 3};
  CHECK_THROWS_AS(g.loss(bad), InvalidArgument);
  std::vector<int32_t> longer(513, 1);
  CHECK_THROWS_AS(g.loss(longer), InvalidArgument);
}
