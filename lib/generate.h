// Autoregressive generation over any Backend: prefill each prompt into its own cache
// slot, then decode all unfinished sequences together one token per step.
#pragma once

#include <cstdint>
#include <vector>

#include "lib/backend.h"
#include "lib/sampling.h"

namespace kvq {

struct GenerateOptions {
  int max_new_tokens = 64;
  bool stop_at_eos = true;   // stop a sequence after it emits the config's eos_id
  SamplingOptions sampling;  // default: greedy
  ForwardObserver* observer = nullptr;
};

struct Generation {
  std::vector<int32_t> tokens;  // generated ids (an EOS that stopped it included)
  bool stopped_at_eos = false;
};

// Uses slots 0..prompts.size()-1, re-allocating the cache when it is too small for
// prompt + max_new_tokens. Prompts must be non-empty.
std::vector<Generation> generate(Backend& backend,
                                 const std::vector<std::vector<int32_t>>& prompts,
                                 const GenerateOptions& opt = {});

}  // namespace kvq
