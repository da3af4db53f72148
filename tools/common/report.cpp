// See report.h.
#include "tools/common/report.h"

#include <algorithm>
#include <cctype>
#include <cstdarg>
#include <cstdio>
#include <filesystem>

#include "formats/version.h"

namespace kvq::cli {

std::string strf(const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  va_list ap2;
  va_copy(ap2, ap);
  const int n = std::vsnprintf(nullptr, 0, fmt, ap);
  va_end(ap);
  std::string out(n > 0 ? static_cast<size_t>(n) : 0, '\0');
  if (n > 0) std::vsnprintf(out.data(), out.size() + 1, fmt, ap2);
  va_end(ap2);
  return out;
}

std::string thousands(int64_t v) {
  std::string digits = std::to_string(v < 0 ? -v : v);
  std::string out;
  for (size_t i = 0; i < digits.size(); ++i) {
    if (i > 0 && (digits.size() - i) % 3 == 0) out.push_back(',');
    out.push_back(digits[i]);
  }
  return v < 0 ? "-" + out : out;
}

void print_key_values(const std::vector<std::pair<std::string, std::string>>& rows) {
  size_t w = 0;
  for (const auto& [k, v] : rows) w = std::max(w, k.size());
  for (const auto& [k, v] : rows) std::printf("%-*s  %s\n", static_cast<int>(w), k.c_str(), v.c_str());
}

void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows) {
  std::vector<size_t> w(header.size(), 0);
  for (size_t c = 0; c < header.size(); ++c) w[c] = header[c].size();
  for (const auto& r : rows) {
    for (size_t c = 0; c < r.size() && c < w.size(); ++c) w[c] = std::max(w[c], r[c].size());
  }
  const auto numeric = [](const std::string& s) {
    return !s.empty() && (std::isdigit(static_cast<unsigned char>(s[0])) || s[0] == '-' || s[0] == '+' || s[0] == '.');
  };
  const auto line = [&](const std::vector<std::string>& r, bool is_header) {
    std::string out;
    for (size_t c = 0; c < w.size(); ++c) {
      const std::string cell = c < r.size() ? r[c] : "";
      const size_t pad = w[c] - cell.size();
      if (c > 0) out += "  ";
      if (!is_header && numeric(cell)) {
        out += std::string(pad, ' ') + cell;
      } else {
        out += cell + (c + 1 < w.size() ? std::string(pad, ' ') : "");
      }
    }
    std::printf("%s\n", out.c_str());
  };
  line(header, true);
  std::vector<std::string> rule;
  for (size_t c = 0; c < w.size(); ++c) rule.push_back(std::string(w[c], '-'));
  line(rule, true);
  for (const auto& r : rows) line(r, false);
}

nlohmann::json build_info() {
  return {{"version", kVersion}, {"revision", kGitRevision}, {"cuda", kHaveCuda}};
}

std::string build_info_text() {
  return std::string(kVersion) + " (git " + kGitRevision + ", CUDA " + (kHaveCuda ? "on" : "off") + ")";
}

std::string base_name(const std::string& path) {
  std::filesystem::path p(path);
  while (p.has_parent_path() && p.filename().empty()) p = p.parent_path();
  const std::string name = p.filename().string();
  return name.empty() ? path : name;
}

}  // namespace kvq::cli
