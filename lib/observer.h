// Hooks into the forward pass. Calibration reads the attention activations through them,
// and simulated KV quantization writes quantized-then-dequantized keys/values back, so
// every method in METHODS.md (KVQuant pre-RoPE keys, KIVI post-RoPE keys, WKVQuant
// past-only quantization, MiKV attention importance and Q/K balancing) runs on the same
// forward code of every backend (CPU reference and CUDA) without forking it.
//
// Order of calls, per layer l, for each sequence s of the batch (s = the cache slot the
// row continues: ForwardOptions::slots[row], or the row index), for the n new tokens at
// absolute positions pos0 .. pos0+n-1:
//   1. q = x Wq (+bq), k = x Wk (+bk), v = x Wv (+bv)
//   2. on_qkv(l, s, pos0, q_pre_rope, k_pre_rope, v)        k and v may be rewritten
//   3. q, k <- RoPE(q), RoPE(k)
//   4. on_k_post_rope(l, s, pos0, q_post_rope, k_post_rope)   k may be rewritten
//   5. k and v are appended to the KV cache (what the observer wrote is what is cached)
//   6. attention over cache[0 .. pos0+n); when past_only() is true, the diagonal key/value
//      (j == t for query t) is the one computed before steps 2 and 4 changed it (WKVQuant
//      POQ), every other key/value (j < t) is the cached, observer-modified one.
//   7. on_attention_probs(l, s, h, pos0, probs) for each query head h (only when
//      wants_attention_probs() is true; the CPU backend skips the copy otherwise)
//
// Shapes: every view is row-major, rows = tokens of the chunk (row i is position pos0+i),
// columns = heads * head_dim with head h at columns [h*head_dim, (h+1)*head_dim).
//   q: [n, n_heads * head_dim]       k, v: [n, n_kv_heads * head_dim]
//   probs: [n, pos0 + n] (row i: softmax weights of query pos0+i over key positions
//          0 .. pos0+n-1; entries of masked keys (j > pos0+i, or outside a sliding
//          window) are 0)
// Views are valid only during the call. Backends call the hooks from one thread, in layer
// order, rows in call order within a layer, so observers need no locking.
#pragma once

#include <cstdint>

namespace kvq {

// A row-major [rows, cols] block of floats; row r starts at data + r * stride.
template <typename T>
struct BasicMatrixView {
  T* data = nullptr;
  int rows = 0;
  int cols = 0;
  int64_t stride = 0;  // floats between consecutive rows (>= cols)

  T* row(int r) const { return data + static_cast<int64_t>(r) * stride; }
  T& at(int r, int c) const { return data[static_cast<int64_t>(r) * stride + c]; }
};
using MatrixView = BasicMatrixView<float>;
using ConstMatrixView = BasicMatrixView<const float>;

class ForwardObserver {
 public:
  virtual ~ForwardObserver() = default;

  // Which hooks the backend must call; asked once per forward call. A backend may skip
  // the work of a hook that is not wanted (the CUDA backend does not copy activations
  // to the host for an observer that wants nothing).
  virtual bool wants_qkv() const { return true; }
  virtual bool wants_k_post_rope() const { return true; }
  virtual bool wants_attention_probs() const { return false; }
  // WKVQuant past-only quantization: attend to the unmodified key/value on the diagonal.
  virtual bool past_only() const { return false; }

  // Step 2. q: pre-RoPE queries (read-only). k: pre-RoPE keys, v: values (writable).
  virtual void on_qkv(int layer, int seq, int pos0, ConstMatrixView q, MatrixView k,
                      MatrixView v) {
    (void)layer; (void)seq; (void)pos0; (void)q; (void)k; (void)v;
  }
  // Step 4. q: post-RoPE queries (read-only), k: post-RoPE keys (writable).
  virtual void on_k_post_rope(int layer, int seq, int pos0, ConstMatrixView q, MatrixView k) {
    (void)layer; (void)seq; (void)pos0; (void)q; (void)k;
  }
  // Step 7. head is a query head (0 .. n_heads-1); its key/value head is
  // head / (n_heads / n_kv_heads).
  virtual void on_attention_probs(int layer, int seq, int head, int pos0,
                                  ConstMatrixView probs) {
    (void)layer; (void)seq; (void)head; (void)pos0; (void)probs;
  }
};

}  // namespace kvq
