// UTF-8 decoding/encoding and code point class lookup (see unicode.h).
#include "formats/unicode.h"

#include <algorithm>
#include <array>

namespace kvq::unicode {

namespace {

// Classes of U+0000..U+00FF, looked up directly: almost every code point a tokenizer sees
// in English text is here, and a binary search over ~800 ranges per character would be
// the slowest step of the byte-level pre-tokenizers.
std::array<CharClass, 256> make_latin1_table() {
  std::array<CharClass, 256> t{};
  for (uint32_t cp = 0; cp < 256; ++cp) {
    CharClass c = CharClass::kOther;
    const auto* end = detail::kClassRanges + detail::kClassRangeCount;
    const auto* it = std::upper_bound(detail::kClassRanges, end, cp,
                                      [](uint32_t v, const detail::CodePointRange& r) {
                                        return v < r.first;
                                      });
    if (it != detail::kClassRanges) {
      --it;
      if (cp <= it->last) c = it->cls;
    }
    t[cp] = c;
  }
  return t;
}

const std::array<CharClass, 256>& latin1_table() {
  static const std::array<CharClass, 256> table = make_latin1_table();
  return table;
}

}  // namespace

CharClass char_class(uint32_t cp) {
  if (cp < 256) return latin1_table()[cp];
  const auto* begin = detail::kClassRanges;
  const auto* end = begin + detail::kClassRangeCount;
  const auto* it = std::upper_bound(
      begin, end, cp, [](uint32_t v, const detail::CodePointRange& r) { return v < r.first; });
  if (it == begin) return CharClass::kOther;
  --it;
  return cp <= it->last ? it->cls : CharClass::kOther;
}

const char* tables_version() { return detail::kUnicodeVersion; }

uint32_t decode_utf8(std::string_view s, size_t pos, size_t* len) {
  const auto byte = [&](size_t i) { return static_cast<uint8_t>(s[i]); };
  const uint8_t b0 = byte(pos);
  if (b0 < 0x80) {
    *len = 1;
    return b0;
  }
  size_t need;
  uint32_t cp;
  uint8_t lo = 0x80, hi = 0xBF;  // allowed range of the second byte
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    need = 1;
    cp = b0 & 0x1Fu;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    need = 2;
    cp = b0 & 0x0Fu;
    if (b0 == 0xE0) lo = 0xA0;  // no overlongs
    if (b0 == 0xED) hi = 0x9F;  // no surrogates
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    need = 3;
    cp = b0 & 0x07u;
    if (b0 == 0xF0) lo = 0x90;  // no overlongs
    if (b0 == 0xF4) hi = 0x8F;  // nothing past U+10FFFF
  } else {
    *len = 1;
    return 0xFFFD;
  }
  size_t i = 1;
  for (; i <= need; ++i) {
    if (pos + i >= s.size()) break;
    const uint8_t b = byte(pos + i);
    const uint8_t l = i == 1 ? lo : 0x80, h = i == 1 ? hi : 0xBF;
    if (b < l || b > h) break;
    cp = (cp << 6) | (b & 0x3Fu);
  }
  if (i <= need) {  // maximal subpart of an ill-formed sequence: one replacement
    *len = i;
    return 0xFFFD;
  }
  *len = need + 1;
  return cp;
}

bool is_valid_utf8(std::string_view s) {
  size_t pos = 0;
  while (pos < s.size()) {
    if (static_cast<uint8_t>(s[pos]) < 0x80) {
      ++pos;
      continue;
    }
    size_t len;
    const uint32_t cp = decode_utf8(s, pos, &len);
    // U+FFFD itself is 3 bytes long; a replacement for an ill-formed sequence is not.
    if (cp == 0xFFFD && !(len == 3 && s.compare(pos, 3, "\xEF\xBF\xBD") == 0)) return false;
    pos += len;
  }
  return true;
}

std::string to_valid_utf8(std::string_view s) {
  std::string out;
  out.reserve(s.size());
  size_t pos = 0;
  while (pos < s.size()) {
    if (static_cast<uint8_t>(s[pos]) < 0x80) {
      out.push_back(s[pos++]);
      continue;
    }
    size_t len;
    const uint32_t cp = decode_utf8(s, pos, &len);
    append_utf8(out, cp);
    pos += len;
  }
  return out;
}

void append_utf8(std::string& out, uint32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

}  // namespace kvq::unicode
