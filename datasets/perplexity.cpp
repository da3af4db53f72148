// See perplexity.h.
#include "datasets/perplexity.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <string>
#include <vector>

#include "datasets/windows.h"
#include "formats/error.h"

namespace kvq::datasets {

void check_perplexity_inputs(const ModelConfig& cfg, size_t n_tokens, const PerplexityOptions& opt) {
  if (opt.seqlen > cfg.max_position && cfg.max_position > 0) {
    throw InvalidArgument("--seqlen", std::to_string(opt.seqlen) + " is longer than the model's window of " +
                                          std::to_string(cfg.max_position) + " positions",
                          "use --seqlen " + std::to_string(cfg.max_position) + " or less");
  }
  if (opt.batch < 1) throw InvalidArgument("--batch", "must be at least 1");
  if (cut_windows(n_tokens, opt.seqlen, opt.max_windows).empty()) {
    throw InvalidArgument("--seqlen", "the dataset gives " + std::to_string(n_tokens) +
                                          " tokens, fewer than one window of " + std::to_string(opt.seqlen),
                          opt.max_windows == 0 ? "--max-windows 0 evaluates nothing"
                                               : "use a shorter --seqlen or a longer dataset");
  }
}

PerplexityResult evaluate_perplexity(Backend& backend, std::span<const int32_t> ids,
                                     const PerplexityOptions& opt) {
  check_perplexity_inputs(backend.config(), ids.size(), opt);
  const std::vector<Window> windows = cut_windows(ids.size(), opt.seqlen, opt.max_windows);

  using Clock = std::chrono::steady_clock;
  const auto t0 = Clock::now();
  NllResult total;
  PerplexityResult res;
  res.seqlen = opt.seqlen;
  res.tokens_available = static_cast<int64_t>(ids.size());
  const int64_t n_windows = static_cast<int64_t>(windows.size());
  std::vector<int32_t> batch_ids;
  for (int64_t w = 0; w < n_windows;) {
    // Windows are contiguous in the stream, so a batch is one slice.
    const int rows = static_cast<int>(std::min<int64_t>(opt.batch, n_windows - w));
    const auto slice = ids.subspan(windows[w].begin, static_cast<size_t>(rows) * opt.seqlen);
    NllResult part = window_nll(backend, slice, rows, opt.seqlen, opt.observer, /*per_token=*/true);
    const size_t n = static_cast<size_t>(opt.seqlen - 1);
    if (part.per_token.size() != static_cast<size_t>(rows) * n) {
      throw Error("perplexity", "the backend returned " + std::to_string(part.per_token.size()) +
                                    " per-token values for " + std::to_string(rows) + " x " + std::to_string(n));
    }
    for (int r = 0; r < rows; ++r) {
      double s = 0.0;
      for (size_t i = 0; i < n; ++i) s += part.per_token[static_cast<size_t>(r) * n + i];
      res.window_nll.push_back(s / static_cast<double>(n));
    }
    part.per_token.clear();
    total += part;
    w += rows;
    if (opt.progress) {
      PerplexityProgress p;
      p.windows_done = w;
      p.windows_total = n_windows;
      p.ppl = std::exp(total.mean());
      p.elapsed_s = std::chrono::duration<double>(Clock::now() - t0).count();
      p.eta_s = p.elapsed_s / static_cast<double>(w) * static_cast<double>(n_windows - w);
      opt.progress(p);
    }
  }
  res.seconds = std::chrono::duration<double>(Clock::now() - t0).count();
  res.windows = n_windows;
  res.tokens_scored = total.count;
  res.mean_nll = total.mean();
  res.ppl = std::exp(res.mean_nll);
  res.tokens_per_s = res.seconds > 0 ? static_cast<double>(total.count) / res.seconds : 0.0;
  if (!std::isfinite(res.mean_nll)) {
    throw Error("perplexity", "mean NLL is not finite (" + std::to_string(res.mean_nll) + ")");
  }
  return res;
}

}  // namespace kvq::datasets
