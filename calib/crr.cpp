// WKVQuant cross-block reconstruction (see crr.h).
#include "calib/crr.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <limits>
#include <string>

#include "calib/serial_products.h"
#include "formats/dtype.h"
#include "formats/error.h"
#include "lib/codecs/chunked.h"

namespace kvq::calib {

namespace {

void check_quantizer(int cols, int bits, int group, int head_dim, size_t params) {
  if (bits < 1 || bits > 8) throw InvalidArgument("crr", "bits " + std::to_string(bits) + " outside 1..8");
  if (head_dim <= 0 || group <= 0 || head_dim % group != 0 || cols % head_dim != 0) {
    throw InvalidArgument("crr", "group " + std::to_string(group) + " must divide head_dim " +
                                     std::to_string(head_dim) + ", which must divide " + std::to_string(cols));
  }
  if (params != static_cast<size_t>(cols)) {
    throw InvalidArgument("crr", "smoothing has " + std::to_string(params) + " channels, the rows " +
                                     std::to_string(cols));
  }
}

// One group's quantization, in the form both directions need.
template <typename S>
struct GroupQuant {
  std::vector<S> xp, xpp, rho;  // x', x'', round(u) - u
  int imin = 0, imax = 0;       // first occurrence of the min / max of x'
};

template <typename S>
void quantize_group(const S* x, const S* delta, const S* s, int n, int bits, const S* rho_frozen,
                    GroupQuant<S>& q) {
  q.xp.resize(static_cast<size_t>(n));
  q.xpp.resize(q.xp.size());
  q.rho.resize(q.xp.size());
  if (rho_frozen == nullptr) {
    // The codec's float arithmetic (lib/codecs/wkvquant.cpp + chunked.cpp), bit for bit.
    float xf[256];
    uint32_t codes[256];
    for (int i = 0; i < n; ++i) {
      const float inv_s = 1.0f / static_cast<float>(s[i]);
      xf[i] = (static_cast<float>(x[i]) - static_cast<float>(delta[i])) * inv_s;
    }
    const kvlayout::ScaleZero sz = codecs::quantize_group_asym(xf, n, 1, bits, codes);
    const float sf = half_to_float(sz.scale), zf = half_to_float(sz.zero);
    const float inv = kvlayout::safe_inverse(sf);
    for (int i = 0; i < n; ++i) {
      q.xp[static_cast<size_t>(i)] = static_cast<S>(xf[i]);
      q.xpp[static_cast<size_t>(i)] = static_cast<S>(kvlayout::dequantize_asym(codes[i], sf, zf));
      q.rho[static_cast<size_t>(i)] = inv != 0.0f ? static_cast<S>(static_cast<float>(codes[i]) - (xf[i] - zf) * inv) : S(0);
    }
  } else {
    for (int i = 0; i < n; ++i) q.xp[static_cast<size_t>(i)] = (x[i] - delta[i]) / s[i];
  }
  q.imin = q.imax = 0;
  for (int i = 1; i < n; ++i) {
    if (q.xp[static_cast<size_t>(i)] < q.xp[static_cast<size_t>(q.imin)]) q.imin = i;
    if (q.xp[static_cast<size_t>(i)] > q.xp[static_cast<size_t>(q.imax)]) q.imax = i;
  }
  if (rho_frozen != nullptr) {
    const S h = (q.xp[static_cast<size_t>(q.imax)] - q.xp[static_cast<size_t>(q.imin)]) /
                static_cast<S>((1u << bits) - 1u);
    for (int i = 0; i < n; ++i) {
      q.rho[static_cast<size_t>(i)] = rho_frozen[i];
      q.xpp[static_cast<size_t>(i)] = q.xp[static_cast<size_t>(i)] + h * rho_frozen[i];
    }
  }
}

}  // namespace

template <typename S>
void wkv_fake_quant(const typename CpuGradient<S>::Mat& x, const Smoothing<S>& p, int bits, int group,
                    int head_dim, typename CpuGradient<S>::Mat& out, const typename CpuGradient<S>::Mat* rho) {
  const int D = static_cast<int>(x.cols());
  check_quantizer(D, bits, group, head_dim, p.delta.size());
  if (group > 256) throw InvalidArgument("crr", "group " + std::to_string(group) + " above 256");
  out.resize(x.rows(), x.cols());
  GroupQuant<S> q;
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    for (int c0 = 0; c0 < D; c0 += group) {
      quantize_group(x.data() + t * D + c0, p.delta.data() + c0, p.s.data() + c0, group, bits,
                     rho ? rho->data() + t * D + c0 : nullptr, q);
      for (int i = 0; i < group; ++i) {
        const int c = c0 + i;
        if (rho == nullptr) {
          out(t, c) = static_cast<S>(std::fmaf(static_cast<float>(q.xpp[static_cast<size_t>(i)]),
                                               static_cast<float>(p.s[static_cast<size_t>(c)]),
                                               static_cast<float>(p.delta[static_cast<size_t>(c)])));
        } else {
          out(t, c) = q.xpp[static_cast<size_t>(i)] * p.s[static_cast<size_t>(c)] + p.delta[static_cast<size_t>(c)];
        }
      }
    }
  }
}

template <typename S>
void wkv_fake_quant_backward(const typename CpuGradient<S>::Mat& x, const Smoothing<S>& p, int bits,
                             int group, int head_dim, const typename CpuGradient<S>::Mat& dout,
                             typename CpuGradient<S>::Mat& dx, SmoothingGrad& g,
                             const typename CpuGradient<S>::Mat* rho) {
  const int D = static_cast<int>(x.cols());
  check_quantizer(D, bits, group, head_dim, p.delta.size());
  if (g.delta.size() != static_cast<size_t>(D)) g.delta.assign(static_cast<size_t>(D), 0.0);
  if (g.s.size() != static_cast<size_t>(D)) g.s.assign(static_cast<size_t>(D), 0.0);
  const double levels = static_cast<double>((1u << bits) - 1u);
  GroupQuant<S> q;
  std::vector<double> gxp(static_cast<size_t>(group));
  for (Eigen::Index t = 0; t < x.rows(); ++t) {
    for (int c0 = 0; c0 < D; c0 += group) {
      quantize_group(x.data() + t * D + c0, p.delta.data() + c0, p.s.data() + c0, group, bits,
                     rho ? rho->data() + t * D + c0 : nullptr, q);
      // out = s x'' + delta; x'' = x' + h rho (STE), h = (x'_max - x'_min) / levels.
      double range_grad = 0.0;
      for (int i = 0; i < group; ++i) {
        const size_t c = static_cast<size_t>(c0 + i);
        const double go = static_cast<double>(dout(t, c0 + i));
        const double gi = go * static_cast<double>(p.s[c]);  // dL/dx''
        g.delta[c] += go;
        g.s[c] += go * static_cast<double>(q.xpp[static_cast<size_t>(i)]);
        range_grad += gi * static_cast<double>(q.rho[static_cast<size_t>(i)]);
        gxp[static_cast<size_t>(i)] = gi;
      }
      gxp[static_cast<size_t>(q.imax)] += range_grad / levels;
      gxp[static_cast<size_t>(q.imin)] -= range_grad / levels;
      for (int i = 0; i < group; ++i) {
        const size_t c = static_cast<size_t>(c0 + i);
        const double inv_s = 1.0 / static_cast<double>(p.s[c]);
        const double gp = gxp[static_cast<size_t>(i)];
        g.delta[c] -= gp * inv_s;
        g.s[c] -= gp * static_cast<double>(q.xp[static_cast<size_t>(i)]) * inv_s;
        dx(t, c0 + i) += static_cast<S>(gp * inv_s);
      }
    }
  }
}

template <typename S>
CrrHook<S>::CrrHook(int first, std::vector<BlockSmoothing<S>>* params, int bits, int group, int head_dim)
    : first_(first), params_(params), bits_(bits), group_(group), head_dim_(head_dim) {
  zero_grad();
}

template <typename S>
void CrrHook<S>::zero_grad() {
  grads_.assign(params_->size(), {});
}

template <typename S>
const Smoothing<S>& CrrHook<S>::side(int layer, bool keys) const {
  const int i = layer - first_;
  if (i < 0 || i >= static_cast<int>(params_->size())) {
    throw InvalidArgument("crr", "layer " + std::to_string(layer) + " outside the window");
  }
  const BlockSmoothing<S>& b = (*params_)[static_cast<size_t>(i)];
  return keys ? b.k : b.v;
}

template <typename S>
const typename CrrHook<S>::Mat* CrrHook<S>::rho(int layer, bool keys) const {
  const auto it = rho_.find(layer);
  if (it == rho_.end()) return nullptr;
  return keys ? &it->second.first : &it->second.second;
}

template <typename S>
void CrrHook<S>::quantize(int layer, const Mat& k, const Mat& v, Mat& k_hat, Mat& v_hat) {
  wkv_fake_quant<S>(k, side(layer, true), bits_, group_, head_dim_, k_hat, rho(layer, true));
  wkv_fake_quant<S>(v, side(layer, false), bits_, group_, head_dim_, v_hat, rho(layer, false));
}

template <typename S>
void CrrHook<S>::backward(int layer, const Mat& k, const Mat& v, const Mat& dk_hat, const Mat& dv_hat, Mat& dk,
                          Mat& dv) {
  auto& gr = grads_[static_cast<size_t>(layer - first_)];
  wkv_fake_quant_backward<S>(k, side(layer, true), bits_, group_, head_dim_, dk_hat, dk, gr.first, rho(layer, true));
  wkv_fake_quant_backward<S>(v, side(layer, false), bits_, group_, head_dim_, dv_hat, dv, gr.second,
                             rho(layer, false));
}

template <typename S>
double crr_window_loss(const CpuGradient<S>& g, int first, int last, const typename CpuGradient<S>::Mat& x,
                       const typename CpuGradient<S>::Mat& target, CrrHook<S>& hook, bool grad) {
  using Mat = typename CpuGradient<S>::Mat;
  using Cache = typename CpuGradient<S>::Cache;
  if (first < 0 || last < first || last >= g.config().n_layers) {
    throw InvalidArgument("crr", "window " + std::to_string(first) + ".." + std::to_string(last) + " outside 0.." +
                                     std::to_string(g.config().n_layers - 1));
  }
  const int count = last - first + 1;
  std::vector<Cache> st(grad ? static_cast<size_t>(count) : 0);
  std::vector<Mat> in(grad ? static_cast<size_t>(count) : 0);
  Mat h = x;
  for (int l = first; l <= last; ++l) {
    if (grad) in[static_cast<size_t>(l - first)] = h;
    h = g.block_forward(l, h, grad ? &st[static_cast<size_t>(l - first)] : nullptr, &hook);
  }
  if (target.rows() != h.rows() || target.cols() != h.cols()) {
    throw InvalidArgument("crr", "target shape differs from the window output");
  }
  double sum = 0.0;
  for (Eigen::Index i = 0; i < h.size(); ++i) {
    sum += std::fabs(static_cast<double>(h.data()[i]) - static_cast<double>(target.data()[i]));
  }
  const double n = static_cast<double>(h.size());
  if (grad) {
    Mat dy(h.rows(), h.cols());
    const S w = static_cast<S>(1.0 / n);
    for (Eigen::Index i = 0; i < h.size(); ++i) {
      const S d = h.data()[i] - target.data()[i];
      dy.data()[i] = d > S(0) ? w : (d < S(0) ? -w : S(0));
    }
    for (int l = last; l >= first; --l) {
      dy = g.block_backward(l, in[static_cast<size_t>(l - first)], st[static_cast<size_t>(l - first)], dy, &hook);
    }
  }
  return sum / n;
}

template <typename S>
Smoothing<S> init_smoothing(const std::vector<float>& mn, const std::vector<float>& mx, int head_dim,
                            double alpha) {
  const size_t D = mn.size();
  if (mx.size() != D || head_dim <= 0 || D % static_cast<size_t>(head_dim) != 0) {
    throw InvalidArgument("crr", "channel statistics of " + std::to_string(D) + " / " + std::to_string(mx.size()) +
                                     " channels for head_dim " + std::to_string(head_dim));
  }
  Smoothing<S> p;
  p.delta.resize(D);
  p.s.resize(D);
  std::vector<double> r(D);
  for (size_t c = 0; c < D; ++c) {
    if (!(mn[c] <= mx[c]) || !std::isfinite(mn[c]) || !std::isfinite(mx[c])) {
      throw InvalidArgument("crr", "channel " + std::to_string(c) + " has no finite range");
    }
    p.delta[c] = static_cast<S>((static_cast<double>(mx[c]) + mn[c]) / 2);
    r[c] = (static_cast<double>(mx[c]) - mn[c]) / 2;
  }
  for (size_t h0 = 0; h0 < D; h0 += static_cast<size_t>(head_dim)) {
    double top = 0.0;
    for (int i = 0; i < head_dim; ++i) top = std::max(top, r[h0 + i]);
    if (top <= 0.0) {  // a constant head: nothing to equalise
      for (int i = 0; i < head_dim; ++i) p.s[h0 + i] = S(1);
      continue;
    }
    double mean = 0.0;
    for (int i = 0; i < head_dim; ++i) mean += std::max(r[h0 + i], 1e-3 * top);
    mean /= head_dim;
    for (int i = 0; i < head_dim; ++i) p.s[h0 + i] = static_cast<S>(std::pow(std::max(r[h0 + i], 1e-3 * top) / mean, alpha));
  }
  return p;
}

namespace {

using MatF = CpuGradient<float>::Mat;

struct AdamSide {
  std::vector<double> ma, va, mb, vb;
  void reset(size_t d) {
    ma.assign(d, 0.0);
    va.assign(d, 0.0);
    mb.assign(d, 0.0);
    vb.assign(d, 0.0);
  }
};

constexpr double kBeta1 = 0.9, kBeta2 = 0.999, kEps = 1e-8;

// One AdamW step (weight decay 0) on a = (delta - delta0) / r and b = log(s / s0).
void adam_step(Smoothing<float>& p, const SmoothingGrad& g, const std::vector<float>& r, AdamSide& st, int t,
               double lr) {
  const double c1 = 1.0 - std::pow(kBeta1, t), c2 = 1.0 - std::pow(kBeta2, t);
  for (size_t c = 0; c < p.delta.size(); ++c) {
    const double ga = g.delta[c] * r[c];
    const double gb = g.s[c] * static_cast<double>(p.s[c]);
    st.ma[c] = kBeta1 * st.ma[c] + (1 - kBeta1) * ga;
    st.va[c] = kBeta2 * st.va[c] + (1 - kBeta2) * ga * ga;
    st.mb[c] = kBeta1 * st.mb[c] + (1 - kBeta1) * gb;
    st.vb[c] = kBeta2 * st.vb[c] + (1 - kBeta2) * gb * gb;
    const double sa = -lr * (st.ma[c] / c1) / (std::sqrt(st.va[c] / c2) + kEps);
    const double sb = -lr * (st.mb[c] / c1) / (std::sqrt(st.vb[c] / c2) + kEps);
    p.delta[c] = static_cast<float>(static_cast<double>(p.delta[c]) + r[c] * sa);
    p.s[c] = static_cast<float>(static_cast<double>(p.s[c]) * std::exp(sb));
  }
}

// Channel half-ranges, floored like the initialisation (the units of delta's steps).
std::vector<float> half_ranges(const std::vector<float>& mn, const std::vector<float>& mx, int head_dim) {
  std::vector<float> r(mn.size());
  for (size_t h0 = 0; h0 < mn.size(); h0 += static_cast<size_t>(head_dim)) {
    float top = 0.0f;
    for (int i = 0; i < head_dim; ++i) top = std::max(top, (mx[h0 + i] - mn[h0 + i]) / 2);
    for (int i = 0; i < head_dim; ++i) {
      r[h0 + i] = std::max({(mx[h0 + i] - mn[h0 + i]) / 2, 1e-3f * top, 1e-6f});
    }
  }
  return r;
}

}  // namespace

CrrResult run_crr(const CpuGradient<float>& g, const std::vector<std::span<const int32_t>>& seqs,
                  const CrrOptions& opt, const CrrProgressFn& progress) {
  const auto t0 = std::chrono::steady_clock::now();
  // The same bytes for any thread count, as the rest of the calibration (serial_products.h);
  // the attention's head loops stay parallel.
  const SerialEigenProducts serial;
  const ModelConfig& cfg = g.config();
  const int L = cfg.n_layers, D = cfg.kv_dim(), hd = cfg.head_dim;
  const int group = opt.group > 0 ? opt.group : hd;
  if (seqs.empty()) throw InvalidArgument("--crr", "no calibration sequences");
  if (opt.window < 1) throw InvalidArgument("--crr-window", std::to_string(opt.window) + " must be >= 1");
  if (opt.epochs < 0) throw InvalidArgument("--crr-epochs", std::to_string(opt.epochs) + " must be >= 0");
  if (!(opt.lr >= 0.0) || !std::isfinite(opt.lr)) throw InvalidArgument("--crr-lr", "must be finite and >= 0");
  if (hd % group != 0 || group > 256) {
    throw InvalidArgument("crr", "group " + std::to_string(group) + " must divide head_dim " + std::to_string(hd));
  }
  std::vector<int> bits = opt.bits;
  std::sort(bits.begin(), bits.end());
  bits.erase(std::unique(bits.begin(), bits.end()), bits.end());
  if (bits.empty()) throw InvalidArgument("--bits", "no bit widths for CRR");
  for (int b : bits) {
    if (b < 1 || b > 8) throw InvalidArgument("--bits", std::to_string(b) + " outside 1..8");
  }
  const int k = std::min(opt.window, L);
  const size_t nseq = seqs.size();

  // Statistics: per-channel min/max of post-RoPE keys and values, sink tokens left out.
  std::vector<MatF> xin(nseq);
  std::vector<std::vector<float>> kmin(L, std::vector<float>(D, std::numeric_limits<float>::infinity()));
  std::vector<std::vector<float>> kmax(L, std::vector<float>(D, -std::numeric_limits<float>::infinity()));
  std::vector<std::vector<float>> vmin = kmin, vmax = kmax;
  for (size_t s = 0; s < nseq; ++s) {
    xin[s] = g.embed_tokens(seqs[s]);
    MatF h = xin[s];
    const int n = static_cast<int>(h.rows());
    const int lo = n > opt.sink ? std::max(opt.sink, 0) : 0;
    for (int l = 0; l < L; ++l) {
      CpuGradient<float>::Cache c;
      h = g.block_forward(l, h, &c, nullptr);
      for (int t = lo; t < n; ++t) {
        for (int ch = 0; ch < D; ++ch) {
          kmin[l][ch] = std::min(kmin[l][ch], c.k(t, ch));
          kmax[l][ch] = std::max(kmax[l][ch], c.k(t, ch));
          vmin[l][ch] = std::min(vmin[l][ch], c.v(t, ch));
          vmax[l][ch] = std::max(vmax[l][ch], c.v(t, ch));
        }
      }
    }
  }
  std::vector<BlockSmoothing<float>> init(static_cast<size_t>(L));
  std::vector<std::pair<std::vector<float>, std::vector<float>>> units(static_cast<size_t>(L));
  for (int l = 0; l < L; ++l) {
    init[l].k = init_smoothing<float>(kmin[l], kmax[l], hd, opt.alpha);
    init[l].v = init_smoothing<float>(vmin[l], vmax[l], hd, opt.alpha);
    units[l] = {half_ranges(kmin[l], kmax[l], hd), half_ranges(vmin[l], vmax[l], hd)};
  }

  CrrResult res;
  res.window = k;
  res.group = group;
  res.epochs = opt.epochs;
  res.lr = opt.lr;
  std::vector<std::vector<BlockSmoothing<float>>> params(bits.size(), init);
  for (size_t bi = 0; bi < bits.size(); ++bi) {
    res.per_bits.push_back({});
    res.per_bits[bi].bits = bits[bi];
  }
  const int64_t total = static_cast<int64_t>(L) * static_cast<int64_t>(bits.size());
  int64_t done = 0;
  std::vector<MatF> target(nseq);
  for (int i = 0; i < L; ++i) {
    const int e = std::min(i + k - 1, L - 1);
    for (size_t s = 0; s < nseq; ++s) {
      MatF h = xin[s];
      for (int l = i; l <= e; ++l) h = g.block_forward(l, h, nullptr, nullptr);
      target[s] = std::move(h);
    }
    auto mean_loss = [&](CrrHook<float>& hook) {
      double sum = 0.0;
      for (size_t s = 0; s < nseq; ++s) sum += crr_window_loss<float>(g, i, e, xin[s], target[s], hook, false);
      return sum / static_cast<double>(nseq);
    };
    for (size_t bi = 0; bi < bits.size(); ++bi) {
      CrrBitsResult& out = res.per_bits[bi];
      std::vector<BlockSmoothing<float>> win(params[bi].begin() + i, params[bi].begin() + e + 1);
      CrrHook<float> hook(i, &win, bits[bi], group, hd);
      if (i == 0) {
        std::vector<BlockSmoothing<float>> ident(win.size());
        for (auto& b : ident) {
          b.k = {std::vector<float>(D, 0.0f), std::vector<float>(D, 1.0f)};
          b.v = b.k;
        }
        CrrHook<float> id_hook(i, &ident, bits[bi], group, hd);
        out.loss_identity = mean_loss(id_hook);
      }
      const double before = mean_loss(hook);
      if (i == 0) out.loss_init = before;
      const std::vector<BlockSmoothing<float>> start = win;
      std::vector<std::pair<AdamSide, AdamSide>> adam(win.size());
      for (auto& a : adam) {
        a.first.reset(static_cast<size_t>(D));
        a.second.reset(static_cast<size_t>(D));
      }
      int step = 0;
      for (int ep = 0; ep < opt.epochs; ++ep) {
        for (size_t s = 0; s < nseq; ++s) {
          hook.zero_grad();
          crr_window_loss<float>(g, i, e, xin[s], target[s], hook, true);
          ++step;
          for (size_t b = 0; b < win.size(); ++b) {
            const auto& gr = hook.grads()[b];
            const auto& u = units[static_cast<size_t>(i) + b];
            adam_step(win[b].k, gr.first, u.first, adam[b].first, step, opt.lr);
            adam_step(win[b].v, gr.second, u.second, adam[b].second, step, opt.lr);
          }
        }
      }
      double after = opt.epochs > 0 ? mean_loss(hook) : before;
      // Keep what the window started from when training made its calibration loss worse
      // (can happen with a large --crr-lr); the reported "after" is the kept parameters'.
      if (after > before) {
        win = start;
        after = before;
      }
      std::copy(win.begin(), win.end(), params[bi].begin() + i);
      out.loss_before.push_back(before);
      out.loss_after.push_back(after);
      ++done;
      if (progress) progress(bits[bi], i, before, after, done, total);
    }
    for (size_t s = 0; s < nseq; ++s) xin[s] = g.block_forward(i, xin[s], nullptr, nullptr);
  }
  for (size_t bi = 0; bi < bits.size(); ++bi) res.per_bits[bi].layers = params[bi];
  res.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return res;
}

void store_crr(const CrrResult& r, Calibration& c) {
  WkvquantFit fit;
  fit.group = r.group;
  fit.window = r.window;
  for (const CrrBitsResult& b : r.per_bits) {
    fit.bits.push_back(b.bits);
    fit.loss_before.insert(fit.loss_before.end(), b.loss_before.begin(), b.loss_before.end());
    fit.loss_after.insert(fit.loss_after.end(), b.loss_after.begin(), b.loss_after.end());
    for (size_t l = 0; l < b.layers.size(); ++l) {
      const int layer = static_cast<int>(l);
      const int64_t d = static_cast<int64_t>(b.layers[l].k.delta.size());
      c.tensors[calibration_bits_name(layer, KvKind::kKeys, b.bits, "smooth_delta")] = {{d}, b.layers[l].k.delta};
      c.tensors[calibration_bits_name(layer, KvKind::kKeys, b.bits, "smooth_scale")] = {{d}, b.layers[l].k.s};
      c.tensors[calibration_bits_name(layer, KvKind::kValues, b.bits, "smooth_delta")] = {{d}, b.layers[l].v.delta};
      c.tensors[calibration_bits_name(layer, KvKind::kValues, b.bits, "smooth_scale")] = {{d}, b.layers[l].v.s};
    }
  }
  c.wkvquant = std::move(fit);
}

#define KVQ_CRR_INSTANTIATE(S)                                                                                     \
  template void wkv_fake_quant<S>(const CpuGradient<S>::Mat&, const Smoothing<S>&, int, int, int,                  \
                                  CpuGradient<S>::Mat&, const CpuGradient<S>::Mat*);                               \
  template void wkv_fake_quant_backward<S>(const CpuGradient<S>::Mat&, const Smoothing<S>&, int, int, int,         \
                                           const CpuGradient<S>::Mat&, CpuGradient<S>::Mat&, SmoothingGrad&,      \
                                           const CpuGradient<S>::Mat*);                                            \
  template class CrrHook<S>;                                                                                       \
  template double crr_window_loss<S>(const CpuGradient<S>&, int, int, const CpuGradient<S>::Mat&,                  \
                                     const CpuGradient<S>::Mat&, CrrHook<S>&, bool);                               \
  template Smoothing<S> init_smoothing<S>(const std::vector<float>&, const std::vector<float>&, int, double);

KVQ_CRR_INSTANTIATE(float)
KVQ_CRR_INSTANTIATE(double)

}  // namespace kvq::calib
