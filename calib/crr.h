// WKVQuant cross-block reconstruction (CRR, arXiv 2402.12065; METHODS.md "WKVQuant"):
// learns the per-channel smoothing (delta, s) of keys and values, per layer, that
// lib/codecs/wkvquant.cpp applies: x' = (x - delta) * (1/s), per-token asymmetric
// quantization of x' in groups of G channels (fp16 scale and zero), x^ = fma(x'', s, delta).
// Keys are post-RoPE (what the cache holds), values as projected.
//
// Initialisation (per layer, keys and values separately, per channel c, from the min and
// max of the CRR sequences' activations, sink tokens left out):
//   delta_c = (max_c + min_c) / 2,   r_c = (max_c - min_c) / 2,
//   s_c = (max(r_c, 1e-3 r_head) / mean over the head of max(r_c, 1e-3 r_head))^alpha
// (r_head = the largest r_c of the head), alpha = 0.5 by default. Why: per-token
// quantization takes its range from the widest channel of the group; centering and
// equalising the channel ranges (alpha = 1) gives every channel the same resolution in x'
// and minimises sum_c s_c^2 h^2 under a worst-case range model (h ~ max_c r_c / s_c), but
// real tokens rarely reach every channel's extreme, and alpha = 0.5 (SmoothQuant's
// square-root migration) measured best (testbed, WikiText-2 PPL, docs/calibrate.md):
// after CRR, 2-bit 394.9 (alpha 0.5) vs 410.8 (1) vs 415.2 (0); 3-bit 348.5 vs 353.2 vs
// 358.2; defaults (delta 0, s 1) 450.7 / 363.8. The mean normalisation keeps x' at the
// size of x (the quantizer is scale-invariant up to fp16 scales); the floor keeps
// near-constant channels from exploding the rare token that leaves their range.
//
// Windows: for each block i, the window is blocks i..min(i+k-1, L-1). Its input is the
// full-precision hidden state entering block i (the fp model), its target the fp output
// of its last block; the loss is mean |Y_fp - Y_q| over all [tokens, hidden] elements of
// that output, Y_q with K/V of every block of the window quantized past-only (POQ: query
// t reads quantized entries j < t, its own at full precision). The parameters of all
// blocks of the window are learned jointly (the later blocks' quantizers shape the error
// that block i must reduce); windows run in order i = 0, 1, ... and each starts from the
// parameters the previous windows left (warm start), so block i's parameters are final
// after window i, the last window that contains it. Chosen over "later blocks fixed at
// their initial values" because the later blocks' parameters then reflect what has been
// learned so far and every block gets up to k rounds of training.
//
// Optimiser: AdamW (betas 0.9/0.999, eps 1e-8, weight decay 0 for these parameters, as
// the brief says) on normalised variables: delta = delta0 + r * a and s = s0 * exp(b), so
// the learning rate is a fraction of the channel's half-range (delta) and a relative change
// (s), the same for every channel and model; s stays positive. One step per calibration
// sequence, sequences in their given order, `epochs` passes per window; Adam's moments
// restart with each window. Deterministic: fixed orders everywhere, reductions in double,
// Eigen products on one thread (calib/serial_products.h), so any thread count gives the
// same parameters.
//
// Rounding: the forward is the codec's own float arithmetic (lib/codecs/chunked.h,
// bit-exact with kvq-eval's wkvquant). The backward uses the straight-through estimator
// for round() only: with u = (x' - z) / h, x'' = h round(u) + z, dx'' = dx' + (round(u) - u)
// dh with h = (max - min) / (2^b - 1) of the group (the fp16 rounding of h and z passes
// straight through). So the gradient reaches (delta, s) through the per-token ranges and
// through s's direct factor x^ = x + s (x'' - x'). This is exactly the gradient of the
// "frozen residual" function x'' = x' + h rho with rho = round(u) - u held constant, which
// the finite-difference test differentiates (CrrRounding::kFrozen).
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <span>
#include <utility>
#include <vector>

#include "calib/crr_options.h"
#include "lib/backward/cpu_gradient.h"

namespace kvq::calib {

// The quantizer: x [n, kv_dim] -> out (quantized and dequantized). bits 1..8, group
// divides head_dim. rho == nullptr: the codec's arithmetic; else the frozen-residual
// surrogate out = s (x' + h rho) + delta, h = (max - min)/(2^b - 1) of x' per group, in S.
template <typename S>
void wkv_fake_quant(const typename CpuGradient<S>::Mat& x, const Smoothing<S>& p, int bits, int group,
                    int head_dim, typename CpuGradient<S>::Mat& out,
                    const typename CpuGradient<S>::Mat* rho = nullptr);

// Its backward: from dL/dout adds dL/dx to dx and accumulates dL/ddelta, dL/ds into g.
template <typename S>
void wkv_fake_quant_backward(const typename CpuGradient<S>::Mat& x, const Smoothing<S>& p, int bits,
                             int group, int head_dim, const typename CpuGradient<S>::Mat& dout,
                             typename CpuGradient<S>::Mat& dx, SmoothingGrad& g,
                             const typename CpuGradient<S>::Mat* rho = nullptr);

// The POQ hook of a window of blocks [first, first + params.size()).
template <typename S>
class CrrHook final : public CpuGradient<S>::KvHook {
 public:
  using Mat = typename CpuGradient<S>::Mat;
  CrrHook(int first, std::vector<BlockSmoothing<S>>* params, int bits, int group, int head_dim);

  void quantize(int layer, const Mat& k, const Mat& v, Mat& k_hat, Mat& v_hat) override;
  void backward(int layer, const Mat& k, const Mat& v, const Mat& dk_hat, const Mat& dv_hat, Mat& dk,
                Mat& dv) override;

  // Test surrogate: frozen residuals per layer (keys, values), [n, kv_dim] each.
  void set_frozen(std::map<int, std::pair<Mat, Mat>> rho) { rho_ = std::move(rho); }
  void zero_grad();
  // Gradients per block of the window (index = layer - first): keys, values.
  const std::vector<std::pair<SmoothingGrad, SmoothingGrad>>& grads() const { return grads_; }

 private:
  const Smoothing<S>& side(int layer, bool keys) const;
  const Mat* rho(int layer, bool keys) const;

  int first_;
  std::vector<BlockSmoothing<S>>* params_;
  int bits_, group_, head_dim_;
  std::map<int, std::pair<Mat, Mat>> rho_;
  std::vector<std::pair<SmoothingGrad, SmoothingGrad>> grads_;
};

// mean |Y_fp - Y_q| of blocks first..last run on x with the hook's quantization; with
// `grad`, the hook's parameter gradients accumulate (dL/dY = sign(Y_q - Y_fp) / count).
template <typename S>
double crr_window_loss(const CpuGradient<S>& g, int first, int last, const typename CpuGradient<S>::Mat& x,
                       const typename CpuGradient<S>::Mat& target, CrrHook<S>& hook, bool grad);

// Statistics initialisation (see above) from the per-channel min and max.
// alpha: s = (max(r, floor) / mean)^alpha; 1 = full equalisation (the default), 0 = none.
template <typename S>
Smoothing<S> init_smoothing(const std::vector<float>& mn, const std::vector<float>& mx, int head_dim,
                            double alpha = 1.0);

// Runs CRR on the sequences (each >= 2 tokens, all the same length not required).
CrrResult run_crr(const CpuGradient<float>& g, const std::vector<std::span<const int32_t>>& seqs,
                  const CrrOptions& opt, const CrrProgressFn& progress = {});

}  // namespace kvq::calib
