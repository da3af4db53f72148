// UTF-8 and code point classes for the tokenizers: decoding with the replacement rules the
// reference implementations use, encoding, and the \p{L} / \p{N} / \s classes that the
// byte-level pre-tokenizers split on. The class tables are generated from Python's
// unicodedata by scripts/gen_unicode_tables.py (formats/unicode_tables.cpp names the
// Unicode version); kvq links no regex or ICU library.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>

namespace kvq::unicode {

enum class CharClass : uint8_t { kOther, kLetter, kNumber, kSpace };

// Class of a code point; values past U+10FFFF are kOther.
CharClass char_class(uint32_t cp);
inline bool is_letter(uint32_t cp) { return char_class(cp) == CharClass::kLetter; }
inline bool is_number(uint32_t cp) { return char_class(cp) == CharClass::kNumber; }
inline bool is_space(uint32_t cp) { return char_class(cp) == CharClass::kSpace; }

// The Unicode version the class tables were generated from ("14.0.0").
const char* tables_version();

// Decodes the code point starting at s[pos]. Returns it and sets `len` to the bytes used.
// An invalid or truncated sequence gives U+FFFD and len = the length of its maximal
// subpart (at least 1), the same rule as Rust's String::from_utf8_lossy and Python's
// bytes.decode(errors="replace").
uint32_t decode_utf8(std::string_view s, size_t pos, size_t* len);

// True when s is well-formed UTF-8 (no surrogates, no overlongs, nothing past U+10FFFF).
bool is_valid_utf8(std::string_view s);

// s with every ill-formed subsequence replaced by U+FFFD (see decode_utf8).
std::string to_valid_utf8(std::string_view s);

// Appends the UTF-8 encoding of cp (cp must be a scalar value).
void append_utf8(std::string& out, uint32_t cp);

// Bytes in a UTF-8 sequence that starts with lead byte b (1 for a stray byte).
inline size_t utf8_seq_len(uint8_t b) {
  if (b < 0x80) return 1;
  if ((b & 0xE0) == 0xC0) return 2;
  if ((b & 0xF0) == 0xE0) return 3;
  if ((b & 0xF8) == 0xF0) return 4;
  return 1;
}

namespace detail {
struct CodePointRange {
  uint32_t first;
  uint32_t last;
  CharClass cls;
};
extern const CodePointRange kClassRanges[];
extern const size_t kClassRangeCount;
extern const char* const kUnicodeVersion;
}  // namespace detail

}  // namespace kvq::unicode
