// LongBench v1 metrics; see metrics.h for the definitions followed.
#include "datasets/metrics.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <set>
#include <string>

#include "formats/error.h"

namespace kvq::datasets {
namespace {

bool is_space(char c) { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\v' || c == '\f'; }
bool is_ascii_punct(char c) {
  const auto u = static_cast<unsigned char>(c);
  return (u >= 33 && u <= 47) || (u >= 58 && u <= 64) || (u >= 91 && u <= 96) || (u >= 123 && u <= 126);
}
// Python's regex \w on str: letters, digits, underscore, and (for us) any non-ASCII byte,
// so that "café" stays one word and an article inside it is never matched.
bool is_word_char(char c) {
  const auto u = static_cast<unsigned char>(c);
  return u >= 0x80 || std::isalnum(u) || c == '_';
}
bool is_digit(char c) { return c >= '0' && c <= '9'; }

// Python's str.split() (no argument): runs of whitespace separate, no empty pieces.
std::vector<std::string> split_ws(std::string_view s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    while (i < s.size() && is_space(s[i])) ++i;
    const size_t b = i;
    while (i < s.size() && !is_space(s[i])) ++i;
    if (i > b) out.emplace_back(s.substr(b, i - b));
  }
  return out;
}

// Python's str.split(sep) for a one-character separator: keeps empty pieces.
std::vector<std::string> split_char(std::string_view s, char sep) {
  std::vector<std::string> out;
  size_t b = 0;
  for (size_t i = 0; i <= s.size(); ++i) {
    if (i == s.size() || s[i] == sep) {
      out.emplace_back(s.substr(b, i - b));
      b = i + 1;
    }
  }
  return out;
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
  std::string out;
  for (size_t i = 0; i < parts.size(); ++i) {
    if (i) out += sep;
    out += parts[i];
  }
  return out;
}

std::vector<std::string> digit_runs(std::string_view s) {
  std::vector<std::string> out;
  size_t i = 0;
  while (i < s.size()) {
    if (!is_digit(s[i])) { ++i; continue; }
    const size_t b = i;
    while (i < s.size() && is_digit(s[i])) ++i;
    out.emplace_back(s.substr(b, i - b));
  }
  return out;
}

double fraction_equal(const std::vector<std::string>& numbers, std::string_view target) {
  if (numbers.empty()) return 0.0;
  size_t right = 0;
  for (const auto& n : numbers) right += (n == target) ? 1 : 0;
  return static_cast<double>(right) / static_cast<double>(numbers.size());
}

// UTF-8 -> code points; a byte that does not start a valid sequence stands for itself
// (Python would have refused to decode it; the data LongBench ships is valid UTF-8).
std::u32string code_points(std::string_view s) {
  std::u32string out;
  size_t i = 0;
  while (i < s.size()) {
    const auto c = static_cast<unsigned char>(s[i]);
    int len = c < 0x80 ? 1 : (c >> 5) == 0x6 ? 2 : (c >> 4) == 0xE ? 3 : (c >> 3) == 0x1E ? 4 : 0;
    bool ok = len > 0 && i + len <= s.size();
    char32_t cp = len == 1 ? c : len == 2 ? (c & 0x1F) : len == 3 ? (c & 0x0F) : (c & 0x07);
    for (int k = 1; ok && k < len; ++k) {
      const auto d = static_cast<unsigned char>(s[i + k]);
      if ((d >> 6) != 0x2) ok = false;
      cp = (cp << 6) | (d & 0x3F);
    }
    if (!ok) { out.push_back(c); ++i; continue; }
    out.push_back(cp);
    i += len;
  }
  return out;
}

template <typename Seq>
size_t lcs_length(const Seq& a, const Seq& b) {
  std::vector<size_t> prev(b.size() + 1, 0), cur(b.size() + 1, 0);
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j)
      cur[j] = a[i - 1] == b[j - 1] ? prev[j - 1] + 1 : std::max(prev[j], cur[j - 1]);
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// The words of one LCS of x (reference) and y (prediction), reconstructed from the full
// table with the rouge package's tie-breaking (go up only when strictly better).
std::set<std::string> recon_lcs_words(const std::vector<std::string>& x, const std::vector<std::string>& y) {
  const size_t n = x.size(), m = y.size();
  std::vector<size_t> t((n + 1) * (m + 1), 0);
  auto T = [&](size_t i, size_t j) -> size_t& { return t[i * (m + 1) + j]; };
  for (size_t i = 1; i <= n; ++i)
    for (size_t j = 1; j <= m; ++j)
      T(i, j) = x[i - 1] == y[j - 1] ? T(i - 1, j - 1) + 1 : std::max(T(i - 1, j), T(i, j - 1));
  std::set<std::string> words;
  size_t i = n, j = m;
  while (i > 0 && j > 0) {
    if (x[i - 1] == y[j - 1]) {
      words.insert(x[i - 1]);
      --i;
      --j;
    } else if (T(i - 1, j) > T(i, j - 1)) {
      --i;
    } else {
      --j;
    }
  }
  return words;
}

// The rouge package's sentence split: pieces of text.split("."), non-empty, whitespace
// collapsed to single spaces; then each sentence's words are sentence.split(" ").
std::vector<std::vector<std::string>> rouge_sentences(std::string_view text) {
  std::vector<std::vector<std::string>> out;
  for (const auto& piece : split_char(text, '.')) {
    if (piece.empty()) continue;
    out.push_back(split_char(join(split_ws(piece), " "), ' '));
  }
  return out;
}

std::string first_line(std::string_view s) {
  const size_t b = s.find_first_not_of('\n');
  if (b == std::string_view::npos) return {};
  s.remove_prefix(b);
  return std::string(s.substr(0, s.find('\n')));
}

}  // namespace

std::string_view metric_name(Metric m) {
  switch (m) {
    case Metric::kQaF1: return "qa_f1";
    case Metric::kRougeL: return "rouge_l";
    case Metric::kClassification: return "classification";
    case Metric::kRetrieval: return "retrieval";
    case Metric::kCount: return "count";
    case Metric::kCodeSim: return "code_sim";
  }
  return "?";
}

Metric metric_for_task(std::string_view task) {
  static const std::map<std::string, Metric, std::less<>> table = {
      {"narrativeqa", Metric::kQaF1},     {"qasper", Metric::kQaF1},
      {"multifieldqa_en", Metric::kQaF1}, {"hotpotqa", Metric::kQaF1},
      {"2wikimqa", Metric::kQaF1},        {"musique", Metric::kQaF1},
      {"triviaqa", Metric::kQaF1},        {"gov_report", Metric::kRougeL},
      {"qmsum", Metric::kRougeL},         {"multi_news", Metric::kRougeL},
      {"samsum", Metric::kRougeL},        {"trec", Metric::kClassification},
      {"passage_retrieval_en", Metric::kRetrieval},
      {"passage_count", Metric::kCount},  {"lcc", Metric::kCodeSim},
      {"repobench-p", Metric::kCodeSim}};
  if (auto it = table.find(task); it != table.end()) return it->second;
  static const std::set<std::string, std::less<>> chinese = {
      "multifieldqa_zh", "dureader", "vcsum", "lsht", "passage_retrieval_zh"};
  if (chinese.count(task))
    throw UnsupportedError("longbench", "task '" + std::string(task) +
                                            "' uses a Chinese metric (jieba segmentation), which kvq does not implement");
  throw InvalidArgument("longbench", "'" + std::string(task) + "' is not a LongBench v1 task");
}

std::string normalize_answer(std::string_view s) {
  // lower, remove punctuation, remove articles, fix whitespace (applied in that order).
  std::string t;
  t.reserve(s.size());
  for (char c : s) {
    if (is_ascii_punct(c)) continue;
    t.push_back(static_cast<char>(std::tolower(static_cast<unsigned char>(c))));
  }
  std::string u;
  size_t i = 0;
  while (i < t.size()) {
    if (!is_word_char(t[i])) { u.push_back(t[i++]); continue; }
    const size_t b = i;
    while (i < t.size() && is_word_char(t[i])) ++i;
    const std::string_view w(t.data() + b, i - b);
    if (w == "a" || w == "an" || w == "the") u.push_back(' ');
    else u.append(w);
  }
  return join(split_ws(u), " ");
}

double qa_f1_score(std::string_view prediction, std::string_view truth) {
  const auto p = split_ws(normalize_answer(prediction));
  const auto g = split_ws(normalize_answer(truth));
  std::map<std::string, int> cp, cg;
  for (const auto& w : p) ++cp[w];
  for (const auto& w : g) ++cg[w];
  int same = 0;
  for (const auto& [w, n] : cp)
    if (auto it = cg.find(w); it != cg.end()) same += std::min(n, it->second);
  if (same == 0) return 0.0;
  const double precision = static_cast<double>(same) / static_cast<double>(p.size());
  const double recall = static_cast<double>(same) / static_cast<double>(g.size());
  return 2.0 * precision * recall / (precision + recall);
}

double rouge_l_score(std::string_view prediction, std::string_view truth) {
  // The package refuses empty texts ("Hypothesis is empty"); LongBench scores that 0.
  if (split_ws(prediction).empty() || split_ws(truth).empty()) return 0.0;
  const auto hyp = rouge_sentences(prediction);
  const auto ref = rouge_sentences(truth);
  if (hyp.empty() || ref.empty()) return 0.0;
  std::set<std::string> ref_words, hyp_words;
  for (const auto& s : ref) ref_words.insert(s.begin(), s.end());
  for (const auto& s : hyp) hyp_words.insert(s.begin(), s.end());
  // Union LCS: a word counts once however many sentence pairs share it.
  std::set<std::string> uni;
  for (const auto& r : ref)
    for (const auto& h : hyp) {
      const auto w = recon_lcs_words(r, h);
      uni.insert(w.begin(), w.end());
    }
  const double llcs = static_cast<double>(uni.size());
  const double r = llcs / static_cast<double>(ref_words.size());
  const double p = llcs / static_cast<double>(hyp_words.size());
  return 2.0 * (p * r) / (p + r + 1e-8);
}

double classification_score(std::string_view prediction, std::string_view truth,
                            const std::vector<std::string>& all_classes) {
  std::vector<std::string> matches;
  for (const auto& c : all_classes)
    if (prediction.find(c) != std::string_view::npos) matches.push_back(c);
  // `for term in list: list.remove(term)` in Python: removing the current element makes
  // the iteration skip the one after it. Reproduced, since it changes scores.
  for (size_t i = 0; i < matches.size(); ++i) {
    const std::string term = matches[i];
    if (truth.find(term) != std::string_view::npos && term != truth)
      matches.erase(std::find(matches.begin(), matches.end(), term));
  }
  if (std::find(matches.begin(), matches.end(), truth) == matches.end()) return 0.0;
  return 1.0 / static_cast<double>(matches.size());
}

double retrieval_score(std::string_view prediction, std::string_view truth) {
  const std::string key = "Paragraph ";
  size_t pos = 0;
  std::string id;
  while ((pos = truth.find(key, pos)) != std::string_view::npos) {
    size_t i = pos + key.size();
    while (i < truth.size() && is_digit(truth[i])) id.push_back(truth[i++]);
    if (!id.empty()) break;
    pos += key.size();
  }
  if (id.empty())
    throw InvalidArgument("longbench", "retrieval answer '" + std::string(truth) +
                                           "' has no \"Paragraph N\"");
  return fraction_equal(digit_runs(prediction), id);
}

double count_score(std::string_view prediction, std::string_view truth) {
  return fraction_equal(digit_runs(prediction), truth);
}

double indel_ratio(std::string_view a, std::string_view b) {
  const auto x = code_points(a), y = code_points(b);
  const size_t total = x.size() + y.size();
  if (total == 0) return 1.0;
  // InDel distance = la + lb - 2 LCS.
  return 2.0 * static_cast<double>(lcs_length(x, y)) / static_cast<double>(total);
}

double code_sim_score(std::string_view prediction, std::string_view truth) {
  std::string_view p = prediction;
  const size_t b = p.find_first_not_of('\n');
  p.remove_prefix(b == std::string_view::npos ? p.size() : b);
  std::string chosen;
  for (const auto& line : split_char(p, '\n')) {
    if (line.find('`') == std::string::npos && line.find('#') == std::string::npos &&
        line.find("//") == std::string::npos) {
      chosen = line;
      break;
    }
  }
  // fuzzywuzzy rounds to an integer percent (Python round: half to even).
  return std::nearbyint(100.0 * indel_ratio(chosen, truth)) / 100.0;
}

double score_one(Metric m, std::string_view prediction, std::string_view truth,
                 const std::vector<std::string>& all_classes) {
  switch (m) {
    case Metric::kQaF1: return qa_f1_score(prediction, truth);
    case Metric::kRougeL: return rouge_l_score(prediction, truth);
    case Metric::kClassification: return classification_score(prediction, truth, all_classes);
    case Metric::kRetrieval: return retrieval_score(prediction, truth);
    case Metric::kCount: return count_score(prediction, truth);
    case Metric::kCodeSim: return code_sim_score(prediction, truth);
  }
  return 0.0;
}

double score_row(std::string_view task, std::string_view prediction,
                 const std::vector<std::string>& answers,
                 const std::vector<std::string>& all_classes) {
  const Metric m = metric_for_task(task);
  std::string pred(prediction);
  if (task == "trec" || task == "triviaqa" || task == "samsum" || task == "lsht")
    pred = first_line(prediction);
  double best = 0.0;
  for (const auto& a : answers) best = std::max(best, score_one(m, pred, a, all_classes));
  return best;
}

double score_task(const std::vector<double>& row_scores) {
  if (row_scores.empty()) return 0.0;
  double sum = 0.0;
  for (double s : row_scores) sum += s;
  return std::nearbyint(100.0 * sum / static_cast<double>(row_scores.size()) * 100.0) / 100.0;
}

}  // namespace kvq::datasets
