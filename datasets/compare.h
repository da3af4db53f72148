// The compare table of kvq-eval: one row per KV method (fp16 and each profile or --kv
// spec) with quality, memory and speed side by side, printed as text or JSON, and the CI
// thresholds that turn a regression into a failing metric name.
//
// Every metric is optional (NaN = not measured: "-" in text, null in JSON), so one table
// model serves ppl-only, kld-only and full runs. JSON field names are stable and documented
// in docs/eval.md; add fields, never rename them.
//
// PPL delta is relative to the reference row (fp16): 100 * (ppl / ppl_ref - 1) percent.
// Its standard error comes from the pairing over windows (every row sees the same
// windows): with d_w = NLL_w(row) - NLL_w(ref) per window, se = 100 exp(mean d) sd(d) /
// sqrt(n) (the delta method on PPL = exp(mean NLL)). Two methods' PPLs differ by more than
// noise where their deltas differ by a few of these.
// Thresholds apply to every non-reference row:
//   max_ppl_increase_pct  fails "ppl_increase" when ppl_delta_pct > limit
//   max_kld               fails "kld_mean"     when kld_mean > limit
//   min_passkey           fails "passkey"      when passkey_acc < limit
//   min_lines             fails "lines"        when lines_acc < limit
//   min_top1              fails "top1"         when top1 < limit
// A threshold on a metric the run did not measure fails too (value NaN): a CI gate that
// silently checks nothing is worse than one that stops.
#pragma once

#include <cmath>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kvq::datasets {

inline constexpr double kNotMeasured = std::numeric_limits<double>::quiet_NaN();

struct CompareRow {
  std::string method;                   // "fp16", "int4", "kivi:bits=2", a profile's name
  bool reference = false;               // the fp16 row that deltas are taken against
  double effective_bits = kNotMeasured;       // per K/V element, metadata included
  double kv_bytes_per_token = kNotMeasured;   // K+V of all layers
  double ppl = kNotMeasured;
  double ppl_delta_pct = kNotMeasured;        // filled by fill_deltas
  double ppl_delta_se_pct = kNotMeasured;     // filled by fill_deltas (needs window_nll)
  std::vector<double> window_nll = {};        // mean NLL per window (ppl task), same windows in every row
  double kld_mean = kNotMeasured, kld_median = kNotMeasured, kld_p99 = kNotMeasured;
  double top1 = kNotMeasured;                 // top-1 agreement with the reference, 0..1
  double passkey_acc = kNotMeasured, lines_acc = kNotMeasured;  // 0..1
  double longbench_avg = kNotMeasured;        // 0..100
  double tokens_per_s = kNotMeasured;
  // LongBench score of each task (0..100), in the order run; text: one column per task,
  // JSON: "longbench_tasks" {task: score} (null when empty).
  std::vector<std::pair<std::string, double>> longbench_tasks = {};
  // Memory (datasets/kv_memory.h): measured peak GPU memory of the row's run in bytes
  // (NaN on the CPU: "n/a" in text when CompareTable::memory_columns), and the longest
  // context that fits CompareTable::memory_budget_bytes.
  double peak_gpu_bytes = kNotMeasured;
  double max_context_tokens = kNotMeasured;
};

struct CompareTable {
  // Context printed above the table and stored in the JSON.
  std::string model, data, device, revision;
  int seqlen = 0;
  std::vector<CompareRow> rows;
  // Show the peak-GPU column even where nothing was measured ("n/a", a CPU run), so that a
  // reader sees the figure is absent rather than forgotten. Off: the column shows only
  // when some row has a value.
  bool memory_columns = false;
  double memory_budget_bytes = kNotMeasured;  // JSON "memory_budget_bytes"; text header
};

// ppl_delta_pct of every row against the reference row (0 for the reference itself), and
// ppl_delta_se_pct where both rows hold the same number (>= 2) of window NLLs.
// InvalidArgument when there is more than one reference row; without one the deltas stay
// NaN.
void fill_deltas(CompareTable& table);

// Aligned columns with a header; "-" for values not measured; columns where no row has a
// value are left out.
std::string format_compare_text(const CompareTable& table);

// {"model", "data", "device", "revision", "seqlen", "rows": [{"method", "reference",
// "effective_bits", ..., "window_nll": [...] or null}]} with null for values not measured;
// pretty-printed.
std::string format_compare_json(const CompareTable& table);

struct Thresholds {
  std::optional<double> max_ppl_increase_pct;
  std::optional<double> max_kld;
  std::optional<double> min_passkey;
  std::optional<double> min_lines;
  std::optional<double> min_top1;
};

// "1%" -> 1.0 (percent), "0.01" -> 1.0 (a bare number is a fraction); for
// --max-ppl-increase. InvalidArgument (naming `option`) for anything else or a negative.
double parse_percent(std::string_view text, std::string_view option);
// A fraction in [0, 1] ("0.95" or "95%") for the accuracy thresholds.
double parse_fraction(std::string_view text, std::string_view option);

struct ThresholdFailure {
  std::string method;  // the row
  std::string metric;  // "ppl_increase", "kld_mean", "passkey", "lines", "top1"
  double value = kNotMeasured;
  double limit = 0.0;
  std::string message() const;  // "int2: ppl_increase 12.3% > 1%"
};

std::vector<ThresholdFailure> check_thresholds(const CompareTable& table, const Thresholds& t);

}  // namespace kvq::datasets
