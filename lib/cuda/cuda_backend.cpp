// The CUDA backend (see cuda_backend.h).
//
// Per step (a chunk of m tokens for each of `rows` slots, R = rows * m tokens):
//   x = embed(ids)                                            fp32 [R, hidden]
//   per layer:
//     xn = RMSNorm(x) * w (16-bit)      qkv = xn [Wq;Wk;Wv]^T   one GEMM, fp32 out
//     hooks on pre-RoPE q/k/v (host copies, only when wanted), then either
//       one fused kernel: RoPE on q and k, k/v -> 16-bit cache, q -> 16-bit   (default), or
//       RoPE in place on q and k, hooks on post-RoPE k, k/v -> cache, q -> 16-bit
//       (when an observer wants post-RoPE keys or past-only quantization: it needs the
//       fp32 post-RoPE tensors; same bits as the fused kernel otherwise)
//     attention (tiled prefill kernel for m > 1, split-K decode kernel for m == 1)
//     x += att Wo^T                     (cuBLAS beta = 1: the residual add is the epilogue)
//     xn = RMSNorm(x) * w;  gu = xn [Wg;Wu]^T rounded to 16 bits (fp32 accumulation; where
//     transformers rounds in a 16-bit model);  h = round(silu(g) * u) (fp32 inside);
//     x += h Wd^T
//   With a gate/up bias the gate/up GEMM writes fp32 and SwiGLU rounds once (bias added in
//   fp32). RMSNorm reads each row once (rmsnorm_vec). KVQ_NO_FUSION=1 in the environment
//   selects the session-2 kernels everywhere (unfused RoPE/KV/q, fp32 gate/up, two-read
//   RMSNorm): the before/after of notes/cuda-perf.md in one build.
//   xn = RMSNorm(x); logits / NLL of blocks of kLogitRows tokens (never [R, vocab] at once
//   in forward_nll).
// Every RMSNorm also flags non-finite inputs, so the layer where a NaN/Inf first appears is
// known without extra passes; the flags are read once per step.
#include "lib/cuda/cuda_backend.h"

#include <cublas_v2.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <string>
#include <vector>

#include "formats/dtype.h"
#include "formats/error.h"
#include "kernels/ops.cuh"
#include "lib/cuda/check.h"
#include "lib/rope.h"

namespace kvq {
namespace {

using cuda::DeviceBuffer;
using kern::Act;

// Tokens whose logits are materialized at once (1024 x 32000 fp32 = 125 MiB).
constexpr int kLogitRows = 1024;

struct LayerDev {
  DeviceBuffer attn_norm, mlp_norm;
  DeviceBuffer wqkv;  // [q_dim + 2 kv_dim, hidden]
  DeviceBuffer wo;    // [hidden, q_dim]
  DeviceBuffer wgu;   // [2 intermediate, hidden]  (gate rows, then up rows)
  DeviceBuffer wdown; // [hidden, intermediate]
  DeviceBuffer bqkv, bo, bgu, bdown;  // empty when the model has no such bias
};

size_t act_size() { return 2; }

// Converts one tensor to the backend's 16-bit type on the host (identity copy when the
// dtypes match). F32 -> F16 rounds half to even (formats/dtype.h).
void append_as(Act act, const TensorView& t, std::vector<uint16_t>& out) {
  const size_t n = static_cast<size_t>(t.numel());
  const size_t base = out.size();
  out.resize(base + n);
  uint16_t* dst = out.data() + base;
  if ((t.dtype == DType::kF16 && act == Act::kF16) || (t.dtype == DType::kBF16 && act == Act::kBF16)) {
    std::memcpy(dst, t.data, n * 2);
    return;
  }
  std::vector<float> f(n);
  convert_to_f32(t.dtype, t.data, f.data(), n);
  for (size_t i = 0; i < n; ++i) dst[i] = act == Act::kF16 ? float_to_half(f[i]) : float_to_bf16(f[i]);
}

// Device time per stage of the decoder layers, to find the bottleneck of a prefill
// (notes/cuda-perf.md). With KVQ_STAGE_TIMES set in the environment, events mark the stage
// boundaries in every layer and each forward prints the summed milliseconds per stage to
// stderr; unset (the default), nothing is recorded. The events serialize nothing: they only
// time the one stream.
class StageTimer {
 public:
  // kNorm sums both RMSNorms of a layer (attention and MLP inputs).
  enum Stage { kNorm, kQkv, kRopeKv, kAttention, kOProj, kGateUp, kSwiglu, kDown, kCount };
  StageTimer() : on_(std::getenv("KVQ_STAGE_TIMES") != nullptr) {}
  StageTimer(const StageTimer&) = delete;
  StageTimer& operator=(const StageTimer&) = delete;
  ~StageTimer() {
    for (cudaEvent_t e : pool_) cudaEventDestroy(e);
  }
  bool on() const { return on_; }
  // The first boundary of a step (after the embedding).
  void start(cudaStream_t s) {
    if (!on_) return;
    used_ = 0;
    stages_.clear();
    record(s, kCount);
  }
  // The stage `st` ends here (it began at the previous boundary).
  void end(Stage st, cudaStream_t s) {
    if (on_) record(s, st);
  }
  // After the stream has been synchronized: adds the step's intervals to the totals.
  void collect() {
    if (!on_) return;
    for (size_t i = 1; i < used_; ++i) {
      float ms = 0.f;
      KVQ_CUDA_CHECK(cudaEventElapsedTime(&ms, pool_[i - 1], pool_[i]));
      total_[stages_[i]] += ms;
    }
  }
  // Prints and clears the totals; decode steps (one token) are cleared silently.
  void report(int tokens) {
    if (!on_) return;
    if (tokens <= 1) {
      for (double& t : total_) t = 0;
      return;
    }
    static const char* names[kCount] = {"rmsnorm", "qkv", "rope+kv+q16", "attention", "o_proj",
                                        "gate|up", "swiglu", "down"};
    double sum = 0;
    for (double t : total_) sum += t;
    std::fprintf(stderr, "stage times for %d tokens (ms, all layers):", tokens);
    for (int i = 0; i < kCount; ++i) std::fprintf(stderr, " %s %.2f", names[i], total_[i]);
    std::fprintf(stderr, " | sum %.2f\n", sum);
    for (double& t : total_) t = 0;
  }

 private:
  void record(cudaStream_t s, int st) {
    if (used_ == pool_.size()) {
      cudaEvent_t e = nullptr;
      KVQ_CUDA_CHECK(cudaEventCreate(&e));
      pool_.push_back(e);
    }
    KVQ_CUDA_CHECK(cudaEventRecord(pool_[used_], s));
    stages_.push_back(st);
    ++used_;
  }
  bool on_ = false;
  std::vector<cudaEvent_t> pool_;
  std::vector<int> stages_;
  size_t used_ = 0;
  double total_[kCount + 1] = {};
};

class CudaBackend final : public Backend {
 public:
  // From a checkpoint.
  CudaBackend(std::shared_ptr<const Model> model, const CudaOptions& opt)
      : model_(std::move(model)), opt_(opt), no_fusion_(std::getenv("KVQ_NO_FUSION") != nullptr) {
    if (!model_) throw InvalidArgument("cuda backend", "no model");
    cfg_ = model_->config();
    init_device();
    act_ = model_->embedding().dtype == DType::kBF16 ? Act::kBF16 : Act::kF16;
    upload_weights();
  }

  // Synthetic weights drawn on the device.
  CudaBackend(const ModelConfig& cfg, uint64_t seed, const CudaOptions& opt)
      : opt_(opt), no_fusion_(std::getenv("KVQ_NO_FUSION") != nullptr) {
    cfg_ = cfg;
    init_device();
    act_ = cfg.dtype == DType::kBF16 ? Act::kBF16 : Act::kF16;
    synthesize_weights(seed);
  }

  ~CudaBackend() override {
    if (cublas_ != nullptr) cublasDestroy(cublas_);
    if (stream_ != nullptr) cudaStreamDestroy(stream_);
  }

  std::string name() const override {
    return "cuda:" + std::to_string(info_.device) + " (" + info_.name + ")";
  }
  const ModelConfig& config() const override { return cfg_; }

  void reset(int batch, int max_tokens) override {
    if (batch <= 0 || max_tokens <= 0)
      throw InvalidArgument("cuda backend", "batch " + std::to_string(batch) + " and max_tokens " +
                                                std::to_string(max_tokens) + " must be positive");
    KVQ_CUDA_CHECK(cudaSetDevice(info_.device));
    const size_t per_layer = static_cast<size_t>(batch) * cfg_.n_kv_heads * max_tokens *
                             cfg_.head_dim * act_size();
    kcache_ = DeviceBuffer();
    vcache_ = DeviceBuffer();
    kcache_ = DeviceBuffer(per_layer * cfg_.n_layers, "the key cache");
    vcache_ = DeviceBuffer(per_layer * cfg_.n_layers, "the value cache");
    layer_cache_bytes_ = per_layer;
    batch_ = batch;
    max_tokens_ = max_tokens;
    lens_.assign(static_cast<size_t>(batch), 0);
  }
  int batch() const override { return batch_; }
  int max_tokens() const override { return max_tokens_; }
  int cache_len(int slot) const override {
    check_slot(slot);
    return lens_[static_cast<size_t>(slot)];
  }
  void truncate(int slot, int len) override {
    check_slot(slot);
    if (len < 0 || len > lens_[static_cast<size_t>(slot)])
      throw InvalidArgument("cuda backend", "cannot truncate slot " + std::to_string(slot) + " of " +
                                                std::to_string(lens_[static_cast<size_t>(slot)]) +
                                                " tokens to " + std::to_string(len));
    lens_[static_cast<size_t>(slot)] = len;
  }

  Logits forward(std::span<const int32_t> tokens, int n, const ForwardOptions& opt) override {
    const std::vector<int> slots = forward_slots(*this, tokens, n, opt);
    const int rows = static_cast<int>(slots.size());
    Logits out;
    out.rows = rows;
    out.n = opt.last_only ? 1 : n;
    out.vocab = cfg_.vocab;
    out.data.resize(static_cast<size_t>(rows) * out.n * cfg_.vocab);
    run_steps(tokens, n, slots, opt, [&](int c0, int m, const std::vector<int>& /*pos0*/) {
      // xn_ holds the final-normed hidden states [rows, m, hidden] of this step.
      if (opt.last_only) {
        if (c0 + m != n) return;  // only the step holding the last position
        gather_last(rows, m);
        logits_block(xlast_.get(), rows);
        KVQ_CUDA_CHECK(cudaMemcpyAsync(out.data.data(), logits_.get(),
                                       static_cast<size_t>(rows) * cfg_.vocab * 4,
                                       cudaMemcpyDeviceToHost, stream_));
      } else {
        for (int r = 0; r < rows; ++r) {
          for (int i0 = 0; i0 < m; i0 += kLogitRows) {
            const int nb = std::min(kLogitRows, m - i0);
            const char* src = static_cast<const char*>(xn_.get()) +
                              (static_cast<size_t>(r) * m + i0) * cfg_.hidden * act_size();
            logits_block(src, nb);
            KVQ_CUDA_CHECK(cudaMemcpyAsync(
                out.data.data() + (static_cast<size_t>(r) * n + c0 + i0) * cfg_.vocab, logits_.get(),
                static_cast<size_t>(nb) * cfg_.vocab * 4, cudaMemcpyDeviceToHost, stream_));
          }
        }
      }
    });
    KVQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (float v : out.data)
      if (!std::isfinite(v))
        throw Error(path(), "non-finite logits after the lm_head although every layer's hidden "
                            "state was finite",
                    "the lm_head or final norm weights hold huge values");
    return out;
  }

  NllResult forward_nll(std::span<const int32_t> tokens, std::span<const int32_t> targets, int n,
                        const ForwardOptions& opt) override {
    check_nll_targets(tokens, targets, cfg_.vocab);
    const std::vector<int> slots = forward_slots(*this, tokens, n, opt);
    const int rows = static_cast<int>(slots.size());
    std::vector<float> nll(tokens.size(), std::numeric_limits<float>::quiet_NaN());
    std::vector<int32_t> tg;
    run_steps(tokens, n, slots, opt, [&](int c0, int m, const std::vector<int>& /*pos0*/) {
      const int R = rows * m;
      tg.resize(static_cast<size_t>(R));
      for (int r = 0; r < rows; ++r)
        for (int i = 0; i < m; ++i)
          tg[static_cast<size_t>(r) * m + i] = targets[static_cast<size_t>(r) * n + c0 + i];
      targets_.reserve(static_cast<size_t>(R) * 4, "targets");
      nll_.reserve(static_cast<size_t>(R) * 4, "per-token NLL");
      KVQ_CUDA_CHECK(cudaMemcpyAsync(targets_.get(), tg.data(), static_cast<size_t>(R) * 4,
                                     cudaMemcpyHostToDevice, stream_));
      for (int t0 = 0; t0 < R; t0 += kLogitRows) {
        const int nb = std::min(kLogitRows, R - t0);
        logits_block(static_cast<const char*>(xn_.get()) +
                         static_cast<size_t>(t0) * cfg_.hidden * act_size(), nb);
        KVQ_CUDA_CHECK(kern::nll_rows(logits_.as<float>(), nb, cfg_.vocab,
                                      targets_.as<int32_t>() + t0, nll_.as<float>() + t0, stream_));
      }
      std::vector<float> step(static_cast<size_t>(R));
      KVQ_CUDA_CHECK(cudaMemcpyAsync(step.data(), nll_.get(), static_cast<size_t>(R) * 4,
                                     cudaMemcpyDeviceToHost, stream_));
      KVQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
      for (int r = 0; r < rows; ++r)
        for (int i = 0; i < m; ++i)
          nll[static_cast<size_t>(r) * n + c0 + i] = step[static_cast<size_t>(r) * m + i];
    });
    NllResult res;
    for (size_t i = 0; i < nll.size(); ++i) {
      if (targets[i] < 0) continue;
      if (!std::isfinite(nll[i]))
        throw Error(path(), "non-finite logits after the lm_head although every layer's hidden "
                            "state was finite");
      res.sum += static_cast<double>(nll[i]);
      res.count += 1;
    }
    if (opt.per_token) res.per_token = std::move(nll);
    return res;
  }

 private:
  const std::string& path() const {
    static const std::string synthetic = "synthetic model";
    return model_ ? model_->path() : synthetic;
  }

  void init_device() {
    // KVQ_MAX_STEP_TOKENS overrides the step length (tokens per pass through the layers) for
    // the prefill measurements in notes/cuda-perf.md; the results do not depend on it beyond
    // rounding order (the steps are causally equivalent).
    if (const char* s = std::getenv("KVQ_MAX_STEP_TOKENS"); s != nullptr && std::atoi(s) > 0)
      opt_.max_step_tokens = std::atoi(s);
    info_ = cuda::select_device(opt_.device);
    KVQ_CUDA_CHECK(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking));
    KVQ_CUBLAS_CHECK(cublasCreate(&cublas_));
    // No TF32 anywhere: our GEMM inputs are 16-bit already; pedantic math keeps cuBLAS from
    // choosing reduced-precision reductions.
    KVQ_CUBLAS_CHECK(cublasSetMathMode(cublas_, CUBLAS_DEFAULT_MATH));
    if (cfg_.head_dim % 8 != 0 || cfg_.head_dim > kern::kMaxHeadDim)
      throw UnsupportedError(path(), "head_dim " + std::to_string(cfg_.head_dim) +
                                         ": the CUDA kernels need a multiple of 8 up to " +
                                         std::to_string(kern::kMaxHeadDim),
                             "use --backend cpu");
    if (cfg_.group_size() > kern::kMaxGroup)
      throw UnsupportedError(path(), "n_heads / n_kv_heads = " + std::to_string(cfg_.group_size()) +
                                         ": the decode kernel supports up to " +
                                         std::to_string(kern::kMaxGroup),
                             "use --backend cpu");
    const std::vector<double> inv = rope_inv_freq(cfg_.rope, cfg_.head_dim);
    std::vector<float> invf(inv.begin(), inv.end());
    inv_freq_ = DeviceBuffer(invf.size() * 4, "RoPE frequencies");
    KVQ_CUDA_CHECK(cudaMemcpy(inv_freq_.get(), invf.data(), invf.size() * 4, cudaMemcpyHostToDevice));
    flags_ = DeviceBuffer(static_cast<size_t>(2 * cfg_.n_layers + 2) * 4, "non-finite flags");
  }

  DeviceBuffer upload(const std::vector<const TensorView*>& parts, const char* what) {
    std::vector<uint16_t> host;
    for (const TensorView* t : parts) append_as(act_, *t, host);
    DeviceBuffer b(host.size() * 2, what);
    KVQ_CUDA_CHECK(cudaMemcpy(b.get(), host.data(), host.size() * 2, cudaMemcpyHostToDevice));
    return b;
  }

  void upload_weights() {
    embed_ = upload({&model_->embedding()}, "the embedding");
    if (&model_->lm_head() != &model_->embedding()) lm_head_ = upload({&model_->lm_head()}, "the lm_head");
    final_norm_ = upload({&model_->final_norm()}, "the final norm");
    layers_.resize(static_cast<size_t>(cfg_.n_layers));
    for (int l = 0; l < cfg_.n_layers; ++l) {
      const LayerWeights& w = model_->layer(l);
      LayerDev& d = layers_[static_cast<size_t>(l)];
      d.attn_norm = upload({w.attn_norm}, "a norm");
      d.mlp_norm = upload({w.mlp_norm}, "a norm");
      d.wqkv = upload({w.q, w.k, w.v}, "q/k/v weights");
      d.wo = upload({w.o}, "o weights");
      d.wgu = upload({w.gate, w.up}, "gate/up weights");
      d.wdown = upload({w.down}, "down weights");
      if (w.q_bias) d.bqkv = upload({w.q_bias, w.k_bias, w.v_bias}, "q/k/v biases");
      if (w.o_bias) d.bo = upload({w.o_bias}, "o bias");
      if (w.gate_bias) d.bgu = upload({w.gate_bias, w.up_bias}, "gate/up biases");
      if (w.down_bias) d.bdown = upload({w.down_bias}, "down bias");
    }
  }

  DeviceBuffer random(size_t count, float scale, uint64_t seed, const char* what) {
    DeviceBuffer b(count * 2, what);
    KVQ_CUDA_CHECK(kern::fill_uniform(act_, b.get(), count, scale, seed, stream_));
    return b;
  }
  DeviceBuffer constant(size_t count, float value, const char* what) {
    DeviceBuffer b(count * 2, what);
    KVQ_CUDA_CHECK(kern::fill_const(act_, b.get(), count, value, stream_));
    return b;
  }

  void synthesize_weights(uint64_t seed) {
    const size_t H = cfg_.hidden, V = cfg_.vocab, I = cfg_.intermediate;
    const size_t QKV = cfg_.q_dim() + 2 * static_cast<size_t>(cfg_.kv_dim());
    // Uniform in [-a, a] has std a/sqrt(3); a = sqrt(3/fan_in) gives unit-variance outputs.
    auto a = [](size_t fan_in) { return static_cast<float>(std::sqrt(3.0 / static_cast<double>(fan_in))); };
    uint64_t s = seed * 1000003ull;
    embed_ = random(V * H, 1.0f, ++s, "the embedding");
    if (!cfg_.tie_embeddings) lm_head_ = random(V * H, a(H), ++s, "the lm_head");
    final_norm_ = constant(H, 1.0f, "the final norm");
    layers_.resize(static_cast<size_t>(cfg_.n_layers));
    for (auto& d : layers_) {
      d.attn_norm = constant(H, 1.0f, "a norm");
      d.mlp_norm = constant(H, 1.0f, "a norm");
      d.wqkv = random(QKV * H, a(H), ++s, "q/k/v weights");
      // Residual branches scaled down so the stream stays O(1) over many layers.
      d.wo = random(H * cfg_.q_dim(), a(cfg_.q_dim()) / std::sqrt(2.0f * cfg_.n_layers), ++s, "o weights");
      d.wgu = random(2 * I * H, a(H), ++s, "gate/up weights");
      d.wdown = random(H * I, a(I) / std::sqrt(2.0f * cfg_.n_layers), ++s, "down weights");
    }
    KVQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  void check_slot(int slot) const {
    if (slot < 0 || slot >= batch_)
      throw InvalidArgument("cuda backend", "slot " + std::to_string(slot) + " outside the " +
                                                std::to_string(batch_) +
                                                " cache slots (call reset(batch, max_tokens))");
  }

  void ensure_scratch(int R, int rows) {
    const size_t H = cfg_.hidden, QKV = cfg_.q_dim() + 2 * static_cast<size_t>(cfg_.kv_dim());
    const size_t I = cfg_.intermediate;
    x_.reserve(R * H * 4, "the residual stream");
    xn_.reserve(R * H * 2, "normed activations");
    qkv_.reserve(R * QKV * 4, "q/k/v");
    qh_.reserve(R * static_cast<size_t>(cfg_.q_dim()) * 2, "queries");
    att_.reserve(R * static_cast<size_t>(cfg_.q_dim()) * 2, "attention output");
    gu_.reserve(R * 2 * I * 4, "gate/up");
    hmlp_.reserve(R * I * 2, "MLP activations");
    logits_.reserve(static_cast<size_t>(std::max(kLogitRows, rows)) * cfg_.vocab * 4, "a block of logits");
    xlast_.reserve(static_cast<size_t>(rows) * H * 2, "last positions");
    meta_.reserve((static_cast<size_t>(R) + 2 * rows) * 4, "token ids and positions");
  }

  // Runs the layers over the chunk in steps of at most max_step_tokens tokens; after each
  // step, `emit(c0, m, pos0)` reads xn_ ([rows, m, hidden], final-normed) for tokens
  // c0 .. c0+m-1 of every row. Cache lengths advance only when every step succeeded.
  template <typename Emit>
  void run_steps(std::span<const int32_t> tokens, int n, const std::vector<int>& slots,
                 const ForwardOptions& opt, Emit&& emit) {
    KVQ_CUDA_CHECK(cudaSetDevice(info_.device));
    const int rows = static_cast<int>(slots.size());
    const int step = std::max(1, std::min(n, opt_.max_step_tokens / std::max(1, rows)));
    std::vector<int> pos0(static_cast<size_t>(rows));
    std::vector<int> saved(lens_);
    try {
      for (int c0 = 0; c0 < n; c0 += step) {
        const int m = std::min(step, n - c0);
        for (int r = 0; r < rows; ++r) pos0[r] = saved[slots[r]] + c0;
        layers(tokens, n, c0, m, slots, pos0, opt);
        emit(c0, m, pos0);
      }
      timer_.report(n * rows);
    } catch (...) {
      lens_ = saved;
      throw;
    }
    for (int r = 0; r < rows; ++r) lens_[slots[r]] = saved[slots[r]] + n;
  }

  void* kc(int l) const { return static_cast<char*>(kcache_.get()) + layer_cache_bytes_ * l; }
  void* vc(int l) const { return static_cast<char*>(vcache_.get()) + layer_cache_bytes_ * l; }

  // The decoder stack for tokens c0 .. c0+m-1 of every row; leaves the final-normed hidden
  // states in xn_.
  void layers(std::span<const int32_t> tokens, int n, int c0, int m, const std::vector<int>& slots,
              const std::vector<int>& pos0, const ForwardOptions& opt) {
    const int rows = static_cast<int>(slots.size());
    const int R = rows * m;
    const int H = cfg_.hidden, QD = cfg_.q_dim(), KV = cfg_.kv_dim(), hd = cfg_.head_dim;
    const int QKV = QD + 2 * KV, I = cfg_.intermediate;
    ensure_scratch(R, rows);

    ForwardObserver* obs = opt.observer;
    const bool hook_qkv = obs && obs->wants_qkv();
    const bool hook_post = obs && obs->wants_k_post_rope();
    const bool hook_probs = obs && obs->wants_attention_probs();
    const bool past_only = obs && obs->past_only();
    if (past_only) {
      qkv_orig_.reserve(static_cast<size_t>(R) * QKV * 4, "past-only q/k/v copy");
      kself_.reserve(static_cast<size_t>(R) * KV * 2, "past-only keys");
      vself_.reserve(static_cast<size_t>(R) * KV * 2, "past-only values");
    }

    // ids [R], slot [rows], pos0 [rows] in one upload.
    std::vector<int32_t> meta(static_cast<size_t>(R) + 2 * rows);
    for (int r = 0; r < rows; ++r) {
      for (int i = 0; i < m; ++i) meta[static_cast<size_t>(r) * m + i] = tokens[static_cast<size_t>(r) * n + c0 + i];
      meta[static_cast<size_t>(R) + r] = slots[r];
      meta[static_cast<size_t>(R) + rows + r] = pos0[r];
    }
    KVQ_CUDA_CHECK(cudaMemcpyAsync(meta_.get(), meta.data(), meta.size() * 4, cudaMemcpyHostToDevice, stream_));
    const int32_t* d_ids = meta_.as<int32_t>();
    const int32_t* d_slot = d_ids + R;
    const int32_t* d_pos0 = d_slot + rows;
    int* flags = flags_.as<int>();
    KVQ_CUDA_CHECK(cudaMemsetAsync(flags, 0, flags_.bytes(), stream_));

    float* x = x_.as<float>();
    float* qkv = qkv_.as<float>();
    std::vector<float> host;  // hook copies
    const bool interleaved = cfg_.rope.layout == RopeLayout::kInterleaved;
    const float eps = cfg_.rms_norm_eps;
    const float* inv = inv_freq_.as<float>();

    KVQ_CUDA_CHECK(kern::embed(act_, d_ids, R, embed_.get(), H, x, stream_));
    timer_.start(stream_);
    for (int l = 0; l < cfg_.n_layers; ++l) {
      const LayerDev& w = layers_[static_cast<size_t>(l)];
      KVQ_CUDA_CHECK(rmsnorm(x, R, H, w.attn_norm.get(), eps, xn_.get(), flags + 2 * l));
      timer_.end(StageTimer::kNorm, stream_);
      KVQ_CUBLAS_CHECK(kern::gemm(cublas_, act_, xn_.get(), R, H, w.wqkv.get(), QKV, qkv, 0.f, stream_));
      if (w.bqkv.get()) KVQ_CUDA_CHECK(kern::add_bias(act_, qkv, R, QKV, QKV, w.bqkv.get(), stream_));
      timer_.end(StageTimer::kQkv, stream_);
      if (past_only)
        KVQ_CUDA_CHECK(cudaMemcpyAsync(qkv_orig_.get(), qkv, static_cast<size_t>(R) * QKV * 4,
                                       cudaMemcpyDeviceToDevice, stream_));
      if (hook_qkv) {
        download(host, qkv, static_cast<size_t>(R) * QKV);
        for (int r = 0; r < rows; ++r) {
          float* base = host.data() + static_cast<size_t>(r) * m * QKV;
          obs->on_qkv(l, slots[r], pos0[r], ConstMatrixView{base, m, QD, QKV},
                      MatrixView{base + QD, m, KV, QKV}, MatrixView{base + QD + KV, m, KV, QKV});
        }
        upload_to(qkv, host);
      }
      if (!hook_post && !past_only && !no_fusion_) {
        // One pass: 6 bytes per q/k/v element instead of 14 (q, k) and 6 (v) unfused.
        KVQ_CUDA_CHECK(kern::rope_store_qkv(act_, qkv, QKV, rows, m, cfg_.n_heads, cfg_.n_kv_heads, hd,
                                            d_slot, d_pos0, inv, interleaved, max_tokens_, qh_.get(),
                                            kc(l), vc(l), stream_));
      } else {
        KVQ_CUDA_CHECK(kern::rope(qkv, R, QKV, cfg_.n_heads, hd, m, d_pos0, inv, interleaved, stream_));
        KVQ_CUDA_CHECK(kern::rope(qkv + QD, R, QKV, cfg_.n_kv_heads, hd, m, d_pos0, inv, interleaved, stream_));
        if (past_only) {
          float* o = qkv_orig_.as<float>();
          KVQ_CUDA_CHECK(kern::rope(o + QD, R, QKV, cfg_.n_kv_heads, hd, m, d_pos0, inv, interleaved, stream_));
          KVQ_CUDA_CHECK(kern::to_act(act_, o + QD, R, KV, QKV, kself_.get(), KV, stream_));
          KVQ_CUDA_CHECK(kern::to_act(act_, o + QD + KV, R, KV, QKV, vself_.get(), KV, stream_));
        }
        if (hook_post) {
          download(host, qkv, static_cast<size_t>(R) * QKV);
          for (int r = 0; r < rows; ++r) {
            float* base = host.data() + static_cast<size_t>(r) * m * QKV;
            obs->on_k_post_rope(l, slots[r], pos0[r], ConstMatrixView{base, m, QD, QKV},
                                MatrixView{base + QD, m, KV, QKV});
          }
          upload_to(qkv, host);
        }
        KVQ_CUDA_CHECK(kern::store_kv(act_, qkv + QD, qkv + QD + KV, QKV, rows, m, d_slot, d_pos0,
                                      cfg_.n_kv_heads, hd, max_tokens_, kc(l), vc(l), stream_));
        KVQ_CUDA_CHECK(kern::to_act(act_, qkv, R, QD, QKV, qh_.get(), QD, stream_));
      }
      timer_.end(StageTimer::kRopeKv, stream_);

      kern::AttentionArgs a;
      a.q = qh_.get();
      a.k_cache = kc(l);
      a.v_cache = vc(l);
      a.slot = d_slot;
      a.pos0 = d_pos0;
      a.k_self = past_only ? kself_.get() : nullptr;
      a.v_self = past_only ? vself_.get() : nullptr;
      a.out = att_.get();
      a.rows = rows;
      a.n = m;
      a.n_heads = cfg_.n_heads;
      a.kv_heads = cfg_.n_kv_heads;
      a.head_dim = hd;
      a.max_tokens = max_tokens_;
      a.window = cfg_.sliding_window.value_or(0);
      a.scale = 1.0f / std::sqrt(static_cast<float>(hd));
      if (m == 1) {
        int max_len = 0;
        for (int r = 0; r < rows; ++r) max_len = std::max(max_len, pos0[r] + 1);
        const size_t ws = kern::attention_decode_workspace(a, max_len, info_.sm_count);
        decode_ws_.reserve(ws, "the decode-attention workspace");
        KVQ_CUDA_CHECK(kern::attention_decode(act_, a, max_len, info_.sm_count, decode_ws_.get(),
                                              decode_ws_.bytes(), stream_));
      } else {
        KVQ_CUDA_CHECK(kern::attention_prefill(act_, a, stream_));
      }
      if (hook_probs) attention_probs_hook(obs, l, slots, pos0, m);
      timer_.end(StageTimer::kAttention, stream_);

      KVQ_CUBLAS_CHECK(kern::gemm(cublas_, act_, att_.get(), R, QD, w.wo.get(), H, x, 1.f, stream_));
      if (w.bo.get()) KVQ_CUDA_CHECK(kern::add_bias(act_, x, R, H, H, w.bo.get(), stream_));
      timer_.end(StageTimer::kOProj, stream_);

      KVQ_CUDA_CHECK(rmsnorm(x, R, H, w.mlp_norm.get(), eps, xn_.get(), flags + 2 * l + 1));
      timer_.end(StageTimer::kNorm, stream_);
      if (!w.bgu.get() && !no_fusion_) {
        // gate|up rounded to 16 bits by the GEMM: SwiGLU reads 4 bytes per channel pair
        // instead of 8 (and the GEMM writes half as many bytes).
        KVQ_CUBLAS_CHECK(kern::gemm_act(cublas_, act_, xn_.get(), R, H, w.wgu.get(), 2 * I, gu_.get(), stream_));
        timer_.end(StageTimer::kGateUp, stream_);
        KVQ_CUDA_CHECK(kern::swiglu_act(act_, gu_.get(), R, I, hmlp_.get(), stream_));
      } else {
        float* gu = gu_.as<float>();
        KVQ_CUBLAS_CHECK(kern::gemm(cublas_, act_, xn_.get(), R, H, w.wgu.get(), 2 * I, gu, 0.f, stream_));
        if (w.bgu.get()) KVQ_CUDA_CHECK(kern::add_bias(act_, gu, R, 2 * I, 2 * I, w.bgu.get(), stream_));
        timer_.end(StageTimer::kGateUp, stream_);
        KVQ_CUDA_CHECK(kern::swiglu(act_, gu, R, I, hmlp_.get(), stream_));
      }
      timer_.end(StageTimer::kSwiglu, stream_);
      KVQ_CUBLAS_CHECK(kern::gemm(cublas_, act_, hmlp_.get(), R, I, w.wdown.get(), H, x, 1.f, stream_));
      if (w.bdown.get()) KVQ_CUDA_CHECK(kern::add_bias(act_, x, R, H, H, w.bdown.get(), stream_));
      timer_.end(StageTimer::kDown, stream_);
    }
    KVQ_CUDA_CHECK(rmsnorm(x, R, H, final_norm_.get(), eps, xn_.get(), flags + 2 * cfg_.n_layers));
    check_flags(slots, pos0);
    timer_.collect();
  }

  // flags[2l]: the input of layer l's attention (= output of layer l-1's MLP) was
  // non-finite; flags[2l+1]: the output of layer l's attention. The first set one names
  // where the NaN/Inf appeared.
  void check_flags(const std::vector<int>& slots, const std::vector<int>& pos0) {
    std::vector<int> f(static_cast<size_t>(2 * cfg_.n_layers + 1));
    KVQ_CUDA_CHECK(cudaMemcpyAsync(f.data(), flags_.get(), f.size() * 4, cudaMemcpyDeviceToHost, stream_));
    KVQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
    for (size_t i = 0; i < f.size(); ++i) {
      if (f[i] == 0) continue;
      std::string where;
      if (i == 0) where = "the embedding";
      else if (i % 2 == 1) where = "layer " + std::to_string((i - 1) / 2) + " (attention)";
      else where = "layer " + std::to_string(i / 2 - 1) + " (MLP)";
      throw Error(path(), "non-finite hidden state first appears in " + where + " of the step at slot " +
                              std::to_string(slots.front()) + ", positions from " +
                              std::to_string(pos0.front()),
                  "the weights or the observer's keys/values overflow");
    }
  }

  // RMSNorm of the residual stream to 16 bits: the one-read vectorized kernel, or the
  // original one under KVQ_NO_FUSION.
  cudaError_t rmsnorm(const float* x, int R, int H, const void* w, float eps, void* out, int* flag) {
    return no_fusion_ ? kern::rmsnorm(act_, x, R, H, w, eps, out, flag, stream_)
                      : kern::rmsnorm_vec(act_, x, R, H, w, eps, out, flag, stream_);
  }

  void download(std::vector<float>& host, const float* dev, size_t count) {
    host.resize(count);
    KVQ_CUDA_CHECK(cudaMemcpyAsync(host.data(), dev, count * 4, cudaMemcpyDeviceToHost, stream_));
    KVQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }
  void upload_to(float* dev, const std::vector<float>& host) {
    KVQ_CUDA_CHECK(cudaMemcpyAsync(dev, host.data(), host.size() * 4, cudaMemcpyHostToDevice, stream_));
    KVQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
  }

  std::vector<float> download_act(const void* dev, size_t count) {
    std::vector<uint16_t> raw(count);
    KVQ_CUDA_CHECK(cudaMemcpyAsync(raw.data(), dev, count * 2, cudaMemcpyDeviceToHost, stream_));
    KVQ_CUDA_CHECK(cudaStreamSynchronize(stream_));
    std::vector<float> f(count);
    for (size_t i = 0; i < count; ++i) f[i] = act_ == Act::kF16 ? half_to_float(raw[i]) : bf16_to_float(raw[i]);
    return f;
  }

  // MiKV-style observers want the attention weights: recomputed on the host from the
  // 16-bit queries and cache the kernels used (only when asked; costs a copy of the slot's
  // keys per layer).
  void attention_probs_hook(ForwardObserver* obs, int l, const std::vector<int>& slots,
                            const std::vector<int>& pos0, int m) {
    const int rows = static_cast<int>(slots.size());
    const int QD = cfg_.q_dim(), KV = cfg_.kv_dim(), hd = cfg_.head_dim;
    const int window = cfg_.sliding_window.value_or(0);
    const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
    const bool past_only = obs->past_only();
    const std::vector<float> q = download_act(qh_.get(), static_cast<size_t>(rows) * m * QD);
    std::vector<float> ks;
    if (past_only) ks = download_act(kself_.get(), static_cast<size_t>(rows) * m * KV);
    for (int r = 0; r < rows; ++r) {
      const int L = pos0[r] + m;
      std::vector<std::vector<float>> keys(static_cast<size_t>(cfg_.n_kv_heads));
      for (int g = 0; g < cfg_.n_kv_heads; ++g) {
        const size_t off = ((static_cast<size_t>(slots[r]) * cfg_.n_kv_heads + g) * max_tokens_) * hd * 2;
        keys[g] = download_act(static_cast<const char*>(kc(l)) + off, static_cast<size_t>(L) * hd);
      }
      std::vector<float> probs(static_cast<size_t>(m) * L);
      for (int h = 0; h < cfg_.n_heads; ++h) {
        const int g = h / cfg_.group_size();
        // O(m L head_dim) per head: rows are independent, so they run on the --threads
        // cores (each row's arithmetic as before: the same weights for any thread count);
        // the observer is still called from this thread, head by head.
#pragma omp parallel if (static_cast<int64_t>(m) * L * hd > 65536)
        {
        std::vector<double> e(static_cast<size_t>(L));
#pragma omp for schedule(dynamic, 8)
        for (int i = 0; i < m; ++i) {
          const int p = pos0[r] + i;
          const float* qi = q.data() + (static_cast<size_t>(r) * m + i) * QD + static_cast<size_t>(h) * hd;
          float* row = probs.data() + static_cast<size_t>(i) * L;
          const int lo = window > 0 ? std::max(0, p - window + 1) : 0;
          double mx = -std::numeric_limits<double>::infinity();
          for (int j = 0; j < L; ++j) {
            if (j < lo || j > p) { row[j] = 0.f; continue; }
            const float* kj = (past_only && j == p)
                                  ? ks.data() + (static_cast<size_t>(r) * m + i) * KV + static_cast<size_t>(g) * hd
                                  : keys[g].data() + static_cast<size_t>(j) * hd;
            double dot = 0.0;
            for (int c = 0; c < hd; ++c) dot += static_cast<double>(qi[c]) * kj[c];
            row[j] = static_cast<float>(dot * scale);
            mx = std::max(mx, static_cast<double>(row[j]));
          }
          double sum = 0.0;
          for (int j = lo; j <= p; ++j) sum += (e[j] = std::exp(row[j] - mx));
          for (int j = lo; j <= p; ++j) row[j] = static_cast<float>(e[j] / sum);
        }
        }
        obs->on_attention_probs(l, slots[r], h, pos0[r], ConstMatrixView{probs.data(), m, L, L});
      }
    }
  }

  // Copies the last position of every row of xn_ ([rows, m, hidden]) into xlast_.
  void gather_last(int rows, int m) {
    const size_t row_bytes = static_cast<size_t>(cfg_.hidden) * act_size();
    KVQ_CUDA_CHECK(cudaMemcpy2DAsync(xlast_.get(), row_bytes,
                                     static_cast<const char*>(xn_.get()) + (m - 1) * row_bytes,
                                     row_bytes * m, row_bytes, rows, cudaMemcpyDeviceToDevice, stream_));
  }

  // logits_[nb, vocab] = xn[nb, hidden] lm_head^T.
  void logits_block(const void* xn, int nb) {
    const void* head = lm_head_.get() ? lm_head_.get() : embed_.get();
    KVQ_CUBLAS_CHECK(kern::gemm(cublas_, act_, xn, nb, cfg_.hidden, head, cfg_.vocab,
                                logits_.as<float>(), 0.f, stream_));
  }

  std::shared_ptr<const Model> model_;
  CudaOptions opt_;
  bool no_fusion_ = false;  // KVQ_NO_FUSION: the unfused kernels (see the file comment)
  ModelConfig cfg_;
  cuda::DeviceInfo info_;
  Act act_ = Act::kF16;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;

  DeviceBuffer embed_, lm_head_, final_norm_, inv_freq_, flags_;
  std::vector<LayerDev> layers_;

  DeviceBuffer kcache_, vcache_;
  size_t layer_cache_bytes_ = 0;
  int batch_ = 0, max_tokens_ = 0;
  std::vector<int> lens_;

  DeviceBuffer x_, xn_, qkv_, qh_, att_, gu_, hmlp_, logits_, xlast_, meta_, targets_, nll_;
  DeviceBuffer qkv_orig_, kself_, vself_, decode_ws_;
  StageTimer timer_;
};

ModelConfig base_llama(int layers, int hidden, int heads, int kv_heads, int inter, int vocab,
                       int max_pos, double theta) {
  ModelConfig c;
  c.n_layers = layers;
  c.hidden = hidden;
  c.n_heads = heads;
  c.n_kv_heads = kv_heads;
  c.head_dim = hidden / heads;
  c.intermediate = inter;
  c.vocab = vocab;
  c.max_position = max_pos;
  c.rms_norm_eps = 1e-5f;
  c.rope.theta = theta;
  c.dtype = DType::kF16;
  c.bos_id = 1;
  c.eos_id = 2;
  return c;
}

}  // namespace

std::unique_ptr<Backend> make_cuda_backend(std::shared_ptr<const Model> model, const CudaOptions& opt) {
  return std::make_unique<CudaBackend>(std::move(model), opt);
}

std::string synthetic_model_names() { return "llama2-7b, llama2-13b, llama3-8b, testbed-23m"; }

ModelConfig synthetic_config(const std::string& name) {
  // Shapes from the published config.json files of these checkpoints.
  if (name == "llama2-7b") return base_llama(32, 4096, 32, 32, 11008, 32000, 4096, 10000.0);
  if (name == "llama2-13b") return base_llama(40, 5120, 40, 40, 13824, 32000, 4096, 10000.0);
  if (name == "llama3-8b") {
    ModelConfig c = base_llama(32, 4096, 32, 8, 14336, 128256, 8192, 500000.0);
    c.bos_id = 128000;
    c.eos_id = 128001;
    return c;
  }
  if (name == "testbed-23m") {
    ModelConfig c = base_llama(6, 384, 6, 6, 1024, 32000, 1024, 10000.0);
    c.tie_embeddings = true;
    return c;
  }
  throw InvalidArgument("--synthetic", "unknown synthetic model '" + name + "'",
                        "one of: " + synthetic_model_names());
}

std::unique_ptr<Backend> make_synthetic_cuda_backend(const ModelConfig& cfg, uint64_t seed,
                                                     const CudaOptions& opt) {
  return std::make_unique<CudaBackend>(cfg, seed, opt);
}

double measure_copy_bandwidth(int device, size_t bytes, int reps) {
  cuda::select_device(device);
  DeviceBuffer a(bytes, "the bandwidth probe"), b(bytes, "the bandwidth probe");
  KVQ_CUDA_CHECK(cudaMemset(a.get(), 1, bytes));
  cudaEvent_t e0, e1;
  KVQ_CUDA_CHECK(cudaEventCreate(&e0));
  KVQ_CUDA_CHECK(cudaEventCreate(&e1));
  std::vector<float> ms;
  for (int i = 0; i < reps + 2; ++i) {
    KVQ_CUDA_CHECK(cudaEventRecord(e0));
    KVQ_CUDA_CHECK(cudaMemcpyAsync(b.get(), a.get(), bytes, cudaMemcpyDeviceToDevice));
    KVQ_CUDA_CHECK(cudaEventRecord(e1));
    KVQ_CUDA_CHECK(cudaEventSynchronize(e1));
    float t = 0;
    KVQ_CUDA_CHECK(cudaEventElapsedTime(&t, e0, e1));
    if (i >= 2) ms.push_back(t);  // the first two are warm-up
  }
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  std::sort(ms.begin(), ms.end());
  return 2.0 * static_cast<double>(bytes) / (ms[ms.size() / 2] * 1e-3);
}

void cuda_memory(int device, size_t& free_bytes, size_t& total_bytes) {
  KVQ_CUDA_CHECK(cudaSetDevice(device));
  KVQ_CUDA_CHECK(cudaMemGetInfo(&free_bytes, &total_bytes));
}

std::string cuda_device_summary(int device) {
  const cuda::DeviceInfo i = cuda::select_device(device);
  char buf[256];
  std::snprintf(buf, sizeof buf, "%s, cc %d.%d, %d SMs, %.1f GiB (%.1f free)", i.name.c_str(),
                i.cc_major, i.cc_minor, i.sm_count, static_cast<double>(i.total_bytes) / (1 << 30),
                static_cast<double>(i.free_bytes) / (1 << 30));
  return buf;
}

}  // namespace kvq
