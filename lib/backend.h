// The interface every compute backend offers over a loaded model: the CPU reference
// (lib/cpu_backend.h) and the CUDA backend (lib/cuda/). Evaluation, calibration and
// generation are written against this interface only.
//
// A backend owns a KV cache of `batch` slots (sequences), each holding up to `max_tokens`
// positions. forward() appends a chunk of new tokens to some slots and returns the logits
// of the new positions; chunks may have any length, so prefill-then-decode, uneven chunks
// and one-token steps all go through the same call. Positions are implicit: the first new
// token of a slot sits at position cache_len(slot).
//
// Goals: small, the same for both backends, enough for PPL, KL divergence, generation and
// calibration hooks (lib/observer.h). Non-goals: paged caches, ragged chunk lengths in one
// call (call forward once per group of equal length), sampling (lib/generate.h).
#pragma once

#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "formats/model_config.h"
#include "lib/observer.h"

namespace kvq {

// fp32 logits, [rows, n, vocab] row-major (n = 1 when only the last position was asked).
struct Logits {
  int rows = 0;
  int n = 0;
  int vocab = 0;
  std::vector<float> data;

  const float* at(int row, int i) const {
    return data.data() + (static_cast<int64_t>(row) * n + i) * vocab;
  }
};

struct ForwardOptions {
  ForwardObserver* observer = nullptr;  // nullptr: no hooks
  // forward(): return only the logits of the last new position of each row.
  bool last_only = false;
  // Which cache slot row r of `tokens` continues: slots[r]; empty means slot r. Slots in
  // one call must be distinct.
  std::span<const int> slots = {};
  // forward_nll(): also fill NllResult::per_token.
  bool per_token = false;
};

// Sum of next-token negative log-likelihoods (nats): -log softmax(logits)[target],
// log-softmax in fp32, the sum accumulated in double.
struct NllResult {
  double sum = 0.0;
  int64_t count = 0;                // targets that were scored (target >= 0)
  std::vector<float> per_token;     // [rows, n], NaN where target < 0; only when asked

  double mean() const { return count > 0 ? sum / static_cast<double>(count) : 0.0; }
  NllResult& operator+=(const NllResult& o);
};

class Backend {
 public:
  virtual ~Backend() = default;

  virtual std::string name() const = 0;  // "cpu", "cuda:0 (NVIDIA H100 ...)"
  virtual const ModelConfig& config() const = 0;

  // (Re)allocates the cache for `batch` slots of up to `max_tokens` positions, all empty.
  // Throws ResourceError when the memory is not there, InvalidArgument when max_tokens
  // exceeds what the backend supports.
  virtual void reset(int batch, int max_tokens) = 0;
  virtual int batch() const = 0;
  virtual int max_tokens() const = 0;
  virtual int cache_len(int slot) const = 0;
  // Forgets positions >= len of `slot` (len <= cache_len(slot)); truncate(s, 0) empties it.
  virtual void truncate(int slot, int len) = 0;

  // tokens: [rows, n] row-major token ids; row r continues slot slots[r] (or r). Throws
  // InvalidArgument for an id outside the vocabulary or a chunk that would overflow the
  // slot, and kvq::Error naming the layer when the logits become non-finite.
  virtual Logits forward(std::span<const int32_t> tokens, int n,
                         const ForwardOptions& opt = {}) = 0;

  // Like forward(), but scores targets[r*n + i] (the id expected after tokens[r*n + i];
  // < 0 to skip) instead of returning logits, without keeping [rows, n, vocab] at once.
  virtual NllResult forward_nll(std::span<const int32_t> tokens,
                                std::span<const int32_t> targets, int n,
                                const ForwardOptions& opt = {}) = 0;
};

// The checks of a forward()/forward_nll() call that every backend makes before any work, in
// this order: tokens form whole rows of n, the backend has a KV cache, opt.slots names one
// slot per row (empty: row r continues slot r), each slot is in range (be.cache_len's own
// check) and named once, n more tokens fit into it (cache_len + n <= max_tokens), every token
// id lies in [0, config().vocab). Returns the slot of every row; throws InvalidArgument.
std::vector<int> forward_slots(const Backend& be, std::span<const int32_t> tokens, int n,
                               const ForwardOptions& opt);

// The checks of forward_nll's targets that every backend makes before any work: one target
// per token, each below `vocab` (negative: not scored). Throws InvalidArgument.
void check_nll_targets(std::span<const int32_t> tokens, std::span<const int32_t> targets, int vocab);

// Perplexity protocol for one batch of windows: tokens [rows, T]; empties slots 0..rows-1
// (re-allocating the cache when it is too small) and scores the T-1 next-token
// predictions of every row. The observer, if any, sees the T-1 input positions.
NllResult window_nll(Backend& backend, std::span<const int32_t> tokens, int rows, int T,
                     ForwardObserver* observer = nullptr, bool per_token = false);

}  // namespace kvq
