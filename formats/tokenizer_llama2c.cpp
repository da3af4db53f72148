// llama2.c tokenizer .bin reader and llama2.c's encoder/decoder (see tokenizer_llama2c.h).
#include "formats/tokenizer_llama2c.h"

#include <cstring>

#include "formats/error.h"
#include "formats/tokenizer_bpe.h"

namespace kvq {

namespace {

class Llama2cTokenizer final : public Tokenizer {
 public:
  Llama2cTokenizer(const std::string& path, const TokenizerConfig& config, int expected_vocab)
      : Tokenizer(path) {
    const std::string bytes = tok::read_file(path);
    const size_t size = bytes.size();
    const auto i32 = [&](size_t off) {
      int32_t v;
      std::memcpy(&v, bytes.data() + off, 4);
      return v;
    };
    if (size < 4) throw FormatError(path, 0, "file too short for the max_token_length header");
    const int32_t max_len = i32(0);
    if (max_len <= 0 || max_len > (1 << 16)) {
      throw FormatError(path, 0, "max_token_length " + std::to_string(max_len) + " is not in 1..65536",
                        "is this a llama2.c tokenizer .bin?");
    }
    size_t off = 4;
    while (off < size) {
      const std::string id = std::to_string(pieces_.size());
      if (size - off < 8) {
        throw FormatError(path, static_cast<int64_t>(off),
                          "truncated: token " + id + " needs an 8-byte score/length header, " +
                              std::to_string(size - off) + " bytes left");
      }
      float score;
      std::memcpy(&score, bytes.data() + off, 4);
      const int32_t len = i32(off + 4);
      if (len < 0 || len > max_len) {
        throw FormatError(path, static_cast<int64_t>(off + 4),
                          "token " + id + " has length " + std::to_string(len) +
                              ", outside 0..max_token_length (" + std::to_string(max_len) + ")");
      }
      if (size - off - 8 < static_cast<size_t>(len)) {
        throw FormatError(path, static_cast<int64_t>(off + 8),
                          "truncated: token " + id + " has " + std::to_string(len) + " bytes, " +
                              std::to_string(size - off - 8) + " left");
      }
      pieces_.emplace_back(bytes.data() + off + 8, static_cast<size_t>(len));
      scores_.push_back(score);
      off += 8 + static_cast<size_t>(len);
    }
    if (pieces_.empty()) throw FormatError(path, 4, "no tokens after the header");
    if (expected_vocab > 0 && static_cast<int>(pieces_.size()) != expected_vocab) {
      throw FormatError(path, "has " + std::to_string(pieces_.size()) + " tokens, the checkpoint has " +
                                  std::to_string(expected_vocab));
    }
    // llama2.c looks strings up by binary search in a sorted copy; with duplicate strings
    // which one it finds is unspecified. Here the lowest id wins.
    for (size_t i = 0; i < pieces_.size(); ++i) lookup_.try_emplace(pieces_[i], static_cast<int32_t>(i));
    const int n = static_cast<int>(pieces_.size());
    set_special(n > 1 ? 1 : -1, n > 2 ? 2 : -1, config.add_bos_token.value_or(true));
  }

  std::string_view kind() const override { return "llama2c"; }
  int vocab_size() const override { return static_cast<int>(pieces_.size()); }

  std::string token_text(int32_t id) const override {
    check_ids(std::span<const int32_t>(&id, 1));
    return pieces_[id];
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override {
    std::vector<int32_t> ids;
    ids.reserve(text.size() + 2);
    if (add_bos && bos_id() >= 0) ids.push_back(bos_id());
    if (!text.empty()) {
      const int32_t dummy = find(" ");
      if (dummy >= 0) ids.push_back(dummy);
    }
    // One group per code point: a byte and up to three continuation bytes (run.c's loop).
    size_t i = 0;
    while (i < text.size()) {
      size_t j = i + 1;
      while (j < text.size() && (static_cast<uint8_t>(text[j]) & 0xC0) == 0x80 && j - i < 4) ++j;
      const std::string_view group = text.substr(i, j - i);
      const int32_t id = find(group);
      if (id >= 0) {
        ids.push_back(id);
      } else {
        for (char c : group) ids.push_back(static_cast<int32_t>(static_cast<uint8_t>(c)) + 3);
      }
      i = j;
    }
    merge(ids);
    return ids;
  }

  std::string decode(std::span<const int32_t> ids) const override {
    check_ids(ids);
    std::string out;
    int32_t prev = -1;
    for (int32_t id : ids) {
      if (id == bos_id() || id == eos_id()) {
        prev = id;
        continue;
      }
      std::string_view piece = pieces_[id];
      if (prev == bos_id() && !piece.empty() && piece[0] == ' ') piece.remove_prefix(1);
      const int b = byte_value(piece);
      if (b >= 0) out.push_back(static_cast<char>(b));
      else out.append(piece);
      prev = id;
    }
    return out;
  }

 private:
  int32_t find(std::string_view s) const {
    const auto it = lookup_.find(s);
    return it == lookup_.end() ? -1 : it->second;
  }

  // "<0xNN>" -> NN (run.c: sscanf(piece, "<0x%02hhX>")), else -1.
  static int byte_value(std::string_view p) {
    if (p.size() != 6 || p.substr(0, 3) != "<0x" || p[5] != '>') return -1;
    int v = 0;
    for (size_t i = 3; i < 5; ++i) {
      const char c = p[i];
      const int d = (c >= '0' && c <= '9') ? c - '0'
                    : (c >= 'A' && c <= 'F') ? c - 'A' + 10
                    : (c >= 'a' && c <= 'f') ? c - 'a' + 10 : -1;
      if (d < 0) return -1;
      v = v * 16 + d;
    }
    return v;
  }

  // Highest score first, leftmost on ties: the pair llama2.c's scan would pick.
  void merge(std::vector<int32_t>& ids) const {
    std::string buf;
    tok::merge_best_first(ids, [&](int32_t a, int32_t b) -> std::optional<tok::PairMerge> {
      buf.assign(pieces_[a]);
      buf.append(pieces_[b]);
      const int32_t id = find(buf);
      if (id < 0) return std::nullopt;
      return tok::PairMerge{static_cast<double>(scores_[id]), id};
    });
  }

  std::vector<std::string> pieces_;
  std::vector<float> scores_;
  tok::Vocab lookup_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_llama2c_tokenizer(const std::string& bin_path,
                                                  const TokenizerConfig& config, int expected_vocab) {
  return std::make_unique<Llama2cTokenizer>(bin_path, config, expected_vocab);
}

}  // namespace kvq
