// See windows.h.
#include "datasets/windows.h"

#include <string>

#include "formats/error.h"

namespace kvq::datasets {

std::vector<Window> cut_windows(size_t n_tokens, int seqlen, int64_t max_windows) {
  if (seqlen < 2) {
    throw InvalidArgument("--seqlen", "window length " + std::to_string(seqlen) +
                                          " is too short: a window predicts positions 1..seqlen-1");
  }
  size_t count = n_tokens / static_cast<size_t>(seqlen);
  if (max_windows >= 0 && static_cast<size_t>(max_windows) < count) count = static_cast<size_t>(max_windows);
  std::vector<Window> out(count);
  for (size_t i = 0; i < count; ++i) out[i] = {i * static_cast<size_t>(seqlen), static_cast<size_t>(seqlen)};
  return out;
}

}  // namespace kvq::datasets
