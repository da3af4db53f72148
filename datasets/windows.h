// Cutting a token stream into evaluation windows. The perplexity protocol of GPTQ,
// KVQuant and KIVI: non-overlapping windows of exactly `seqlen` tokens taken from the
// start, window i = ids[i*seqlen, (i+1)*seqlen); the tail shorter than seqlen is dropped
// (nsamples = numel // seqlen). Only the first window starts with BOS; the others start
// mid-text, as in the reference code. WikiText-2 test (341,469 ids) gives 1,333 windows
// of 256, 666 of 512 and 333 of 1024, the counts in the testbed's reference.json.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvq::datasets {

struct Window {
  size_t begin = 0;   // index of the first token in the stream
  size_t length = 0;  // always seqlen
};

// The first min(n_tokens / seqlen, max_windows) windows (all when max_windows < 0).
// InvalidArgument when seqlen < 2 (a window must predict at least one token).
std::vector<Window> cut_windows(size_t n_tokens, int seqlen, int64_t max_windows = -1);

}  // namespace kvq::datasets
