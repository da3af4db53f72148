// The compare table's LongBench and memory columns (datasets/compare.h): one text column per
// LongBench task in the order the rows name them, "-" where a row lacks a task, the
// "longbench_tasks" JSON object, peak GPU memory as "n/a" on the CPU (bytes in JSON, MiB in
// text), the budget column and the table's memory_budget_bytes.
#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "datasets/compare.h"
#include "tests/catch.h"

using namespace kvq::datasets;
using kvq_test::HasSubstr;

namespace {
// The line of `text` that starts with `prefix`.
std::string line_of(const std::string& text, const std::string& prefix) {
  size_t pos = 0;
  while (pos < text.size()) {
    size_t end = text.find('\n', pos);
    if (end == std::string::npos) end = text.size();
    if (text.compare(pos, prefix.size(), prefix) == 0) return text.substr(pos, end - pos);
    pos = end + 1;
  }
  return "";
}
}  // namespace

TEST_CASE("compare: LongBench task columns and JSON object", "[compare][longbench]") {
  CompareTable t;
  t.model = "m";
  t.data = "longbench";
  t.device = "cpu";
  t.revision = "r";
  t.seqlen = 256;
  CompareRow fp16{.method = "fp16", .reference = true, .effective_bits = 16, .kv_bytes_per_token = 9216};
  fp16.longbench_avg = 37.5;
  fp16.longbench_tasks = {{"trec", 50.0}, {"qasper", 25.0}};
  CompareRow q{.method = "int4", .effective_bits = 4.5, .kv_bytes_per_token = 2592};
  q.longbench_avg = 12.5;
  q.longbench_tasks = {{"trec", 25.0}, {"lcc", 0.0}};  // no qasper, an extra lcc
  t.rows = {fp16, q};
  fill_deltas(t);

  const std::string text = format_compare_text(t);
  // Columns: fixed ones, then trec, qasper (fp16's order), then lcc (first named by int4).
  const std::string head = line_of(text, "method");
  REQUIRE(!head.empty());
  CHECK(head.find("LongBench") < head.find("trec"));
  CHECK(head.find("trec") < head.find("qasper"));
  CHECK(head.find("qasper") < head.find("lcc"));
  // int4 has no qasper ("-") and fp16 no lcc ("-").
  const std::string fp = line_of(text, "fp16 (ref)"), i4 = line_of(text, "int4");
  CHECK(fp.substr(fp.size() - 1) == "-");
  CHECK_THAT(i4, HasSubstr("25.00       -  0.00"));  // qasper is 6 wide, lcc 4
  CHECK_THAT(fp, HasSubstr("37.50  50.00   25.00"));
  // Memory columns are off unless the tool asks: no peak column without a value.
  CHECK(text.find("peak GPU") == std::string::npos);

  const auto j = nlohmann::json::parse(format_compare_json(t));
  CHECK(j["rows"][0]["longbench_tasks"]["trec"] == 50.0);
  CHECK(j["rows"][0]["longbench_tasks"]["qasper"] == 25.0);
  CHECK(j["rows"][1]["longbench_tasks"].size() == 2);
  CHECK(j["rows"][1]["longbench_avg"] == 12.5);
  CHECK(j["rows"][0]["peak_gpu_bytes"].is_null());
  CHECK(j["rows"][0]["max_context_tokens"].is_null());
  CHECK(j["memory_budget_bytes"].is_null());

  // A table without LongBench: longbench_tasks is null, not an empty object.
  CompareTable plain = t;
  for (auto& r : plain.rows) r.longbench_tasks.clear();
  const auto jp = nlohmann::json::parse(format_compare_json(plain));
  CHECK(jp["rows"][0]["longbench_tasks"].is_null());
}

TEST_CASE("compare: memory columns, n/a on the CPU, MiB in text and bytes in JSON", "[compare][longbench]") {
  CompareTable t;
  t.model = "m";
  t.data = "d";
  t.device = "cpu";
  t.revision = "r";
  t.seqlen = 64;
  t.memory_columns = true;
  t.memory_budget_bytes = 80.0 * 1073741824.0;
  CompareRow fp16{.method = "fp16", .reference = true, .effective_bits = 16, .kv_bytes_per_token = 9216};
  fp16.max_context_tokens = 9284417;
  fp16.tokens_per_s = 123.4;
  t.rows = {fp16};
  std::string text = format_compare_text(t);
  CHECK_THAT(text, HasSubstr("memory budget: 80.00 GiB"));
  CHECK_THAT(text, HasSubstr("peak GPU MiB"));
  CHECK_THAT(text, HasSubstr("ctx@budget"));
  CHECK_THAT(line_of(text, "fp16 (ref)"), HasSubstr("n/a"));
  CHECK_THAT(line_of(text, "fp16 (ref)"), HasSubstr("9284417"));
  auto j = nlohmann::json::parse(format_compare_json(t));
  CHECK(j["memory_budget_bytes"] == 80.0 * 1073741824.0);
  CHECK(j["rows"][0]["max_context_tokens"] == 9284417.0);
  CHECK(j["rows"][0]["peak_gpu_bytes"].is_null());

  // On a GPU: 1.5 GiB peak is 1536 MiB in text, the bytes in JSON.
  t.rows[0].peak_gpu_bytes = 1.5 * 1073741824.0;
  text = format_compare_text(t);
  CHECK_THAT(line_of(text, "fp16 (ref)"), HasSubstr("1536"));
  CHECK(line_of(text, "fp16 (ref)").find("n/a") == std::string::npos);
  j = nlohmann::json::parse(format_compare_json(t));
  CHECK(j["rows"][0]["peak_gpu_bytes"] == 1.5 * 1073741824.0);
}
