// Helpers shared by every backend: NLL accumulation, the argument checks of forward() and
// forward_nll() and the windowed perplexity protocol.
#include "lib/backend.h"

#include <string>

#include "formats/error.h"

namespace kvq {

NllResult& NllResult::operator+=(const NllResult& o) {
  sum += o.sum;
  count += o.count;
  per_token.insert(per_token.end(), o.per_token.begin(), o.per_token.end());
  return *this;
}

std::vector<int> forward_slots(const Backend& be, std::span<const int32_t> tokens, int n,
                               const ForwardOptions& opt) {
  if (n <= 0 || tokens.empty() || tokens.size() % static_cast<size_t>(n) != 0)
    throw InvalidArgument("forward", std::to_string(tokens.size()) +
                                         " tokens do not form rows of n = " + std::to_string(n));
  const int rows = static_cast<int>(tokens.size() / static_cast<size_t>(n));
  if (be.batch() == 0) throw InvalidArgument("forward", "no KV cache: call reset(batch, max_tokens) first");
  if (!opt.slots.empty() && opt.slots.size() != static_cast<size_t>(rows))
    throw InvalidArgument("forward", std::to_string(opt.slots.size()) + " slots for " +
                                         std::to_string(rows) + " rows");
  std::vector<int> slots(static_cast<size_t>(rows));
  const int max_tokens = be.max_tokens();
  for (int r = 0; r < rows; ++r) {
    slots[r] = opt.slots.empty() ? r : opt.slots[static_cast<size_t>(r)];
    const int len = be.cache_len(slots[r]);  // throws for a slot out of range
    for (int q = 0; q < r; ++q)
      if (slots[q] == slots[r])
        throw InvalidArgument("forward", "slot " + std::to_string(slots[r]) + " given twice");
    if (len + n > max_tokens)
      throw InvalidArgument("forward", "slot " + std::to_string(slots[r]) + " holds " + std::to_string(len) +
                                           " tokens; " + std::to_string(n) + " more exceed max_tokens " +
                                           std::to_string(max_tokens));
  }
  const int vocab = be.config().vocab;
  for (size_t i = 0; i < tokens.size(); ++i)
    if (tokens[i] < 0 || tokens[i] >= vocab)
      throw InvalidArgument("forward", "token id " + std::to_string(tokens[i]) + " at index " +
                                           std::to_string(i) + " outside the vocabulary of " +
                                           std::to_string(vocab));
  return slots;
}

void check_nll_targets(std::span<const int32_t> tokens, std::span<const int32_t> targets, int vocab) {
  if (targets.size() != tokens.size())
    throw InvalidArgument("forward_nll", std::to_string(targets.size()) + " targets for " +
                                             std::to_string(tokens.size()) + " tokens");
  for (size_t i = 0; i < targets.size(); ++i)
    if (targets[i] >= vocab)
      throw InvalidArgument("forward_nll", "target id " + std::to_string(targets[i]) + " at index " +
                                               std::to_string(i) + " outside the vocabulary of " +
                                               std::to_string(vocab));
}

NllResult window_nll(Backend& backend, std::span<const int32_t> tokens, int rows, int T,
                     ForwardObserver* observer, bool per_token) {
  if (rows <= 0 || T < 2)
    throw InvalidArgument("window_nll", "need at least one row of 2 tokens, got " +
                                            std::to_string(rows) + " x " + std::to_string(T));
  if (tokens.size() != static_cast<size_t>(rows) * static_cast<size_t>(T))
    throw InvalidArgument("window_nll", "tokens hold " + std::to_string(tokens.size()) +
                                            " ids, expected " + std::to_string(rows) + " x " +
                                            std::to_string(T));
  if (backend.batch() < rows || backend.max_tokens() < T - 1) {
    backend.reset(rows, T);
  } else {
    for (int r = 0; r < rows; ++r) backend.truncate(r, 0);
  }
  const int n = T - 1;
  std::vector<int32_t> in(static_cast<size_t>(rows) * n), tgt(in.size());
  for (int r = 0; r < rows; ++r) {
    for (int i = 0; i < n; ++i) {
      in[static_cast<size_t>(r) * n + i] = tokens[static_cast<size_t>(r) * T + i];
      tgt[static_cast<size_t>(r) * n + i] = tokens[static_cast<size_t>(r) * T + i + 1];
    }
  }
  ForwardOptions opt;
  opt.observer = observer;
  opt.per_token = per_token;
  return backend.forward_nll(in, tgt, n, opt);
}

}  // namespace kvq
