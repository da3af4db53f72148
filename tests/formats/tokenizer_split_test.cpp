// The regex-free pre-tokenizer scanners against Python's `regex` module
// (tests/data/tokenizer/split-vectors.json, from gen_split_vectors.py), the Digits
// splitter, the GPT-2 byte map, and the UTF-8 / code point class helpers.
#include "formats/tokenizer_split.h"
#include "formats/unicode.h"
#include "tests/catch.h"
#include "tests/formats/tokenizer_test_util.h"

using namespace kvq;

namespace {

std::vector<std::string> pieces(std::string_view text, tok::SplitPattern p) {
  tok::Ranges r;
  tok::split_regex(text, p, r);
  std::vector<std::string> out;
  for (auto [b, e] : r) out.emplace_back(text.substr(b, e - b));
  return out;
}

}  // namespace

TEST_CASE("split scanners match the regex module on fixed and random strings", "[tokenizer][split]") {
  const auto ref = kvq_test::read_json(kvq_test::tokenizer_data_dir() / "split-vectors.json");
  std::printf("split vectors: %s, seed %llu\n", ref["source"].get<std::string>().c_str(),
              static_cast<unsigned long long>(ref["seed"].get<uint64_t>()));
  int checked = 0;
  for (const auto& [name, pat] : ref["patterns"].items()) {
    const auto p = tok::recognise_split_pattern(pat["regex"].get<std::string>());
    REQUIRE(p.has_value());
    CHECK(tok::split_pattern_regex(*p) == pat["regex"].get<std::string>());
    for (const auto& c : pat["cases"]) {
      const std::string text = c["text"].get<std::string>();
      INFO(name << ": \"" << text << "\"");
      CHECK(pieces(text, *p) == c["pieces"].get<std::vector<std::string>>());
      ++checked;
    }
  }
  CHECK(checked == 3 * 420);
}

TEST_CASE("unknown split regexes are not recognised", "[tokenizer][split]") {
  CHECK_FALSE(tok::recognise_split_pattern(R"(\s+)").has_value());
  CHECK_FALSE(tok::recognise_split_pattern(R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+)").has_value());
}

TEST_CASE("Digits pre-tokenizer", "[tokenizer][split]") {
  const auto run = [](std::string_view t, bool individual) {
    tok::Ranges r;
    tok::split_digits(t, individual, r);
    std::vector<std::string> out;
    for (auto [b, e] : r) out.emplace_back(t.substr(b, e - b));
    return out;
  };
  CHECK(run("ab123c\xC2\xBD", true) == std::vector<std::string>{"ab", "1", "2", "3", "c", "\xC2\xBD"});
  CHECK(run("ab123c4", false) == std::vector<std::string>{"ab", "123", "c", "4"});
  CHECK(run("", true).empty());
}

TEST_CASE("GPT-2 byte map is a bijection onto its 256 code points", "[tokenizer][split]") {
  const auto& map = tok::byte_to_utf8();
  CHECK(map['A'] == "A");
  CHECK(map[' '] == "\xC4\xA0");   // U+0120 'Ġ'
  CHECK(map['\n'] == "\xC4\x8A");  // U+010A 'Ċ'
  for (int b = 0; b < 256; ++b) {
    size_t len;
    const uint32_t cp = unicode::decode_utf8(map[b], 0, &len);
    REQUIRE(len == map[b].size());
    REQUIRE(tok::unicode_to_byte(cp) == b);
  }
  CHECK(tok::unicode_to_byte(0x4E00) == -1);
}

TEST_CASE("UTF-8 decoding replaces maximal ill-formed subparts", "[tokenizer][unicode]") {
  // Expected values are Python's bytes.decode("utf-8", errors="replace").
  const std::string r = "\xEF\xBF\xBD";
  CHECK(unicode::to_valid_utf8("a\xE2\x82" "b") == "a" + r + "b");           // truncated 3-byte: one
  CHECK(unicode::to_valid_utf8("\xF0\x80\x80") == r + r + r);                // F0 80 is not a prefix
  CHECK(unicode::to_valid_utf8("\xED\xA0\x80") == r + r + r);                // surrogate
  CHECK(unicode::to_valid_utf8("\xC0\xAF") == r + r);                        // overlong
  CHECK(unicode::to_valid_utf8("\xF4\x90\x80\x80") == r + r + r + r);        // past U+10FFFF
  CHECK(unicode::to_valid_utf8("\xF0\x9F\x98") == r);                        // truncated 4-byte
  CHECK(unicode::to_valid_utf8("ok \xF0\x9F\x98\x80") == "ok \xF0\x9F\x98\x80");
  CHECK(unicode::is_valid_utf8("caf\xC3\xA9 " + r));
  CHECK_FALSE(unicode::is_valid_utf8("\xFF"));
  std::string s;
  for (uint32_t cp : {0x41u, 0xE9u, 0x65E5u, 0x1F600u}) unicode::append_utf8(s, cp);
  CHECK(s == "A\xC3\xA9\xE6\x97\xA5\xF0\x9F\x98\x80");
}

TEST_CASE("code point classes follow unicodedata", "[tokenizer][unicode]") {
  using unicode::CharClass;
  CHECK(std::string(unicode::tables_version()) == "14.0.0");
  CHECK(unicode::char_class('a') == CharClass::kLetter);
  CHECK(unicode::char_class(0x01C5) == CharClass::kLetter);  // Lt
  CHECK(unicode::char_class(0x65E5) == CharClass::kLetter);  // CJK
  CHECK(unicode::char_class('7') == CharClass::kNumber);
  CHECK(unicode::char_class(0x00BD) == CharClass::kNumber);  // No
  CHECK(unicode::char_class(0x2163) == CharClass::kNumber);  // Nl
  CHECK(unicode::char_class(0x0663) == CharClass::kNumber);  // Arabic-Indic 3
  for (uint32_t cp : {0x09u, 0x0Au, 0x0Du, 0x20u, 0x85u, 0xA0u, 0x1680u, 0x2028u, 0x3000u}) {
    CHECK(unicode::char_class(cp) == CharClass::kSpace);
  }
  CHECK(unicode::char_class(0x1C) == CharClass::kOther);  // Python isspace, not White_Space
  CHECK(unicode::char_class(0x200B) == CharClass::kOther);
  CHECK(unicode::char_class(0x0301) == CharClass::kOther);  // Mn
  CHECK(unicode::char_class(0x10FFFF) == CharClass::kOther);
  CHECK(unicode::char_class(0x110000) == CharClass::kOther);
}
