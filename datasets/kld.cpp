// KL divergence against a stored top-k reference; the storage choice is explained in kld.h.
#include "datasets/kld.h"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <string>

#include "formats/error.h"

namespace kvq::datasets {
namespace {

// fp32 log-softmax of one row, the sum of exponentials accumulated in double.
void log_softmax(const float* x, int vocab, std::vector<float>& out) {
  out.resize(static_cast<size_t>(vocab));
  float mx = x[0];
  for (int i = 1; i < vocab; ++i) mx = std::max(mx, x[i]);
  double s = 0.0;
  for (int i = 0; i < vocab; ++i) s += std::exp(static_cast<double>(x[i] - mx));
  const float lse = mx + static_cast<float>(std::log(s));
  for (int i = 0; i < vocab; ++i) out[static_cast<size_t>(i)] = x[i] - lse;
}

// Sum of exp(logp) over the ids not in top[0..k), in id order, in double. `mask` is a
// vocab-sized scratch of zeros, left zeroed.
double tail_mass(const std::vector<float>& logp, const int32_t* top, size_t k, std::vector<char>& mask) {
  for (size_t i = 0; i < k; ++i) mask[static_cast<size_t>(top[i])] = 1;
  double s = 0.0;
  for (size_t i = 0; i < logp.size(); ++i)
    if (!mask[i]) s += std::exp(static_cast<double>(logp[i]));
  for (size_t i = 0; i < k; ++i) mask[static_cast<size_t>(top[i])] = 0;
  return s;
}

int argmax(const float* x, int vocab) {
  int best = 0;
  for (int i = 1; i < vocab; ++i)
    if (x[i] > x[best]) best = i;  // ties: the lowest id
  return best;
}

// Logits of one window [1, T, vocab] from an empty slot 0.
Logits run_window(Backend& backend, std::span<const int32_t> w, ForwardObserver* observer) {
  const int T = static_cast<int>(w.size());
  if (backend.batch() < 1 || backend.max_tokens() < T) backend.reset(1, T);
  else backend.truncate(0, 0);
  ForwardOptions fo;
  fo.observer = observer;
  return backend.forward(w, T, fo);
}

void check_window_inputs(const Backend& backend, size_t n_tokens, int seqlen) {
  const int window = backend.config().max_position;
  if (seqlen < 2 || seqlen > window)
    throw InvalidArgument("kld", "seqlen " + std::to_string(seqlen) + " is outside 2.." + std::to_string(window));
  if (n_tokens < static_cast<size_t>(seqlen))
    throw InvalidArgument("kld", "the text has " + std::to_string(n_tokens) + " tokens, fewer than one window of " +
                                     std::to_string(seqlen));
}

}  // namespace

double KldReference::ppl() const {
  const auto n = tokens();
  return n > 0 ? std::exp(nll_sum / static_cast<double>(n)) : 0.0;
}

KldReference compute_kld_reference(Backend& backend, std::span<const int32_t> ids, const KldOptions& opt,
                                   ForwardObserver* observer) {
  check_window_inputs(backend, ids.size(), opt.seqlen);
  const int vocab = backend.config().vocab;
  if (opt.top_k < 1 || opt.top_k > vocab)
    throw InvalidArgument("kld", "top_k " + std::to_string(opt.top_k) + " is outside 1.." + std::to_string(vocab));
  KldReference ref;
  ref.seqlen = opt.seqlen;
  ref.top_k = opt.top_k;
  ref.vocab = vocab;
  ref.windows = cut_windows(ids.size(), opt.seqlen, opt.max_windows);
  const size_t k = static_cast<size_t>(opt.top_k);
  const int64_t total = static_cast<int64_t>(ref.windows.size()) * (opt.seqlen - 1);
  ref.top_ids.reserve(static_cast<size_t>(total) * k);
  ref.top_logp.reserve(static_cast<size_t>(total) * k);
  std::vector<float> lp;
  std::vector<char> mask(static_cast<size_t>(vocab), 0);
  std::vector<int32_t> order(static_cast<size_t>(vocab));
  int64_t done = 0;
  for (const auto& w : ref.windows) {
    const auto win = ids.subspan(w.begin, w.length);
    const Logits L = run_window(backend, win, observer);
    for (int t = 0; t + 1 < opt.seqlen; ++t) {
      const float* x = L.at(0, t);
      log_softmax(x, vocab, lp);
      std::iota(order.begin(), order.end(), 0);
      // Highest probability first; equal logits: the lower id first (argmax's rule).
      std::partial_sort(order.begin(), order.begin() + static_cast<std::ptrdiff_t>(k), order.end(),
                        [&](int32_t a, int32_t b) { return x[a] > x[b] || (x[a] == x[b] && a < b); });
      for (size_t i = 0; i < k; ++i) {
        ref.top_ids.push_back(order[i]);
        ref.top_logp.push_back(lp[static_cast<size_t>(order[i])]);
      }
      ref.rest_mass.push_back(tail_mass(lp, ref.top_ids.data() + ref.top_ids.size() - k, k, mask));
      ref.nll_sum -= lp[static_cast<size_t>(win[static_cast<size_t>(t) + 1])];
    }
    if (opt.progress) opt.progress(++done, static_cast<int64_t>(ref.windows.size()));
  }
  return ref;
}

KldResult evaluate_kld(Backend& backend, std::span<const int32_t> ids, const KldReference& ref,
                       ForwardObserver* observer, const std::function<void(int64_t, int64_t)>& progress) {
  if (backend.config().vocab != ref.vocab)
    throw InvalidArgument("kld", "the reference has a vocabulary of " + std::to_string(ref.vocab) +
                                     ", the model " + std::to_string(backend.config().vocab));
  if (ref.windows.empty()) throw InvalidArgument("kld", "the reference has no windows");
  if (ids.size() < ref.windows.back().begin + ref.windows.back().length)
    throw InvalidArgument("kld", "the text is shorter than the reference's windows",
                          "use the same text and seqlen as the reference");
  const int vocab = ref.vocab;
  const size_t k = static_cast<size_t>(ref.top_k);
  KldResult r;
  std::vector<float> lq;
  std::vector<char> mask(static_cast<size_t>(vocab), 0);
  int64_t agree = 0, tok = 0, done = 0;
  double nll = 0.0;
  for (const auto& w : ref.windows) {
    const auto win = ids.subspan(w.begin, w.length);
    const Logits L = run_window(backend, win, observer);
    for (int t = 0; t + 1 < ref.seqlen; ++t, ++tok) {
      const float* x = L.at(0, t);
      log_softmax(x, vocab, lq);
      const int32_t* top = ref.top_ids.data() + static_cast<size_t>(tok) * k;
      const float* lp = ref.top_logp.data() + static_cast<size_t>(tok) * k;
      double kl = 0.0;
      for (size_t i = 0; i < k; ++i) {
        const double lpi = lp[i];
        const double lqi = lq[static_cast<size_t>(top[i])];
        kl += std::exp(lpi) * (lpi - lqi);
      }
      // "Any other token": both rest masses summed directly over the tail in id order (not
      // 1 - top sum, whose rounding noise of ~1e-7 would be scored as a rest mass when k is
      // the whole vocabulary). Empty tail (k = vocab): no such outcome.
      const double p_rest = ref.rest_mass[static_cast<size_t>(tok)];
      const double q_rest = tail_mass(lq, top, k, mask);
      if (p_rest > 0.0) kl += p_rest * (std::log(p_rest) - std::log(std::max(q_rest, 1e-300)));
      r.per_token.push_back(kl);
      agree += argmax(x, vocab) == top[0] ? 1 : 0;
      nll -= lq[static_cast<size_t>(win[static_cast<size_t>(t) + 1])];
    }
    if (progress) progress(++done, static_cast<int64_t>(ref.windows.size()));
  }
  r.tokens = tok;
  std::vector<double> sorted = r.per_token;
  std::sort(sorted.begin(), sorted.end());
  double sum = 0.0;
  for (double v : r.per_token) sum += v;
  r.mean = sum / static_cast<double>(tok);
  r.median = percentile_sorted(sorted, 50.0);
  r.p99 = percentile_sorted(sorted, 99.0);
  r.max = sorted.back();
  r.top1_agreement = static_cast<double>(agree) / static_cast<double>(tok);
  r.ppl = std::exp(nll / static_cast<double>(tok));
  r.ref_ppl = ref.ppl();
  return r;
}

double percentile_sorted(const std::vector<double>& sorted, double q) {
  if (sorted.empty()) throw InvalidArgument("percentile", "no values");
  if (!(q >= 0.0 && q <= 100.0)) throw InvalidArgument("percentile", "q must be in [0, 100]");
  const double pos = q / 100.0 * static_cast<double>(sorted.size() - 1);
  const size_t lo = static_cast<size_t>(std::floor(pos));
  const size_t hi = std::min(lo + 1, sorted.size() - 1);
  const double frac = pos - static_cast<double>(lo);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * frac;
}

}  // namespace kvq::datasets
