// The CPU backward pass (see cpu_gradient.h).
//
// Per layer (X [n, hidden] the layer input, row t = position t):
//   A = rms(X) * w1          Q = A Wq^T, K = A Wk^T, V = A Wv^T   (+ biases)
//   Qr, Kr = RoPE(Q), RoPE(K)
//   per query head h (kv head g = h / group): P = softmax(Qr_h Kr_g^T / sqrt(d) + causal)
//   O_h = P V_g               X1 = X + O Wo^T
//   B = rms(X1) * w2          G = B Wg^T, U = B Wu^T, M = silu(G) * U, X2 = X1 + M Wd^T
// Backward, in reverse, with dY = dL/dX2:
//   dM = dY Wd; dU = dM silu(G); dG = dM U silu'(G), silu'(g) = s(g)(1 + g(1 - s(g)))
//   dX1 = dY + rms'(X1; dG Wg + dU Wu)
//   dO = dX1 Wo; per head: dP = dO_h V_g^T, dS = P (dP - rowsum(P dP)),
//     dQr_h = dS Kr_g / sqrt(d), dKr_g += dS^T Qr_h / sqrt(d), dV_g += P^T dO_h
//   dQ, dK = RoPE^T(dQr), RoPE^T(dKr)       (the rotation is orthogonal: rotate back)
//   dX = dX1 + rms'(X; dQ Wq + dK Wk + dV Wv)
// with rms'(x; dy) = r g - x r^3 (g . x) / hidden, g = dy * w, r = 1/sqrt(mean x^2 + eps).
// GQA: the query heads of one kv head write their dK/dV contributions into per-head
// buffers that are added in head order afterwards, so results do not depend on threads.
#include "lib/backward/cpu_gradient.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <string>

#include "formats/error.h"
#include "lib/rope.h"
#include "lib/weights.h"

namespace kvq {

namespace {

constexpr int kLogitBlock = 64;  // rows of logits materialised at once (64 x vocab)
// Below this many elements a loop runs on one thread: measured on stories260K (128
// tokens, 2 cores shared with other jobs), OpenMP regions over tiny loops made the
// calibration capture 50x slower (17.5 s vs 0.3 s) through thread wake-ups and spinning.
constexpr int64_t kParallelWork = int64_t{1} << 16;

template <typename M>
M to_mat(const TensorView& t) {
  const std::vector<float> f = tensor_to_f32(t);
  M m(t.shape.at(0), t.shape.at(1));
  for (size_t i = 0; i < f.size(); ++i) m.data()[i] = static_cast<typename M::Scalar>(f[i]);
  return m;
}

template <typename V>
V to_vec(const TensorView* t) {
  if (t == nullptr) return V();
  const std::vector<float> f = tensor_to_f32(*t);
  V v(static_cast<Eigen::Index>(f.size()));
  for (size_t i = 0; i < f.size(); ++i) v[static_cast<Eigen::Index>(i)] = static_cast<typename V::Scalar>(f[i]);
  return v;
}

template <typename Mat, typename Vec>
void linear(const Mat& x, const Mat& w, const Vec& b, Mat& y) {
  y.noalias() = x * w.transpose();
  if (b.size() > 0) y.rowwise() += b;
}

// y = x * r * w per row; r[t] = 1/sqrt(mean(x_t^2) + eps) with the mean in double.
template <typename Mat, typename Vec, typename S>
void rms_forward(const Mat& x, const Vec& w, float eps, Mat& y, std::vector<S>& r) {
  const Eigen::Index n = x.rows(), h = x.cols();
  y.resize(n, h);
  r.resize(static_cast<size_t>(n));
#pragma omp parallel for schedule(static) if (n * h >= kParallelWork)
  for (Eigen::Index t = 0; t < n; ++t) {
    double ss = 0.0;
    for (Eigen::Index c = 0; c < h; ++c) ss += static_cast<double>(x(t, c)) * static_cast<double>(x(t, c));
    const S inv = static_cast<S>(1.0 / std::sqrt(ss / static_cast<double>(h) + eps));
    r[static_cast<size_t>(t)] = inv;
    for (Eigen::Index c = 0; c < h; ++c) y(t, c) = (x(t, c) * inv) * w[c];
  }
}

// dx = r g - x r^3 (g . x) / h, g = dy * w (the dot in double).
template <typename Mat, typename Vec, typename S>
void rms_backward(const Mat& x, const Vec& w, const std::vector<S>& r, const Mat& dy, Mat& dx) {
  const Eigen::Index n = x.rows(), h = x.cols();
  dx.resize(n, h);
#pragma omp parallel for schedule(static) if (n * h >= kParallelWork)
  for (Eigen::Index t = 0; t < n; ++t) {
    const S rt = r[static_cast<size_t>(t)];
    double dot = 0.0;
    for (Eigen::Index c = 0; c < h; ++c) dot += static_cast<double>(dy(t, c) * w[c]) * static_cast<double>(x(t, c));
    const S coef = static_cast<S>(static_cast<double>(rt) * rt * rt * dot / static_cast<double>(h));
    for (Eigen::Index c = 0; c < h; ++c) dx(t, c) = rt * (dy(t, c) * w[c]) - x(t, c) * coef;
  }
}

// Row i of `sc` (scores of query i against keys 0..n-1) becomes the causal softmax over keys
// max(0, i - window + 1)..i (window <= 0: all of 0..i), zero elsewhere; sums in double. The
// forward pass and the backward pass's recomputation share it so they see the same numbers.
template <typename Mat>
void causal_softmax_rows(Mat& sc, int window) {
  using S = typename Mat::Scalar;
  const int n = static_cast<int>(sc.rows());
  for (int i = 0; i < n; ++i) {
    const int lo = window > 0 ? std::max(0, i - window + 1) : 0;
    S m = -std::numeric_limits<S>::infinity();
    for (int j = lo; j <= i; ++j) m = std::max(m, sc(i, j));
    double sum = 0.0;
    for (int j = 0; j < static_cast<int>(sc.cols()); ++j) {
      const S e = (j >= lo && j <= i) ? static_cast<S>(std::exp(sc(i, j) - m)) : S(0);
      sc(i, j) = e;
      sum += static_cast<double>(e);
    }
    const S inv = static_cast<S>(1.0 / sum);
    for (int j = 0; j <= i; ++j) sc(i, j) *= inv;
  }
}

}  // namespace

template <typename S>
CpuGradient<S>::CpuGradient(std::shared_ptr<const Model> model) : model_(std::move(model)) {
  if (!model_) throw InvalidArgument("backward", "no model");
  cfg_ = model_->config();
  embed_ = to_mat<Mat>(model_->embedding());
  if (&model_->lm_head() != &model_->embedding()) lm_head_ = to_mat<Mat>(model_->lm_head());
  final_norm_ = to_vec<Vec>(&model_->final_norm());
  layers_.resize(static_cast<size_t>(cfg_.n_layers));
  for (int l = 0; l < cfg_.n_layers; ++l) {
    const LayerWeights& w = model_->layer(l);
    Layer& f = layers_[static_cast<size_t>(l)];
    f.attn_norm = to_vec<Vec>(w.attn_norm);
    f.mlp_norm = to_vec<Vec>(w.mlp_norm);
    f.q = to_mat<Mat>(*w.q);
    f.k = to_mat<Mat>(*w.k);
    f.v = to_mat<Mat>(*w.v);
    f.o = to_mat<Mat>(*w.o);
    f.gate = to_mat<Mat>(*w.gate);
    f.up = to_mat<Mat>(*w.up);
    f.down = to_mat<Mat>(*w.down);
    f.bq = to_vec<Vec>(w.q_bias);
    f.bk = to_vec<Vec>(w.k_bias);
    f.bv = to_vec<Vec>(w.v_bias);
    f.bo = to_vec<Vec>(w.o_bias);
    f.bgate = to_vec<Vec>(w.gate_bias);
    f.bup = to_vec<Vec>(w.up_bias);
    f.bdown = to_vec<Vec>(w.down_bias);
  }
  // The same angles as lib/rope (double, rounded once to S).
  const std::vector<double> inv = rope_inv_freq(cfg_.rope, cfg_.head_dim);
  const int half = cfg_.head_dim / 2;
  const int maxp = std::max(cfg_.max_position, 2);
  cos_.resize(static_cast<size_t>(maxp) * half);
  sin_.resize(cos_.size());
  for (int p = 0; p < maxp; ++p) {
    for (int i = 0; i < half; ++i) {
      const double a = static_cast<double>(p) * inv[static_cast<size_t>(i)];
      cos_[static_cast<size_t>(p) * half + i] = static_cast<S>(std::cos(a));
      sin_[static_cast<size_t>(p) * half + i] = static_cast<S>(std::sin(a));
    }
  }
}

template <typename S>
void CpuGradient<S>::check_tokens(std::span<const int32_t> tokens) const {
  if (tokens.size() < 2) {
    throw InvalidArgument("backward", "a sequence needs at least 2 tokens (got " +
                                          std::to_string(tokens.size()) + ")");
  }
  if (static_cast<int64_t>(tokens.size()) > std::max(cfg_.max_position, 2)) {
    throw InvalidArgument("backward", std::to_string(tokens.size()) +
                                          " tokens exceed the model's window of " +
                                          std::to_string(cfg_.max_position));
  }
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (tokens[i] < 0 || tokens[i] >= cfg_.vocab) {
      throw InvalidArgument("backward", "token id " + std::to_string(tokens[i]) + " at index " +
                                            std::to_string(i) + " outside the vocabulary of " +
                                            std::to_string(cfg_.vocab));
    }
  }
}

template <typename S>
typename CpuGradient<S>::Mat CpuGradient<S>::embed(std::span<const int32_t> tokens) const {
  Mat x(static_cast<Eigen::Index>(tokens.size()), cfg_.hidden);
  for (size_t i = 0; i < tokens.size(); ++i) x.row(static_cast<Eigen::Index>(i)) = embed_.row(tokens[i]);
  return x;
}

template <typename S>
void CpuGradient<S>::rope(Mat& x, int heads, bool inverse) const {
  const int hd = cfg_.head_dim, half = hd / 2;
  const bool rotate_half = cfg_.rope.layout == RopeLayout::kRotateHalf;
  const Eigen::Index n = x.rows();
#pragma omp parallel for schedule(static) if (n * x.cols() >= kParallelWork)
  for (Eigen::Index t = 0; t < n; ++t) {
    const S* c = cos_.data() + static_cast<size_t>(t) * half;
    const S* s = sin_.data() + static_cast<size_t>(t) * half;
    S* row = x.data() + t * x.cols();
    for (int h = 0; h < heads; ++h) {
      S* v = row + static_cast<int64_t>(h) * hd;
      for (int i = 0; i < half; ++i) {
        const int ia = rotate_half ? i : 2 * i;
        const int ib = rotate_half ? i + half : 2 * i + 1;
        const S a = v[ia], b = v[ib];
        // forward: (a c - b s, b c + a s); inverse = transpose: (a c + b s, b c - a s)
        const S sn = inverse ? -s[i] : s[i];
        v[ia] = a * c[i] - b * sn;
        v[ib] = b * c[i] + a * sn;
      }
    }
  }
}

template <typename S>
typename CpuGradient<S>::Mat CpuGradient<S>::layer_forward(int l, const Mat& x, Cache* cache,
                                                           const Perturbation* p, KvHook* hook) const {
  const Layer& w = layers_[static_cast<size_t>(l)];
  const int n = static_cast<int>(x.rows());
  const int hd = cfg_.head_dim, QD = cfg_.q_dim(), KV = cfg_.kv_dim();
  const int n_heads = cfg_.n_heads, group = cfg_.group_size();
  const int window = cfg_.sliding_window.value_or(0);
  const S scale = static_cast<S>(1.0 / std::sqrt(static_cast<double>(hd)));
  Cache local;
  Cache& c = cache ? *cache : local;
  rms_forward(x, w.attn_norm, cfg_.rms_norm_eps, c.a, c.r1);
  linear(c.a, w.q, w.bq, c.q);
  linear(c.a, w.k, w.bk, c.k);
  linear(c.a, w.v, w.bv, c.v);
  if (p && p->layer == l) {
    Mat& target = p->kind == 'v' ? c.v : c.k;
    if (p->row < 0 || p->row >= n || p->col < 0 || p->col >= KV) {
      throw InvalidArgument("backward", "perturbation outside the [" + std::to_string(n) + ", " +
                                            std::to_string(KV) + "] k/v matrix");
    }
    target(p->row, p->col) += p->delta;
  }
  if (cache) c.k_pre = c.k;
  rope(c.q, n_heads, false);
  rope(c.k, cfg_.n_kv_heads, false);
  // POQ: past keys/values from the hook, the diagonal exact.
  if (hook) hook->quantize(l, c.k, c.v, c.k_hat, c.v_hat);
  const Mat& kpast = hook ? c.k_hat : c.k;
  const Mat& vpast = hook ? c.v_hat : c.v;
  c.attn.resize(n, QD);
#pragma omp parallel for schedule(dynamic) if (int64_t{n} * n * n_heads >= kParallelWork)
  for (int h = 0; h < n_heads; ++h) {
    const int g = h / group;
    Mat sc = (c.q.middleCols(h * hd, hd) * kpast.middleCols(g * hd, hd).transpose()) * scale;
    if (hook) {
      for (int i = 0; i < n; ++i) {
        sc(i, i) = c.q.row(i).segment(h * hd, hd).dot(c.k.row(i).segment(g * hd, hd)) * scale;
      }
    }
    causal_softmax_rows(sc, window);
    if (hook) {
      std::vector<S> diag(static_cast<size_t>(n));
      for (int i = 0; i < n; ++i) {
        diag[static_cast<size_t>(i)] = sc(i, i);
        sc(i, i) = S(0);
      }
      c.attn.middleCols(h * hd, hd).noalias() = sc * vpast.middleCols(g * hd, hd);
      for (int i = 0; i < n; ++i) {
        c.attn.row(i).segment(h * hd, hd) += diag[static_cast<size_t>(i)] * c.v.row(i).segment(g * hd, hd);
      }
    } else {
      c.attn.middleCols(h * hd, hd).noalias() = sc * c.v.middleCols(g * hd, hd);
    }
  }
  Mat tmp;
  linear(c.attn, w.o, w.bo, tmp);
  Mat x1 = x + tmp;
  rms_forward(x1, w.mlp_norm, cfg_.rms_norm_eps, c.b, c.r2);
  linear(c.b, w.gate, w.bgate, c.g);
  linear(c.b, w.up, w.bup, c.u);
  Mat mid = c.g;
  for (Eigen::Index i = 0; i < mid.size(); ++i) {
    const S gv = c.g.data()[i];
    mid.data()[i] = (gv / (S(1) + std::exp(-gv))) * c.u.data()[i];
  }
  linear(mid, w.down, w.bdown, tmp);
  Mat x2 = x1 + tmp;
  if (cache) c.x1 = std::move(x1);
  return x2;
}

template <typename S>
typename CpuGradient<S>::Mat CpuGradient<S>::layer_backward(int l, const Mat& x, const Cache& c,
                                                            const Mat& dy, Mat& dk, Mat& dv,
                                                            KvHook* hook) const {
  const Layer& w = layers_[static_cast<size_t>(l)];
  const int n = static_cast<int>(x.rows());
  const int hd = cfg_.head_dim, QD = cfg_.q_dim(), KV = cfg_.kv_dim();
  const int n_heads = cfg_.n_heads, group = cfg_.group_size();
  const int window = cfg_.sliding_window.value_or(0);
  const S scale = static_cast<S>(1.0 / std::sqrt(static_cast<double>(hd)));

  // MLP.
  Mat dmid = dy * w.down;  // [n, I]
  Mat dg(dmid.rows(), dmid.cols()), du(dmid.rows(), dmid.cols());
  for (Eigen::Index i = 0; i < dmid.size(); ++i) {
    const S gv = c.g.data()[i];
    const S sg = S(1) / (S(1) + std::exp(-gv));
    du.data()[i] = dmid.data()[i] * (gv * sg);
    dg.data()[i] = dmid.data()[i] * c.u.data()[i] * (sg * (S(1) + gv * (S(1) - sg)));
  }
  Mat db = dg * w.gate;
  db.noalias() += du * w.up;
  Mat dx1;
  rms_backward(c.x1, w.mlp_norm, c.r2, db, dx1);
  dx1 += dy;

  // Attention.
  const Mat dattn = dx1 * w.o;  // [n, QD]
  Mat dq(n, QD);
  std::vector<Mat> dk_head(static_cast<size_t>(n_heads)), dv_head(static_cast<size_t>(n_heads));
  // With a hook (POQ): dk_head/dv_head are w.r.t. k_hat/v_hat (past entries), and the
  // exact diagonal's gradients go to dkd_head/dvd_head.
  std::vector<Mat> dkd_head(hook ? static_cast<size_t>(n_heads) : 0), dvd_head(dkd_head.size());
  const Mat& kpast = hook ? c.k_hat : c.k;
  const Mat& vpast = hook ? c.v_hat : c.v;
#pragma omp parallel for schedule(dynamic) if (int64_t{n} * n * n_heads >= kParallelWork)
  for (int h = 0; h < n_heads; ++h) {
    const int g = h / group;
    const auto qh = c.q.middleCols(h * hd, hd);
    const auto kg = kpast.middleCols(g * hd, hd);
    const auto vg = vpast.middleCols(g * hd, hd);
    const auto doh = dattn.middleCols(h * hd, hd);
    Mat pr = (qh * kg.transpose()) * scale;  // recomputed probabilities
    if (hook) {
      for (int i = 0; i < n; ++i) pr(i, i) = qh.row(i).dot(c.k.row(i).segment(g * hd, hd)) * scale;
    }
    causal_softmax_rows(pr, window);
    Mat dp = doh * vg.transpose();  // [n, n]
    if (hook) {
      for (int i = 0; i < n; ++i) dp(i, i) = doh.row(i).dot(c.v.row(i).segment(g * hd, hd));
    }
    for (int i = 0; i < n; ++i) {
      double dot = 0.0;
      for (int j = 0; j <= i; ++j) dot += static_cast<double>(pr(i, j)) * static_cast<double>(dp(i, j));
      const S d = static_cast<S>(dot);
      for (int j = 0; j < n; ++j) dp(i, j) = pr(i, j) * (dp(i, j) - d);  // dS (0 where masked)
    }
    if (hook) {
      // Split off the diagonal (exact k, v) from the past entries (k_hat, v_hat).
      Mat& dkd = dkd_head[static_cast<size_t>(h)];
      Mat& dvd = dvd_head[static_cast<size_t>(h)];
      dkd.resize(n, hd);
      dvd.resize(n, hd);
      Mat dqh = Mat::Zero(n, hd);
      for (int i = 0; i < n; ++i) {
        const S ds = dp(i, i), pd = pr(i, i);
        dqh.row(i) = (ds * scale) * c.k.row(i).segment(g * hd, hd);
        dkd.row(i) = (ds * scale) * qh.row(i);
        dvd.row(i) = pd * doh.row(i);
        dp(i, i) = S(0);
        pr(i, i) = S(0);
      }
      dqh.noalias() += (dp * kg) * scale;
      dq.middleCols(h * hd, hd) = dqh;
      dk_head[static_cast<size_t>(h)].noalias() = (dp.transpose() * qh) * scale;
      dv_head[static_cast<size_t>(h)].noalias() = pr.transpose() * doh;
      continue;
    }
    dq.middleCols(h * hd, hd).noalias() = (dp * kg) * scale;
    dk_head[static_cast<size_t>(h)].noalias() = (dp.transpose() * qh) * scale;
    dv_head[static_cast<size_t>(h)].noalias() = pr.transpose() * doh;
  }
  dk.setZero(n, KV);
  dv.setZero(n, KV);
  for (int h = 0; h < n_heads; ++h) {
    const int g = h / group;
    dk.middleCols(g * hd, hd) += dk_head[static_cast<size_t>(h)];
    dv.middleCols(g * hd, hd) += dv_head[static_cast<size_t>(h)];
  }
  if (hook) {
    // dk, dv so far are w.r.t. k_hat, v_hat; the hook maps them through its quantizer and
    // adds them to the exact diagonal's gradients (summed in head order).
    Mat dk_direct = Mat::Zero(n, KV), dv_direct = Mat::Zero(n, KV);
    for (int h = 0; h < n_heads; ++h) {
      const int g = h / group;
      dk_direct.middleCols(g * hd, hd) += dkd_head[static_cast<size_t>(h)];
      dv_direct.middleCols(g * hd, hd) += dvd_head[static_cast<size_t>(h)];
    }
    hook->backward(l, c.k, c.v, dk, dv, dk_direct, dv_direct);
    dk = std::move(dk_direct);
    dv = std::move(dv_direct);
  }
  rope(dq, n_heads, true);
  rope(dk, cfg_.n_kv_heads, true);  // now dL/d(pre-RoPE k_proj output)
  Mat da = dq * w.q;
  da.noalias() += dk * w.k;
  da.noalias() += dv * w.v;
  Mat dx;
  rms_backward(x, w.attn_norm, c.r1, da, dx);
  dx += dx1;
  return dx;
}

template <typename S>
double CpuGradient<S>::head_loss(const Mat& x, std::span<const int32_t> tokens, Mat* dx) const {
  const Eigen::Index n = x.rows();
  const int H = cfg_.hidden;
  const Mat& head = lm_head_.size() > 0 ? lm_head_ : embed_;
  Mat xf;
  std::vector<S> r;
  rms_forward(x, final_norm_, cfg_.rms_norm_eps, xf, r);
  const double count = static_cast<double>(n - 1);
  Mat dxf;
  if (dx) dxf.setZero(n, H);
  double loss = 0.0;
  Mat lg;
  for (Eigen::Index b0 = 0; b0 < n - 1; b0 += kLogitBlock) {
    const Eigen::Index nb = std::min<Eigen::Index>(kLogitBlock, n - 1 - b0);
    lg.noalias() = xf.middleRows(b0, nb) * head.transpose();
    for (Eigen::Index i = 0; i < nb; ++i) {
      const int32_t target = tokens[static_cast<size_t>(b0 + i + 1)];
      S m = -std::numeric_limits<S>::infinity();
      for (Eigen::Index v = 0; v < lg.cols(); ++v) m = std::max(m, lg(i, v));
      if (!std::isfinite(static_cast<double>(m))) {
        throw Error(model_->path(), "non-finite logits at position " + std::to_string(b0 + i) +
                                        " in the backward pass's forward");
      }
      double sum = 0.0;
      for (Eigen::Index v = 0; v < lg.cols(); ++v) sum += std::exp(static_cast<double>(lg(i, v) - m));
      loss += (static_cast<double>(m) + std::log(sum)) - static_cast<double>(lg(i, target));
      if (dx) {
        // d loss / d logit = (softmax - onehot) / count
        for (Eigen::Index v = 0; v < lg.cols(); ++v) {
          lg(i, v) = static_cast<S>(std::exp(static_cast<double>(lg(i, v) - m)) / sum / count);
        }
        lg(i, target) -= static_cast<S>(1.0 / count);
      }
    }
    if (dx) dxf.middleRows(b0, nb).noalias() = lg.topRows(nb) * head;
  }
  if (dx) rms_backward(x, final_norm_, r, dxf, *dx);
  return loss / count;
}

template <typename S>
double CpuGradient<S>::loss(std::span<const int32_t> tokens, const Perturbation* p) const {
  check_tokens(tokens);
  Mat x = embed(tokens);
  for (int l = 0; l < cfg_.n_layers; ++l) x = layer_forward(l, x, nullptr, p);
  return head_loss(x, tokens, nullptr);
}

template <typename S>
double CpuGradient<S>::backward(std::span<const int32_t> tokens, const LayerVisitor& visit) const {
  check_tokens(tokens);
  std::vector<Mat> checkpoints(static_cast<size_t>(cfg_.n_layers));
  Mat x = embed(tokens);
  for (int l = 0; l < cfg_.n_layers; ++l) {
    checkpoints[static_cast<size_t>(l)] = x;
    x = layer_forward(l, x, nullptr, nullptr);
  }
  Mat dx;
  const double loss = head_loss(x, tokens, &dx);
  x.resize(0, 0);
  Mat dk, dv;
  for (int l = cfg_.n_layers - 1; l >= 0; --l) {
    Cache c;
    Mat& xin = checkpoints[static_cast<size_t>(l)];
    layer_forward(l, xin, &c, nullptr);
    dx = layer_backward(l, xin, c, dx, dk, dv);
    if (visit) {
      LayerView view;
      view.layer = l;
      view.q_post_rope = &c.q;
      view.k_pre_rope = &c.k_pre;
      view.k_post_rope = &c.k;
      view.v = &c.v;
      view.dk_pre_rope = &dk;
      view.dv = &dv;
      visit(view);
    }
    xin.resize(0, 0);  // this checkpoint is no longer needed
  }
  return loss;
}

template <typename S>
typename CpuGradient<S>::Mat CpuGradient<S>::embed_tokens(std::span<const int32_t> tokens) const {
  check_tokens(tokens);
  return embed(tokens);
}

template <typename S>
typename CpuGradient<S>::Mat CpuGradient<S>::block_forward(int layer, const Mat& x, Cache* state,
                                                           KvHook* hook) const {
  if (layer < 0 || layer >= cfg_.n_layers || x.cols() != cfg_.hidden || x.rows() < 1) {
    throw InvalidArgument("backward", "block " + std::to_string(layer) + " of " + std::to_string(cfg_.n_layers) +
                                          " on a [" + std::to_string(x.rows()) + ", " + std::to_string(x.cols()) +
                                          "] input (hidden " + std::to_string(cfg_.hidden) + ")");
  }
  return layer_forward(layer, x, state, nullptr, hook);
}

template <typename S>
typename CpuGradient<S>::Mat CpuGradient<S>::block_backward(int layer, const Mat& x, const Cache& state,
                                                            const Mat& dy, KvHook* hook) const {
  if (layer < 0 || layer >= cfg_.n_layers || dy.rows() != x.rows() || dy.cols() != x.cols() ||
      state.x1.rows() != x.rows() || (hook != nullptr && state.k_hat.rows() != x.rows())) {
    throw InvalidArgument("backward", "block_backward(" + std::to_string(layer) +
                                          ") without the matching block_forward state");
  }
  Mat dk, dv;
  return layer_backward(layer, x, state, dy, dk, dv, hook);
}

template class CpuGradient<float>;
template class CpuGradient<double>;

}  // namespace kvq
