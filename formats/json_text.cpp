// See json_text.h.
#include "formats/json_text.h"

#include "formats/error.h"

namespace kvq::detail {

std::string json_error_text(const std::exception& e) {
  const std::string_view w = e.what();
  const size_t close = w.find("] ");
  return std::string(close == std::string_view::npos ? w : w.substr(close + 2));
}

nlohmann::json parse_json_text(const std::string& file, std::string_view text, const std::string& what,
                               int64_t base, const nlohmann::json::parser_callback_t& cb) {
  const std::string prefix = what.empty() ? "not valid JSON: " : what + " is not valid JSON: ";
  try {
    return nlohmann::json::parse(text.begin(), text.end(), cb);
  } catch (const nlohmann::json::parse_error& e) {
    // e.byte counts the bytes read up to and including the bad one.
    const int64_t at = e.byte > 0 ? static_cast<int64_t>(e.byte) - 1 : 0;
    throw FormatError(file, base < 0 ? -1 : base + at, prefix + json_error_text(e));
  } catch (const nlohmann::json::exception& e) {
    throw FormatError(file, prefix + json_error_text(e));
  }
}

}  // namespace kvq::detail
