// The CUDA backward pass (see cuda_gradient.h). The step order is lib/backward/
// cpu_gradient.cpp's; its header comment has the formulas. Per layer, with row-major fp32
// buffers of n rows:
//   forward:  a = rms(x) w1; q, k, v = a W^T (+b); kpre = k; RoPE(q), RoPE(k);
//             per head batch: P = softmax(q k^T / sqrt(d)), attn = P v;
//             x1 = x + attn Wo^T; bb = rms(x1) w2; g, u = bb W^T; mid = silu(g) u;
//             x2 = x1 + mid Wd^T
//   backward: dmid = dy Wd; dg, du; db = dg Wg + du Wu; dx1 = rms'(x1; db) + dy;
//             dattn = dx1 Wo; per head batch: P again, dP = dattn v^T, dv += P^T dattn,
//             dS = P (dP - rowdot), dq = dS k / sqrt(d), dk += dS^T q / sqrt(d);
//             RoPE^T(dq), RoPE^T(dk); da = dq Wq + dk Wk + dv Wv; dx = rms'(x; da) + dx1
#include "lib/cuda/cuda_gradient.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <string>

#include "formats/error.h"
#include "kernels/backward.cuh"
#include "lib/cuda/check.h"
#include "lib/rope.h"

namespace kvq {

namespace bwd = kern::bwd;

namespace {

struct DevLayer {
  cuda::DeviceBuffer attn_norm, mlp_norm, q, k, v, o, gate, up, down;
  cuda::DeviceBuffer bq, bk, bv, bo, bgate, bup, bdown;  // empty when absent
};

const float* fp(const cuda::DeviceBuffer& b) { return b.bytes() ? b.as<const float>() : nullptr; }

}  // namespace

struct CudaGradient::Impl {
  std::shared_ptr<const Model> model;
  ModelConfig cfg;
  CudaGradientOptions opt;
  cudaStream_t stream = nullptr;
  cublasHandle_t blas = nullptr;

  cuda::DeviceBuffer embed, lm_head, final_norm, cos_t, sin_t, staging;
  std::vector<DevLayer> layers;

  // Activations for up to `cap` tokens.
  int cap = 0;
  cuda::DeviceBuffer ids, ckpt, xfinal, xout, a, q, k, kpre, v, attn, x1, bb, g, u, mid, du, r1, r2;
  cuda::DeviceBuffer db, dx1, dattn, dq, dk, dv, da, dya, dyb, p, dp, logits, row_loss, flag;
  cuda::DeviceBuffer fisher_k, fisher_v;  // [layers, n, kv_dim] double
  int fisher_n = 0;
  int head_batch = 1;

  size_t held = 0, peak = 0;

  // Host copies for the visitor.
  CpuGradient<float>::Mat hq, hkpre, hk, hv, hdk, hdv;

  ~Impl() {
    if (blas) cublasDestroy(blas);
    if (stream) cudaStreamDestroy(stream);
  }

  void reserve(cuda::DeviceBuffer& b, size_t bytes, const char* what) {
    const size_t before = b.bytes();
    if (bytes <= before) return;
    held -= before;  // reserve() frees the old block before allocating
    b.reserve(bytes, what);
    held += b.bytes();
    peak = std::max(peak, held);
  }
  float* f32(cuda::DeviceBuffer& b, size_t count, const char* what) {
    reserve(b, count * sizeof(float), what);
    return b.as<float>();
  }

  void upload(cuda::DeviceBuffer& dst, const TensorView* t) {
    if (t == nullptr) return;
    const size_t count = static_cast<size_t>(t->numel());
    float* d = f32(dst, count, t->name.c_str());
    // Copies and the widening kernel go on the one (non-blocking) stream: a cudaMemcpy on
    // the legacy stream is not ordered with it, and from pageable memory it may return
    // before the DMA lands (measured: the first device run widened half-copied fp16
    // weights, the testbed's loss came out 8.59 instead of 2.64).
    if (t->dtype == DType::kF32) {
      KVQ_CUDA_CHECK(cudaMemcpyAsync(d, t->data, count * sizeof(float), cudaMemcpyHostToDevice, stream));
      KVQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    } else if (t->dtype == DType::kF16 || t->dtype == DType::kBF16) {
      reserve(staging, count * 2, "weight staging");
      KVQ_CUDA_CHECK(cudaMemcpyAsync(staging.get(), t->data, count * 2, cudaMemcpyHostToDevice, stream));
      KVQ_CUDA_CHECK(bwd::widen_f32(t->dtype == DType::kF16 ? kern::Act::kF16 : kern::Act::kBF16, staging.get(),
                                    count, d, stream));
      KVQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    } else {
      throw UnsupportedError(t->file, t->name + ": dtype " + std::string(dtype_name(t->dtype)) +
                                          " is not supported by the CUDA backward pass");
    }
  }

  void ensure(int n) {
    if (n <= cap) return;
    const size_t N = static_cast<size_t>(n);
    const size_t H = static_cast<size_t>(cfg.hidden), QD = static_cast<size_t>(cfg.q_dim()),
                 KV = static_cast<size_t>(cfg.kv_dim()), I = static_cast<size_t>(cfg.intermediate),
                 L = static_cast<size_t>(cfg.n_layers);
    reserve(ids, N * sizeof(int32_t), "token ids");
    f32(ckpt, L * N * H, "layer checkpoints");
    f32(xfinal, N * H, "final hidden state");
    f32(xout, N * H, "layer output");
    f32(a, N * H, "normed input");
    f32(q, N * QD, "queries");
    f32(k, N * KV, "keys");
    f32(kpre, N * KV, "pre-RoPE keys");
    f32(v, N * KV, "values");
    f32(attn, N * QD, "attention output");
    f32(x1, N * H, "residual");
    f32(bb, N * H, "normed residual");
    f32(g, N * I, "gate");
    f32(u, N * I, "up");
    f32(mid, N * I, "SwiGLU output / its gradient");
    f32(du, N * I, "up gradient");
    f32(r1, N, "RMSNorm scales");
    f32(r2, N, "RMSNorm scales");
    f32(db, N * H, "gradient");
    f32(dx1, N * H, "gradient");
    f32(dattn, N * QD, "gradient");
    f32(dq, N * QD, "gradient");
    f32(dk, N * KV, "gradient");
    f32(dv, N * KV, "gradient");
    f32(da, N * H, "gradient");
    f32(dya, N * H, "gradient");
    f32(dyb, N * H, "gradient");
    const size_t per_head = N * N * sizeof(float) * 2;
    head_batch = static_cast<int>(std::clamp<size_t>(opt.attention_bytes / per_head, 1, static_cast<size_t>(cfg.n_kv_heads)));
    f32(p, static_cast<size_t>(head_batch) * N * N, "attention probabilities");
    f32(dp, static_cast<size_t>(head_batch) * N * N, "attention probability gradients");
    const size_t rows = static_cast<size_t>(std::max(1, std::min(opt.logit_rows, n)));
    f32(logits, rows * static_cast<size_t>(cfg.vocab), "logit block");
    reserve(row_loss, N * sizeof(double), "per-token losses");
    reserve(flag, sizeof(int), "non-finite flag");
    cap = n;
  }

  void check_tokens(std::span<const int32_t> tokens) const {
    if (tokens.size() < 2) {
      throw InvalidArgument("backward", "a sequence needs at least 2 tokens (got " + std::to_string(tokens.size()) + ")");
    }
    if (static_cast<int64_t>(tokens.size()) > std::max(cfg.max_position, 2)) {
      throw InvalidArgument("backward", std::to_string(tokens.size()) + " tokens exceed the model's window of " +
                                            std::to_string(cfg.max_position));
    }
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (tokens[i] < 0 || tokens[i] >= cfg.vocab) {
        throw InvalidArgument("backward", "token id " + std::to_string(tokens[i]) + " at index " + std::to_string(i) +
                                              " outside the vocabulary of " + std::to_string(cfg.vocab));
      }
    }
  }

  void gemm_xwt(const float* x, int rows, int kk, const float* w, int n_out, float* y, float beta) {
    KVQ_CUBLAS_CHECK(bwd::gemm_xwt(blas, x, rows, kk, w, n_out, y, beta, stream));
  }
  void gemm_xw(const float* dy, int rows, int n_out, const float* w, int kk, float* dx, float beta) {
    KVQ_CUBLAS_CHECK(bwd::gemm_xw(blas, dy, rows, n_out, w, kk, dx, beta, stream));
  }
  void bias(float* y, int rows, int cols, const cuda::DeviceBuffer& b) {
    if (b.bytes()) KVQ_CUDA_CHECK(bwd::add_bias_f32(y, rows, cols, cols, fp(b), stream));
  }
  void rope(float* x, int n, int heads, int ld, bool inverse) {
    KVQ_CUDA_CHECK(bwd::rope_f32(x, n, ld, heads, cfg.head_dim, fp(cos_t), fp(sin_t),
                                 cfg.rope.layout == RopeLayout::kInterleaved, inverse, stream));
  }
  bwd::AttnGemm attn_gemm(int n, int j, int g0, int batch) const {
    bwd::AttnGemm ag;
    ag.n = n;
    ag.head_dim = cfg.head_dim;
    ag.group = cfg.group_size();
    ag.j = j;
    ag.g0 = g0;
    ag.batch = batch;
    ag.ldq = cfg.q_dim();
    ag.ldk = cfg.kv_dim();
    return ag;
  }
  float scale() const { return static_cast<float>(1.0 / std::sqrt(static_cast<double>(cfg.head_dim))); }
  int window() const { return cfg.sliding_window.value_or(0); }

  // P = softmax(q_h k_g^T * scale) for the batch of ag.
  void probabilities(const bwd::AttnGemm& ag) {
    KVQ_CUBLAS_CHECK(bwd::attn_scores(blas, ag, q.as<float>(), k.as<float>(), scale(), p.as<float>(), stream));
    KVQ_CUDA_CHECK(bwd::causal_softmax(p.as<float>(), ag.batch, ag.n, window(), stream));
  }

  // x: [n, H] -> out: [n, H]; leaves the layer's internals in the activation buffers.
  void layer_forward(int l, const float* x, float* out, int n, bool keep_kpre) {
    const DevLayer& w = layers[static_cast<size_t>(l)];
    const int H = cfg.hidden, QD = cfg.q_dim(), KV = cfg.kv_dim(), I = cfg.intermediate;
    KVQ_CUDA_CHECK(bwd::rms_forward(x, n, H, fp(w.attn_norm), cfg.rms_norm_eps, a.as<float>(), r1.as<float>(), stream));
    gemm_xwt(a.as<float>(), n, H, fp(w.q), QD, q.as<float>(), 0.f);
    bias(q.as<float>(), n, QD, w.bq);
    gemm_xwt(a.as<float>(), n, H, fp(w.k), KV, k.as<float>(), 0.f);
    bias(k.as<float>(), n, KV, w.bk);
    gemm_xwt(a.as<float>(), n, H, fp(w.v), KV, v.as<float>(), 0.f);
    bias(v.as<float>(), n, KV, w.bv);
    if (keep_kpre) {
      KVQ_CUDA_CHECK(cudaMemcpyAsync(kpre.get(), k.get(), static_cast<size_t>(n) * KV * sizeof(float),
                                     cudaMemcpyDeviceToDevice, stream));
    }
    rope(q.as<float>(), n, cfg.n_heads, QD, false);
    rope(k.as<float>(), n, cfg.n_kv_heads, KV, false);
    for (int j = 0; j < cfg.group_size(); ++j) {
      for (int g0 = 0; g0 < cfg.n_kv_heads; g0 += head_batch) {
        const bwd::AttnGemm ag = attn_gemm(n, j, g0, std::min(head_batch, cfg.n_kv_heads - g0));
        probabilities(ag);
        KVQ_CUBLAS_CHECK(bwd::attn_apply(blas, ag, p.as<float>(), v.as<float>(), 1.f, attn.as<float>(), stream));
      }
    }
    KVQ_CUDA_CHECK(cudaMemcpyAsync(x1.get(), x, static_cast<size_t>(n) * H * sizeof(float), cudaMemcpyDeviceToDevice,
                                   stream));
    gemm_xwt(attn.as<float>(), n, QD, fp(w.o), H, x1.as<float>(), 1.f);
    bias(x1.as<float>(), n, H, w.bo);
    KVQ_CUDA_CHECK(bwd::rms_forward(x1.as<float>(), n, H, fp(w.mlp_norm), cfg.rms_norm_eps, bb.as<float>(),
                                    r2.as<float>(), stream));
    gemm_xwt(bb.as<float>(), n, H, fp(w.gate), I, g.as<float>(), 0.f);
    bias(g.as<float>(), n, I, w.bgate);
    gemm_xwt(bb.as<float>(), n, H, fp(w.up), I, u.as<float>(), 0.f);
    bias(u.as<float>(), n, I, w.bup);
    const size_t nI = static_cast<size_t>(n) * I;
    KVQ_CUDA_CHECK(bwd::swiglu_forward_f32(g.as<float>(), u.as<float>(), nI, mid.as<float>(), stream));
    KVQ_CUDA_CHECK(cudaMemcpyAsync(out, x1.get(), static_cast<size_t>(n) * H * sizeof(float), cudaMemcpyDeviceToDevice,
                                   stream));
    gemm_xwt(mid.as<float>(), n, I, fp(w.down), H, out, 1.f);
    bias(out, n, H, w.bdown);
  }

  // dy = dL/d(layer output) -> dx = dL/d(layer input); fills dk (pre-RoPE) and dv.
  void layer_backward(int l, const float* x, const float* dy, float* dx, int n) {
    const DevLayer& w = layers[static_cast<size_t>(l)];
    const int H = cfg.hidden, QD = cfg.q_dim(), KV = cfg.kv_dim(), I = cfg.intermediate;
    // MLP.
    gemm_xw(dy, n, H, fp(w.down), I, mid.as<float>(), 0.f);
    KVQ_CUDA_CHECK(bwd::swiglu_backward_f32(mid.as<float>(), g.as<float>(), u.as<float>(), static_cast<size_t>(n) * I,
                                            mid.as<float>(), du.as<float>(), stream));
    gemm_xw(mid.as<float>(), n, I, fp(w.gate), H, db.as<float>(), 0.f);
    gemm_xw(du.as<float>(), n, I, fp(w.up), H, db.as<float>(), 1.f);
    KVQ_CUDA_CHECK(bwd::rms_backward(x1.as<float>(), n, H, fp(w.mlp_norm), r2.as<float>(), db.as<float>(), dy,
                                     dx1.as<float>(), stream));
    // Attention.
    gemm_xw(dx1.as<float>(), n, H, fp(w.o), QD, dattn.as<float>(), 0.f);
    for (int j = 0; j < cfg.group_size(); ++j) {
      const float beta = j == 0 ? 0.f : 1.f;  // the group's heads add into their kv head in order
      for (int g0 = 0; g0 < cfg.n_kv_heads; g0 += head_batch) {
        const bwd::AttnGemm ag = attn_gemm(n, j, g0, std::min(head_batch, cfg.n_kv_heads - g0));
        probabilities(ag);
        KVQ_CUBLAS_CHECK(bwd::attn_scores(blas, ag, dattn.as<float>(), v.as<float>(), 1.f, dp.as<float>(), stream));
        KVQ_CUBLAS_CHECK(bwd::attn_apply_t(blas, ag, p.as<float>(), dattn.as<float>(), 1.f, beta, dv.as<float>(), stream));
        KVQ_CUDA_CHECK(bwd::softmax_backward(p.as<float>(), dp.as<float>(), ag.batch, n, stream));
        KVQ_CUBLAS_CHECK(bwd::attn_apply(blas, ag, dp.as<float>(), k.as<float>(), scale(), dq.as<float>(), stream));
        KVQ_CUBLAS_CHECK(bwd::attn_apply_t(blas, ag, dp.as<float>(), q.as<float>(), scale(), beta, dk.as<float>(), stream));
      }
    }
    rope(dq.as<float>(), n, cfg.n_heads, QD, true);
    rope(dk.as<float>(), n, cfg.n_kv_heads, KV, true);
    gemm_xw(dq.as<float>(), n, QD, fp(w.q), H, da.as<float>(), 0.f);
    gemm_xw(dk.as<float>(), n, KV, fp(w.k), H, da.as<float>(), 1.f);
    gemm_xw(dv.as<float>(), n, KV, fp(w.v), H, da.as<float>(), 1.f);
    KVQ_CUDA_CHECK(bwd::rms_backward(x, n, H, fp(w.attn_norm), r1.as<float>(), da.as<float>(), dx1.as<float>(), dx,
                                     stream));
  }

  // Final norm + lm_head + cross entropy over xfinal; when dx is not null, fills
  // dL/d(xfinal). Uses a (normed state), r1, da (its gradient) as scratch.
  double head_loss(int n, float* dx) {
    const int H = cfg.hidden, V = cfg.vocab;
    const float* head = lm_head.bytes() ? fp(lm_head) : fp(embed);
    KVQ_CUDA_CHECK(bwd::rms_forward(xfinal.as<float>(), n, H, fp(final_norm), cfg.rms_norm_eps, a.as<float>(),
                                    r1.as<float>(), stream));
    if (dx) KVQ_CUDA_CHECK(cudaMemsetAsync(da.get(), 0, static_cast<size_t>(n) * H * sizeof(float), stream));
    KVQ_CUDA_CHECK(cudaMemsetAsync(flag.get(), 0, sizeof(int), stream));
    const double count = static_cast<double>(n - 1);
    const int rows = std::max(1, std::min(opt.logit_rows, n));
    for (int b0 = 0; b0 < n - 1; b0 += rows) {
      const int nb = std::min(rows, n - 1 - b0);
      gemm_xwt(a.as<float>() + static_cast<int64_t>(b0) * H, nb, H, head, V, logits.as<float>(), 0.f);
      KVQ_CUDA_CHECK(bwd::cross_entropy_rows(logits.as<float>(), nb, V, ids.as<int32_t>() + b0 + 1, count,
                                             row_loss.as<double>() + b0, flag.as<int>(), stream));
      if (dx) gemm_xw(logits.as<float>(), nb, V, head, H, da.as<float>() + static_cast<int64_t>(b0) * H, 0.f);
    }
    if (dx) {
      KVQ_CUDA_CHECK(bwd::rms_backward(xfinal.as<float>(), n, H, fp(final_norm), r1.as<float>(), da.as<float>(),
                                       nullptr, dx, stream));
    }
    std::vector<double> losses(static_cast<size_t>(n - 1));
    int bad = 0;
    KVQ_CUDA_CHECK(cudaMemcpyAsync(losses.data(), row_loss.get(), losses.size() * sizeof(double),
                                   cudaMemcpyDeviceToHost, stream));
    KVQ_CUDA_CHECK(cudaMemcpyAsync(&bad, flag.get(), sizeof(int), cudaMemcpyDeviceToHost, stream));
    KVQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    double loss = 0.0;
    for (size_t t = 0; t < losses.size(); ++t) {
      if (bad || !std::isfinite(losses[t])) {
        throw Error(model->path(), "non-finite logits at position " + std::to_string(t) +
                                       " in the backward pass's forward (CUDA)");
      }
      loss += losses[t];  // in position order: the same sum every run
    }
    return loss / count;
  }

  // Embedding + every layer, keeping the checkpoints; leaves the last output in xfinal.
  void forward_all(std::span<const int32_t> tokens) {
    const int n = static_cast<int>(tokens.size());
    ensure(n);
    const size_t nH = static_cast<size_t>(n) * cfg.hidden;
    KVQ_CUDA_CHECK(cudaMemcpyAsync(ids.get(), tokens.data(), tokens.size() * sizeof(int32_t), cudaMemcpyHostToDevice,
                                   stream));
    KVQ_CUDA_CHECK(bwd::embed_f32(ids.as<int32_t>(), n, fp(embed), cfg.hidden, ckpt.as<float>(), stream));
    for (int l = 0; l < cfg.n_layers; ++l) {
      float* out = l + 1 < cfg.n_layers ? ckpt.as<float>() + (l + 1) * nH : xfinal.as<float>();
      layer_forward(l, ckpt.as<float>() + l * nH, out, n, false);
    }
  }

  // Forward, loss, backward layer by layer; after each layer's backward, on_layer(l) sees
  // the layer's internals (q, k post-RoPE, kpre, v) and gradients (dk pre-RoPE, dv).
  template <typename F>
  double run(std::span<const int32_t> tokens, F&& on_layer) {
    check_tokens(tokens);
    const int n = static_cast<int>(tokens.size());
    forward_all(tokens);
    const size_t nH = static_cast<size_t>(n) * cfg.hidden;
    float* dy = dya.as<float>();
    float* dx = dyb.as<float>();
    const double loss = head_loss(n, dy);
    for (int l = cfg.n_layers - 1; l >= 0; --l) {
      const float* xin = ckpt.as<float>() + l * nH;
      layer_forward(l, xin, xout.as<float>(), n, true);
      layer_backward(l, xin, dy, dx, n);
      on_layer(l, n);
      std::swap(dy, dx);
    }
    KVQ_CUDA_CHECK(cudaStreamSynchronize(stream));
    return loss;
  }

  void download(CpuGradient<float>::Mat& m, const cuda::DeviceBuffer& b, int n, int cols) {
    m.resize(n, cols);
    KVQ_CUDA_CHECK(cudaMemcpyAsync(m.data(), b.get(), static_cast<size_t>(n) * cols * sizeof(float),
                                   cudaMemcpyDeviceToHost, stream));
  }
};

CudaGradient::CudaGradient(std::shared_ptr<const Model> model, const CudaGradientOptions& opt)
    : impl_(std::make_unique<Impl>()) {
  if (!model) throw InvalidArgument("backward", "no model");
  Impl& m = *impl_;
  m.model = std::move(model);
  m.cfg = m.model->config();
  m.opt = opt;
  const ModelConfig& cfg = m.cfg;
  if (cfg.head_dim % 2 != 0) throw UnsupportedError(m.model->path(), "odd head_dim");
  cuda::select_device(opt.device);
  KVQ_CUDA_CHECK(cudaStreamCreateWithFlags(&m.stream, cudaStreamNonBlocking));
  KVQ_CUBLAS_CHECK(cublasCreate(&m.blas));
  // Full fp32 SGEMMs (no TF32): the tolerance of tests/gpu/backward_test.cpp assumes it.
  KVQ_CUBLAS_CHECK(cublasSetMathMode(m.blas, CUBLAS_DEFAULT_MATH));
  KVQ_CUBLAS_CHECK(cublasSetStream(m.blas, m.stream));

  m.upload(m.embed, &m.model->embedding());
  if (&m.model->lm_head() != &m.model->embedding()) m.upload(m.lm_head, &m.model->lm_head());
  m.upload(m.final_norm, &m.model->final_norm());
  m.layers.resize(static_cast<size_t>(cfg.n_layers));
  for (int l = 0; l < cfg.n_layers; ++l) {
    const LayerWeights& w = m.model->layer(l);
    DevLayer& d = m.layers[static_cast<size_t>(l)];
    m.upload(d.attn_norm, w.attn_norm);
    m.upload(d.mlp_norm, w.mlp_norm);
    m.upload(d.q, w.q);
    m.upload(d.k, w.k);
    m.upload(d.v, w.v);
    m.upload(d.o, w.o);
    m.upload(d.gate, w.gate);
    m.upload(d.up, w.up);
    m.upload(d.down, w.down);
    m.upload(d.bq, w.q_bias);
    m.upload(d.bk, w.k_bias);
    m.upload(d.bv, w.v_bias);
    m.upload(d.bo, w.o_bias);
    m.upload(d.bgate, w.gate_bias);
    m.upload(d.bup, w.up_bias);
    m.upload(d.bdown, w.down_bias);
  }
  m.held -= m.staging.bytes();
  m.staging = cuda::DeviceBuffer();
  // The CPU reference's angles: double, rounded once to float.
  const std::vector<double> inv = rope_inv_freq(cfg.rope, cfg.head_dim);
  const int half = cfg.head_dim / 2;
  const int maxp = std::max(cfg.max_position, 2);
  std::vector<float> c(static_cast<size_t>(maxp) * half), s(c.size());
  for (int p = 0; p < maxp; ++p) {
    for (int i = 0; i < half; ++i) {
      const double ang = static_cast<double>(p) * inv[static_cast<size_t>(i)];
      c[static_cast<size_t>(p) * half + i] = static_cast<float>(std::cos(ang));
      s[static_cast<size_t>(p) * half + i] = static_cast<float>(std::sin(ang));
    }
  }
  KVQ_CUDA_CHECK(cudaMemcpyAsync(m.f32(m.cos_t, c.size(), "RoPE cos"), c.data(), c.size() * 4, cudaMemcpyHostToDevice,
                                 m.stream));
  KVQ_CUDA_CHECK(cudaMemcpyAsync(m.f32(m.sin_t, s.size(), "RoPE sin"), s.data(), s.size() * 4, cudaMemcpyHostToDevice,
                                 m.stream));
  KVQ_CUDA_CHECK(cudaStreamSynchronize(m.stream));
}

CudaGradient::~CudaGradient() = default;

const ModelConfig& CudaGradient::config() const { return impl_->cfg; }

double CudaGradient::loss(std::span<const int32_t> tokens) {
  impl_->check_tokens(tokens);
  impl_->forward_all(tokens);
  return impl_->head_loss(static_cast<int>(tokens.size()), nullptr);
}

double CudaGradient::backward(std::span<const int32_t> tokens, const LayerVisitor& visit) {
  Impl& m = *impl_;
  return m.run(tokens, [&](int l, int n) {
    if (!visit) return;
    const int QD = m.cfg.q_dim(), KV = m.cfg.kv_dim();
    m.download(m.hq, m.q, n, QD);
    m.download(m.hkpre, m.kpre, n, KV);
    m.download(m.hk, m.k, n, KV);
    m.download(m.hv, m.v, n, KV);
    m.download(m.hdk, m.dk, n, KV);
    m.download(m.hdv, m.dv, n, KV);
    KVQ_CUDA_CHECK(cudaStreamSynchronize(m.stream));
    LayerView view;
    view.layer = l;
    view.q_post_rope = &m.hq;
    view.k_pre_rope = &m.hkpre;
    view.k_post_rope = &m.hk;
    view.v = &m.hv;
    view.dk_pre_rope = &m.hdk;
    view.dv = &m.hdv;
    visit(view);
  });
}

double CudaGradient::accumulate_fisher(std::span<const int32_t> tokens) {
  Impl& m = *impl_;
  const int n = static_cast<int>(tokens.size());
  const size_t per_layer = static_cast<size_t>(n) * m.cfg.kv_dim();
  if (m.fisher_n != 0 && m.fisher_n != n) {
    throw InvalidArgument("fisher", "sequences of " + std::to_string(n) + " tokens after sequences of " +
                                        std::to_string(m.fisher_n) + " (call reset_fisher first)");
  }
  if (m.fisher_n == 0 && n >= 2) {
    const size_t bytes = per_layer * m.cfg.n_layers * sizeof(double);
    m.reserve(m.fisher_k, bytes, "Fisher accumulators (keys)");
    m.reserve(m.fisher_v, bytes, "Fisher accumulators (values)");
    KVQ_CUDA_CHECK(cudaMemsetAsync(m.fisher_k.get(), 0, bytes, m.stream));
    KVQ_CUDA_CHECK(cudaMemsetAsync(m.fisher_v.get(), 0, bytes, m.stream));
  }
  const double loss = m.run(tokens, [&](int l, int) {
    KVQ_CUDA_CHECK(bwd::square_accumulate(m.fisher_k.as<double>() + l * per_layer, m.dk.as<float>(), per_layer, m.stream));
    KVQ_CUDA_CHECK(bwd::square_accumulate(m.fisher_v.as<double>() + l * per_layer, m.dv.as<float>(), per_layer, m.stream));
  });
  m.fisher_n = n;
  return loss;
}

void CudaGradient::fisher(std::vector<std::vector<float>>& k, std::vector<std::vector<float>>& v) {
  Impl& m = *impl_;
  k.clear();
  v.clear();
  if (m.fisher_n == 0) return;
  const size_t per_layer = static_cast<size_t>(m.fisher_n) * m.cfg.kv_dim();
  float* tmp = m.f32(m.xout, per_layer, "Fisher download");  // scratch, free between passes
  for (int l = 0; l < m.cfg.n_layers; ++l) {
    for (int kind = 0; kind < 2; ++kind) {
      const double* src = (kind == 0 ? m.fisher_k : m.fisher_v).as<double>() + l * per_layer;
      std::vector<float> host(per_layer);
      KVQ_CUDA_CHECK(bwd::double_to_float(src, per_layer, tmp, m.stream));
      KVQ_CUDA_CHECK(cudaMemcpyAsync(host.data(), tmp, per_layer * sizeof(float), cudaMemcpyDeviceToHost, m.stream));
      KVQ_CUDA_CHECK(cudaStreamSynchronize(m.stream));
      (kind == 0 ? k : v).push_back(std::move(host));
    }
  }
}

void CudaGradient::reset_fisher() { impl_->fisher_n = 0; }

size_t CudaGradient::peak_device_bytes() const { return impl_->peak; }

}  // namespace kvq
