// Next-token selection (see sampling.h).
#include "lib/sampling.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "formats/error.h"

namespace kvq {

int32_t argmax(const float* logits, int vocab) {
  int32_t best = -1;
  for (int32_t i = 0; i < vocab; ++i) {
    if (std::isnan(logits[i])) continue;
    if (best < 0 || logits[i] > logits[best]) best = i;
  }
  return best < 0 ? 0 : best;
}

Sampler::Sampler(const SamplingOptions& opt) : opt_(opt), rng_(opt.seed) {
  if (!(opt.top_p > 0.0f && opt.top_p <= 1.0f))
    throw InvalidArgument("--top-p", "top_p must be in (0, 1]");
}

int32_t Sampler::operator()(const float* logits, int vocab) {
  if (opt_.temperature <= 0.0f) return argmax(logits, vocab);
  const int32_t best = argmax(logits, vocab);
  const double m = logits[best];
  std::vector<double> p(static_cast<size_t>(vocab));
  double sum = 0.0;
  for (int i = 0; i < vocab; ++i) {
    p[i] = std::isnan(logits[i]) ? 0.0 : std::exp((logits[i] - m) / opt_.temperature);
    sum += p[i];
  }
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  std::iota(order.begin(), order.end(), 0);
  // Descending probability, lower id first on ties: the same order on every platform.
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return p[a] > p[b]; });
  size_t keep = order.size();
  if (opt_.top_p < 1.0f) {
    double acc = 0.0;
    for (size_t i = 0; i < order.size(); ++i) {
      acc += p[order[i]] / sum;
      if (acc >= opt_.top_p) {
        keep = i + 1;
        break;
      }
    }
  }
  double kept = 0.0;
  for (size_t i = 0; i < keep; ++i) kept += p[order[i]];
  const double u = std::uniform_real_distribution<double>(0.0, kept)(rng_);
  double acc = 0.0;
  for (size_t i = 0; i < keep; ++i) {
    acc += p[order[i]];
    if (u < acc) return order[i];
  }
  return order[keep - 1];
}

}  // namespace kvq
