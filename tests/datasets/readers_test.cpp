// Dataset readers: WikiText rows and join against the numbers of the reference Python
// code (PROVENANCE.md of shared/datasets/wikitext-2-raw), JSON-lines plain and gzip on
// fixtures written here, and every error a user can hit (missing, empty, blank, a row
// without "text", invalid JSON, corrupt and truncated gzip).
#include <string>
#include <vector>

#include <zlib.h>

#include "datasets/jsonl.h"
#include "datasets/protocol.h"
#include "datasets/text_file.h"
#include "datasets/wikitext.h"
#include "formats/error.h"
#include "tests/catch.h"
#include "tests/support/test_support.h"

using namespace kvq;
using namespace kvq::datasets;
using kvq_test::HasSubstr;

namespace {

std::string write_text(const std::string& dir, const std::string& name, const std::string& text) {
  const auto p = kvq_test::scratch_dir(dir) / name;
  kvq_test::write_bytes(p, text.data(), text.size());
  return p.string();
}

std::string write_gzip(const std::string& dir, const std::string& name, const std::string& text) {
  const auto p = (kvq_test::scratch_dir(dir) / name).string();
  gzFile f = gzopen(p.c_str(), "wb9");
  REQUIRE(f != nullptr);
  REQUIRE(gzwrite(f, text.data(), static_cast<unsigned>(text.size())) == static_cast<int>(text.size()));
  REQUIRE(gzclose(f) == Z_OK);
  return p;
}

}  // namespace

TEST_CASE("WikiText-2 test: 4358 rows, joined text of 1,296,370 bytes", "[wikitext]") {
  const std::string path = kvq_test::shared_path("datasets/wikitext-2-raw/wiki.test.raw").string();
  const auto rows = wikitext_rows(path);
  REQUIRE(rows.size() == 4358);
  size_t empty = 0;
  for (const auto& r : rows) empty += r.empty() ? 1 : 0;
  CHECK(empty == 1467);  // every " \n" line of the file
  CHECK(rows[0].empty());
  CHECK(rows[1] == " = Robert Boulter = \n");
  const std::string text = load_wikitext(path);
  CHECK(text.size() == 1296370);
  CHECK(text.substr(0, 23) == "\n\n = Robert Boulter = \n");
  CHECK(text == join_rows(rows));
  CHECK(infer_protocol(path) == Protocol::kWikiText);
}

TEST_CASE("WikiText rows follow Python universal newlines and str.strip()", "[wikitext]") {
  // \r\n and lone \r end lines (and become \n); tabs, NBSP (C2 A0) and U+3000 are blank;
  // the last line keeps no newline it did not have.
  const std::string text = "a\r\n \t\r\n\xc2\xa0\nb\rc \xe3\x80\x80\n\xe3\x80\x80\nlast";
  const auto rows = wikitext_rows_from_text(text);
  REQUIRE(rows.size() == 7);
  CHECK(rows[0] == "a\n");
  CHECK(rows[1].empty());
  CHECK(rows[2].empty());
  CHECK(rows[3] == "b\n");
  CHECK(rows[4] == "c \xe3\x80\x80\n");
  CHECK(rows[5].empty());
  CHECK(rows[6] == "last");
  CHECK(join_rows(rows) == "a\n\n\n\n\n\n\nb\n\n\nc \xe3\x80\x80\n\n\n\n\nlast");
  CHECK(join_rows({}) == "");
  CHECK(join_rows({"x"}, " ") == "x");
}

TEST_CASE("is_wikitext_raw_name and protocol inference", "[protocol]") {
  CHECK(is_wikitext_raw_name("/a/wiki.valid.raw"));
  CHECK(is_wikitext_raw_name("wiki.train.raw"));
  CHECK_FALSE(is_wikitext_raw_name("wiki.raw"));
  CHECK_FALSE(is_wikitext_raw_name("/a/valid.txt"));
  CHECK(infer_protocol("x/c4-validation.00000-of-00008.json.gz") == Protocol::kC4);
  CHECK(infer_protocol("rows.jsonl") == Protocol::kC4);
  CHECK(infer_protocol("valid.txt") == Protocol::kText);
  CHECK(parse_protocol("c4") == Protocol::kC4);
  CHECK_FALSE(parse_protocol("C5").has_value());
  CHECK(protocol_token_limit(Protocol::kC4, 7) == 256 * 7);
  CHECK(protocol_token_limit(Protocol::kWikiText, 7) == -1);
}

TEST_CASE("missing, empty and blank dataset files are typed errors naming the file", "[errors]") {
  const std::string missing = (kvq_test::scratch_dir("missing") / "nope.raw").string();
  CHECK_THROWS_AS(read_text_file(missing), IoError);
  CHECK_THROWS_WITH(wikitext_rows(missing), HasSubstr(missing));
  CHECK_THROWS_AS(read_jsonl_texts(missing), IoError);

  const std::string empty = write_text("empty", "wiki.test.raw", "");
  CHECK_THROWS_AS(wikitext_rows(empty), FormatError);
  CHECK_THROWS_WITH(wikitext_rows(empty), HasSubstr(empty) && HasSubstr("empty"));
  CHECK_THROWS_WITH(read_text_file(empty), HasSubstr("empty"));
  CHECK_THROWS_WITH(read_jsonl_texts(empty), HasSubstr(empty) && HasSubstr("empty"));

  const std::string blank = write_text("blank", "b.txt", " \n\t\n\xc2\xa0\n");
  CHECK_THROWS_WITH(read_text_file(blank), HasSubstr("empty"));
  const std::string blank_jsonl = write_text("blankj", "b.jsonl", "\n  \n");
  CHECK_THROWS_WITH(read_jsonl_texts(blank_jsonl), HasSubstr("empty"));

  // A folder is not a dataset file.
  CHECK_THROWS_AS(read_text_file(kvq_test::scratch_dir("dir").string()), IoError);
}

TEST_CASE("JSON-lines: plain and gzip give the same rows, max_rows stops early", "[jsonl]") {
  // Awkward content: escapes, UTF-8, a CRLF line end, blank lines between rows, a last
  // line with no newline, other fields around "text".
  std::string body;
  std::vector<std::string> expect;
  for (int i = 0; i < 1103; ++i) {
    std::string t = "doc " + std::to_string(i) + (i % 7 == 0 ? " \"quoted\"\\n caf\xc3\xa9" : "");
    expect.push_back(i % 7 == 0 ? "doc " + std::to_string(i) + " \"quoted\"\n caf\xc3\xa9" : t);
    std::string esc = t;
    size_t pos = 0;
    while ((pos = esc.find('"', pos)) != std::string::npos) { esc.insert(pos, "\\"); pos += 2; }
    body += "{\"url\": \"u" + std::to_string(i) + "\", \"text\": \"" + esc + "\", \"n\": " + std::to_string(i) + "}";
    body += (i % 5 == 0) ? "\r\n" : "\n";
    if (i % 11 == 0) body += "\n";
  }
  body.pop_back();  // no final newline

  const std::string plain = write_text("jsonl", "rows.jsonl", body);
  const std::string gz = write_gzip("jsonlgz", "rows.json.gz", body);
  const auto a = read_jsonl_texts(plain);
  const auto b = read_jsonl_texts(gz);
  REQUIRE(a.size() == 1103);
  CHECK(a == expect);
  CHECK(b == expect);
  const auto first = read_jsonl_texts(gz, "text", kC4Documents);
  REQUIRE(first.size() == 1100);
  CHECK(first.back() == expect[1099]);
  CHECK(read_jsonl_texts(plain, "url", 3) == std::vector<std::string>{"u0", "u1", "u2"});

  // The C4 protocol text is the first 1,100 texts joined by one space.
  std::string joined;
  for (size_t i = 0; i < 1100; ++i) {
    if (i > 0) joined += ' ';
    joined += expect[i];
  }
  CHECK(load_protocol_text(gz, Protocol::kC4) == joined);
}

TEST_CASE("JSON-lines: a row without text, invalid JSON, wrong types name file and line", "[jsonl][errors]") {
  const std::string no_text = write_text("notext", "c4.jsonl", "{\"text\": \"a\"}\n\n{\"txt\": \"b\"}\n");
  CHECK_THROWS_AS(read_jsonl_texts(no_text), FormatError);
  // Line 3 (blank lines count as lines), at byte offset 15 of the uncompressed file.
  CHECK_THROWS_WITH(read_jsonl_texts(no_text),
                    HasSubstr(no_text + ": offset 15: line 3") && HasSubstr("no \"text\" field"));
  // Rows past max_rows are not looked at.
  CHECK(read_jsonl_texts(no_text, "text", 1).size() == 1);

  const std::string gz = write_gzip("notextgz", "c4.json.gz", "{\"text\": \"a\"}\n{\"txt\": \"b\"}\n");
  CHECK_THROWS_WITH(read_jsonl_texts(gz), HasSubstr(gz + ": line 2") && HasSubstr("no \"text\" field"));

  const std::string bad = write_text("badjson", "x.jsonl", "{\"text\": \"a\"}\n{\"text\": \"b\"\n");
  CHECK_THROWS_WITH(read_jsonl_texts(bad), HasSubstr("line 2: invalid JSON"));
  const std::string num = write_text("num", "x.jsonl", "{\"text\": 3}\n");
  CHECK_THROWS_WITH(read_jsonl_texts(num), HasSubstr("line 1: field \"text\" is number"));
  const std::string arr = write_text("arr", "x.jsonl", "[1, 2]\n");
  CHECK_THROWS_WITH(read_jsonl_texts(arr), HasSubstr("expected a JSON object"));
}

TEST_CASE("JSON-lines: corrupt and truncated gzip are FormatErrors", "[jsonl][errors]") {
  std::string body;
  for (int i = 0; i < 2000; ++i) body += "{\"text\": \"row " + std::to_string(i * 7919 % 1000) + "\"}\n";
  const std::string gz = write_gzip("gzsrc", "c4.json.gz", body);
  const auto bytes = kvq_test::read_bytes(gz);
  REQUIRE(bytes.size() > 100);

  // Cut in the middle of the deflate stream.
  const auto dir = kvq_test::scratch_dir("gzbad");
  const std::string cut = (dir / "cut.json.gz").string();
  kvq_test::write_bytes(cut, bytes.data(), bytes.size() / 2);
  CHECK_THROWS_AS(read_jsonl_texts(cut), FormatError);
  CHECK_THROWS_WITH(read_jsonl_texts(cut), HasSubstr(cut) && HasSubstr("gzip"));

  // Garbage after a valid gzip header.
  std::vector<uint8_t> corrupt(bytes.begin(), bytes.end());
  for (size_t i = 20; i < 60; ++i) corrupt[i] = static_cast<uint8_t>(0xff ^ i);
  const std::string bad = (dir / "bad.json.gz").string();
  kvq_test::write_bytes(bad, corrupt.data(), corrupt.size());
  CHECK_THROWS_AS(read_jsonl_texts(bad), FormatError);
  CHECK_THROWS_WITH(read_jsonl_texts(bad), HasSubstr(bad) && HasSubstr("gzip"));

  // A wrong CRC in the trailer.
  std::vector<uint8_t> crc(bytes.begin(), bytes.end());
  crc[crc.size() - 8] ^= 0x5a;
  const std::string badcrc = (dir / "crc.json.gz").string();
  kvq_test::write_bytes(badcrc, crc.data(), crc.size());
  CHECK_THROWS_WITH(read_jsonl_texts(badcrc), HasSubstr(badcrc) && HasSubstr("gzip"));
}
