// The compare table: deltas against the reference row, text/JSON with missing values,
// threshold parsing and the failing metric names.
#include <cmath>
#include <string>

#include <nlohmann/json.hpp>

#include "datasets/compare.h"
#include "formats/error.h"
#include "tests/catch.h"

using namespace kvq;
using namespace kvq::datasets;
using kvq_test::Approx;
using kvq_test::HasSubstr;

namespace {
CompareTable sample() {
  CompareTable t;
  t.model = "kvq-testbed-llama2-23m";
  t.data = "wikitext2";
  t.device = "cpu";
  t.revision = "abc123";
  t.seqlen = 1024;
  CompareRow fp16{.method = "fp16", .reference = true, .effective_bits = 16, .kv_bytes_per_token = 9216, .ppl = 200.0};
  fp16.kld_mean = 0;
  fp16.top1 = 1;
  fp16.passkey_acc = 1;
  CompareRow q4{.method = "int4", .effective_bits = 4.5, .kv_bytes_per_token = 2592, .ppl = 201.0};
  q4.kld_mean = 0.004;
  q4.top1 = 0.97;
  q4.passkey_acc = 1;
  CompareRow q2{.method = "int2", .effective_bits = 2.5, .kv_bytes_per_token = 1440, .ppl = 230.0};
  q2.kld_mean = 0.12;
  q2.top1 = 0.8;
  q2.passkey_acc = 0.6;
  t.rows = {fp16, q4, q2};
  fill_deltas(t);
  return t;
}
}  // namespace

TEST_CASE("compare: deltas, text and JSON", "[compare]") {
  const CompareTable t = sample();
  // 201 / 200 - 1 = 0.5%; 230 / 200 - 1 = 15%.
  CHECK(t.rows[0].ppl_delta_pct == 0.0);
  CHECK(t.rows[1].ppl_delta_pct == Approx(0.5));
  CHECK(t.rows[2].ppl_delta_pct == Approx(15.0));

  const std::string text = format_compare_text(t);
  CHECK_THAT(text, HasSubstr("fp16 (ref)"));
  CHECK_THAT(text, HasSubstr("+15.000"));
  CHECK_THAT(text, HasSubstr("KLD mean"));
  CHECK_THAT(text, HasSubstr("seqlen: 1024"));
  // Columns nobody measured are left out.
  CHECK(text.find("LongBench") == std::string::npos);
  CHECK(text.find("tok/s") == std::string::npos);

  const auto j = nlohmann::json::parse(format_compare_json(t));
  CHECK(j["model"] == "kvq-testbed-llama2-23m");
  CHECK(j["seqlen"] == 1024);
  REQUIRE(j["rows"].size() == 3);
  CHECK(j["rows"][1]["method"] == "int4");
  CHECK(j["rows"][1]["reference"] == false);
  CHECK(j["rows"][1]["top1"].get<double>() == Approx(0.97));
  CHECK(j["rows"][1]["ppl_delta_pct"].get<double>() == Approx(0.5));
  CHECK(j["rows"][1]["tokens_per_s"].is_null());
  CHECK(j["rows"][1]["kld_p99"].is_null());
  for (const char* k : {"effective_bits", "kv_bytes_per_token", "ppl", "ppl_delta_pct", "kld_mean", "kld_median",
                        "kld_p99", "top1", "passkey_acc", "lines_acc", "longbench_avg", "tokens_per_s"})
    CHECK(j["rows"][0].contains(k));

  // No reference: deltas stay unmeasured; two references: refused.
  CompareTable none = t;
  for (auto& r : none.rows) r.reference = false;
  fill_deltas(none);
  CHECK(std::isnan(none.rows[1].ppl_delta_pct));
  CompareTable two = t;
  two.rows[1].reference = true;
  CHECK_THROWS_AS(fill_deltas(two), InvalidArgument);
}

TEST_CASE("compare: threshold parsing", "[compare]") {
  CHECK(parse_percent("1%", "--max-ppl-increase") == 1.0);
  CHECK(parse_percent("0.01", "--max-ppl-increase") == Approx(1.0));
  CHECK(parse_percent("0", "--max-ppl-increase") == 0.0);
  CHECK(parse_fraction("0.95", "--min-passkey") == 0.95);
  CHECK(parse_fraction("95%", "--min-passkey") == Approx(0.95));
  for (const char* bad : {"", "%", "abc", "1%%", "-1%", "1.5x", "nan", "inf"}) {
    INFO(bad);
    CHECK_THROWS_AS(parse_percent(bad, "--max-ppl-increase"), InvalidArgument);
  }
  CHECK_THROWS_AS(parse_fraction("1.5", "--min-passkey"), InvalidArgument);
  try {
    parse_percent("x", "--max-ppl-increase");
  } catch (const InvalidArgument& e) {
    CHECK_THAT(e.what(), HasSubstr("--max-ppl-increase"));
  }
}

TEST_CASE("compare: thresholds name the failing metrics", "[compare]") {
  const CompareTable t = sample();
  Thresholds th;
  th.max_ppl_increase_pct = 1.0;
  th.max_kld = 0.01;
  th.min_passkey = 0.95;
  auto f = check_thresholds(t, th);
  // int4 (0.5%, 0.004, 1.0) passes everything; int2 (15%, 0.12, 0.6) fails all three.
  REQUIRE(f.size() == 3);
  for (const auto& x : f) CHECK(x.method == "int2");
  CHECK(f[0].metric == "ppl_increase");
  CHECK(f[1].metric == "kld_mean");
  CHECK(f[2].metric == "passkey");
  CHECK(f[0].message() == "int2: ppl_increase 15.000% > 1%");
  CHECK(f[2].message() == "int2: passkey 0.6 < 0.95");
  // A limit exactly at the value passes (> and < are strict).
  Thresholds at;
  at.max_ppl_increase_pct = 15.0;
  CompareTable exact = t;
  exact.rows[2].ppl_delta_pct = 15.0;
  CHECK(check_thresholds(exact, at).empty());
  // Nothing set: nothing fails. A threshold on a metric not measured fails.
  CHECK(check_thresholds(t, {}).empty());
  Thresholds lines;
  lines.min_lines = 0.5;
  f = check_thresholds(t, lines);
  REQUIRE(f.size() == 2);
  CHECK(f[0].metric == "lines");
  CHECK_THAT(f[0].message(), HasSubstr("not measured"));
}

TEST_CASE("compare: the PPL delta's standard error pairs the rows' windows", "[compare]") {
  CompareTable t;
  CompareRow ref{.method = "fp16", .reference = true, .ppl = std::exp(1.05)};
  ref.window_nll = {1.0, 1.1, 0.9, 1.2};
  CompareRow q{.method = "int4", .ppl = std::exp(1.07)};
  q.window_nll = {1.01, 1.13, 0.92, 1.22};  // d = 0.01, 0.03, 0.02, 0.02
  CompareRow other{.method = "int2", .ppl = std::exp(1.3)};
  other.window_nll = {1.3, 1.3};  // other windows: no pairing
  t.rows = {ref, q, other};
  fill_deltas(t);
  // mean d 0.02, sd sqrt(2e-4 / 3), se = 100 e^0.02 sd / sqrt(4).
  CHECK(t.rows[0].ppl_delta_se_pct == 0.0);
  CHECK(t.rows[1].ppl_delta_se_pct == Approx(100.0 * std::exp(0.02) * std::sqrt(2e-4 / 3) / 2).epsilon(1e-9));
  CHECK(std::isnan(t.rows[2].ppl_delta_se_pct));
  CHECK_THAT(format_compare_text(t), HasSubstr("+- se"));
  const auto j = nlohmann::json::parse(format_compare_json(t));
  CHECK(j["rows"][1]["ppl_delta_se_pct"].get<double>() == Approx(t.rows[1].ppl_delta_se_pct));
  CHECK(j["rows"][1]["window_nll"].size() == 4);
  CHECK(j["rows"][2]["ppl_delta_se_pct"].is_null());
  // Rows without window NLLs (kld, retrieval) print no such column.
  CHECK(format_compare_text(sample()).find("+- se") == std::string::npos);
}
