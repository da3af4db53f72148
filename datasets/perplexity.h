// Perplexity of a model over a token stream, the protocol of GPTQ / KVQuant / KIVI:
// non-overlapping windows of seqlen tokens (datasets/windows.h), each window evaluated
// from an empty KV cache and predicting its own positions 1..seqlen-1 (so seqlen-1 scored
// tokens per window), PPL = exp(sum of NLLs / number of scored tokens). Sums are kept in
// double: 341k fp32 NLLs of ~6 nats summed in float would lose about 3 digits.
//
// The backend does the arithmetic (lib/backend.h window_nll); this file only schedules
// windows, times them and reports progress. Observers (simulated KV quantization,
// calibration hooks) are passed through.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "lib/backend.h"

namespace kvq::datasets {

struct PerplexityProgress {
  int64_t windows_done = 0;
  int64_t windows_total = 0;
  double ppl = 0.0;        // over the windows done so far
  double elapsed_s = 0.0;
  double eta_s = 0.0;      // elapsed / done * remaining
};

struct PerplexityOptions {
  int seqlen = 0;
  int64_t max_windows = -1;   // < 0: all windows
  int batch = 1;              // windows per forward call
  ForwardObserver* observer = nullptr;
  // Called after every batch of windows, from the calling thread.
  std::function<void(const PerplexityProgress&)> progress;
};

struct PerplexityResult {
  double ppl = 0.0;
  double mean_nll = 0.0;      // nats per scored token
  int64_t windows = 0;
  int seqlen = 0;
  int64_t tokens_scored = 0;  // windows * (seqlen - 1)
  int64_t tokens_available = 0;  // length of the stream given
  double seconds = 0.0;
  double tokens_per_s = 0.0;  // scored tokens / seconds (= tokens fed through the model)
  // Mean NLL of each window in stream order (seqlen - 1 predictions each): what a paired
  // comparison of two KV methods over the same windows needs (datasets/compare.h).
  std::vector<double> window_nll;
};

// Throws InvalidArgument when seqlen is outside 2..model window, the stream is shorter than
// one window, or batch < 1. evaluate_perplexity checks this first; tools call it early so
// that a bad --seqlen is reported before any work starts.
void check_perplexity_inputs(const ModelConfig& cfg, size_t n_tokens, const PerplexityOptions& opt);

// check_perplexity_inputs, then the evaluation; whatever the backend throws passes through.
PerplexityResult evaluate_perplexity(Backend& backend, std::span<const int32_t> ids,
                                     const PerplexityOptions& opt);

}  // namespace kvq::datasets
