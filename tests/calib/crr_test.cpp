// WKVQuant CRR (calib/crr.h): the quantizer forward is the codec's arithmetic bit for bit;
// its straight-through backward and the window backward through attention, MLP and norms
// are the exact gradients of the frozen-residual surrogate (finite differences in fp64);
// the CRR loss goes down on stories260K and the testbed; runs are deterministic.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <string>
#include <vector>

#include "calib/crr.h"
#include "calib/rng.h"
#include "datasets/text_file.h"
#include "formats/error.h"
#include "formats/tokenizer.h"
#include "lib/backward/cpu_gradient.h"
#include "lib/codecs/codec.h"
#include "lib/model.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::calib;

namespace {

using MatD = CpuGradient<double>::Mat;
using MatF = CpuGradient<float>::Mat;

std::string stories() { return kvq_test::shared_path("models/stories260K/stories260K.bin").string(); }
std::string testbed() { return kvq_test::shared_path("models/kvq-testbed-llama2-23m").string(); }

template <typename M>
M random_mat(SplitMix64& r, int rows, int cols, double lo, double hi) {
  M m(rows, cols);
  for (Eigen::Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<typename M::Scalar>(lo + (hi - lo) * r.uniform());
  return m;
}

template <typename S>
Smoothing<S> random_smoothing(SplitMix64& r, int d) {
  Smoothing<S> p;
  for (int c = 0; c < d; ++c) {
    p.delta.push_back(static_cast<S>(r.uniform() - 0.5));
    p.s.push_back(static_cast<S>(0.5 + r.uniform()));
  }
  return p;
}

// Tokens of the calibration text (never the evaluation split).
std::vector<int32_t> calib_ids(const std::string& tokenizer, size_t chars) {
  const std::string text = datasets::read_text_file(kvq_test::shared_path("datasets/kvq-docs/calib.txt").string());
  return load_tokenizer(tokenizer)->encode(text.substr(0, chars));
}

}  // namespace

TEST_CASE("wkv_fake_quant is bit-exact with the wkvquant codec", "[crr]") {
  const uint64_t seed = kvq_test::test_seed(501);
  SplitMix64 r(seed);
  const codecs::KvShape shape{3, 16, 3};
  for (int bits : {2, 3, 4}) {
    for (int group : {16, 8}) {
      const int n = 37, D = shape.dim();
      MatF x = random_mat<MatF>(r, n, D, -3.0, 5.0);
      x.col(5).setConstant(2.5f);       // a constant channel
      x.row(7).setConstant(-1.25f);     // a constant token
      x(11, 3) = 40.0f;                 // an outlier
      const Smoothing<float> p = random_smoothing<float>(r, D);
      MatF ours;
      wkv_fake_quant<float>(x, p, bits, group, shape.head_dim, ours);
      codecs::CodecParams cp;
      cp.tensors["delta"] = p.delta;
      cp.tensors["s"] = p.s;
      const std::string spec = "wkvquant:bits=" + std::to_string(bits) + ",group=" + std::to_string(group);
      auto codec = codecs::make_codec(codecs::parse_codec_spec(spec), codecs::KvSide::kValue, 0, shape, &cp);
      MatF theirs = x;
      codec->simulate(MatrixView{theirs.data(), n, D, D});
      INFO(spec << " seed " << seed);
      CHECK((ours.array() == theirs.array()).all());
    }
  }
}

TEST_CASE("STE backward of the quantizer is the exact gradient of the frozen-residual surrogate", "[crr]") {
  const uint64_t seed = kvq_test::test_seed(502);
  SplitMix64 r(seed);
  const int n = 13, hd = 8, D = 2 * hd, group = 4, bits = 3;
  const MatD x = random_mat<MatD>(r, n, D, -2.0, 3.0);
  const MatD rho = random_mat<MatD>(r, n, D, -0.5, 0.5);
  const MatD w = random_mat<MatD>(r, n, D, -1.0, 1.0);  // L = sum w * out
  Smoothing<double> p = random_smoothing<double>(r, D);
  auto loss = [&](const MatD& xx, const Smoothing<double>& pp) {
    MatD out;
    wkv_fake_quant<double>(xx, pp, bits, group, hd, out, &rho);
    return (out.array() * w.array()).sum();
  };
  MatD dx = MatD::Zero(n, D);
  SmoothingGrad g;
  wkv_fake_quant_backward<double>(x, p, bits, group, hd, w, dx, g, &rho);
  // Central differences, h = 1e-6: the surrogate is rational in (x, delta, s) away from
  // argmin/argmax switches, so truncation ~ h^2 |f'''| ~ 1e-12 and rounding ~ eps |L| / h
  // ~ 1e-16 * 50 / 1e-6 = 5e-9: 1e-7 absolute is a bound with margin.
  const double h = 1e-6, tol = 1e-7;
  for (int c = 0; c < D; ++c) {
    Smoothing<double> a = p, b = p;
    a.delta[c] += h;
    b.delta[c] -= h;
    CHECK(std::fabs((loss(x, a) - loss(x, b)) / (2 * h) - g.delta[c]) <= tol);
    a = p;
    b = p;
    a.s[c] += h;
    b.s[c] -= h;
    CHECK(std::fabs((loss(x, a) - loss(x, b)) / (2 * h) - g.s[c]) <= tol);
  }
  for (int i = 0; i < n * D; i += 7) {
    MatD xa = x, xb = x;
    xa.data()[i] += h;
    xb.data()[i] -= h;
    CHECK(std::fabs((loss(xa, p) - loss(xb, p)) / (2 * h) - dx.data()[i]) <= tol);
  }
  // With rho = 0 the surrogate is the identity: no gradient to delta and s at all.
  const MatD zero = MatD::Zero(n, D);
  SmoothingGrad g0;
  MatD dx0 = MatD::Zero(n, D);
  wkv_fake_quant_backward<double>(x, p, bits, group, hd, w, dx0, g0, &zero);
  for (int c = 0; c < D; ++c) {
    CHECK(std::fabs(g0.delta[c]) <= 1e-12);
    CHECK(std::fabs(g0.s[c]) <= 1e-12);
  }
  CHECK((dx0 - w).cwiseAbs().maxCoeff() <= 1e-12);
}

TEST_CASE("CRR window gradient (POQ attention, MLP, norms) matches finite differences", "[crr]") {
  // stories260K: GQA 8/4, interleaved RoPE, head_dim 8; window of blocks 1..3, fp64.
  const uint64_t seed = kvq_test::test_seed(503);
  SplitMix64 r(seed);
  auto model = load_model(stories());
  const CpuGradient<double> g(model);
  const ModelConfig& cfg = g.config();
  const int n = 11, D = cfg.kv_dim(), hd = cfg.head_dim, group = hd / 2, bits = 2;
  std::vector<int32_t> ids(n);
  for (auto& t : ids) t = static_cast<int32_t>(r.below(static_cast<uint64_t>(cfg.vocab)));
  const MatD x0 = g.embed_tokens(ids);
  const MatD x = g.block_forward(0, x0, nullptr, nullptr);
  MatD target = x;
  for (int l = 1; l <= 3; ++l) target = g.block_forward(l, target, nullptr, nullptr);
  std::vector<BlockSmoothing<double>> params(3);
  std::map<int, std::pair<MatD, MatD>> rho;
  for (int b = 0; b < 3; ++b) {
    params[b].k = random_smoothing<double>(r, D);
    params[b].v = random_smoothing<double>(r, D);
    rho[1 + b] = {random_mat<MatD>(r, n, D, -0.5, 0.5), random_mat<MatD>(r, n, D, -0.5, 0.5)};
  }
  CrrHook<double> hook(1, &params, bits, group, hd);
  hook.set_frozen(rho);
  const double l0 = crr_window_loss<double>(g, 1, 3, x, target, hook, true);
  CHECK(l0 > 0.0);
  const auto grads = hook.grads();
  auto loss = [&]() { return crr_window_loss<double>(g, 1, 3, x, target, hook, false); };
  CHECK(loss() == l0);
  // The loss is a mean of |.| over 11 x 64 outputs; h = 1e-6 moves each output by ~1e-6,
  // far from the kinks of the nonzero differences (the first row's are exactly 0 and do
  // not move: token 0 reads only itself, at full precision). Truncation ~ h^2, rounding
  // ~ eps * |L| / h ~ 1e-11: tolerance 1e-8 absolute plus 1e-5 relative.
  const double h = 1e-6;
  int checked = 0;
  double worst = 0.0;
  for (int b = 0; b < 3; ++b) {
    for (int side = 0; side < 2; ++side) {
      for (int which = 0; which < 2; ++which) {
        for (int c = (b * 5 + side * 3 + which) % 7; c < D; c += 9) {
          Smoothing<double>& p = side == 0 ? params[b].k : params[b].v;
          std::vector<double>& v = which == 0 ? p.delta : p.s;
          const double keep = v[c];
          v[c] = keep + h;
          const double lp = loss();
          v[c] = keep - h;
          const double lm = loss();
          v[c] = keep;
          const double fd = (lp - lm) / (2 * h);
          const SmoothingGrad& gr = side == 0 ? grads[b].first : grads[b].second;
          const double an = which == 0 ? gr.delta[c] : gr.s[c];
          INFO("block " << 1 + b << (side ? " v" : " k") << (which ? " s" : " delta") << "[" << c << "] fd " << fd
                        << " backward " << an << " seed " << seed);
          CHECK(std::fabs(fd - an) <= 1e-8 + 1e-5 * std::fabs(fd));
          worst = std::max(worst, std::fabs(fd - an) / std::max(std::fabs(fd), 1e-8));
          ++checked;
        }
      }
    }
  }
  std::printf("crr window gradient: %d elements, worst relative error %.3g\n", checked, worst);
  CHECK(checked >= 40);
}

namespace {

// The CRR losses of every bit width of `r` over `blocks` windows (printed, labelled with
// `model`): never above the start (a window whose training ends higher keeps its starting
// parameters), strictly lower in at least `min_lower` windows and in total, and the fitted
// start of window 0 below the identity parameters.
void check_losses_fall(const char* model, const CrrResult& r, size_t blocks, int min_lower) {
  for (const CrrBitsResult& b : r.per_bits) {
    REQUIRE(b.loss_before.size() == blocks);
    int lower = 0;
    double sb = 0, sa = 0;
    for (size_t i = 0; i < blocks; ++i) {
      std::printf("%s crr b%d block %zu: %.6g -> %.6g\n", model, b.bits, i, b.loss_before[i], b.loss_after[i]);
      CHECK(b.loss_after[i] <= b.loss_before[i]);
      lower += b.loss_after[i] < b.loss_before[i];
      sb += b.loss_before[i];
      sa += b.loss_after[i];
    }
    CHECK(lower >= min_lower);
    CHECK(sa < sb);
    CHECK(b.loss_init < b.loss_identity);
    std::printf("%s crr b%d window 0: identity %.6g, init %.6g (%.1f s)\n", model, b.bits, b.loss_identity,
                b.loss_init, r.seconds);
  }
}

}  // namespace

TEST_CASE("CRR loss decreases on stories260K, deterministically", "[crr]") {
  auto model = load_model(stories());
  const CpuGradient<float> g(model);
  const std::vector<int32_t> ids = calib_ids(kvq_test::shared_path("models/stories260K/tok512.bin").string(), 20000);
  REQUIRE(ids.size() > 400);
  std::vector<std::span<const int32_t>> seqs;
  for (int s = 0; s < 3; ++s) seqs.push_back(std::span<const int32_t>(ids).subspan(static_cast<size_t>(s) * 97 + 1, 61));
  CrrOptions o;
  o.window = 3;
  o.epochs = 3;
  o.bits = {3, 2};
  const CrrResult a = run_crr(g, seqs, o);
  REQUIRE(a.per_bits.size() == 2);
  CHECK(a.per_bits[0].bits == 2);
  CHECK(a.window == 3);
  check_losses_fall("stories260K", a, 5, 3);
  const CrrResult b = run_crr(g, seqs, o);
  for (size_t i = 0; i < 2; ++i) {
    CHECK(a.per_bits[i].loss_after == b.per_bits[i].loss_after);
    for (size_t l = 0; l < 5; ++l) {
      CHECK(a.per_bits[i].layers[l].k.delta == b.per_bits[i].layers[l].k.delta);
      CHECK(a.per_bits[i].layers[l].v.s == b.per_bits[i].layers[l].v.s);
    }
  }
  CHECK_THROWS_AS(run_crr(g, {}, o), InvalidArgument);
  CrrOptions bad = o;
  bad.group = 3;
  CHECK_THROWS_AS(run_crr(g, seqs, bad), InvalidArgument);
}

TEST_CASE("CRR loss decreases on the testbed at 2 and 3 bits", "[crr]") {
  auto model = load_model(testbed());
  const CpuGradient<float> g(model);
  const std::vector<int32_t> ids = calib_ids(testbed(), 30000);
  REQUIRE(ids.size() > 600);
  std::vector<std::span<const int32_t>> seqs;
  // 2 x 48 tokens, 2 epochs: about 30 s of CPU on 2 cores (the CI budget is 60 s).
  for (int s = 0; s < 2; ++s) seqs.push_back(std::span<const int32_t>(ids).subspan(static_cast<size_t>(s) * 131 + 1, 48));
  CrrOptions o;
  o.epochs = 2;
  o.bits = {2, 3};
  const CrrResult res = run_crr(g, seqs, o);
  CHECK(res.window == 5);
  check_losses_fall("testbed", res, 6, 4);
}
