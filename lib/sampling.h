// Choosing the next token from a row of logits: greedy argmax (the evaluation default,
// deterministic) and seeded temperature / top-p sampling for interactive use.
#pragma once

#include <cstdint>
#include <random>

namespace kvq {

// Index of the largest logit; the lowest index wins ties (as torch.argmax on CPU and
// numpy). NaNs are never chosen unless every entry is NaN (then 0).
int32_t argmax(const float* logits, int vocab);

struct SamplingOptions {
  float temperature = 0.0f;  // <= 0: greedy
  float top_p = 1.0f;        // nucleus: smallest set of tokens whose probability >= top_p
  uint64_t seed = 0;
};

class Sampler {
 public:
  explicit Sampler(const SamplingOptions& opt);
  int32_t operator()(const float* logits, int vocab);

 private:
  SamplingOptions opt_;
  std::mt19937_64 rng_;
};

}  // namespace kvq
