// Small formatting helpers for the tools' results on stdout: printf-style strings,
// thousands separators, aligned key/value blocks and column tables (text format; JSON is
// written with nlohmann::json directly), and the build's identity for every report.
#pragma once

#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include <nlohmann/json.hpp>

namespace kvq::cli {

std::string strf(const char* fmt, ...) __attribute__((format(printf, 1, 2)));

// 1296370 -> "1,296,370".
std::string thousands(int64_t v);

// Keys left-aligned in one column, values after them.
void print_key_values(const std::vector<std::pair<std::string, std::string>>& rows);

// A table with a header row; numbers are right-aligned (cells that start with a digit,
// sign or dot), text left-aligned; columns separated by two spaces.
void print_table(const std::vector<std::string>& header, const std::vector<std::vector<std::string>>& rows);

// {"version", "revision", "cuda"} of this build.
nlohmann::json build_info();
// "0.1.0 (git abc123, CUDA off)".
std::string build_info_text();

// The last component of a model or dataset path, without a trailing slash.
std::string base_name(const std::string& path);

}  // namespace kvq::cli
