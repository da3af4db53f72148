// The compare table: deltas, text and JSON, thresholds (see compare.h).
#include "datasets/compare.h"

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <functional>

#include <nlohmann/json.hpp>

#include "formats/error.h"

namespace kvq::datasets {
namespace {

struct Column {
  const char* name;  // JSON field and text header
  const char* header;
  std::function<double(const CompareRow&)> get;
  const char* fmt;  // printf format for the text table
  bool memory = false;  // shown as "n/a" when not measured and CompareTable::memory_columns
};

const std::vector<Column>& columns() {
  static const std::vector<Column> c = {
      {"effective_bits", "bits", [](const CompareRow& r) { return r.effective_bits; }, "%.2f"},
      {"kv_bytes_per_token", "KV B/tok", [](const CompareRow& r) { return r.kv_bytes_per_token; }, "%.0f"},
      {"ppl", "PPL", [](const CompareRow& r) { return r.ppl; }, "%.4f"},
      {"ppl_delta_pct", "dPPL %", [](const CompareRow& r) { return r.ppl_delta_pct; }, "%+.3f"},
      {"ppl_delta_se_pct", "+- se", [](const CompareRow& r) { return r.ppl_delta_se_pct; }, "%.3f"},
      {"kld_mean", "KLD mean", [](const CompareRow& r) { return r.kld_mean; }, "%.5f"},
      {"kld_median", "KLD med", [](const CompareRow& r) { return r.kld_median; }, "%.5f"},
      {"kld_p99", "KLD p99", [](const CompareRow& r) { return r.kld_p99; }, "%.4f"},
      {"top1", "top1 %", [](const CompareRow& r) { return r.top1 * 100.0; }, "%.2f"},
      {"passkey_acc", "passkey", [](const CompareRow& r) { return r.passkey_acc; }, "%.2f"},
      {"lines_acc", "lines", [](const CompareRow& r) { return r.lines_acc; }, "%.2f"},
      {"longbench_avg", "LongBench", [](const CompareRow& r) { return r.longbench_avg; }, "%.2f"},
      {"tokens_per_s", "tok/s", [](const CompareRow& r) { return r.tokens_per_s; }, "%.1f"},
      {"peak_gpu_bytes", "peak GPU MiB", [](const CompareRow& r) { return r.peak_gpu_bytes; }, "%.0f", true},
      {"max_context_tokens", "ctx@budget", [](const CompareRow& r) { return r.max_context_tokens; }, "%.0f"},
  };
  return c;
}

std::string fmt(const char* f, double v) {
  char buf[64];
  std::snprintf(buf, sizeof buf, f, v);
  return buf;
}

// Raw JSON value of a column (top1 as a 0..1 fraction, not the text's percent; peak GPU
// memory in bytes, not the text's MiB).
double json_value(const CompareRow& r, const Column& c) {
  if (std::string_view(c.name) == "peak_gpu_bytes") return r.peak_gpu_bytes;
  return std::string_view(c.name) == "top1" ? r.top1 : c.get(r);
}

double text_value(const CompareRow& r, const Column& c) {
  if (std::string_view(c.name) == "peak_gpu_bytes") return r.peak_gpu_bytes / 1048576.0;
  return c.get(r);
}

double parse_number(std::string_view text, std::string_view option, bool& percent) {
  std::string s(text);
  percent = !s.empty() && s.back() == '%';
  if (percent) s.pop_back();
  char* end = nullptr;
  const double v = s.empty() ? NAN : std::strtod(s.c_str(), &end);
  if (s.empty() || end != s.c_str() + s.size() || !std::isfinite(v) || v < 0)
    throw InvalidArgument(std::string(option), "'" + std::string(text) + "' is not a non-negative number or percentage",
                          "for example 1% or 0.01");
  return v;
}

}  // namespace

void fill_deltas(CompareTable& table) {
  const CompareRow* ref = nullptr;
  for (const auto& r : table.rows) {
    if (!r.reference) continue;
    if (ref) throw InvalidArgument("compare", "more than one reference row (" + ref->method + ", " + r.method + ")");
    ref = &r;
  }
  for (auto& r : table.rows) {
    r.ppl_delta_pct = (ref && std::isfinite(ref->ppl) && std::isfinite(r.ppl))
                          ? 100.0 * (r.ppl / ref->ppl - 1.0)
                          : kNotMeasured;
    r.ppl_delta_se_pct = kNotMeasured;
    const size_t n = r.window_nll.size();
    if (!ref || n < 2 || ref->window_nll.size() != n) continue;
    double mean = 0.0;
    for (size_t w = 0; w < n; ++w) mean += r.window_nll[w] - ref->window_nll[w];
    mean /= static_cast<double>(n);
    double ss = 0.0;
    for (size_t w = 0; w < n; ++w) {
      const double e = r.window_nll[w] - ref->window_nll[w] - mean;
      ss += e * e;
    }
    const double sd = std::sqrt(ss / static_cast<double>(n - 1));
    r.ppl_delta_se_pct = 100.0 * std::exp(mean) * sd / std::sqrt(static_cast<double>(n));
  }
}

std::string format_compare_text(const CompareTable& t) {
  std::vector<const Column*> used;
  for (const auto& c : columns()) {
    bool any = c.memory && t.memory_columns;
    for (const auto& r : t.rows) any = any || std::isfinite(c.get(r));
    if (any) used.push_back(&c);
  }
  // LongBench task columns follow the fixed ones, in the order the rows first name them.
  std::vector<std::string> tasks;
  for (const auto& r : t.rows)
    for (const auto& [task, score] : r.longbench_tasks)
      if (std::find(tasks.begin(), tasks.end(), task) == tasks.end()) tasks.push_back(task);
  std::vector<std::vector<std::string>> cells;
  std::vector<std::string> head = {"method"};
  for (const auto* c : used) head.push_back(c->header);
  for (const auto& task : tasks) head.push_back(task);
  cells.push_back(head);
  for (const auto& r : t.rows) {
    std::vector<std::string> line = {r.method + (r.reference ? " (ref)" : "")};
    for (const auto* c : used) {
      const double v = text_value(r, *c);
      line.push_back(std::isfinite(v) ? fmt(c->fmt, v) : c->memory ? "n/a" : "-");
    }
    for (const auto& task : tasks) {
      double v = kNotMeasured;
      for (const auto& [name, score] : r.longbench_tasks)
        if (name == task) v = score;
      line.push_back(std::isfinite(v) ? fmt("%.2f", v) : "-");
    }
    cells.push_back(line);
  }
  std::vector<size_t> width(head.size(), 0);
  for (const auto& line : cells)
    for (size_t i = 0; i < line.size(); ++i) width[i] = std::max(width[i], line[i].size());
  std::string out;
  out += "model: " + t.model + "  data: " + t.data + "  seqlen: " + std::to_string(t.seqlen) +
         "  device: " + t.device + "  revision: " + t.revision;
  if (std::isfinite(t.memory_budget_bytes)) out += "  memory budget: " + fmt("%.2f GiB", t.memory_budget_bytes / 0x1p30);
  out += "\n";
  for (const auto& line : cells) {
    for (size_t i = 0; i < line.size(); ++i) {
      const std::string pad(width[i] - line[i].size(), ' ');
      if (i == 0) out += line[i] + pad;  // method: left-aligned
      else out += "  " + pad + line[i];  // numbers: right-aligned
    }
    out += "\n";
  }
  return out;
}

std::string format_compare_json(const CompareTable& t) {
  nlohmann::json j;
  j["model"] = t.model;
  j["data"] = t.data;
  j["device"] = t.device;
  j["revision"] = t.revision;
  j["seqlen"] = t.seqlen;
  j["memory_budget_bytes"] =
      std::isfinite(t.memory_budget_bytes) ? nlohmann::json(t.memory_budget_bytes) : nlohmann::json(nullptr);
  j["rows"] = nlohmann::json::array();
  for (const auto& r : t.rows) {
    nlohmann::json o;
    o["method"] = r.method;
    o["reference"] = r.reference;
    for (const auto& c : columns()) {
      const double v = json_value(r, c);
      o[c.name] = std::isfinite(v) ? nlohmann::json(v) : nlohmann::json(nullptr);
    }
    nlohmann::json lb = nullptr;
    for (const auto& [task, score] : r.longbench_tasks)
      lb[task] = std::isfinite(score) ? nlohmann::json(score) : nlohmann::json(nullptr);
    o["longbench_tasks"] = lb;
    o["window_nll"] = r.window_nll.empty() ? nlohmann::json(nullptr) : nlohmann::json(r.window_nll);
    j["rows"].push_back(o);
  }
  return j.dump(2) + "\n";
}

double parse_percent(std::string_view text, std::string_view option) {
  bool percent = false;
  const double v = parse_number(text, option, percent);
  return percent ? v : 100.0 * v;
}

double parse_fraction(std::string_view text, std::string_view option) {
  bool percent = false;
  double v = parse_number(text, option, percent);
  if (percent) v /= 100.0;
  if (v > 1.0)
    throw InvalidArgument(std::string(option), "'" + std::string(text) + "' is above 1 (100%)", "for example 0.95 or 95%");
  return v;
}

std::string ThresholdFailure::message() const {
  const bool pct = metric == "ppl_increase";
  const bool upper = metric == "ppl_increase" || metric == "kld_mean";
  std::string v = std::isfinite(value) ? fmt(pct ? "%.3f%%" : "%.4g", value) : std::string("not measured");
  return method + ": " + metric + " " + v + (upper ? " > " : " < ") + fmt(pct ? "%g%%" : "%g", limit);
}

std::vector<ThresholdFailure> check_thresholds(const CompareTable& table, const Thresholds& t) {
  std::vector<ThresholdFailure> out;
  for (const auto& r : table.rows) {
    if (r.reference) continue;
    auto upper = [&](const std::optional<double>& lim, const char* name, double v) {
      if (lim && !(v <= *lim)) out.push_back({r.method, name, v, *lim});  // NaN fails
    };
    auto lower = [&](const std::optional<double>& lim, const char* name, double v) {
      if (lim && !(v >= *lim)) out.push_back({r.method, name, v, *lim});
    };
    upper(t.max_ppl_increase_pct, "ppl_increase", r.ppl_delta_pct);
    upper(t.max_kld, "kld_mean", r.kld_mean);
    lower(t.min_passkey, "passkey", r.passkey_acc);
    lower(t.min_lines, "lines", r.lines_acc);
    lower(t.min_top1, "top1", r.top1);
  }
  return out;
}

}  // namespace kvq::datasets
