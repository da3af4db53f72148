// Simulated KV quantization inside a forward pass (the papers' perplexity protocol): a
// ForwardObserver that applies one K codec and one V codec per layer at the RoPE stage
// each asks for (values and pre-RoPE keys at on_qkv, post-RoPE keys at on_k_post_rope),
// writing quantized-then-dequantized rows back so that attention reads them.
//
// Two protocols:
//   every token quantized (default; KVQuant's evaluation): query t attends to quantized
//     keys/values at every j <= t, the diagonal included;
//   past-only (POQ, WKVQuant): the diagonal j == t stays at full precision. On when asked
//     (SimOptions::past_only) or when a codec wants it (wkvquant's poq=1).
//
// Per (layer, sequence) the observer keeps a packed cache for each side: a chunk at pos0 0
// starts it afresh, so one forward over a window is exactly Codec::simulate of the window;
// later chunks append (what is written back for the new rows is what the cache holds for
// them at that moment; rows written earlier cannot be revised through the hooks, so e.g.
// KIVI residual tokens that a later chunk quantizes stay as they were in the backend's
// cache — use one forward per window for the papers' protocol).
// MiKV's importance is the H2O accumulated attention of each key (sum of softmax weights
// over every query so far and the query heads of its group), computed here from the
// layer's unquantized post-RoPE queries and keys (RoPE applied with lib/rope.h).
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <utility>
#include <vector>

#include "formats/model_config.h"
#include "lib/codecs/codec.h"
#include "lib/observer.h"
#include "lib/rope.h"

namespace kvq::codecs {

struct SimOptions {
  bool past_only = false;  // POQ protocol
  // Per-layer calibrated parameters (a profile); empty or shorter: defaults.
  std::vector<CodecParams> k_params, v_params;
  // MiKV importance: the most softmax weights (floats) held at once; a smaller cap only
  // splits the work into more batches, with the same result (tests use tiny caps).
  int64_t importance_batch = int64_t{1} << 23;
};

class SimQuantObserver final : public ForwardObserver {
 public:
  // One spec for both sides, or separate ones. Throws what make_codec throws.
  SimQuantObserver(const ModelConfig& cfg, const CodecSpec& spec, SimOptions opt = {});
  SimQuantObserver(const ModelConfig& cfg, const CodecSpec& k_spec, const CodecSpec& v_spec,
                   SimOptions opt = {});

  bool wants_qkv() const override { return true; }
  bool wants_k_post_rope() const override { return true; }
  bool past_only() const override { return past_only_; }

  void on_qkv(int layer, int seq, int pos0, ConstMatrixView q, MatrixView k,
              MatrixView v) override;
  void on_k_post_rope(int layer, int seq, int pos0, ConstMatrixView q, MatrixView k) override;

  const Codec& k_codec(int layer) const { return *k_codecs_.at(layer); }
  const Codec& v_codec(int layer) const { return *v_codecs_.at(layer); }
  // MiKV: the accumulated attention [tokens, n_kv_heads] of (layer, sequence) so far;
  // null when no codec needs it or the pair has not been seen.
  const std::vector<float>* importance(int layer, int seq) const {
    auto it = states_.find({layer, seq});
    return it == states_.end() || !need_importance_ ? nullptr : &it->second.importance;
  }

  // Bytes held by the caches of the latest chunk of every (layer, sequence), and the
  // elements they hold (2 sides x tokens x n_kv_heads x head_dim): bits per element as
  // measured on the data. Summed over sequences and windows since the last reset_stats().
  struct Stats {
    double bytes = 0;
    double elements = 0;
    double bits_per_element() const { return elements > 0 ? bytes * 8.0 / elements : 0.0; }
  };
  const Stats& stats() const { return stats_; }
  void reset_stats() { stats_ = {}; }

 private:
  struct SeqState {
    std::unique_ptr<KvCache> k, v;
    std::vector<float> k_rot;       // MiKV: unquantized post-RoPE keys so far [T, kv_dim]
    std::vector<float> importance;  // MiKV: [T, n_kv_heads]
  };
  SeqState& state(int layer, int seq, int pos0);
  void apply(const Codec& codec, std::unique_ptr<KvCache>& cache, int pos0, MatrixView rows,
             const AppendContext& ctx);
  void update_importance(SeqState& st, int pos0, ConstMatrixView q, ConstMatrixView k);

  ModelConfig cfg_;
  KvShape shape_;
  bool past_only_ = false;
  bool need_importance_ = false;
  int64_t importance_batch_ = int64_t{1} << 23;
  std::vector<std::unique_ptr<Codec>> k_codecs_, v_codecs_;
  std::map<std::pair<int, int>, SeqState> states_;
  std::map<std::pair<int, int>, double> st_bytes_, st_elems_;  // last figures in stats_
  RopeTable rope_;
  Stats stats_;
};

}  // namespace kvq::codecs
