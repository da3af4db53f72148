// Pre-tokenizer splitters of the byte-level BPE family, written as scanners over code
// points instead of regular expressions (the GPU machine has no PCRE2, and std::regex has
// no \p{L}). Each known regex is recognised by its exact string; each scanner reproduces
// that regex's leftmost-first alternation, including the backtracking of `\s+(?!\S)` and
// `\s*[\r\n]+`. They are checked against Python's `regex` module on random strings
// (tests/data/tokenizer/split-vectors.json).
// Also: the Digits pre-tokenizer and the GPT-2 byte <-> unicode map of ByteLevel.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace kvq::tok {

enum class SplitPattern {
  kGpt2,    // 's|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+
  kLlama3,  // (?i:'s|...|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|...
  kQwen2,   // as kLlama3 with \p{N} instead of \p{N}{1,3}
};

// The pattern whose regex source is exactly `regex`, or nullopt.
std::optional<SplitPattern> recognise_split_pattern(std::string_view regex);
// The regex source of a pattern.
std::string_view split_pattern_regex(SplitPattern p);

// Byte ranges [begin, end) of text's pieces, in order and covering text, as the regex's
// matches with "Isolated" behaviour would give them. Appends to `out`.
using Ranges = std::vector<std::pair<size_t, size_t>>;
void split_regex(std::string_view text, SplitPattern p, Ranges& out);

// Digits pre-tokenizer: every \p{N} code point its own piece (individual) or runs of them
// (contiguous); other text stays as pieces between them. Appends to `out`.
void split_digits(std::string_view text, bool individual, Ranges& out);

// GPT-2's byte -> code point map: printable Latin-1 bytes map to themselves, the other 68
// to U+0100.. in byte order. byte_to_utf8()[b] is the UTF-8 encoding of the mapped char.
const std::array<std::string, 256>& byte_to_utf8();
// Inverse: code point -> byte, -1 for a code point outside the map.
int unicode_to_byte(uint32_t cp);

}  // namespace kvq::tok
