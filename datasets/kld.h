// KL divergence of a quantized-KV run from the fp16-KV run, per predicted token, over the
// perplexity protocol's windows (datasets/windows.h): KL(p_ref || p_quant), with mean,
// median, p99, max and top-1 agreement (the anchor is llama-perplexity --kl-divergence;
// users trust it more than PPL because it sees the whole distribution, not one target).
//
// The reference is computed once (compute_kld_reference) and reused for every profile.
// What it keeps per predicted token: the ids and fp32 log-probabilities of the reference's
// top_k tokens (default 256), and the probability mass of all other tokens.
// Why not the full distribution: the testbed's vocabulary of 32,000 costs 128 KB per token
// in fp32 (64 KB as llama.cpp's uint16 rows): 20 windows of 1024 tokens would take 2.6 GB
// (1.3 GB) and a temporary file; top-256 takes 2 KB per token (40 MB), kept in memory for
// every profile of a compare run.
// What that costs: the KL is computed over k+1 outcomes (the top-k tokens and "any other
// token"), which by the log-sum inequality is a lower bound of the full KL; the gap is
// p_rest * KL(p_tail || q_tail). Measured on the testbed (WikiText-2, 96 tokens, int2 KV;
// tests/datasets/kld_test.cpp): the estimate is 0.59 of the full KL at k=8, 0.77 at k=64,
// 0.86 at k=256 and equal at k=vocab. The testbed is a very flat model (WikiText-2 PPL
// ~360), the worst case for a top-k store; top_k = vocab gives the exact KL when memory
// allows (256 KB per token). Top-1 agreement is exact at any k (the reference's argmax is
// the first stored id).
// Identical logits give exactly 0: both sides' log-probs go through the same fp32
// log-softmax and the same double sums, so every term is x - x.
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "datasets/windows.h"
#include "lib/backend.h"

namespace kvq::datasets {

struct KldOptions {
  int seqlen = 0;
  int64_t max_windows = -1;  // < 0: all windows
  int top_k = 256;
  std::function<void(int64_t done, int64_t total)> progress;
};

struct KldReference {
  int seqlen = 0;
  int top_k = 0;
  int vocab = 0;
  std::vector<Window> windows;
  // Per predicted token t (windows in order, positions 0..seqlen-2 of each):
  std::vector<int32_t> top_ids;   // [tokens, top_k], by decreasing probability
  std::vector<float> top_logp;    // [tokens, top_k]
  std::vector<double> rest_mass;  // [tokens]: probability of every other token
  double nll_sum = 0.0;           // reference NLL of the targets (for its PPL)
  int64_t tokens() const { return top_k ? static_cast<int64_t>(top_ids.size()) / top_k : 0; }
  double ppl() const;
};

// Runs the backend (observer = nullptr: the fp16 cache) over the windows of `ids`.
// InvalidArgument when seqlen is outside 2..window, top_k outside 1..vocab, or ids shorter
// than one window.
KldReference compute_kld_reference(Backend& backend, std::span<const int32_t> ids,
                                   const KldOptions& opt, ForwardObserver* observer = nullptr);

struct KldResult {
  int64_t tokens = 0;
  double mean = 0.0, median = 0.0, p99 = 0.0, max = 0.0;  // nats
  double top1_agreement = 0.0;  // share of tokens whose argmax equals the reference's
  double ppl = 0.0;             // of this run, over the same targets
  double ref_ppl = 0.0;
  std::vector<double> per_token;  // KL of every predicted token, in order
};

// The same windows of the same `ids` with `observer` (e.g. SimQuantObserver), compared
// with `ref`. InvalidArgument when ids are shorter than the reference's windows or the
// vocabulary differs.
KldResult evaluate_kld(Backend& backend, std::span<const int32_t> ids, const KldReference& ref,
                       ForwardObserver* observer,
                       const std::function<void(int64_t, int64_t)>& progress = {});

// Linear-interpolation percentile of sorted values (numpy's default): q in [0, 100].
double percentile_sorted(const std::vector<double>& sorted, double q);

}  // namespace kvq::datasets
