// LongBench: middle truncation exactly, prompt formatting, the reader's errors, and the
// hand-written fixture (tests/data/longbench/*.jsonl) end to end on the testbed model with
// the CPU backend and the real dataset2prompt/dataset2maxlen config.
#include <cstdio>
#include <numeric>
#include <string>
#include <vector>

#include "datasets/longbench.h"
#include "formats/error.h"
#include "formats/tokenizer.h"
#include "lib/cpu_backend.h"
#include "lib/model.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::datasets;
using kvq_test::HasSubstr;

namespace {
void write_text(const std::filesystem::path& p, const std::string& s) { kvq_test::write_bytes(p, s.data(), s.size()); }
}  // namespace

TEST_CASE("truncate_middle keeps the first and last budget/2 ids", "[longbench]") {
  std::vector<int32_t> ids(10);
  std::iota(ids.begin(), ids.end(), 0);
  CHECK(truncate_middle(ids, 6) == std::vector<int32_t>{0, 1, 2, 7, 8, 9});
  // Odd budget: int(7 / 2) = 3 from each end, as pred.py (one id of budget unused).
  CHECK(truncate_middle(ids, 7) == std::vector<int32_t>{0, 1, 2, 7, 8, 9});
  CHECK(truncate_middle(ids, 2) == std::vector<int32_t>{0, 9});
  CHECK(truncate_middle(ids, 10) == ids);
  CHECK(truncate_middle(ids, 11) == ids);
  CHECK_THROWS_AS(truncate_middle(ids, 1), InvalidArgument);
}

TEST_CASE("format_prompt fills {context} and {input} like str.format", "[longbench]") {
  LongBenchRow r;
  r.context = "C{x}";  // braces in the values are not templates
  r.input = "I";
  CHECK(format_prompt("a {context} b {input} {{lit}}", r) == "a C{x} b I {lit}");
  CHECK_THROWS_AS(format_prompt("{nope}", r, "t"), FormatError);
  CHECK_THROWS_AS(format_prompt("x {context", r, "t"), FormatError);
  CHECK_THROWS_AS(format_prompt("x }", r, "t"), FormatError);
}

TEST_CASE("read_longbench_jsonl: fields and errors with file, line and offset", "[longbench]") {
  const auto rows = read_longbench_jsonl((kvq_test::source_dir() / "tests/data/longbench/trec.jsonl").string());
  REQUIRE(rows.size() == 2);
  CHECK(rows[0].dataset == "trec");
  CHECK(rows[0].id == "trec-0");
  CHECK(rows[0].answers == std::vector<std::string>{"Location"});
  CHECK(rows[0].all_classes.size() == 4);
  CHECK(rows[0].length > 0);
  CHECK(read_longbench_jsonl((kvq_test::source_dir() / "tests/data/longbench/lcc.jsonl").string(), 1).size() == 1);

  const auto dir = kvq_test::scratch_dir("longbench_bad");
  const std::string good =
      R"({"input":"q","context":"c","answers":["a"],"all_classes":null,"length":1,"dataset":"qasper","_id":"x"})";
  auto expect = [&](const std::string& name, const std::string& text, const std::string& msg) {
    write_text(dir / name, text);
    try {
      read_longbench_jsonl((dir / name).string());
      FAIL("no error for " << name);
    } catch (const FormatError& e) {
      CHECK_THAT(e.what(), HasSubstr(name));
      CHECK_THAT(e.what(), HasSubstr(msg));
    }
  };
  expect("bad_json.jsonl", good + "\n{oops\n", "line 2");
  expect("offset.jsonl", good + "\n{oops\n", "offset " + std::to_string(good.size() + 1));
  expect("no_answers.jsonl", R"({"input":"q","context":"c","dataset":"qasper","_id":"x"})", "\"answers\"");
  expect("answers_type.jsonl",
         R"({"input":"q","context":"c","answers":"a","dataset":"qasper","_id":"x"})", "list of strings");
  expect("mixed.jsonl", good + "\n" + std::string(good).replace(good.find("qasper"), 6, "lcc") + "\n", "task");
  expect("empty.jsonl", "\n  \n", "empty");
  CHECK_THROWS_AS(read_longbench_jsonl((dir / "missing.jsonl").string()), IoError);
}

TEST_CASE("longbench fixture end to end on the testbed model", "[longbench]") {
  const auto model_dir = kvq_test::shared_path("models/kvq-testbed-llama2-23m").string();
  auto be = make_cpu_backend(load_model(model_dir));
  const auto tok = load_tokenizer(model_dir);
  const auto cfg = read_longbench_config(kvq_test::shared_path("datasets/longbench/config").string());
  CHECK(cfg.prompts.size() == 21);
  CHECK(cfg.max_new_tokens.at("lcc") == 64);

  LongBenchOptions opt;
  opt.window = 160;              // short, so that qasper's long template is truncated
  opt.max_new_tokens_cap = 8;    // budget = 152 tokens
  std::vector<std::string> files;
  for (const char* t : {"passage_retrieval_en", "trec", "qasper", "lcc"})
    files.push_back((kvq_test::source_dir() / "tests/data/longbench" / (std::string(t) + ".jsonl")).string());
  const LongBenchResult res = evaluate_longbench(*be, *tok, cfg, files, opt);
  REQUIRE(res.tasks.size() == 4);
  double sum = 0.0;
  for (const auto& t : res.tasks) {
    std::printf("longbench fixture %-22s %-15s score %6.2f (%zu rows, %lld truncated)\n", t.task.c_str(),
                t.metric.c_str(), t.score, t.rows.size(), static_cast<long long>(t.truncated_rows));
    CHECK(t.score >= 0.0);
    CHECK(t.score <= 100.0);
    CHECK(t.rows.size() == 2);
    for (const auto& r : t.rows) {
      CHECK(r.generated_tokens >= 1);
      CHECK(r.generated_tokens <= 8);
      CHECK(r.score >= 0.0);
      CHECK(r.score <= 1.0);
    }
    sum += t.score;
  }
  CHECK(res.average == kvq_test::Approx(sum / 4));
  CHECK(res.tasks[2].task == "qasper");
  CHECK(res.tasks[2].truncated_rows == 2);
  CHECK(res.tasks[2].rows[0].prompt_tokens > 152);
  CHECK(res.tasks[0].metric == "retrieval");

  // A window that leaves no room for the prompt.
  LongBenchOptions tiny = opt;
  tiny.window = 9;
  const auto rows = read_longbench_jsonl(files[1]);
  CHECK_THROWS_AS(evaluate_longbench_task(*be, *tok, cfg, "trec", rows, tiny), InvalidArgument);
  LongBenchConfig empty;
  CHECK_THROWS_AS(evaluate_longbench_task(*be, *tok, empty, "trec", rows, opt), InvalidArgument);
}
