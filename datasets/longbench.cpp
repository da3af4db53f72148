// LongBench v1 reader and evaluator; the protocol is described in longbench.h.
#include "datasets/longbench.h"

#include <algorithm>
#include <chrono>
#include <filesystem>

#include <nlohmann/json.hpp>

#include "datasets/metrics.h"
#include "datasets/text_file.h"
#include "formats/error.h"
#include "lib/generate.h"

namespace kvq::datasets {
namespace {

using nlohmann::json;

struct RowReader {
  const std::string& path;
  int64_t offset;
  int64_t line;

  [[noreturn]] void fail(const std::string& msg) const {
    throw FormatError(path, offset, "line " + std::to_string(line) + ": " + msg);
  }
  std::string str(const json& row, const char* key) const {
    const auto it = row.find(key);
    if (it == row.end()) fail(std::string("row has no \"") + key + "\" field");
    if (!it->is_string()) fail(std::string("field \"") + key + "\" is " + it->type_name() + ", expected a string");
    return it->get<std::string>();
  }
  // A list of strings; null or absent gives an empty list when allowed.
  std::vector<std::string> strings(const json& row, const char* key, bool optional) const {
    const auto it = row.find(key);
    if (it == row.end() || it->is_null()) {
      if (optional) return {};
      fail(std::string("row has no \"") + key + "\" field");
    }
    if (!it->is_array()) fail(std::string("field \"") + key + "\" is " + it->type_name() + ", expected a list of strings");
    std::vector<std::string> out;
    for (const auto& v : *it) {
      if (!v.is_string()) fail(std::string("field \"") + key + "\" holds a " + v.type_name() + ", expected strings");
      out.push_back(v.get<std::string>());
    }
    return out;
  }
};

double since(std::chrono::steady_clock::time_point t0) {
  return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
}

}  // namespace

std::vector<LongBenchRow> read_longbench_jsonl(const std::string& path, int64_t max_rows) {
  const std::string bytes = read_file_bytes(path);
  std::vector<LongBenchRow> rows;
  size_t pos = 0;
  int64_t line_no = 0;
  while (pos < bytes.size() && (max_rows < 0 || static_cast<int64_t>(rows.size()) < max_rows)) {
    size_t end = bytes.find('\n', pos);
    if (end == std::string::npos) end = bytes.size();
    std::string_view text(bytes.data() + pos, end - pos);
    const RowReader rd{path, static_cast<int64_t>(pos), ++line_no};
    pos = end + 1;
    if (!text.empty() && text.back() == '\r') text.remove_suffix(1);
    if (is_blank(text)) continue;
    json j;
    try {
      j = json::parse(text);
    } catch (const json::parse_error& e) {
      rd.fail(std::string("invalid JSON: ") + e.what());
    }
    if (!j.is_object()) rd.fail(std::string("expected a JSON object, got ") + j.type_name());
    LongBenchRow r;
    r.input = rd.str(j, "input");
    r.context = rd.str(j, "context");
    r.answers = rd.strings(j, "answers", false);
    r.all_classes = rd.strings(j, "all_classes", true);
    r.dataset = rd.str(j, "dataset");
    r.id = rd.str(j, "_id");
    if (const auto it = j.find("length"); it != j.end() && !it->is_null()) {
      if (!it->is_number_integer()) rd.fail(std::string("field \"length\" is ") + it->type_name() + ", expected an integer");
      r.length = it->get<int64_t>();
    }
    if (!rows.empty() && r.dataset != rows.front().dataset)
      rd.fail("row of task \"" + r.dataset + "\" in a file of task \"" + rows.front().dataset + "\"");
    rows.push_back(std::move(r));
  }
  if (rows.empty()) throw FormatError(path, "empty: no LongBench rows");
  return rows;
}

LongBenchConfig read_longbench_config(const std::string& dir) {
  auto load = [&](const std::string& name) {
    const std::string path = (std::filesystem::path(dir) / name).string();
    json j;
    try {
      j = json::parse(read_file_bytes(path));
    } catch (const json::parse_error& e) {
      throw FormatError(path, static_cast<int64_t>(e.byte), std::string("invalid JSON: ") + e.what());
    }
    if (!j.is_object()) throw FormatError(path, "expected a JSON object keyed by task name");
    return std::make_pair(path, j);
  };
  LongBenchConfig cfg;
  const auto [ppath, prompts] = load("dataset2prompt.json");
  for (const auto& [k, v] : prompts.items()) {
    if (!v.is_string()) throw FormatError(ppath, "task \"" + k + "\": prompt is not a string");
    cfg.prompts[k] = v.get<std::string>();
  }
  const auto [lpath, lens] = load("dataset2maxlen.json");
  for (const auto& [k, v] : lens.items()) {
    if (!v.is_number_integer() || v.get<int64_t>() <= 0 || v.get<int64_t>() > (1 << 20))
      throw FormatError(lpath, "task \"" + k + "\": generation length is not a positive integer");
    cfg.max_new_tokens[k] = v.get<int>();
  }
  return cfg;
}

std::string format_prompt(const std::string& tmpl, const LongBenchRow& row, const std::string& task) {
  std::string out;
  out.reserve(tmpl.size() + row.context.size() + row.input.size());
  auto fail = [&](size_t at, const std::string& msg) {
    throw FormatError("dataset2prompt.json", static_cast<int64_t>(at),
                      "task \"" + task + "\" prompt: " + msg);
  };
  for (size_t i = 0; i < tmpl.size(); ++i) {
    const char c = tmpl[i];
    if (c == '{') {
      if (i + 1 < tmpl.size() && tmpl[i + 1] == '{') { out.push_back('{'); ++i; continue; }
      const size_t close = tmpl.find('}', i);
      if (close == std::string::npos) fail(i, "unmatched '{'");
      const std::string name = tmpl.substr(i + 1, close - i - 1);
      if (name == "context") out += row.context;
      else if (name == "input") out += row.input;
      else fail(i, "unknown field {" + name + "}");
      i = close;
    } else if (c == '}') {
      if (i + 1 < tmpl.size() && tmpl[i + 1] == '}') { out.push_back('}'); ++i; continue; }
      fail(i, "unmatched '}'");
    } else {
      out.push_back(c);
    }
  }
  return out;
}

std::vector<int32_t> truncate_middle(std::span<const int32_t> ids, int budget) {
  if (budget < 2)
    throw InvalidArgument("longbench", "prompt budget " + std::to_string(budget) +
                                           " tokens: the window must exceed the generation length by at least 2");
  if (ids.size() <= static_cast<size_t>(budget)) return {ids.begin(), ids.end()};
  const size_t half = static_cast<size_t>(budget / 2);
  std::vector<int32_t> out(ids.begin(), ids.begin() + static_cast<std::ptrdiff_t>(half));
  out.insert(out.end(), ids.end() - static_cast<std::ptrdiff_t>(half), ids.end());
  return out;
}

LongBenchTaskResult evaluate_longbench_task(Backend& backend, const Tokenizer& tok,
                                            const LongBenchConfig& cfg, const std::string& task,
                                            const std::vector<LongBenchRow>& rows,
                                            const LongBenchOptions& opt) {
  const Metric metric = metric_for_task(task);
  const auto pit = cfg.prompts.find(task);
  const auto lit = cfg.max_new_tokens.find(task);
  if (pit == cfg.prompts.end() || lit == cfg.max_new_tokens.end())
    throw InvalidArgument("longbench", "task \"" + task + "\" has no prompt or generation length in the config",
                          "check dataset2prompt.json and dataset2maxlen.json");
  int max_new = lit->second;
  if (opt.max_new_tokens_cap > 0) max_new = std::min(max_new, opt.max_new_tokens_cap);
  const int window = opt.window > 0 ? opt.window : backend.config().max_position;
  if (window > backend.config().max_position)
    throw InvalidArgument("longbench", "window " + std::to_string(window) + " exceeds the model's " +
                                           std::to_string(backend.config().max_position));
  const int budget = window - max_new;

  LongBenchTaskResult res;
  res.task = task;
  res.metric = std::string(metric_name(metric));
  const auto t0 = std::chrono::steady_clock::now();
  std::vector<double> scores;
  GenerateOptions gopt;
  gopt.max_new_tokens = max_new;
  gopt.stop_at_eos = true;
  gopt.observer = opt.observer;
  for (const auto& row : rows) {
    const auto ids = tok.encode(format_prompt(pit->second, row, task));
    LongBenchRowResult rr;
    rr.id = row.id;
    rr.prompt_tokens = static_cast<int>(ids.size());
    const auto prompt = truncate_middle(ids, budget);
    rr.truncated = prompt.size() < ids.size();
    auto gen = generate(backend, {prompt}, gopt).at(0);
    std::vector<int32_t> out = gen.tokens;
    if (gen.stopped_at_eos && !out.empty()) out.pop_back();  // skip_special_tokens
    rr.generated_tokens = static_cast<int>(gen.tokens.size());
    rr.prediction = tok.decode(out);
    rr.score = score_row(task, rr.prediction, row.answers, row.all_classes);
    scores.push_back(rr.score);
    res.truncated_rows += rr.truncated ? 1 : 0;
    res.rows.push_back(std::move(rr));
    if (opt.progress)
      opt.progress({task, static_cast<int64_t>(res.rows.size()), static_cast<int64_t>(rows.size()), since(t0)});
  }
  res.score = score_task(scores);
  res.seconds = since(t0);
  return res;
}

LongBenchResult evaluate_longbench(Backend& backend, const Tokenizer& tok, const LongBenchConfig& cfg,
                                   const std::vector<std::string>& files, const LongBenchOptions& opt,
                                   int64_t max_rows) {
  LongBenchResult out;
  // Read and check every file before generating anything: a bad last file should not
  // cost the time of the first ones.
  std::vector<std::vector<LongBenchRow>> all;
  for (const auto& f : files) {
    all.push_back(read_longbench_jsonl(f, max_rows));
    (void)metric_for_task(all.back().front().dataset);
  }
  double sum = 0.0;
  for (const auto& rows : all) {
    out.tasks.push_back(evaluate_longbench_task(backend, tok, cfg, rows.front().dataset, rows, opt));
    sum += out.tasks.back().score;
  }
  out.average = out.tasks.empty() ? 0.0 : sum / static_cast<double>(out.tasks.size());
  return out;
}

}  // namespace kvq::datasets
