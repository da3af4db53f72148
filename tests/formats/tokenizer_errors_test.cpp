// Bad tokenizer inputs: each gives a typed kvq exception naming the file (and the offset
// where one helps), never a crash.
#include <fstream>

#include "formats/error.h"
#include "formats/atomic_file.h"
#include "formats/tokenizer.h"
#include "tests/catch.h"
#include "tests/formats/expect_error.h"
#include "tests/formats/tokenizer_test_util.h"

using namespace kvq;
using kvq_test::HasSubstr;

namespace {

std::string write(const std::string& dir, const std::string& name, const std::string& bytes) {
  const auto p = kvq_test::scratch_dir(dir) / name;
  kvq_test::write_bytes(p, bytes.data(), bytes.size());
  return p.string();
}

}  // namespace

TEST_CASE("truncated llama2.c tokenizer .bin", "[tokenizer][errors]") {
  const auto full = kvq_test::read_bytes(kvq_test::shared_path("models/stories260K/tok512.bin"));
  REQUIRE(full.size() == 6227);
  // Cut inside the last token's text, inside a record header, and inside the file header.
  for (size_t cut : {full.size() - 1, full.size() - 10, size_t{2}}) {
    const std::string p = write("tok_trunc_" + std::to_string(cut), "tok.bin",
                                std::string(full.begin(), full.begin() + cut));
    const auto e = kvq_test::expect_error<FormatError>([&] { load_tokenizer(p); });
    INFO(e.what());
    CHECK_THAT(std::string(e.what()), HasSubstr(p));
    CHECK(e.offset() >= 0);
    CHECK(e.offset() <= static_cast<int64_t>(cut));
  }
  // A length field past max_token_length (garbage, not a tokenizer).
  std::string bad(full.begin(), full.end());
  const int32_t huge = 1000;
  std::memcpy(&bad[8], &huge, 4);
  const auto e = kvq_test::expect_error<FormatError>([&] { load_tokenizer(write("tok_badlen", "tok.bin", bad)); });
  CHECK(e.offset() == 8);
  CHECK_THAT(std::string(e.what()), HasSubstr("max_token_length"));
}

TEST_CASE("tokenizer.json that is not JSON", "[tokenizer][errors]") {
  const std::string p = write("tok_notjson", "tokenizer.json", "{\"model\": {\"type\": \"BPE\", ");
  const auto e = kvq_test::expect_error<FormatError>([&] { load_tokenizer(p); });
  CHECK_THAT(std::string(e.what()), HasSubstr(p));
  CHECK_THAT(std::string(e.what()), HasSubstr("not valid JSON"));
  CHECK(e.offset() > 0);
  // A number beyond double range throws out_of_range, not parse_error, inside nlohmann.
  const std::string big = write("tok_bignum", "tokenizer.json", "{\"model\": 1e999}");
  const auto e_big = kvq_test::expect_error<FormatError>([&] { load_tokenizer(big); });
  CHECK_THAT(std::string(e_big.what()), HasSubstr("not valid JSON"));
  const std::string big_cfg_dir = (kvq_test::scratch_dir("tok_bigcfg")).string();
  write_file_atomic(big_cfg_dir + "/tokenizer_config.json", std::string_view("{\"x\": -1e999}"));
  const auto e_cfg = kvq_test::expect_error<FormatError>(
      [&] { (void)read_tokenizer_config(big_cfg_dir + "/tokenizer_config.json"); });
  CHECK_THAT(std::string(e_cfg.what()), HasSubstr("tokenizer_config.json: not valid JSON"));
}

TEST_CASE("tokenizer.json with an unsupported model or component", "[tokenizer][errors]") {
  const std::string wp = write("tok_wordpiece", "tokenizer.json",
                               R"({"model": {"type": "WordPiece", "vocab": {"a": 0}}})");
  const auto e = kvq_test::expect_error<UnsupportedError>([&] { load_tokenizer(wp); });
  CHECK_THAT(std::string(e.what()), HasSubstr(wp));
  CHECK_THAT(std::string(e.what()), HasSubstr("WordPiece"));
  const std::string rx = write("tok_regex", "tokenizer.json",
                               R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                   "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\w+"},
                                                     "behavior": "Isolated", "invert": false}})");
  const auto e2 = kvq_test::expect_error<UnsupportedError>([&] { load_tokenizer(rx); });
  CHECK_THAT(std::string(e2.what()), HasSubstr("\\w+"));
  const std::string nfc = write("tok_nfc", "tokenizer.json",
                                R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []},
                                    "normalizer": {"type": "NFC"}})");
  kvq_test::expect_error<UnsupportedError>([&] { load_tokenizer(nfc); });
}

TEST_CASE("tokenizer.json with inconsistent contents", "[tokenizer][errors]") {
  const std::string merge = write("tok_badmerge", "tokenizer.json",
                                  R"({"model": {"type": "BPE", "vocab": {"a": 0, "b": 1}, "merges": ["a b"]}})");
  const auto e = kvq_test::expect_error<FormatError>([&] { load_tokenizer(merge); });
  CHECK_THAT(std::string(e.what()), HasSubstr("merge 0"));
  const std::string type = write("tok_badtype", "tokenizer.json",
                                 R"({"model": {"type": "BPE", "vocab": {"a": "zero"}, "merges": []}})");
  kvq_test::expect_error<FormatError>([&] { load_tokenizer(type); });
  const std::string nomodel = write("tok_nomodel", "tokenizer.json", R"({"version": "1.0"})");
  kvq_test::expect_error<FormatError>([&] { load_tokenizer(nomodel); });
  // tokenizer_config.json naming a BOS that the vocabulary lacks.
  const auto dir = kvq_test::scratch_dir("tok_badcfg");
  const std::string json = R"({"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}})";
  const std::string cfg = R"({"bos_token": "<s>", "add_bos_token": true})";
  kvq_test::write_bytes(dir / "tokenizer.json", json.data(), json.size());
  kvq_test::write_bytes(dir / "tokenizer_config.json", cfg.data(), cfg.size());
  const auto e2 = kvq_test::expect_error<FormatError>([&] { load_tokenizer(dir.string()); });
  CHECK_THAT(std::string(e2.what()), HasSubstr("tokenizer_config.json"));
  CHECK_THAT(std::string(e2.what()), HasSubstr("<s>"));
}

TEST_CASE("missing tokenizer files", "[tokenizer][errors]") {
  const auto dir = kvq_test::scratch_dir("tok_missing");
  const std::string p = (dir / "nope" / "tokenizer.json").string();
  const auto e = kvq_test::expect_error<IoError>([&] { load_tokenizer(p); });
  CHECK_THAT(std::string(e.what()), HasSubstr(p));
  const auto e2 = kvq_test::expect_error<IoError>([&] { load_tokenizer(dir.string()); });
  CHECK_THAT(std::string(e2.what()), HasSubstr("no tokenizer.json"));
  const std::string junk = write("tok_junk", "tokenizer.model", "this is not a protobuf");
  const auto e3 = kvq_test::expect_error<FormatError>([&] { load_tokenizer(junk); });
  CHECK_THAT(std::string(e3.what()), HasSubstr(junk));
}
