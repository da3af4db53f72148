// Passkey and line retrieval generators and scoring; formats are described in retrieval.h.
#include "datasets/retrieval.h"

#include <algorithm>
#include <cmath>
#include <random>
#include <string_view>

#include "datasets/text_file.h"
#include "formats/error.h"
#include "lib/generate.h"

namespace kvq::datasets {
namespace {

constexpr std::string_view kPasskeyIntro =
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize "
    "them. I will quiz you about the important information there.\n\n";
constexpr std::string_view kPasskeyQuestion = "\nWhat is the pass key? The pass key is";

constexpr std::string_view kLinesIntro =
    "Below is a record of lines I want you to remember. Each line begins with 'line <line "
    "index>' and contains a '<REGISTER_CONTENT>' at the end of the line as a numerical value. "
    "For each line index, memorize its corresponding <REGISTER_CONTENT>. At the end of the "
    "record, I will ask you to retrieve the corresponding <REGISTER_CONTENT> of a certain line "
    "index. Now the record start:\n\n";

constexpr const char* kAdjectives[] = {
    "swift", "quiet", "brave", "bright", "calm", "eager", "fancy", "gentle", "happy", "jolly",
    "kind", "lively", "merry", "nice", "proud", "silly", "witty", "zealous", "ancient", "bold",
    "clever", "daring", "fierce", "golden", "hollow", "icy", "lucky", "noble", "rapid", "solid"};
constexpr const char* kNouns[] = {
    "river", "mountain", "forest", "ocean", "desert", "valley", "island", "meadow", "canyon", "lake",
    "falcon", "tiger", "otter", "badger", "raven", "salmon", "panda", "wolf", "eagle", "fox",
    "anchor", "lantern", "compass", "harbor", "castle", "bridge", "tower", "garden", "engine", "rocket"};
constexpr int kNames = static_cast<int>(std::size(kAdjectives) * std::size(kNouns));

// Uniform in [0, n) from a 64-bit generator; the modulo bias (n / 2^64) is negligible and
// the result is the same with every standard library (std::uniform_int_distribution is not).
uint64_t pick(std::mt19937_64& rng, uint64_t n) { return rng() % n; }

std::vector<std::string_view> nonblank_lines(const std::string& text) {
  std::vector<std::string_view> out;
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + pos, end - pos);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (!is_blank(line)) out.push_back(line);
    pos = end + 1;
  }
  return out;
}

int count_tokens(const Tokenizer& tok, std::string_view text) {
  return static_cast<int>(tok.encode(text, false).size());
}

}  // namespace

std::vector<RetrievalSample> make_passkey_samples(const Tokenizer& tok, const std::string& filler_text,
                                                  int context_tokens, int trials, uint64_t seed) {
  if (trials < 1) throw InvalidArgument("passkey", "trials must be >= 1");
  const auto lines = nonblank_lines(filler_text);
  if (lines.empty()) throw FormatError("passkey filler", "empty: the filler text has no non-blank line");
  // Fixed text with a representative 5-digit key.
  const int overhead = 1 + count_tokens(tok, kPasskeyIntro) + count_tokens(tok, kPasskeyQuestion) +
                       count_tokens(tok, "The pass key is 12345. Remember it. 12345 is the pass key.\n");
  if (context_tokens < overhead + 8)
    throw InvalidArgument("passkey", "context length " + std::to_string(context_tokens) +
                                         " tokens is too short: the fixed text alone takes " +
                                         std::to_string(overhead));
  std::mt19937_64 rng(seed);
  std::vector<RetrievalSample> out;
  for (int t = 0; t < trials; ++t) {
    const std::string key = std::to_string(10000 + pick(rng, 90000));
    size_t line = pick(rng, lines.size());
    const double depth = static_cast<double>(pick(rng, 1001)) / 1000.0;
    // Filler lines until the budget: per-line counts (+1 for the "\n") approximate the
    // count of the joined text to within a token or two per line boundary.
    std::vector<std::string_view> used;
    int budget = context_tokens - overhead;
    while (true) {
      const std::string_view l = lines[line];
      const int n = count_tokens(tok, l) + 1;
      if (!used.empty() && n > budget) break;
      used.push_back(l);
      budget -= n;
      line = (line + 1) % lines.size();
      if (budget <= 0) break;
    }
    const size_t at = static_cast<size_t>(std::lround(depth * static_cast<double>(used.size())));
    std::string text(kPasskeyIntro);
    for (size_t i = 0; i <= used.size(); ++i) {
      if (i == at) text += "The pass key is " + key + ". Remember it. " + key + " is the pass key.\n";
      if (i < used.size()) {
        text += used[i];
        text += '\n';
      }
    }
    text += kPasskeyQuestion;
    RetrievalSample s;
    s.prompt = tok.encode(text);
    s.answer = key;
    s.target_tokens = context_tokens;
    s.depth = used.empty() ? 0.0 : static_cast<double>(at) / static_cast<double>(used.size());
    out.push_back(std::move(s));
  }
  return out;
}

std::vector<RetrievalSample> make_line_samples(const Tokenizer& tok, int n_lines, int trials,
                                               uint64_t seed) {
  if (trials < 1) throw InvalidArgument("lines", "trials must be >= 1");
  if (n_lines < 1 || n_lines > kNames)
    throw InvalidArgument("lines", "n_lines must be in 1.." + std::to_string(kNames) + ", got " +
                                       std::to_string(n_lines));
  std::mt19937_64 rng(seed);
  std::vector<RetrievalSample> out;
  for (int t = 0; t < trials; ++t) {
    // n distinct names: a partial Fisher-Yates shuffle of all adjective-noun pairs.
    std::vector<int> ids(kNames);
    for (int i = 0; i < kNames; ++i) ids[i] = i;
    for (int i = 0; i < n_lines; ++i)
      std::swap(ids[i], ids[i + static_cast<int>(pick(rng, static_cast<uint64_t>(kNames - i)))]);
    const int nn = static_cast<int>(std::size(kNouns));
    auto name = [&](int id) { return std::string(kAdjectives[id / nn]) + "-" + kNouns[id % nn]; };
    std::vector<std::string> values;
    std::string text(kLinesIntro);
    for (int i = 0; i < n_lines; ++i) {
      values.push_back(std::to_string(1 + pick(rng, 50000)));
      text += "line " + name(ids[i]) + ": REGISTER_CONTENT is <" + values.back() + ">\n";
    }
    const int q = static_cast<int>(pick(rng, static_cast<uint64_t>(n_lines)));
    text += "\nNow the record is over. Tell me what is the <REGISTER_CONTENT> in line " + name(ids[q]) +
            "? I need the number.\nAnswer: The <REGISTER_CONTENT> in line " + name(ids[q]) + " is <";
    RetrievalSample s;
    s.prompt = tok.encode(text);
    s.answer = values[q];
    s.n_lines = n_lines;
    s.depth = n_lines > 1 ? static_cast<double>(q) / (n_lines - 1) : 0.0;
    out.push_back(std::move(s));
  }
  return out;
}

bool retrieval_correct(const std::string& generated, const std::string& answer) {
  if (answer.empty()) return false;
  auto digit = [](char c) { return c >= '0' && c <= '9'; };
  for (size_t pos = generated.find(answer); pos != std::string::npos;
       pos = generated.find(answer, pos + 1)) {
    const bool left = pos == 0 || !digit(generated[pos - 1]);
    const size_t end = pos + answer.size();
    const bool right = end == generated.size() || !digit(generated[end]);
    if (left && right) return true;
  }
  return false;
}

RetrievalResult evaluate_retrieval(Backend& backend, const Tokenizer& tok,
                                   const std::vector<RetrievalSample>& samples,
                                   const RetrievalOptions& opt) {
  const int window = backend.config().max_position;
  for (const auto& s : samples)
    if (static_cast<int>(s.prompt.size()) + opt.max_new_tokens > window)
      throw InvalidArgument("retrieval", "a prompt of " + std::to_string(s.prompt.size()) + " tokens plus " +
                                             std::to_string(opt.max_new_tokens) +
                                             " new tokens exceeds the model's window of " + std::to_string(window),
                            "use a shorter context length or fewer lines");
  GenerateOptions g;
  g.max_new_tokens = opt.max_new_tokens;
  g.stop_at_eos = true;
  g.observer = opt.observer;
  RetrievalResult r;
  double tokens = 0.0;
  for (const auto& s : samples) {
    auto gen = generate(backend, {s.prompt}, g).at(0);
    if (gen.stopped_at_eos && !gen.tokens.empty()) gen.tokens.pop_back();
    r.outputs.push_back(tok.decode(gen.tokens));
    r.correct += retrieval_correct(r.outputs.back(), s.answer) ? 1 : 0;
    r.trials += 1;
    tokens += static_cast<double>(s.prompt.size());
    if (opt.progress) opt.progress(r.trials, static_cast<int64_t>(samples.size()));
  }
  r.accuracy = r.trials ? static_cast<double>(r.correct) / static_cast<double>(r.trials) : 0.0;
  r.mean_prompt_tokens = r.trials ? tokens / static_cast<double>(r.trials) : 0.0;
  return r;
}

}  // namespace kvq::datasets
