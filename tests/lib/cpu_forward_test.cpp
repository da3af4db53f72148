// The CPU forward pass on small random models: incremental decoding through the cache,
// batching, the observer hooks (pre/post-RoPE keys, modified values, past-only), attention
// probabilities, sliding windows, NLL, non-finite detection and bad calls.
//
// Tolerance for comparisons between two evaluation orders of the same maths (one chunk vs
// many, batched vs alone): only the summation order of fp32 dot products changes. A dot
// product of length K has |error| <= K * eps * sum|a_i b_i| (Higham's gamma_K, first
// order), and each of the 2 * n_layers residual sublayers adds one such error, amplified
// by O(1) gains in these models, so |diff| <= 2 * n_layers * K_max * eps * max|logit|,
// with K_max the longest reduction (hidden, intermediate, q_dim or context).
#include <algorithm>
#include <cfloat>
#include <cmath>
#include <cstdio>
#include <limits>
#include <vector>

#include "formats/error.h"
#include "lib/backend.h"
#include "lib/cpu_backend.h"
#include "lib/generate.h"
#include "lib/rope.h"
#include "lib/sampling.h"
#include "tests/catch.h"
#include "tests/lib/tiny_model.h"
#include "tests/support/test_support.h"

using kvq_test::HasSubstr;

namespace {

double order_tolerance(const kvq::ModelConfig& c, int context, const std::vector<float>& ref) {
  float mx = 0.0f;
  for (float v : ref) mx = std::max(mx, std::abs(v));
  const int k_max = std::max({c.hidden, c.intermediate, c.q_dim(), context});
  return 2.0 * c.n_layers * k_max * FLT_EPSILON * mx;
}

double max_abs_diff(const std::vector<float>& a, const std::vector<float>& b) {
  REQUIRE(a.size() == b.size());
  double m = 0.0;
  for (size_t i = 0; i < a.size(); ++i) m = std::max(m, std::abs(static_cast<double>(a[i]) - b[i]));
  return m;
}

std::vector<float> full_logits(kvq::Backend& be, const std::vector<int32_t>& toks,
                               kvq::ForwardObserver* obs = nullptr) {
  be.reset(1, static_cast<int>(toks.size()));
  kvq::ForwardOptions o;
  o.observer = obs;
  return be.forward(toks, static_cast<int>(toks.size()), o).data;
}

// A model config exercising every optional part.
kvq::ModelConfig variant(int which) {
  kvq::ModelConfig c = kvq_test::tiny_config();
  switch (which) {
    case 1:  // Qwen2-like biases, tied embedding
      c.qkv_bias = true;
      c.tie_embeddings = true;
      break;
    case 2:  // llama2.c-like interleaved RoPE, no GQA, o/mlp biases
      c.rope.layout = kvq::RopeLayout::kInterleaved;
      c.n_kv_heads = 4;
      c.o_bias = true;
      c.mlp_bias = true;
      break;
    case 3:  // llama3 scaling, GQA 4:1
      c.rope.scaling = kvq::RopeScalingType::kLlama3;
      c.rope.factor = 8.0;
      c.rope.original_max_position = 16;
      c.n_kv_heads = 1;
      break;
    default:
      break;
  }
  return c;
}

// Records hook arguments.
struct Recorder : kvq::ForwardObserver {
  bool probs = false;
  bool wants_attention_probs() const override { return probs; }
  struct Call {
    int layer, seq, pos0;
    std::vector<float> q, k, v;
  };
  std::vector<Call> qkv, post;
  std::vector<std::vector<float>> prob_rows;  // per call: the [n, pos0+n] matrix
  std::vector<int> prob_layer, prob_head, prob_pos0, prob_n;
  static std::vector<float> copy(kvq::ConstMatrixView m) {
    std::vector<float> out;
    for (int r = 0; r < m.rows; ++r) out.insert(out.end(), m.row(r), m.row(r) + m.cols);
    return out;
  }
  void on_qkv(int l, int s, int p, kvq::ConstMatrixView q, kvq::MatrixView k,
              kvq::MatrixView v) override {
    qkv.push_back({l, s, p, copy(q), copy({k.data, k.rows, k.cols, k.stride}),
                   copy({v.data, v.rows, v.cols, v.stride})});
  }
  void on_k_post_rope(int l, int s, int p, kvq::ConstMatrixView q, kvq::MatrixView k) override {
    post.push_back({l, s, p, copy(q), copy({k.data, k.rows, k.cols, k.stride}), {}});
  }
  void on_attention_probs(int l, int, int h, int p, kvq::ConstMatrixView pr) override {
    prob_rows.push_back(copy(pr));
    prob_layer.push_back(l);
    prob_head.push_back(h);
    prob_pos0.push_back(p);
    prob_n.push_back(pr.rows);
  }
};

// Multiplies values (and optionally pre-RoPE keys) by `scale`, optionally past-only.
struct Scaler : kvq::ForwardObserver {
  float v_scale = 1.0f, k_scale = 1.0f;
  bool poq = false;
  bool past_only() const override { return poq; }
  bool wants_k_post_rope() const override { return false; }
  void on_qkv(int, int, int, kvq::ConstMatrixView, kvq::MatrixView k, kvq::MatrixView v) override {
    for (int r = 0; r < v.rows; ++r)
      for (int c = 0; c < v.cols; ++c) {
        v.at(r, c) *= v_scale;
        k.at(r, c) *= k_scale;
      }
  }
};

}  // namespace

TEST_CASE("cpu: incremental decoding reproduces the full forward", "[lib][cpu]") {
  const uint64_t seed = kvq_test::test_seed(1234);
  for (int which = 0; which < 4; ++which) {
    for (kvq::DType dt : {kvq::DType::kF32, kvq::DType::kF16, kvq::DType::kBF16}) {
      const kvq::ModelConfig cfg = variant(which);
      auto be = kvq::make_cpu_backend(kvq_test::tiny_model(cfg, seed + which, dt));
      const int n = 37;
      const std::vector<int32_t> toks = kvq_test::random_tokens(n, cfg.vocab, seed + 7);
      const std::vector<float> full = full_logits(*be, toks);
      const double tol = order_tolerance(cfg, n, full);

      // One token at a time, then uneven chunks.
      for (const std::vector<int>& chunks :
           {std::vector<int>(n, 1), std::vector<int>{1, 5, 13, 2, 16}}) {
        be->reset(1, n);
        std::vector<float> inc;
        int at = 0;
        for (int c : chunks) {
          std::vector<int32_t> part(toks.begin() + at, toks.begin() + at + c);
          const kvq::Logits lg = be->forward(part, c);
          inc.insert(inc.end(), lg.data.begin(), lg.data.end());
          at += c;
        }
        REQUIRE(at == n);
        CHECK(be->cache_len(0) == n);
        const double d = max_abs_diff(full, inc);
        std::printf("[cpu] variant %d %s chunks %zu: max |full - incremental| = %.3e (tol %.3e)\n",
                    which, std::string(kvq::dtype_name(dt)).c_str(), chunks.size(), d, tol);
        CHECK(d <= tol);
      }
    }
  }
}

TEST_CASE("cpu: truncate rewinds the cache", "[lib][cpu]") {
  const uint64_t seed = kvq_test::test_seed(77);
  const kvq::ModelConfig cfg = variant(1);
  auto be = kvq::make_cpu_backend(kvq_test::tiny_model(cfg, seed));
  const std::vector<int32_t> a = kvq_test::random_tokens(20, cfg.vocab, seed + 1);
  const std::vector<int32_t> b = kvq_test::random_tokens(9, cfg.vocab, seed + 2);
  be->reset(1, 40);
  be->forward(std::span<const int32_t>(a.data(), 11), 11);
  be->forward(b, 9);  // a[0..11) + b
  be->truncate(0, 11);
  const kvq::Logits tail = be->forward(std::span<const int32_t>(a.data() + 11, 9), 9);
  const std::vector<float> full = full_logits(*be, a);
  const std::vector<float> want(full.begin() + 11 * cfg.vocab, full.end());
  CHECK(max_abs_diff(want, tail.data) <= order_tolerance(cfg, 20, want));
  CHECK_THROWS_AS(be->truncate(0, 21), kvq::InvalidArgument);
}

TEST_CASE("cpu: a batch of two sequences equals each alone", "[lib][cpu]") {
  const uint64_t seed = kvq_test::test_seed(99);
  const kvq::ModelConfig cfg = variant(0);
  auto be = kvq::make_cpu_backend(kvq_test::tiny_model(cfg, seed));
  const int n = 29;
  const std::vector<int32_t> a = kvq_test::random_tokens(n, cfg.vocab, seed + 1);
  const std::vector<int32_t> b = kvq_test::random_tokens(n, cfg.vocab, seed + 2);
  const std::vector<float> la = full_logits(*be, a), lb = full_logits(*be, b);
  std::vector<int32_t> both(a);
  both.insert(both.end(), b.begin(), b.end());
  be->reset(2, n);
  const kvq::Logits lg = be->forward(both, n);
  REQUIRE(lg.rows == 2);
  const size_t half = static_cast<size_t>(n) * cfg.vocab;
  // Rows are computed by the same kernels on the same numbers: the GEMM over 2n rows may
  // block differently from n rows, so the order tolerance applies.
  CHECK(max_abs_diff(la, std::vector<float>(lg.data.begin(), lg.data.begin() + half)) <=
        order_tolerance(cfg, n, la));
  CHECK(max_abs_diff(lb, std::vector<float>(lg.data.begin() + half, lg.data.end())) <=
        order_tolerance(cfg, n, lb));

  // Slots in reverse order: row 0 continues slot 1.
  be->reset(2, n + 1);
  const int slots[2] = {1, 0};
  kvq::ForwardOptions o;
  o.slots = slots;
  std::vector<int32_t> ba(b);
  ba.insert(ba.end(), a.begin(), a.end());
  const kvq::Logits rev = be->forward(ba, n, o);
  CHECK(max_abs_diff(lb, std::vector<float>(rev.data.begin(), rev.data.begin() + half)) <=
        order_tolerance(cfg, n, lb));
  // Continue only slot 1 (holding b) with one more token; slot 0 untouched.
  const int one[1] = {1};
  o.slots = one;
  const std::vector<int32_t> next = {5};
  be->forward(next, 1, o);
  CHECK(be->cache_len(1) == n + 1);
  CHECK(be->cache_len(0) == n);
}

TEST_CASE("cpu: interleaved RoPE model equals rotate-half model with permuted q/k rows",
          "[lib][cpu][rope]") {
  const uint64_t seed = kvq_test::test_seed(4242);
  kvq::ModelConfig half_cfg = variant(1);  // with q/k biases, so they are permuted too
  kvq::ModelConfig inter_cfg = half_cfg;
  inter_cfg.rope.layout = kvq::RopeLayout::kInterleaved;
  auto src = kvq_test::random_weights(half_cfg, seed);
  auto perm = std::make_shared<kvq_test::MemoryTensorSource>("permuted");
  const int d = half_cfg.head_dim;
  for (const kvq::TensorView& t : src->views()) {
    std::vector<float> f(static_cast<size_t>(t.numel()));
    kvq::convert_to_f32(t.dtype, t.data, f.data(), f.size());
    const bool qk = t.name.find("q_proj") != std::string::npos ||
                    t.name.find("k_proj") != std::string::npos;
    if (qk) {
      // Output channel 2i of each head <- rotate-half channel i, 2i+1 <- i + d/2.
      const int64_t cols = t.shape.size() == 2 ? t.shape[1] : 1;
      std::vector<float> g(f.size());
      for (int64_t r = 0; r < t.shape[0]; ++r) {
        const int64_t head = r / d, c = r % d;
        const int64_t src_r = head * d + (c % 2 == 0 ? c / 2 : c / 2 + d / 2);
        std::copy(f.begin() + src_r * cols, f.begin() + (src_r + 1) * cols, g.begin() + r * cols);
      }
      f.swap(g);
    }
    perm->add(t.name, t.shape, f);
  }
  auto a = kvq::make_cpu_backend(std::make_shared<kvq::Model>(half_cfg, src));
  auto b = kvq::make_cpu_backend(std::make_shared<kvq::Model>(inter_cfg, perm));
  const std::vector<int32_t> toks = kvq_test::random_tokens(31, half_cfg.vocab, seed + 3);
  const std::vector<float> la = full_logits(*a, toks), lb = full_logits(*b, toks);
  const double d_ab = max_abs_diff(la, lb);
  std::printf("[cpu] rotate-half vs interleaved (permuted): max |diff| = %.3e\n", d_ab);
  CHECK(d_ab <= order_tolerance(half_cfg, 31, la));
  // And the layouts are really different maths without the permutation.
  auto c = kvq::make_cpu_backend(std::make_shared<kvq::Model>(inter_cfg, src));
  CHECK(max_abs_diff(la, full_logits(*c, toks)) > 100 * order_tolerance(half_cfg, 31, la));
}

TEST_CASE("cpu: hooks see queries and keys before and after RoPE", "[lib][cpu][hooks]") {
  const uint64_t seed = kvq_test::test_seed(5);
  const kvq::ModelConfig cfg = variant(3);  // llama3-scaled RoPE, GQA 4:1
  auto be = kvq::make_cpu_backend(kvq_test::tiny_model(cfg, seed));
  const std::vector<int32_t> toks = kvq_test::random_tokens(19, cfg.vocab, seed + 1);
  Recorder rec;
  be->reset(1, 19);
  kvq::ForwardOptions o;
  o.observer = &rec;
  be->forward(std::span<const int32_t>(toks.data(), 12), 12, o);
  be->forward(std::span<const int32_t>(toks.data() + 12, 7), 7, o);
  REQUIRE(rec.qkv.size() == 2u * cfg.n_layers);
  REQUIRE(rec.post.size() == rec.qkv.size());
  kvq::RopeTable rope(cfg.rope, cfg.head_dim, 64);
  for (size_t i = 0; i < rec.qkv.size(); ++i) {
    const auto& pre = rec.qkv[i];
    const auto& pst = rec.post[i];
    CHECK(pre.layer == static_cast<int>(i % cfg.n_layers));
    CHECK(pre.pos0 == (i < static_cast<size_t>(cfg.n_layers) ? 0 : 12));
    CHECK(pre.seq == 0);
    const int n = static_cast<int>(pre.k.size()) / cfg.kv_dim();
    REQUIRE(static_cast<int>(pre.q.size()) == n * cfg.q_dim());
    std::vector<float> k = pre.k, q = pre.q;
    rope.apply(k.data(), n, cfg.n_kv_heads, cfg.kv_dim(), pre.pos0);
    rope.apply(q.data(), n, cfg.n_heads, cfg.q_dim(), pre.pos0);
    CHECK(k == pst.k);  // the same function on the same numbers: bit-identical
    CHECK(q == pst.q);
  }
}

TEST_CASE("cpu: observer-modified values change the logits, identity past-only does not",
          "[lib][cpu][hooks]") {
  const uint64_t seed = kvq_test::test_seed(6);
  const kvq::ModelConfig cfg = variant(0);
  auto be = kvq::make_cpu_backend(kvq_test::tiny_model(cfg, seed));
  const int n = 23;
  const std::vector<int32_t> toks = kvq_test::random_tokens(n, cfg.vocab, seed + 1);
  const std::vector<float> base = full_logits(*be, toks);
  const double tol = order_tolerance(cfg, n, base);

  Scaler zero_v;
  zero_v.v_scale = 0.0f;
  const std::vector<float> zeroed = full_logits(*be, toks, &zero_v);
  CHECK(max_abs_diff(base, zeroed) > 1000 * tol);

  Scaler identity_poq;
  identity_poq.poq = true;
  const double d_id = max_abs_diff(base, full_logits(*be, toks, &identity_poq));
  std::printf("[cpu] past-only identity observer: max |diff| = %.3e (tol %.3e)\n", d_id, tol);
  CHECK(d_id <= tol);

  // Past-only with values zeroed: position 0 attends only to itself, whose value is the
  // unmodified one, so its logits are the baseline's; later positions change.
  Scaler zero_poq;
  zero_poq.v_scale = 0.0f;
  zero_poq.k_scale = 0.5f;
  zero_poq.poq = true;
  const std::vector<float> poq = full_logits(*be, toks, &zero_poq);
  const size_t V = static_cast<size_t>(cfg.vocab);
  CHECK(max_abs_diff(std::vector<float>(base.begin(), base.begin() + V),
                     std::vector<float>(poq.begin(), poq.begin() + V)) <= tol);
  CHECK(max_abs_diff(std::vector<float>(base.begin() + V, base.end()),
                     std::vector<float>(poq.begin() + V, poq.end())) > 1000 * tol);
  // Without past-only, position 0 changes too (its own value is zeroed).
  CHECK(max_abs_diff(std::vector<float>(base.begin(), base.begin() + V),
                     std::vector<float>(zeroed.begin(), zeroed.begin() + V)) > 1000 * tol);

  // Past-only, token by token, gives the same as past-only in one chunk.
  be->reset(1, n);
  kvq::ForwardOptions o;
  o.observer = &zero_poq;
  std::vector<float> inc;
  for (int i = 0; i < n; ++i) {
    const kvq::Logits lg = be->forward(std::span<const int32_t>(toks.data() + i, 1), 1, o);
    inc.insert(inc.end(), lg.data.begin(), lg.data.end());
  }
  CHECK(max_abs_diff(poq, inc) <= order_tolerance(cfg, n, poq));
}

TEST_CASE("cpu: attention probabilities are causal distributions", "[lib][cpu][hooks]") {
  const uint64_t seed = kvq_test::test_seed(8);
  const kvq::ModelConfig cfg = variant(0);
  auto be = kvq::make_cpu_backend(kvq_test::tiny_model(cfg, seed));
  const int n = 70;  // more than one 64-query block
  const std::vector<int32_t> toks = kvq_test::random_tokens(n, cfg.vocab, seed + 1);
  Recorder full, inc;
  full.probs = inc.probs = true;
  full_logits(*be, toks, &full);
  REQUIRE(full.prob_rows.size() == static_cast<size_t>(cfg.n_layers) * cfg.n_heads);
  for (const std::vector<float>& p : full.prob_rows) {
    REQUIRE(p.size() == static_cast<size_t>(n) * n);
    for (int i = 0; i < n; ++i) {
      double s = 0.0;
      for (int j = 0; j < n; ++j) {
        const float w = p[static_cast<size_t>(i) * n + j];
        if (j > i) CHECK(w == 0.0f);
        CHECK(w >= 0.0f);
        s += w;
      }
      CHECK(std::abs(s - 1.0) <= (i + 1) * FLT_EPSILON);  // i+1 roundings of the normalization
    }
  }
  // Decoding token by token reports the same rows.
  be->reset(1, n);
  kvq::ForwardOptions o;
  o.observer = &inc;
  for (int i = 0; i < n; ++i) be->forward(std::span<const int32_t>(toks.data() + i, 1), 1, o);
  REQUIRE(inc.prob_rows.size() == static_cast<size_t>(n) * cfg.n_layers * cfg.n_heads);
  double worst = 0.0;
  for (size_t c = 0; c < inc.prob_rows.size(); ++c) {
    const int l = inc.prob_layer[c], h = inc.prob_head[c], p0 = inc.prob_pos0[c];
    const std::vector<float>& ref = full.prob_rows[static_cast<size_t>(l) * cfg.n_heads + h];
    for (int j = 0; j <= p0; ++j)
      worst = std::max(worst, static_cast<double>(std::abs(
                                  inc.prob_rows[c][static_cast<size_t>(j)] -
                                  ref[static_cast<size_t>(p0) * n + j])));
  }
  CHECK(worst <= 1e-5);  // probabilities in [0,1]: the order tolerance with max|x| = 1
}

TEST_CASE("cpu: sliding window limits the receptive field", "[lib][cpu]") {
  const uint64_t seed = kvq_test::test_seed(10);
  kvq::ModelConfig cfg = variant(0);
  const int W = 4, n = 24;
  auto weights = kvq_test::random_weights(cfg, seed);
  auto plain = kvq::make_cpu_backend(std::make_shared<kvq::Model>(cfg, weights));
  cfg.sliding_window = W;
  auto windowed = kvq::make_cpu_backend(std::make_shared<kvq::Model>(cfg, weights));
  std::vector<int32_t> a = kvq_test::random_tokens(n, cfg.vocab, seed + 1), b = a;
  b[0] = (a[0] + 1) % cfg.vocab;
  // After L layers position p sees positions >= p - L*(W-1): with L = 2, W = 4, positions
  // p > 6 cannot see token 0 through the window.
  const int reach = cfg.n_layers * (W - 1);
  const std::vector<float> wa = full_logits(*windowed, a), wb = full_logits(*windowed, b);
  const std::vector<float> pa = full_logits(*plain, a), pb = full_logits(*plain, b);
  const size_t V = static_cast<size_t>(cfg.vocab);
  auto tail = [&](const std::vector<float>& x) {
    return std::vector<float>(x.begin() + (reach + 1) * V, x.end());
  };
  CHECK(max_abs_diff(tail(wa), tail(wb)) == 0.0);
  CHECK(max_abs_diff(tail(pa), tail(pb)) > 0.0);
  // Position `reach` still sees token 0.
  CHECK(max_abs_diff(std::vector<float>(wa.begin() + reach * V, wa.begin() + (reach + 1) * V),
                     std::vector<float>(wb.begin() + reach * V, wb.begin() + (reach + 1) * V)) > 0.0);
  // A window covering the whole sequence changes nothing.
  cfg.sliding_window = n;
  auto wide = kvq::make_cpu_backend(std::make_shared<kvq::Model>(cfg, weights));
  CHECK(max_abs_diff(pa, full_logits(*wide, a)) == 0.0);
  // Incremental decoding with the window matches the full windowed pass.
  windowed->reset(1, n);
  std::vector<float> inc;
  for (int i = 0; i < n; i += 5) {
    const int c = std::min(5, n - i);
    const kvq::Logits lg = windowed->forward(std::span<const int32_t>(a.data() + i, c), c);
    inc.insert(inc.end(), lg.data.begin(), lg.data.end());
  }
  CHECK(max_abs_diff(wa, inc) <= order_tolerance(cfg, n, wa));
}

TEST_CASE("cpu: forward_nll equals log-softmax of the forward logits", "[lib][cpu]") {
  const uint64_t seed = kvq_test::test_seed(12);
  const kvq::ModelConfig cfg = variant(2);
  auto be = kvq::make_cpu_backend(kvq_test::tiny_model(cfg, seed));
  const int rows = 2, n = 131;  // more than two 64-row logit blocks
  const std::vector<int32_t> toks = kvq_test::random_tokens(rows * n, cfg.vocab, seed + 1);
  std::vector<int32_t> tgt = kvq_test::random_tokens(rows * n, cfg.vocab, seed + 2);
  for (int i = 0; i < rows * n; i += 3) tgt[static_cast<size_t>(i)] = -1;  // skipped
  be->reset(rows, n);
  const kvq::Logits lg = be->forward(toks, n);
  double want = 0.0;
  int64_t count = 0;
  std::vector<double> per(static_cast<size_t>(rows) * n, 0.0);
  for (int r = 0; r < rows; ++r)
    for (int i = 0; i < n; ++i) {
      const int32_t t = tgt[static_cast<size_t>(r) * n + i];
      if (t < 0) continue;
      const float* x = lg.at(r, i);
      double m = x[0];
      for (int c = 1; c < lg.vocab; ++c) m = std::max(m, static_cast<double>(x[c]));
      double s = 0.0;
      for (int c = 0; c < lg.vocab; ++c) s += std::exp(x[c] - m);
      per[static_cast<size_t>(r) * n + i] = m + std::log(s) - x[t];
      want += per[static_cast<size_t>(r) * n + i];
      ++count;
    }
  be->reset(rows, n);
  kvq::ForwardOptions o;
  o.per_token = true;
  const kvq::NllResult got = be->forward_nll(toks, tgt, n, o);
  CHECK(got.count == count);
  // Same logits; the fp32 log-softmax rounds each NLL once or twice around |lse| ~ 10.
  const double per_tol = 4 * 16.0 * FLT_EPSILON;
  CHECK(std::abs(got.sum - want) <= count * per_tol);
  REQUIRE(got.per_token.size() == per.size());
  for (size_t i = 0; i < per.size(); ++i) {
    if (tgt[i] < 0) {
      CHECK(std::isnan(got.per_token[i]));
    } else {
      CHECK(std::abs(got.per_token[i] - per[i]) <= per_tol);
    }
  }
  CHECK(be->cache_len(0) == n);
}

TEST_CASE("cpu: non-finite activations name the layer and leave the cache as it was",
          "[lib][cpu]") {
  const uint64_t seed = kvq_test::test_seed(13);
  const kvq::ModelConfig cfg = variant(0);
  auto be = kvq::make_cpu_backend(kvq_test::tiny_model(cfg, seed));
  struct Poison : kvq::ForwardObserver {
    void on_qkv(int layer, int, int, kvq::ConstMatrixView, kvq::MatrixView, kvq::MatrixView v) override {
      if (layer == 1) v.at(v.rows - 1, 0) = std::numeric_limits<float>::infinity();
    }
  } poison;
  const std::vector<int32_t> toks = kvq_test::random_tokens(9, cfg.vocab, seed + 1);
  be->reset(1, 20);
  be->forward(std::span<const int32_t>(toks.data(), 4), 4);
  kvq::ForwardOptions o;
  o.observer = &poison;
  try {
    be->forward(std::span<const int32_t>(toks.data() + 4, 5), 5, o);
    FAIL("expected an error");
  } catch (const kvq::Error& e) {
    CHECK_THAT(std::string(e.what()), HasSubstr("layer 1 (attention)"));
    CHECK_THAT(std::string(e.what()), HasSubstr("position 8"));
  }
  CHECK(be->cache_len(0) == 4);

  // Weights that overflow: an infinite MLP down-projection in layer 0.
  auto w = kvq_test::random_weights(cfg, seed);
  std::vector<float> big(static_cast<size_t>(cfg.hidden) * cfg.intermediate, 3e38f);
  w->add("model.layers.0.mlp.down_proj.weight", {cfg.hidden, cfg.intermediate}, big);
  auto bad = kvq::make_cpu_backend(std::make_shared<kvq::Model>(cfg, w));
  bad->reset(1, 4);
  CHECK_THROWS_WITH(bad->forward(std::span<const int32_t>(toks.data(), 3), 3),
                    HasSubstr("layer 0 (MLP)"));
}

TEST_CASE("cpu: forward_nll rejects targets before any work", "[lib][cpu]") {
  // lib/backend.cpp's check_nll_targets, which the CUDA backend calls too.
  const kvq::ModelConfig cfg = variant(0);
  auto be = kvq::make_cpu_backend(kvq_test::tiny_model(cfg, 1));
  be->reset(1, 8);
  const std::vector<int32_t> toks = {1, 2, 3};
  CHECK_THROWS_WITH(be->forward_nll(toks, std::vector<int32_t>{2, 3}, 3),
                    HasSubstr("2 targets for 3 tokens"));
  CHECK_THROWS_WITH(be->forward_nll(toks, std::vector<int32_t>{2, -1, cfg.vocab}, 3),
                    HasSubstr("target id " + std::to_string(cfg.vocab) + " at index 2 outside the vocabulary"));
  CHECK_THROWS_AS(be->forward_nll(toks, std::vector<int32_t>{2, 3, cfg.vocab + 7}, 3), kvq::InvalidArgument);
  CHECK(be->cache_len(0) == 0);  // nothing was appended
  const kvq::NllResult ok = be->forward_nll(toks, std::vector<int32_t>{2, -1, 0}, 3);
  CHECK(ok.count == 2);
}

TEST_CASE("cpu: forward refuses a slot out of range and a negative token id", "[lib][cpu]") {
  // lib/backend.cpp's forward_slots, which the CUDA backend calls too.
  const kvq::ModelConfig cfg = variant(0);
  auto be = kvq::make_cpu_backend(kvq_test::tiny_model(cfg, 1));
  be->reset(2, 8);
  const int far[1] = {2};
  kvq::ForwardOptions o;
  o.slots = far;
  CHECK_THROWS_WITH(be->forward(std::vector<int32_t>{1, 2}, 2, o), HasSubstr("slot 2 outside the 2 cache slots"));
  CHECK_THROWS_WITH(be->forward(std::vector<int32_t>{1, -3}, 2), HasSubstr("token id -3 at index 1"));
  CHECK_THROWS_WITH(be->forward(std::vector<int32_t>{1, 2, 3}, 2), HasSubstr("3 tokens do not form rows of n = 2"));
  CHECK(be->cache_len(0) == 0);
  CHECK(be->cache_len(1) == 0);
}

TEST_CASE("cpu: bad calls are InvalidArgument", "[lib][cpu]") {
  const kvq::ModelConfig cfg = variant(0);
  auto be = kvq::make_cpu_backend(kvq_test::tiny_model(cfg, 1));
  const std::vector<int32_t> toks = {1, 2, 3};
  CHECK_THROWS_WITH(be->forward(toks, 3), HasSubstr("reset"));
  be->reset(1, 4);
  CHECK_THROWS_AS(be->forward(toks, 2), kvq::InvalidArgument);  // 3 tokens, rows of 2
  const std::vector<int32_t> oov = {1, cfg.vocab};
  CHECK_THROWS_WITH(be->forward(oov, 2), HasSubstr("outside the vocabulary"));
  be->forward(toks, 3);
  CHECK_THROWS_WITH(be->forward(std::vector<int32_t>{1, 2}, 2), HasSubstr("exceed max_tokens"));
  CHECK(be->cache_len(0) == 3);
  const int dup[2] = {0, 0};
  kvq::ForwardOptions o;
  o.slots = dup;
  be->reset(2, 4);
  CHECK_THROWS_WITH(be->forward(std::vector<int32_t>{1, 2}, 1, o), HasSubstr("given twice"));
  CHECK_THROWS_AS(be->cache_len(2), kvq::InvalidArgument);
  CHECK_THROWS_AS(kvq::window_nll(*be, toks, 1, 1), kvq::InvalidArgument);
}

TEST_CASE("generate: greedy decoding equals argmax of full forwards, batched or not",
          "[lib][generate]") {
  const uint64_t seed = kvq_test::test_seed(14);
  kvq::ModelConfig cfg = variant(1);
  cfg.eos_id = -1;  // random weights: do not stop early here
  auto be = kvq::make_cpu_backend(kvq_test::tiny_model(cfg, seed));
  const std::vector<int32_t> p1 = kvq_test::random_tokens(5, cfg.vocab, seed + 1);
  const std::vector<int32_t> p2 = kvq_test::random_tokens(11, cfg.vocab, seed + 2);
  kvq::GenerateOptions go;
  go.max_new_tokens = 12;
  const std::vector<kvq::Generation> both = kvq::generate(*be, {p1, p2}, go);
  REQUIRE(both.size() == 2);
  for (int s = 0; s < 2; ++s) {
    std::vector<int32_t> seq = s == 0 ? p1 : p2;
    const size_t plen = seq.size();
    // Reference: re-run the whole sequence each step, take the last argmax.
    auto ref_be = kvq::make_cpu_backend(kvq_test::tiny_model(cfg, seed));
    for (int i = 0; i < go.max_new_tokens; ++i) {
      const std::vector<float> lg = full_logits(*ref_be, seq);
      seq.push_back(kvq::argmax(lg.data() + (seq.size() - 1) * cfg.vocab, cfg.vocab));
    }
    CHECK(both[static_cast<size_t>(s)].tokens == std::vector<int32_t>(seq.begin() + plen, seq.end()));
    CHECK_FALSE(both[static_cast<size_t>(s)].stopped_at_eos);
  }
  // Stops at EOS (and includes it): make the 3rd generated token of prompt 1 the EOS.
  cfg.eos_id = both[0].tokens[2];
  auto be2 = kvq::make_cpu_backend(kvq_test::tiny_model(cfg, seed));
  const std::vector<kvq::Generation> g = kvq::generate(*be2, {p1}, go);
  const auto first = std::find(both[0].tokens.begin(), both[0].tokens.end(), cfg.eos_id);
  CHECK(g[0].stopped_at_eos);
  CHECK(g[0].tokens == std::vector<int32_t>(both[0].tokens.begin(), first + 1));
}

TEST_CASE("sampling: argmax ties and NaNs, seeded sampling is reproducible", "[lib][sampling]") {
  const float nan = std::numeric_limits<float>::quiet_NaN();
  const std::vector<float> x = {nan, 1.0f, 3.0f, 3.0f, -2.0f};
  CHECK(kvq::argmax(x.data(), 5) == 2);
  const std::vector<float> all_nan = {nan, nan};
  CHECK(kvq::argmax(all_nan.data(), 2) == 0);
  kvq::SamplingOptions so;
  so.temperature = 1.0f;
  so.top_p = 0.9f;
  so.seed = kvq_test::test_seed(15);
  kvq::Sampler s1(so), s2(so);
  const std::vector<float> l = {0.0f, 5.0f, 4.0f, -10.0f};
  std::vector<int> counts(4, 0);
  for (int i = 0; i < 200; ++i) {
    const int32_t a = s1(l.data(), 4);
    CHECK(a == s2(l.data(), 4));
    counts[static_cast<size_t>(a)]++;
  }
  // p = softmax(0,5,4,-10) = (0.005, 0.727, 0.268, 2e-7); top-p 0.9 keeps ids 1 and 2 only.
  CHECK(counts[0] == 0);
  CHECK(counts[3] == 0);
  CHECK(counts[1] > counts[2]);
  CHECK(counts[2] > 0);
}
