// Parsing JSON text with kvq's error contract, for every reader that takes JSON (config.json,
// tokenizer.json and tokenizer_config.json, safetensors headers, the profile/calibration
// metadata documents): any failure is one FormatError naming the file, the byte offset when
// the parser knows it, and nlohmann's reason without its "[json.exception...]" tag.
// Internal to formats/ (it pulls in nlohmann/json, which the public headers avoid).
#pragma once

#include <cstdint>
#include <exception>
#include <string>
#include <string_view>

#include <nlohmann/json.hpp>

namespace kvq::detail {

// nlohmann's message without its leading "[json.exception.parse_error.101] " tag.
std::string json_error_text(const std::exception& e);

// Parses `text` (which starts at byte `base` of `file`). Errors read
// "<what> is not valid JSON: <reason>" ("not valid JSON: <reason>" when `what` is empty), at
// offset base + the bad byte for syntax errors; a number beyond double range ("1e999") is
// nlohmann's out_of_range.406 rather than a parse_error and has no position (found by the
// fuzzers). base < 0: the text is not at a known place in the file (a metadata string), so
// no offset is given. `cb` is passed to nlohmann (e.g. to see repeated keys).
nlohmann::json parse_json_text(const std::string& file, std::string_view text, const std::string& what,
                               int64_t base = 0, const nlohmann::json::parser_callback_t& cb = nullptr);

}  // namespace kvq::detail
