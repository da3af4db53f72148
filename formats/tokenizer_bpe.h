// The BPE model of Hugging Face tokenizer.json (merges ranked by their order in the file),
// and helpers the tokenizer readers share. Internal to formats/: tools and lib/ use
// formats/tokenizer.h.
//
// Merging follows tokenizers' Word::merge_all: the symbols of a word form a linked list,
// candidate merges of adjacent pairs sit in a priority queue keyed by (rank, position),
// and an entry is dropped when popped if its pair no longer merges to the same token. Cost
// O(n log n) per word: a SentencePiece-style tokenizer has no pre-tokenizer, so the whole
// text is one word (WikiText-2 test, 1.3 MB, encodes in well under a second; a rescan per
// merge would be quadratic).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace kvq::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const noexcept { return std::hash<std::string_view>{}(s); }
};
// token string -> id, looked up with string_view keys without copies.
using Vocab = std::unordered_map<std::string, int32_t, StringHash, std::equal_to<>>;

// Whole file as a string; IoError naming the path when it cannot be opened or read.
std::string read_file(const std::string& path);

class BpeModel {
 public:
  // Vocabulary; ids need not be dense.
  Vocab vocab;
  bool byte_fallback = false;  // unknown chars become <0xNN> tokens
  bool fuse_unk = false;       // consecutive unknown chars become one unk
  bool ignore_merges = false;  // a word that is in the vocabulary is one token
  int32_t unk_id = -1;         // -1 = unknown chars are dropped (as tokenizers does)

  // Registers merge number `rank` of (a, b) -> merged. The first registration of a pair
  // wins, as in tokenizers.
  void add_merge(int32_t a, int32_t b, int32_t rank, int32_t merged);
  // Call after vocab is complete: caches the <0xNN> ids.
  void finish();
  // Appends the ids of one pre-tokenized word.
  void encode_word(std::string_view word, std::vector<int32_t>& out) const;
  size_t merge_count() const { return merges_.size(); }

 private:
  struct Merge {
    int32_t rank;
    int32_t merged;
  };
  static uint64_t key(int32_t a, int32_t b) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(a)) << 32) | static_cast<uint32_t>(b);
  }
  void merge_all(std::vector<int32_t>& ids) const;

  std::unordered_map<uint64_t, Merge> merges_;
  std::array<int32_t, 256> byte_ids_{};
};

}  // namespace kvq::tok
