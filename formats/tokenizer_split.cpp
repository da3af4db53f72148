// Regex-free pre-tokenizer scanners (see tokenizer_split.h). Each match_* function returns
// the end (in code points) of the match that the regex's leftmost-first alternation finds
// at position i; every position matches one of the alternatives, so the pieces cover the
// text.
#include "formats/tokenizer_split.h"

#include "formats/unicode.h"

namespace kvq::tok {

namespace {

using unicode::CharClass;

constexpr std::string_view kGpt2Regex =
    R"('s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+)";
constexpr std::string_view kLlama3Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";
constexpr std::string_view kQwen2Regex =
    R"((?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+)";

// The text as code points with their classes and byte offsets (offset[n] = text size).
struct CodePoints {
  std::vector<uint32_t> cp;
  std::vector<CharClass> cls;
  std::vector<size_t> offset;
  size_t n = 0;

  explicit CodePoints(std::string_view text) {
    cp.reserve(text.size());
    cls.reserve(text.size());
    offset.reserve(text.size() + 1);
    size_t pos = 0;
    while (pos < text.size()) {
      size_t len;
      const uint32_t c = unicode::decode_utf8(text, pos, &len);
      cp.push_back(c);
      cls.push_back(unicode::char_class(c));
      offset.push_back(pos);
      pos += len;
    }
    offset.push_back(text.size());
    n = cp.size();
  }
  bool is(size_t i, CharClass c) const { return i < n && cls[i] == c; }
  bool other(size_t i) const { return is(i, CharClass::kOther); }
  bool crlf(size_t i) const { return i < n && (cp[i] == '\r' || cp[i] == '\n'); }
  size_t run(size_t i, CharClass c) const {
    while (i < n && cls[i] == c) ++i;
    return i;
  }
};

// Folds the ASCII letters of the contractions to lower case; (?i:) in Oniguruma and in
// Python's regex also matches U+017F LATIN SMALL LETTER LONG S for 's'.
uint32_t fold(uint32_t c) {
  if (c >= 'A' && c <= 'Z') return c + 32;
  if (c == 0x17F) return 's';
  return c;
}

// 's|'t|'re|'ve|'m|'ll|'d at i; returns the end or 0.
size_t match_contraction(const CodePoints& t, size_t i, bool ignore_case) {
  if (t.cp[i] != '\'' || i + 1 >= t.n) return 0;
  const auto f = [&](size_t k) { return ignore_case ? fold(t.cp[k]) : t.cp[k]; };
  const uint32_t a = f(i + 1);
  if (a == 's' || a == 't' || a == 'm' || a == 'd') return i + 2;
  if (i + 2 >= t.n) return 0;
  const uint32_t b = f(i + 2);
  if ((a == 'r' && b == 'e') || (a == 'v' && b == 'e') || (a == 'l' && b == 'l')) return i + 3;
  return 0;
}

// \s+(?!\S)|\s+ at a whitespace position i: the run, less its last character when a
// non-space follows and the run is longer than one.
size_t match_space_tail(const CodePoints& t, size_t i) {
  const size_t j = t.run(i, CharClass::kSpace);
  if (j < t.n && j - 1 > i) return j - 1;
  return j;
}

size_t match_gpt2(const CodePoints& t, size_t i) {
  if (size_t e = match_contraction(t, i, false)) return e;
  // ` ?\p{L}+`, ` ?\p{N}+`, ` ?[^\s\p{L}\p{N}]+`: a char is in exactly one class, so the
  // order of these three alternatives does not matter.
  const size_t s = (t.cp[i] == ' ' && i + 1 < t.n && t.cls[i + 1] != CharClass::kSpace) ? i + 1 : i;
  if (t.cls[s] != CharClass::kSpace) return t.run(s, t.cls[s]);
  return match_space_tail(t, i);
}

size_t match_llama3(const CodePoints& t, size_t i, size_t max_digits) {
  if (size_t e = match_contraction(t, i, true)) return e;
  // [^\r\n\p{L}\p{N}]?\p{L}+
  if (t.is(i + 1, CharClass::kLetter) && !t.crlf(i) && t.cls[i] != CharClass::kLetter &&
      t.cls[i] != CharClass::kNumber) {
    return t.run(i + 1, CharClass::kLetter);
  }
  if (t.cls[i] == CharClass::kLetter) return t.run(i, CharClass::kLetter);
  // \p{N}{1,3} (or \p{N})
  if (t.cls[i] == CharClass::kNumber) {
    size_t j = i;
    while (j < t.n && j - i < max_digits && t.cls[j] == CharClass::kNumber) ++j;
    return j;
  }
  // ` ?[^\s\p{L}\p{N}]+[\r\n]*`
  const size_t s = (t.cp[i] == ' ' && t.other(i + 1)) ? i + 1 : i;
  if (t.other(s)) {
    size_t j = t.run(s, CharClass::kOther);
    while (t.crlf(j)) ++j;
    return j;
  }
  // \s*[\r\n]+ : the whitespace run up to and including its last CR or LF.
  const size_t j = t.run(i, CharClass::kSpace);
  for (size_t k = j; k > i; --k) {
    if (t.crlf(k - 1)) return k;
  }
  return match_space_tail(t, i);
}

void emit(const CodePoints& t, size_t i, size_t j, Ranges& out) {
  out.emplace_back(t.offset[i], t.offset[j]);
}

}  // namespace

std::optional<SplitPattern> recognise_split_pattern(std::string_view regex) {
  if (regex == kGpt2Regex) return SplitPattern::kGpt2;
  if (regex == kLlama3Regex) return SplitPattern::kLlama3;
  if (regex == kQwen2Regex) return SplitPattern::kQwen2;
  return std::nullopt;
}

std::string_view split_pattern_regex(SplitPattern p) {
  switch (p) {
    case SplitPattern::kGpt2: return kGpt2Regex;
    case SplitPattern::kLlama3: return kLlama3Regex;
    case SplitPattern::kQwen2: return kQwen2Regex;
  }
  return {};
}

void split_regex(std::string_view text, SplitPattern p, Ranges& out) {
  const CodePoints t(text);
  size_t i = 0;
  while (i < t.n) {
    size_t j;
    switch (p) {
      case SplitPattern::kGpt2: j = match_gpt2(t, i); break;
      case SplitPattern::kLlama3: j = match_llama3(t, i, 3); break;
      default: j = match_llama3(t, i, 1); break;
    }
    if (j <= i) j = i + 1;  // unreachable: every code point is in some alternative
    emit(t, i, j, out);
    i = j;
  }
}

void split_digits(std::string_view text, bool individual, Ranges& out) {
  const CodePoints t(text);
  size_t i = 0;
  while (i < t.n) {
    size_t j;
    if (t.cls[i] == CharClass::kNumber) {
      j = individual ? i + 1 : t.run(i, CharClass::kNumber);
    } else {
      j = i;
      while (j < t.n && t.cls[j] != CharClass::kNumber) ++j;
    }
    emit(t, i, j, out);
    i = j;
  }
}

namespace {

std::array<int, 256> make_byte_to_cp() {
  std::array<int, 256> map{};
  map.fill(-1);
  for (int b = '!'; b <= '~'; ++b) map[b] = b;
  for (int b = 0xA1; b <= 0xAC; ++b) map[b] = b;
  for (int b = 0xAE; b <= 0xFF; ++b) map[b] = b;
  int next = 256;
  for (int b = 0; b < 256; ++b) {
    if (map[b] < 0) map[b] = next++;
  }
  return map;
}

const std::array<int, 256>& byte_to_cp() {
  static const std::array<int, 256> map = make_byte_to_cp();
  return map;
}

}  // namespace

const std::array<std::string, 256>& byte_to_utf8() {
  static const std::array<std::string, 256> table = [] {
    std::array<std::string, 256> t;
    for (int b = 0; b < 256; ++b) unicode::append_utf8(t[b], static_cast<uint32_t>(byte_to_cp()[b]));
    return t;
  }();
  return table;
}

int unicode_to_byte(uint32_t cp) {
  static const std::array<int, 324> inverse = [] {
    std::array<int, 324> inv{};
    inv.fill(-1);
    for (int b = 0; b < 256; ++b) inv[byte_to_cp()[b]] = b;
    return inv;
  }();
  return cp < inverse.size() ? inverse[cp] : -1;
}

}  // namespace kvq::tok
