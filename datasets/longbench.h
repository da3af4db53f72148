// LongBench v1 (THUDM/LongBench) evaluation: task files, prompts, middle truncation,
// greedy generation through lib/generate.h (with an optional observer, e.g. simulated KV
// quantization), the official metric per task (datasets/metrics.h), per-task and average
// scores.
//
// Protocol (LongBench's pred.py / eval.py, for a base model without a chat template):
//   prompt  = dataset2prompt[task] with {context} and {input} filled from the row
//             (Python str.format: "{{" and "}}" are literal braces);
//   ids     = tokenizer.encode(prompt) (BOS as the checkpoint adds it);
//   budget  = window - dataset2maxlen[task]; when ids are longer than budget, keep the first
//             budget/2 and the last budget/2 ids (integer half, as pred.py's int(max/2)).
//             pred.py decodes both halves to text and tokenizes again; kvq keeps the ids,
//             which avoids a re-tokenization that can change the count at the seam;
//   output  = greedy, at most dataset2maxlen[task] new tokens, stop at EOS; decoded text;
//   score   = max over answers of the task's metric, mean over rows x 100, 2 decimals;
//             the headline is the mean of the task scores.
// Non-goals: chat templates, the Chinese tasks (metrics.h), LongBench-E length buckets.
#pragma once

#include <cstdint>
#include <functional>
#include <map>
#include <span>
#include <string>
#include <vector>

#include "formats/tokenizer.h"
#include "lib/backend.h"

namespace kvq::datasets {

struct LongBenchRow {
  std::string input, context;
  std::vector<std::string> answers;
  std::vector<std::string> all_classes;  // empty when null
  int64_t length = 0;
  std::string dataset;  // the task name
  std::string id;       // "_id"
};

// A LongBench jsonl file (one row per line; blank lines skipped). FormatError naming the
// file, byte offset and line for invalid JSON, a missing or wrongly typed field, or rows of
// different tasks; FormatError "empty" for a file without rows; IoError when unreadable.
// Reads the first max_rows rows (all when < 0).
std::vector<LongBenchRow> read_longbench_jsonl(const std::string& path, int64_t max_rows = -1);

struct LongBenchConfig {
  std::map<std::string, std::string> prompts;  // dataset2prompt.json
  std::map<std::string, int> max_new_tokens;   // dataset2maxlen.json
};

// dir/dataset2prompt.json and dir/dataset2maxlen.json. FormatError for a value of the
// wrong type or a non-positive length.
LongBenchConfig read_longbench_config(const std::string& dir);

// The template with {context} and {input} filled in. FormatError (naming `task`) for an
// unknown field or an unmatched brace.
std::string format_prompt(const std::string& tmpl, const LongBenchRow& row,
                          const std::string& task = "");

// The first budget/2 and last budget/2 ids of `ids` when it is longer than budget, else
// ids unchanged. InvalidArgument when budget < 2.
std::vector<int32_t> truncate_middle(std::span<const int32_t> ids, int budget);

struct LongBenchProgress {
  std::string task;
  int64_t rows_done = 0, rows_total = 0;
  double elapsed_s = 0.0;
};

struct LongBenchOptions {
  int window = 0;               // <= 0: the model's max_position
  int max_new_tokens_cap = -1;  // > 0: min(dataset2maxlen, cap) (tests, quick looks)
  ForwardObserver* observer = nullptr;
  std::function<void(const LongBenchProgress&)> progress;
};

struct LongBenchRowResult {
  std::string id;
  std::string prediction;
  double score = 0.0;        // in [0, 1]
  int prompt_tokens = 0;     // before truncation
  bool truncated = false;
  int generated_tokens = 0;
};

struct LongBenchTaskResult {
  std::string task;
  std::string metric;        // metric_name()
  double score = 0.0;        // 0..100, 2 decimals
  int64_t truncated_rows = 0;
  double seconds = 0.0;
  std::vector<LongBenchRowResult> rows;
};

struct LongBenchResult {
  std::vector<LongBenchTaskResult> tasks;
  double average = 0.0;      // mean of task scores
};

// One task's rows. Throws InvalidArgument for a task without a prompt or length in the
// config or a window too small for the generation length; metric_for_task's errors.
LongBenchTaskResult evaluate_longbench_task(Backend& backend, const Tokenizer& tok,
                                            const LongBenchConfig& cfg, const std::string& task,
                                            const std::vector<LongBenchRow>& rows,
                                            const LongBenchOptions& opt = {});

// Every file (task name from the rows' "dataset" field), then the average.
LongBenchResult evaluate_longbench(Backend& backend, const Tokenizer& tok,
                                   const LongBenchConfig& cfg,
                                   const std::vector<std::string>& files,
                                   const LongBenchOptions& opt = {}, int64_t max_rows = -1);

}  // namespace kvq::datasets
