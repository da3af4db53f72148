// The BPE model of Hugging Face tokenizer.json (merges ranked by their order in the file),
// and helpers the tokenizer readers share. Internal to formats/: tools and lib/ use
// formats/tokenizer.h.
//
// Merging follows tokenizers' Word::merge_all: the symbols of a word form a linked list,
// candidate merges of adjacent pairs sit in a priority queue keyed by (rank, position),
// and an entry is dropped when popped if its pair changed since it was queued
// (merge_best_first, shared with the llama2.c encoder). Cost O(n log n) per word: a SentencePiece-style tokenizer has no pre-tokenizer, so the whole
// text is one word (WikiText-2 test, 1.3 MB, encodes in well under a second; a rescan per
// merge would be quadratic).
#pragma once

#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <queue>
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

// The best-first merge loop both BPE encoders share (HF ranks, llama2.c scores). The
// symbols form a linked list; candidate merges of adjacent pairs sit in a priority queue,
// highest priority first and leftmost on ties; an entry whose pair changed since it was
// queued is dropped when popped. `lookup(left_id, right_id)` returns {priority, merged id}
// or nullopt when the pair does not merge. O(n log n) per word.
struct PairMerge {
  double priority;
  int32_t merged;
};
template <typename Lookup>
void merge_best_first(std::vector<int32_t>& ids, const Lookup& lookup) {
  const int32_t n = static_cast<int32_t>(ids.size());
  if (n < 2) return;
  std::vector<int32_t> prev(n), next(n);
  std::vector<uint8_t> alive(n, 1);
  for (int32_t i = 0; i < n; ++i) {
    prev[i] = i - 1;
    next[i] = i + 1 < n ? i + 1 : -1;
  }
  struct Candidate {
    double priority;
    int32_t pos, left, right, merged;
  };
  const auto worse = [](const Candidate& x, const Candidate& y) {
    return x.priority != y.priority ? x.priority < y.priority : x.pos > y.pos;
  };
  std::vector<Candidate> storage;
  storage.reserve(n);
  std::priority_queue<Candidate, std::vector<Candidate>, decltype(worse)> queue(worse,
                                                                                std::move(storage));
  const auto consider = [&](int32_t left) {
    const int32_t right = next[left];
    if (right < 0) return;
    const std::optional<PairMerge> m = lookup(ids[left], ids[right]);
    if (m) queue.push({m->priority, left, ids[left], ids[right], m->merged});
  };
  for (int32_t i = 0; i + 1 < n; ++i) consider(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    if (!alive[top.pos]) continue;
    const int32_t right = next[top.pos];
    if (right < 0 || ids[top.pos] != top.left || ids[right] != top.right) continue;  // stale
    ids[top.pos] = top.merged;
    alive[right] = 0;
    next[top.pos] = next[right];
    if (next[right] >= 0) prev[next[right]] = top.pos;
    if (prev[top.pos] >= 0) consider(prev[top.pos]);
    consider(top.pos);
  }
  int32_t w = 0;
  for (int32_t i = 0; i < n; ++i) {
    if (alive[i]) ids[w++] = ids[i];
  }
  ids.resize(w);
}

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
