// Rank-ordered BPE merging with a priority queue (see tokenizer_bpe.h).
#include "formats/tokenizer_bpe.h"

#include <cerrno>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>

#include "formats/error.h"
#include "formats/unicode.h"

namespace kvq::tok {

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path, std::string("cannot open: ") + std::strerror(errno));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) throw IoError(path, "read failed");
  return std::move(ss).str();
}

void BpeModel::add_merge(int32_t a, int32_t b, int32_t rank, int32_t merged) {
  merges_.try_emplace(key(a, b), Merge{rank, merged});
}

void BpeModel::finish() {
  char name[8];
  for (int b = 0; b < 256; ++b) {
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    const auto it = vocab.find(std::string_view(name));
    byte_ids_[b] = it == vocab.end() ? -1 : it->second;
  }
}

void BpeModel::encode_word(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges) {
    const auto it = vocab.find(word);
    if (it != vocab.end()) {
      out.push_back(it->second);
      return;
    }
  }
  // Initial symbols, one per code point, as tokenizers' BPE::merge_word makes them.
  std::vector<int32_t> ids;
  ids.reserve(word.size());
  int32_t pending_unk = -1;  // a run of unknown chars not yet emitted (fuse_unk)
  size_t pos = 0;
  while (pos < word.size()) {
    const size_t len = unicode::utf8_seq_len(static_cast<uint8_t>(word[pos]));
    const std::string_view ch = word.substr(pos, len);
    pos += len;
    const auto it = vocab.find(ch);
    if (it != vocab.end()) {
      if (pending_unk >= 0) {
        ids.push_back(pending_unk);
        pending_unk = -1;
      }
      ids.push_back(it->second);
      continue;
    }
    if (byte_fallback) {
      bool all = true;
      for (char c : ch) all = all && byte_ids_[static_cast<uint8_t>(c)] >= 0;
      if (all) {
        // tokenizers emits the bytes without flushing a pending unk first; kept as is.
        for (char c : ch) ids.push_back(byte_ids_[static_cast<uint8_t>(c)]);
        continue;
      }
    }
    if (unk_id >= 0) {
      if (pending_unk >= 0 && !fuse_unk) ids.push_back(pending_unk);
      pending_unk = unk_id;
    }
  }
  if (pending_unk >= 0) ids.push_back(pending_unk);
  merge_all(ids);
  out.insert(out.end(), ids.begin(), ids.end());
}

void BpeModel::merge_all(std::vector<int32_t>& ids) const {
  if (merges_.empty()) return;
  // Lowest rank first, then leftmost position (tokenizers' Merge ordering): priority
  // -rank, exact in a double.
  merge_best_first(ids, [this](int32_t a, int32_t b) -> std::optional<PairMerge> {
    const auto it = merges_.find(key(a, b));
    if (it == merges_.end()) return std::nullopt;
    return PairMerge{-static_cast<double>(it->second.rank), it->second.merged};
  });
}

}  // namespace kvq::tok
