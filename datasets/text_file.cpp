// See text_file.h.
#include "datasets/text_file.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string_view>

#include "formats/error.h"

namespace kvq::datasets {

namespace {

// Bytes taken by the whitespace character starting at s[i], or 0 when it is not one.
// The set is Python's str.isspace(): the Hugging Face readers decide "blank line" with
// line.strip(), so a line holding only U+00A0 is blank there and must be blank here too.
size_t whitespace_len(std::string_view s, size_t i) {
  const auto b = [&](size_t k) { return static_cast<unsigned char>(s[i + k]); };
  const unsigned char c = b(0);
  if ((c >= 0x09 && c <= 0x0d) || (c >= 0x1c && c <= 0x20)) return 1;
  if (c == 0xc2 && i + 1 < s.size() && (b(1) == 0x85 || b(1) == 0xa0)) return 2;
  if (i + 2 >= s.size()) return 0;
  if (c == 0xe1 && b(1) == 0x9a && b(2) == 0x80) return 3;                  // U+1680
  if (c == 0xe2 && b(1) == 0x80 && (b(2) <= 0x8a || b(2) == 0xa8 || b(2) == 0xa9 ||
                                    b(2) == 0xaf)) return 3;                // U+2000..200A, 2028, 2029, 202F
  if (c == 0xe2 && b(1) == 0x81 && b(2) == 0x9f) return 3;                  // U+205F
  if (c == 0xe3 && b(1) == 0x80 && b(2) == 0x80) return 3;                  // U+3000
  return 0;
}

}  // namespace

bool is_blank(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const size_t n = whitespace_len(text, i);
    if (n == 0) return false;
    i += n;
  }
  return true;
}

std::string read_file_bytes(const std::string& path) {
  std::unique_ptr<FILE, int (*)(FILE*)> f(std::fopen(path.c_str(), "rb"), &std::fclose);
  if (!f) {
    throw IoError(path, std::string("cannot open: ") + std::strerror(errno),
                  "check the path, or pass --dataset");
  }
  std::string out;
  char buf[1 << 16];
  size_t n;
  while ((n = std::fread(buf, 1, sizeof buf, f.get())) > 0) out.append(buf, n);
  if (std::ferror(f.get())) {
    throw IoError(path, "read failed at offset " + std::to_string(out.size()) +
                            ": " + std::strerror(errno));
  }
  return out;
}

std::string read_text_file(const std::string& path) {
  std::string text = read_file_bytes(path);
  if (text.empty()) throw FormatError(path, "empty dataset file (0 bytes)");
  if (is_blank(text)) {
    throw FormatError(path, "empty dataset file (only whitespace, " +
                                std::to_string(text.size()) + " bytes)");
  }
  return text;
}

}  // namespace kvq::datasets
