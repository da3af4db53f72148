// Shared helpers of the tokenizer tests: the reference vectors in tests/data/tokenizer and
// the standard joined WikiText-2 test text.
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "tests/support/test_support.h"

namespace kvq_test {

// tests/data/tokenizer. source_dir() needs KVQ_SOURCE_DIR (ctest sets it); when the test
// binary is run by hand without it, fall back to this header's own path.
inline std::filesystem::path tokenizer_data_dir() {
  const auto p = source_dir() / "tests/data/tokenizer";
  if (std::filesystem::is_directory(p)) return p;
  return std::filesystem::path(__FILE__).parent_path().parent_path() / "data/tokenizer";
}

inline nlohmann::json read_json(const std::filesystem::path& p) {
  const auto bytes = read_bytes(p);
  return nlohmann::json::parse(bytes.begin(), bytes.end());
}

inline std::string read_text(const std::filesystem::path& p) {
  const auto bytes = read_bytes(p);
  return std::string(bytes.begin(), bytes.end());
}

// The standard WikiText-2 test text: the rows of wiki.test.raw with their line ends (as
// Hugging Face `datasets` gives them), a whitespace-only row becomes "", rows joined with
// "\n\n". (datasets/ has the real reader; this copy keeps the formats tests self-contained.)
inline std::string wikitext2_test_joined() {
  const std::string raw = read_text(shared_path("datasets/wikitext-2-raw/wiki.test.raw"));
  std::string out;
  size_t pos = 0;
  bool first = true;
  while (pos < raw.size()) {
    size_t end = raw.find('\n', pos);
    end = end == std::string::npos ? raw.size() : end + 1;
    std::string row = raw.substr(pos, end - pos);
    pos = end;
    if (row.find_first_not_of(" \t\r\n\f\v") == std::string::npos) row.clear();
    if (!first) out += "\n\n";
    out += row;
    first = false;
  }
  return out;
}

}  // namespace kvq_test
