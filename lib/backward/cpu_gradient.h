// The CPU backward pass: activation gradients of the mean next-token cross entropy
// through the whole Llama stack (embedding to loss), for KVQuant's Fisher information
// (dL/d(k_proj output), keys pre-RoPE, and dL/d(v_proj output) per layer).
//
// The loss of a sequence of n tokens is the mean over t in [0, n-1) of
// -log softmax(logits_t)[tokens[t+1]] (labels = inputs, as Hugging Face's
// LlamaForCausalLM(x, labels=x).loss and ../shared/tools/hf_oracle.py `fisher`).
//
// Memory: the forward keeps only each layer's input hidden state ([n, hidden] per layer,
// the checkpoints); the backward recomputes one layer's internals at a time from its
// checkpoint, and attention probabilities one head at a time ([n, n] per thread), so
// memory is L*n*hidden + one layer's activations, whatever the depth. Recomputation costs
// one extra forward (about +50% over forward+backward with stored activations).
//
// Arithmetic: S = float is the production path (fp32 GEMMs, like the CPU forward), with
// the RMSNorm sums, softmax denominators, softmax-backward row dots and the loss
// accumulated in double. S = double runs everything in double: the finite-difference
// gradient check uses it, because with fp64 the central-difference error can be bounded
// (truncation ~ h^2, rounding ~ eps_64 |L| / h) tightly enough to test every element.
//
// Goals: exact gradients of the same function the CPU forward computes (full-sequence,
// causal, GQA, RoPE in both layouts, sliding window, optional biases); block-level
// forward/backward with a past-only KV quantization hook for WKVQuant CRR. Non-goals:
// weight gradients (CRR learns only KV smoothing parameters), KV caches, batching of
// sequences.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <vector>

#include <Eigen/Dense>

#include "formats/model_config.h"
#include "lib/model.h"

namespace kvq {

template <typename S>
class CpuGradient {
 public:
  using Mat = Eigen::Matrix<S, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;
  using Vec = Eigen::Matrix<S, 1, Eigen::Dynamic>;

  // Converts the weights to S once.
  explicit CpuGradient(std::shared_ptr<const Model> model);

  const ModelConfig& config() const { return cfg_; }

  // Adds `delta` to one element of a k_proj (kind 'k', pre-RoPE) or v_proj (kind 'v')
  // output in the forward pass: what the finite-difference check differentiates.
  struct Perturbation {
    int layer = -1;
    char kind = 'k';
    int row = 0, col = 0;
    S delta = 0;
  };

  // Everything of one layer the calibration statistics need, valid during the callback.
  // [n, q_dim] or [n, kv_dim] row-major; row t = position t.
  struct LayerView {
    int layer = 0;
    const Mat* q_post_rope = nullptr;
    const Mat* k_pre_rope = nullptr;
    const Mat* k_post_rope = nullptr;
    const Mat* v = nullptr;
    const Mat* dk_pre_rope = nullptr;  // dL/d(k_proj output)
    const Mat* dv = nullptr;           // dL/d(v_proj output)
  };
  using LayerVisitor = std::function<void(const LayerView&)>;

  // The loss (forward only). tokens.size() >= 2, ids < vocab, at most max_position.
  double loss(std::span<const int32_t> tokens, const Perturbation* p = nullptr) const;

  // Forward + backward; `visit` is called once per layer, in the order L-1 .. 0, with
  // that layer's activations and gradients. Returns the loss.
  double backward(std::span<const int32_t> tokens, const LayerVisitor& visit) const;

  // ---- Block level (WKVQuant cross-block reconstruction, calib/crr.h) ----
  // Past-only (POQ) KV quantization inside one block: after RoPE the hook turns the keys
  // (post-RoPE, what a cache holds) and values [n, kv_dim] into k_hat, v_hat, which query
  // i reads at every j < i; the diagonal j == i stays exact (WKVQuant's POQ, as
  // lib/codecs/sim_observer.h's past_only protocol). In the backward the hook receives
  // dL/dk_hat, dL/dv_hat and adds the gradient that reaches k and v through its quantizer
  // to dk, dv (post-RoPE keys); it accumulates its own parameter gradients.
  class KvHook {
   public:
    virtual ~KvHook() = default;
    virtual void quantize(int layer, const Mat& k, const Mat& v, Mat& k_hat, Mat& v_hat) = 0;
    virtual void backward(int layer, const Mat& k, const Mat& v, const Mat& dk_hat,
                          const Mat& dv_hat, Mat& dk, Mat& dv) = 0;
  };
  // One block's internals saved by block_forward for block_backward.
  struct Cache {
    Mat a, q, k_pre, k, v, attn, x1, b, g, u;
    Mat k_hat, v_hat;  // filled only with a hook
    std::vector<S> r1, r2;
  };
  // The token embeddings [n, hidden] (tokens checked as for loss()).
  Mat embed_tokens(std::span<const int32_t> tokens) const;
  // Block `layer` on its input x [n, hidden] -> its output; `state` (when not null) keeps
  // what block_backward needs; `hook` null = the exact block (as loss() computes it).
  Mat block_forward(int layer, const Mat& x, Cache* state, KvHook* hook) const;
  // dL/dx from dL/d(block output) dy, with the state of block_forward(layer, x, ...) and
  // the same hook (its parameter gradients accumulate).
  Mat block_backward(int layer, const Mat& x, const Cache& state, const Mat& dy, KvHook* hook) const;

 private:
  struct Layer {
    Vec attn_norm, mlp_norm;
    Mat q, k, v, o, gate, up, down;
    Vec bq, bk, bv, bo, bgate, bup, bdown;  // empty when absent
  };

  void check_tokens(std::span<const int32_t> tokens) const;
  Mat embed(std::span<const int32_t> tokens) const;
  // x -> layer output; fills `c` when not null; applies p when it targets this layer.
  Mat layer_forward(int l, const Mat& x, Cache* c, const Perturbation* p, KvHook* hook = nullptr) const;
  // Returns dL/dx (layer input) from dL/d(layer output); fills dk, dv (pre-RoPE).
  Mat layer_backward(int l, const Mat& x, const Cache& c, const Mat& dy, Mat& dk, Mat& dv,
                     KvHook* hook = nullptr) const;
  // Final norm + lm_head + cross entropy; when dx is not null, fills dL/d(x) (the last
  // layer's output).
  double head_loss(const Mat& x, std::span<const int32_t> tokens, Mat* dx) const;
  void rope(Mat& x, int heads, bool inverse) const;

  std::shared_ptr<const Model> model_;
  ModelConfig cfg_;
  Mat embed_, lm_head_;  // lm_head_ empty when tied
  Vec final_norm_;
  std::vector<Layer> layers_;
  std::vector<S> cos_, sin_;  // [max_position, head_dim/2]
};

extern template class CpuGradient<float>;
extern template class CpuGradient<double>;

}  // namespace kvq
