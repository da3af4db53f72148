// Helpers shared by every backend: NLL accumulation, forward_nll's target checks and the
// windowed perplexity protocol.
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
