// The CPU reference forward pass (see cpu_backend.h).
//
// Per layer, for the rows x chunk of new tokens stacked as X [rows*n, hidden]:
//   Xn = RMSNorm(X) * w;  Q, K, V = Xn W^T (+b)           (GEMMs over the whole block)
//   hooks, RoPE, hooks, append K/V to the cache            (per row, serial)
//   attention per (row, query head, block of 64 queries)   (OpenMP, Eigen inside)
//   X += O Wo^T (+b);  X += (silu(Xn Wg^T) * (Xn Wu^T)) Wd^T
// then the final RMSNorm and the lm_head, the latter in blocks of rows so that forward_nll
// never holds more than kLogitBlock x vocab logits.
//
// Arithmetic: fp32 everywhere (HF's fp32 path), except the RMSNorm mean of squares and
// the softmax denominators, accumulated in double (cheap, and removes summation-order
// noise from the reference). Softmax subtracts the row maximum; masked keys get weight 0.
// Sliding window (Mistral): query p sees keys j with p - W < j <= p, W keys including its
// own, as transformers' sliding_window_overlay (kv_idx > q_idx - sliding_window).
//
// Cost (perf, testbed model, one 1024-token window, 1 thread, SSE2 build): 62% Eigen GEBP
// kernels (the lm_head alone is 53% of the FLOPs), 5% expf in the softmax, ~8% page faults
// and memset of per-call temporaries; 2.2 CPU-seconds per window = 22 GFLOP/s.
#include "lib/cpu_backend.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>
#include <vector>

#include <Eigen/Dense>

#include "formats/error.h"
#include "lib/kv_cache.h"
#include "lib/rope.h"
#include "lib/weights.h"

namespace kvq {
namespace {

using RowMat = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
using Vec = Eigen::Matrix<float, 1, Eigen::Dynamic>;  // a row vector
using StridedMap = Eigen::Map<RowMat, 0, Eigen::OuterStride<>>;
using ConstStridedMap = Eigen::Map<const RowMat, 0, Eigen::OuterStride<>>;

// Query rows per attention task: bounds the score block to 64 x context floats per thread
// and lets causal blocks skip the keys after their last query.
constexpr int kQueryBlock = 64;
// Rows of logits materialized at once by forward_nll (64 x 32000 floats = 8 MiB).
constexpr int kLogitBlock = 64;

RowMat to_matrix(const TensorView& t) {
  std::vector<float> f = tensor_to_f32(t);
  RowMat m(t.shape.at(0), t.shape.at(1));
  std::copy(f.begin(), f.end(), m.data());
  return m;
}

Vec to_vector(const TensorView* t) {
  if (t == nullptr) return Vec();
  std::vector<float> f = tensor_to_f32(*t);
  Vec v(static_cast<Eigen::Index>(f.size()));
  std::copy(f.begin(), f.end(), v.data());
  return v;
}

struct LayerF32 {
  Vec attn_norm, mlp_norm;
  RowMat q, k, v, o, gate, up, down;
  Vec bq, bk, bv, bo, bgate, bup, bdown;  // empty when absent
};

// y = x W^T (+ b), W [out, in] row-major.
void linear(const RowMat& x, const RowMat& w, const Vec& b, RowMat& y) {
  y.noalias() = x * w.transpose();
  if (b.size() > 0) y.rowwise() += b;
}

void rms_norm(const RowMat& x, const Vec& w, float eps, RowMat& y) {
  y.resize(x.rows(), x.cols());
  const Eigen::Index rows = x.rows(), cols = x.cols();
#pragma omp parallel for schedule(static) if (rows > 16)
  for (Eigen::Index r = 0; r < rows; ++r) {
    const float* in = x.data() + r * cols;
    double ss = 0.0;
    for (Eigen::Index c = 0; c < cols; ++c) ss += static_cast<double>(in[c]) * in[c];
    const float inv = static_cast<float>(1.0 / std::sqrt(ss / static_cast<double>(cols) + eps));
    float* out = y.data() + r * cols;
    for (Eigen::Index c = 0; c < cols; ++c) out[c] = (in[c] * inv) * w[c];
  }
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(std::shared_ptr<const Model> model) : model_(std::move(model)) {
    if (!model_) throw InvalidArgument("cpu backend", "no model");
    cfg_ = model_->config();
    embed_ = to_matrix(model_->embedding());
    if (&model_->lm_head() != &model_->embedding()) lm_head_ = to_matrix(model_->lm_head());
    final_norm_ = to_vector(&model_->final_norm());
    layers_.resize(static_cast<size_t>(cfg_.n_layers));
    for (int l = 0; l < cfg_.n_layers; ++l) {
      const LayerWeights& w = model_->layer(l);
      LayerF32& f = layers_[static_cast<size_t>(l)];
      f.attn_norm = to_vector(w.attn_norm);
      f.mlp_norm = to_vector(w.mlp_norm);
      f.q = to_matrix(*w.q);
      f.k = to_matrix(*w.k);
      f.v = to_matrix(*w.v);
      f.o = to_matrix(*w.o);
      f.gate = to_matrix(*w.gate);
      f.up = to_matrix(*w.up);
      f.down = to_matrix(*w.down);
      f.bq = to_vector(w.q_bias);
      f.bk = to_vector(w.k_bias);
      f.bv = to_vector(w.v_bias);
      f.bo = to_vector(w.o_bias);
      f.bgate = to_vector(w.gate_bias);
      f.bup = to_vector(w.up_bias);
      f.bdown = to_vector(w.down_bias);
    }
  }

  std::string name() const override { return "cpu"; }
  const ModelConfig& config() const override { return cfg_; }

  void reset(int batch, int max_tokens) override {
    if (batch <= 0 || max_tokens <= 0)
      throw InvalidArgument("cpu backend", "batch " + std::to_string(batch) +
                                               " and max_tokens " + std::to_string(max_tokens) +
                                               " must be positive");
    if (rope_.max_pos() < max_tokens) rope_ = RopeTable(cfg_.rope, cfg_.head_dim, max_tokens);
    cache_.reset(cfg_.n_layers, batch, max_tokens, cfg_.kv_dim());
  }
  int batch() const override { return cache_.batch(); }
  int max_tokens() const override { return cache_.max_tokens(); }
  int cache_len(int slot) const override {
    check_slot(slot);
    return cache_.len(slot);
  }
  void truncate(int slot, int len) override {
    check_slot(slot);
    if (len < 0 || len > cache_.len(slot))
      throw InvalidArgument("cpu backend", "cannot truncate slot " + std::to_string(slot) +
                                               " of " + std::to_string(cache_.len(slot)) +
                                               " tokens to " + std::to_string(len));
    cache_.set_len(slot, len);
  }

  Logits forward(std::span<const int32_t> tokens, int n, const ForwardOptions& opt) override {
    const RowMat xn = hidden_states(tokens, n, opt);
    const int rows = static_cast<int>(xn.rows()) / n;
    const RowMat& head = lm_head();
    Logits out;
    out.rows = rows;
    out.n = opt.last_only ? 1 : n;
    out.vocab = cfg_.vocab;
    out.data.resize(static_cast<size_t>(rows) * out.n * cfg_.vocab);
    Eigen::Map<RowMat> lg(out.data.data(), static_cast<Eigen::Index>(rows) * out.n, cfg_.vocab);
    if (opt.last_only) {
      RowMat last(rows, cfg_.hidden);
      for (int r = 0; r < rows; ++r) last.row(r) = xn.row(static_cast<Eigen::Index>(r) * n + n - 1);
      lg.noalias() = last * head.transpose();
    } else {
      lg.noalias() = xn * head.transpose();
    }
    if (!lg.allFinite())
      throw Error(model_->path(), "non-finite logits after the lm_head although every "
                                  "layer's hidden state was finite",
                  "the lm_head or final norm weights hold huge values");
    return out;
  }

  NllResult forward_nll(std::span<const int32_t> tokens, std::span<const int32_t> targets,
                        int n, const ForwardOptions& opt) override {
    check_nll_targets(tokens, targets, cfg_.vocab);
    const RowMat xn = hidden_states(tokens, n, opt);
    const RowMat& head = lm_head();
    const Eigen::Index total = xn.rows();
    NllResult res;
    if (opt.per_token)
      res.per_token.assign(static_cast<size_t>(total), std::numeric_limits<float>::quiet_NaN());
    RowMat lg;
    for (Eigen::Index b0 = 0; b0 < total; b0 += kLogitBlock) {
      const Eigen::Index nb = std::min<Eigen::Index>(kLogitBlock, total - b0);
      bool any = false;
      for (Eigen::Index i = 0; i < nb; ++i) any |= targets[static_cast<size_t>(b0 + i)] >= 0;
      if (!any) continue;
      lg.noalias() = xn.middleRows(b0, nb) * head.transpose();
      for (Eigen::Index i = 0; i < nb; ++i) {
        const int32_t t = targets[static_cast<size_t>(b0 + i)];
        if (t < 0) continue;
        const float* row = lg.data() + i * lg.cols();
        float m = -std::numeric_limits<float>::infinity();
        bool finite = true;
        for (Eigen::Index c = 0; c < lg.cols(); ++c) {
          finite &= std::isfinite(row[c]);
          m = std::max(m, row[c]);
        }
        if (!finite)
          throw Error(model_->path(), "non-finite logits after the lm_head although every "
                                      "layer's hidden state was finite");
        double s = 0.0;
        for (Eigen::Index c = 0; c < lg.cols(); ++c) s += std::exp(row[c] - m);
        // log-softmax in fp32: lse = m + log(sum), nll = lse - logit[t].
        const float lse = m + static_cast<float>(std::log(s));
        const float nll = lse - row[t];
        res.sum += static_cast<double>(nll);
        res.count += 1;
        if (opt.per_token) res.per_token[static_cast<size_t>(b0 + i)] = nll;
      }
    }
    return res;
  }

 private:
  const RowMat& lm_head() const { return lm_head_.size() > 0 ? lm_head_ : embed_; }

  void check_slot(int slot) const {
    if (slot < 0 || slot >= cache_.batch())
      throw InvalidArgument("cpu backend", "slot " + std::to_string(slot) + " outside the " +
                                               std::to_string(cache_.batch()) +
                                               " cache slots (call reset(batch, max_tokens))");
  }

  // Throws naming the layer, the part of it and the first bad position.
  void check_finite(const RowMat& x, int layer, const char* part,
                    const std::vector<int>& slots, const std::vector<int>& pos0, int n) const {
    if (x.allFinite()) return;
    for (Eigen::Index i = 0; i < x.rows(); ++i) {
      if (x.row(i).allFinite()) continue;
      const int r = static_cast<int>(i / n), t = static_cast<int>(i % n);
      throw Error(model_->path(),
                  "non-finite hidden state first appears in layer " + std::to_string(layer) +
                      " (" + part + "), sequence slot " + std::to_string(slots[r]) +
                      ", position " + std::to_string(pos0[r] + t),
                  "the weights or the observer's keys/values overflow fp32");
    }
  }

  // Runs the decoder stack; returns the final-normed hidden states [rows*n, hidden] and
  // advances the slots' cache lengths by n (left unchanged when it throws).
  RowMat hidden_states(std::span<const int32_t> tokens, int n, const ForwardOptions& opt) {
    const std::vector<int> slots = forward_slots(*this, tokens, n, opt);
    const int rows = static_cast<int>(slots.size());
    std::vector<int> pos0(slots.size());
    for (int r = 0; r < rows; ++r) pos0[r] = cache_.len(slots[r]);

    ForwardObserver* obs = opt.observer;
    const bool hook_qkv = obs && obs->wants_qkv();
    const bool hook_post = obs && obs->wants_k_post_rope();
    const bool hook_probs = obs && obs->wants_attention_probs();
    const bool past_only = obs && obs->past_only();

    const Eigen::Index T = static_cast<Eigen::Index>(rows) * n;
    const int H = cfg_.hidden, QD = cfg_.q_dim(), KV = cfg_.kv_dim(), hd = cfg_.head_dim;
    const int n_heads = cfg_.n_heads, group = cfg_.group_size();
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const int window = cfg_.sliding_window.value_or(0);  // 0: no window

    RowMat x(T, H);
    for (Eigen::Index i = 0; i < T; ++i) x.row(i) = embed_.row(tokens[static_cast<size_t>(i)]);

    RowMat xn, q, k, v, k_raw, v_raw, attn(T, QD), tmp, gate, up;
    const int blocks_per_row = (n + kQueryBlock - 1) / kQueryBlock;
    std::vector<std::vector<float>> probs;  // [rows*n_heads] of [n, pos0+n], when hooked

    for (int l = 0; l < cfg_.n_layers; ++l) {
      const LayerF32& w = layers_[static_cast<size_t>(l)];
      rms_norm(x, w.attn_norm, cfg_.rms_norm_eps, xn);
      linear(xn, w.q, w.bq, q);
      linear(xn, w.k, w.bk, k);
      linear(xn, w.v, w.bv, v);
      if (past_only) {
        k_raw = k;
        v_raw = v;
      }
      for (int r = 0; r < rows; ++r) {
        const Eigen::Index r0 = static_cast<Eigen::Index>(r) * n;
        float* qr = q.data() + r0 * QD;
        float* kr = k.data() + r0 * KV;
        float* vr = v.data() + r0 * KV;
        if (hook_qkv)
          obs->on_qkv(l, slots[r], pos0[r], ConstMatrixView{qr, n, QD, QD}, MatrixView{kr, n, KV, KV},
                      MatrixView{vr, n, KV, KV});
        rope_.apply(qr, n, n_heads, QD, pos0[r]);
        rope_.apply(kr, n, cfg_.n_kv_heads, KV, pos0[r]);
        if (past_only) rope_.apply(k_raw.data() + r0 * KV, n, cfg_.n_kv_heads, KV, pos0[r]);
        if (hook_post)
          obs->on_k_post_rope(l, slots[r], pos0[r], ConstMatrixView{qr, n, QD, QD},
                              MatrixView{kr, n, KV, KV});
        std::copy(kr, kr + static_cast<int64_t>(n) * KV,
                  cache_.k(l, slots[r]) + static_cast<int64_t>(pos0[r]) * KV);
        std::copy(vr, vr + static_cast<int64_t>(n) * KV,
                  cache_.v(l, slots[r]) + static_cast<int64_t>(pos0[r]) * KV);
      }
      if (hook_probs) {
        probs.assign(static_cast<size_t>(rows) * n_heads, {});
        for (int r = 0; r < rows; ++r)
          for (int h = 0; h < n_heads; ++h)
            probs[static_cast<size_t>(r) * n_heads + h].assign(
                static_cast<size_t>(n) * (pos0[r] + n), 0.0f);
      }

      const int tasks = rows * n_heads * blocks_per_row;
#pragma omp parallel for schedule(dynamic)
      for (int task = 0; task < tasks; ++task) {
        const int r = task / (n_heads * blocks_per_row);
        const int h = (task / blocks_per_row) % n_heads;
        const int i0 = (task % blocks_per_row) * kQueryBlock;
        const int nb = std::min(kQueryBlock, n - i0);
        const int g = h / group;
        const int p_first = pos0[r] + i0, p_last = p_first + nb - 1;
        const int j0 = window > 0 ? std::max(0, p_first - window + 1) : 0;
        const int nk = p_last + 1 - j0;
        const Eigen::Index row0 = static_cast<Eigen::Index>(r) * n + i0;
        ConstStridedMap qb(q.data() + row0 * QD + h * hd, nb, hd, Eigen::OuterStride<>(QD));
        ConstStridedMap kc(cache_.k(l, slots[r]) + static_cast<int64_t>(j0) * KV + g * hd, nk, hd,
                           Eigen::OuterStride<>(KV));
        ConstStridedMap vc(cache_.v(l, slots[r]) + static_cast<int64_t>(j0) * KV + g * hd, nk, hd,
                           Eigen::OuterStride<>(KV));
        RowMat s(nb, nk);
        s.noalias() = (qb * kc.transpose()) * scale;
        for (int i = 0; i < nb; ++i) {
          const int p = p_first + i;  // this query's position; its own key is column p - j0
          float* srow = s.data() + static_cast<Eigen::Index>(i) * nk;
          if (past_only) {
            const float* kd = k_raw.data() + (row0 + i) * KV + g * hd;
            const float* qd = qb.data() + static_cast<Eigen::Index>(i) * QD;
            float dot = 0.0f;
            for (int c = 0; c < hd; ++c) dot += qd[c] * kd[c];
            srow[p - j0] = dot * scale;
          }
          const int lo = window > 0 ? std::max(j0, p - window + 1) : 0;  // first visible key
          float m = -std::numeric_limits<float>::infinity();
          for (int j = lo; j <= p; ++j) m = std::max(m, srow[j - j0]);
          double sum = 0.0;
          for (int j = j0; j < j0 + nk; ++j) {
            const bool visible = j >= lo && j <= p;
            const float e = visible ? std::exp(srow[j - j0] - m) : 0.0f;
            srow[j - j0] = e;
            sum += e;
          }
          const float inv = static_cast<float>(1.0 / sum);
          for (int j = 0; j < nk; ++j) srow[j] *= inv;
        }
        StridedMap ob(attn.data() + row0 * QD + h * hd, nb, hd, Eigen::OuterStride<>(QD));
        ob.noalias() = s * vc;
        if (past_only) {
          for (int i = 0; i < nb; ++i) {
            const int p = p_first + i;
            const float pw = s(i, p - j0);
            const float* vd = v_raw.data() + (row0 + i) * KV + g * hd;
            const float* vq = cache_.v(l, slots[r]) + static_cast<int64_t>(p) * KV + g * hd;
            for (int c = 0; c < hd; ++c) ob(i, c) += pw * (vd[c] - vq[c]);
          }
        }
        // The GEMM multiplies masked weights (0) by the values of later positions too, so a
        // non-finite value there (an observer's inf) would poison earlier queries as 0*inf.
        // Rare: redo such rows over their visible keys only.
        if (!ob.allFinite()) {
          for (int i = 0; i < nb; ++i) {
            if (ob.row(i).allFinite()) continue;
            const int p = p_first + i;
            const int lo = window > 0 ? std::max(j0, p - window + 1) : 0;
            ob.row(i).setZero();
            for (int j = lo; j <= p; ++j) {
              const float* vj = (past_only && j == p)
                                    ? v_raw.data() + (row0 + i) * KV + g * hd
                                    : cache_.v(l, slots[r]) + static_cast<int64_t>(j) * KV + g * hd;
              const float pw = s(i, j - j0);
              for (int c = 0; c < hd; ++c) ob(i, c) += pw * vj[c];
            }
          }
        }
        if (hook_probs) {
          std::vector<float>& pr = probs[static_cast<size_t>(r) * n_heads + h];
          const int width = pos0[r] + n;
          for (int i = 0; i < nb; ++i)
            std::copy(s.data() + static_cast<Eigen::Index>(i) * nk,
                      s.data() + static_cast<Eigen::Index>(i + 1) * nk,
                      pr.data() + static_cast<size_t>(i0 + i) * width + j0);
        }
      }
      if (hook_probs) {
        for (int r = 0; r < rows; ++r)
          for (int h = 0; h < n_heads; ++h) {
            const std::vector<float>& pr = probs[static_cast<size_t>(r) * n_heads + h];
            obs->on_attention_probs(l, slots[r], h, pos0[r],
                                    ConstMatrixView{pr.data(), n, pos0[r] + n, pos0[r] + n});
          }
      }

      linear(attn, w.o, w.bo, tmp);
      x += tmp;
      check_finite(x, l, "attention", slots, pos0, n);

      rms_norm(x, w.mlp_norm, cfg_.rms_norm_eps, xn);
      linear(xn, w.gate, w.bgate, gate);
      linear(xn, w.up, w.bup, up);
      // SwiGLU: silu(g) * u, silu(g) = g / (1 + exp(-g)).
      gate.array() = (gate.array() / (1.0f + (-gate.array()).exp())) * up.array();
      linear(gate, w.down, w.bdown, tmp);
      x += tmp;
      check_finite(x, l, "MLP", slots, pos0, n);
    }
    rms_norm(x, final_norm_, cfg_.rms_norm_eps, xn);
    for (int r = 0; r < rows; ++r) cache_.set_len(slots[r], pos0[r] + n);
    return xn;
  }

  std::shared_ptr<const Model> model_;
  ModelConfig cfg_;
  RowMat embed_, lm_head_;  // lm_head_ empty when tied
  Vec final_norm_;
  std::vector<LayerF32> layers_;
  RopeTable rope_;
  KvCache cache_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<const Model> model) {
  return std::make_unique<CpuBackend>(std::move(model));
}

}  // namespace kvq
