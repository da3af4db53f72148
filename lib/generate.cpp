// Greedy / sampled generation (see generate.h).
#include "lib/generate.h"

#include <algorithm>
#include <string>

#include "formats/error.h"

namespace kvq {

std::vector<Generation> generate(Backend& backend,
                                 const std::vector<std::vector<int32_t>>& prompts,
                                 const GenerateOptions& opt) {
  const int b = static_cast<int>(prompts.size());
  if (b == 0) return {};
  if (opt.max_new_tokens < 0)
    throw InvalidArgument("generate", "max_new_tokens must be >= 0");
  size_t longest = 0;
  for (size_t i = 0; i < prompts.size(); ++i) {
    if (prompts[i].empty())
      throw InvalidArgument("generate", "prompt " + std::to_string(i) + " is empty");
    longest = std::max(longest, prompts[i].size());
  }
  const int need = static_cast<int>(longest) + opt.max_new_tokens;
  if (backend.batch() < b || backend.max_tokens() < need) {
    backend.reset(b, need);
  } else {
    for (int s = 0; s < b; ++s) backend.truncate(s, 0);
  }
  std::vector<Generation> out(static_cast<size_t>(b));
  if (opt.max_new_tokens == 0) return out;
  const int eos = backend.config().eos_id;
  Sampler sample(opt.sampling);
  ForwardOptions fo;
  fo.observer = opt.observer;
  fo.last_only = true;

  std::vector<int32_t> next(static_cast<size_t>(b));
  for (int s = 0; s < b; ++s) {
    const int slot[1] = {s};
    fo.slots = slot;
    const Logits lg = backend.forward(prompts[static_cast<size_t>(s)],
                                      static_cast<int>(prompts[static_cast<size_t>(s)].size()), fo);
    next[static_cast<size_t>(s)] = sample(lg.at(0, 0), lg.vocab);
  }
  std::vector<int> active;
  for (int s = 0; s < b; ++s) active.push_back(s);
  for (int step = 0;; ++step) {
    std::vector<int> still;
    for (int s : active) {
      Generation& g = out[static_cast<size_t>(s)];
      g.tokens.push_back(next[static_cast<size_t>(s)]);
      if (opt.stop_at_eos && eos >= 0 && next[static_cast<size_t>(s)] == eos) {
        g.stopped_at_eos = true;
      } else if (static_cast<int>(g.tokens.size()) < opt.max_new_tokens) {
        still.push_back(s);
      }
    }
    active.swap(still);
    if (active.empty()) break;
    std::vector<int32_t> in;
    for (int s : active) in.push_back(next[static_cast<size_t>(s)]);
    fo.slots = active;
    const Logits lg = backend.forward(in, 1, fo);
    for (size_t i = 0; i < active.size(); ++i)
      next[static_cast<size_t>(active[i])] = sample(lg.at(static_cast<int>(i), 0), lg.vocab);
  }
  return out;
}

}  // namespace kvq
