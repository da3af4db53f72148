// Hugging Face tokenizer.json (BPE) reader and runner; see tokenizer_hf.h for the supported
// components. Behaviour follows the `tokenizers` package (0.23), which made the reference
// ids in tests/data/tokenizer/.
#include "formats/tokenizer_hf.h"

#include <algorithm>
#include <array>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <unordered_map>

#include "formats/error.h"
#include "formats/json_text.h"
#include "formats/tokenizer_bpe.h"
#include "formats/tokenizer_split.h"
#include "formats/unicode.h"

namespace kvq {

namespace {

using json = nlohmann::json;

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = false;
};

struct NormOp {
  enum Kind { kPrepend, kReplace } kind;
  std::string a, b;
};

struct PreOp {
  enum Kind { kByteLevel, kDigits, kSplit } kind;
  bool add_prefix_space = false;  // ByteLevel
  bool use_regex = false;         // ByteLevel
  bool individual = false;        // Digits
  tok::SplitPattern pattern = tok::SplitPattern::kGpt2;
};

struct DecOp {
  enum Kind { kReplace, kByteFallback, kFuse, kStrip, kByteLevel } kind;
  std::string a, b;  // Replace: pattern, content; Strip: content
  int start = 0, stop = 0;
};

// Added-token matcher: leftmost-longest, as tokenizers' aho-corasick with
// MatchKind::LeftmostLongest. Tokens are bucketed by first byte, longest first.
class AddedMatcher {
 public:
  void add(const AddedToken* t) {
    if (t->content.empty()) return;
    auto& bucket = by_byte_[static_cast<uint8_t>(t->content[0])];
    bucket.push_back(t);
    std::stable_sort(bucket.begin(), bucket.end(), [](const AddedToken* x, const AddedToken* y) {
      return x->content.size() > y->content.size();
    });
    empty_ = false;
  }
  bool empty() const { return empty_; }

  struct Piece {
    size_t begin, end;
    int32_t id;  // -1 = text to tokenize
  };
  // Cuts text into added tokens and the text between them (empty text pieces dropped).
  void cut(std::string_view text, std::vector<Piece>& out) const {
    size_t seg = 0, pos = 0;
    while (pos < text.size()) {
      const AddedToken* hit = nullptr;
      for (const AddedToken* t : by_byte_[static_cast<uint8_t>(text[pos])]) {
        if (text.compare(pos, t->content.size(), t->content) == 0 &&
            (!t->single_word || word_bounded(text, pos, pos + t->content.size()))) {
          hit = t;
          break;
        }
      }
      if (!hit) {
        ++pos;
        continue;
      }
      size_t b = pos, e = pos + hit->content.size();
      if (hit->lstrip) {
        while (b > seg) {
          const size_t p = prev_start(text, b);
          size_t len;
          if (!unicode::is_space(unicode::decode_utf8(text, p, &len))) break;
          b = p;
        }
      }
      if (hit->rstrip) {
        while (e < text.size()) {
          size_t len;
          if (!unicode::is_space(unicode::decode_utf8(text, e, &len))) break;
          e += len;
        }
      }
      if (b > seg) out.push_back({seg, b, -1});
      out.push_back({b, e, hit->id});
      seg = pos = e;
    }
    if (seg < text.size()) out.push_back({seg, text.size(), -1});
  }

 private:
  static size_t prev_start(std::string_view s, size_t pos) {
    size_t p = pos - 1;
    while (p > 0 && (static_cast<uint8_t>(s[p]) & 0xC0) == 0x80 && pos - p < 4) --p;
    return p;
  }
  static bool is_word(uint32_t cp) {
    return cp == '_' || unicode::is_letter(cp) || unicode::is_number(cp);
  }
  static bool word_bounded(std::string_view s, size_t b, size_t e) {
    size_t len;
    if (b > 0 && is_word(unicode::decode_utf8(s, prev_start(s, b), &len))) return false;
    if (e < s.size() && is_word(unicode::decode_utf8(s, e, &len))) return false;
    return true;
  }
  std::array<std::vector<const AddedToken*>, 256> by_byte_;
  bool empty_ = true;
};

std::string replace_all(std::string_view s, std::string_view from, std::string_view to) {
  if (from.empty()) return std::string(s);
  std::string out;
  out.reserve(s.size() + s.size() / 4);
  size_t pos = 0;
  while (true) {
    const size_t hit = s.find(from, pos);
    if (hit == std::string_view::npos) break;
    out.append(s.substr(pos, hit - pos));
    out.append(to);
    pos = hit + from.size();
  }
  out.append(s.substr(pos));
  return out;
}

// A <0xNN> token's byte, or -1.
int byte_token_value(std::string_view t) {
  if (t.size() != 6 || t.substr(0, 3) != "<0x" || t[5] != '>') return -1;
  int v = 0;
  for (size_t i = 3; i < 5; ++i) {
    const char c = t[i];
    int d;
    if (c >= '0' && c <= '9') d = c - '0';
    else if (c >= 'A' && c <= 'F') d = c - 'A' + 10;
    else if (c >= 'a' && c <= 'f') d = c - 'a' + 10;
    else return -1;
    v = v * 16 + d;
  }
  return v;
}

class HfBpeTokenizer final : public Tokenizer {
 public:
  HfBpeTokenizer(const std::string& path, const TokenizerConfig& config) : Tokenizer(path) {
    const std::string text = tok::read_file(path);
    const json j = detail::parse_json_text(path, text, "");
    try {
      if (!j.is_object()) throw FormatError(path, "expected a JSON object at the top level");
      parse_model(j.at("model"));
      if (j.contains("added_tokens") && !j["added_tokens"].is_null()) parse_added(j["added_tokens"]);
      parse_normalizer(j.value("normalizer", json()));
      parse_pre_tokenizer(j.value("pre_tokenizer", json()));
      parse_post_processor(j.value("post_processor", json()));
      if (j.contains("decoder") && !j["decoder"].is_null()) {
        has_decoder_ = true;
        parse_decoder(j["decoder"]);
      }
    } catch (const json::exception& e) {
      throw FormatError(path, std::string("unexpected tokenizer.json structure: ") + e.what());
    }
    apply_config(config);
  }

  std::string_view kind() const override { return "hf-bpe"; }
  int vocab_size() const override { return static_cast<int>(id_to_token_.size()); }

  std::string token_text(int32_t id) const override {
    check_ids(std::span<const int32_t>(&id, 1));
    return id_to_token_[id];
  }

  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override {
    std::vector<int32_t> out;
    out.reserve(text.size() / 3 + 4);
    if (add_bos) out.insert(out.end(), prefix_.begin(), prefix_.end());
    std::vector<AddedMatcher::Piece> pieces;
    raw_added_.cut(text, pieces);
    for (const auto& p : pieces) {
      if (p.id >= 0) {
        out.push_back(p.id);
        continue;
      }
      const std::string norm = normalize(text.substr(p.begin, p.end - p.begin));
      if (normalized_added_.empty()) {
        encode_normalized(norm, out);
        continue;
      }
      std::vector<AddedMatcher::Piece> sub;
      normalized_added_.cut(norm, sub);
      for (const auto& q : sub) {
        if (q.id >= 0) out.push_back(q.id);
        else encode_normalized(std::string_view(norm).substr(q.begin, q.end - q.begin), out);
      }
    }
    if (add_bos) out.insert(out.end(), suffix_.begin(), suffix_.end());
    return out;
  }

  std::string decode(std::span<const int32_t> ids) const override {
    check_ids(ids);
    std::vector<std::string> tokens;
    tokens.reserve(ids.size());
    for (int32_t id : ids) tokens.push_back(id_to_token_[id]);
    if (!has_decoder_) {  // tokenizers joins with spaces when there is no decoder
      std::string out;
      for (size_t i = 0; i < tokens.size(); ++i) {
        if (i) out.push_back(' ');
        out += tokens[i];
      }
      return out;
    }
    for (const DecOp& op : dec_) tokens = run_decoder(op, std::move(tokens));
    std::string out;
    for (const auto& t : tokens) out += t;
    return out;
  }

 private:
  [[noreturn]] void unsupported(const std::string& what) const {
    throw UnsupportedError(path(), what + " is not supported",
                           "kvq reads BPE tokenizer.json files of the Llama 2 and byte-level "
                           "(Llama 3 / Qwen2 / SmolLM) families; formats/tokenizer_hf.h lists "
                           "the components");
  }

  int32_t lookup(const std::string& token) const {
    for (const auto& a : added_) {
      if (a.content == token) return a.id;
    }
    const auto it = bpe_.vocab.find(token);
    return it == bpe_.vocab.end() ? -1 : it->second;
  }

  void set_token(int32_t id, const std::string& s) {
    if (id < 0 || id > (1 << 26)) throw FormatError(path(), "token id " + std::to_string(id) + " out of range");
    if (static_cast<size_t>(id) >= id_to_token_.size()) id_to_token_.resize(id + 1);
    id_to_token_[id] = s;
  }

  void parse_model(const json& m) {
    const std::string type = m.contains("type") ? m.at("type").get<std::string>()
                                                : (m.contains("merges") ? "BPE" : "");
    if (type != "BPE") unsupported("model type '" + type + "'");
    if (m.contains("dropout") && !m["dropout"].is_null() && m["dropout"].get<double>() > 0) {
      unsupported("BPE dropout");
    }
    for (const char* k : {"continuing_subword_prefix", "end_of_word_suffix"}) {
      if (m.contains(k) && !m[k].is_null() && !m[k].get<std::string>().empty()) {
        unsupported(std::string("BPE ") + k);
      }
    }
    bpe_.byte_fallback = m.value("byte_fallback", false);
    bpe_.fuse_unk = m.value("fuse_unk", false);
    bpe_.ignore_merges = m.value("ignore_merges", false);
    const json& vocab = m.at("vocab");
    if (!vocab.is_object()) throw FormatError(path(), "model.vocab is not an object");
    bpe_.vocab.reserve(vocab.size());
    for (auto it = vocab.begin(); it != vocab.end(); ++it) {
      const int32_t id = it.value().get<int32_t>();
      bpe_.vocab.emplace(it.key(), id);
      set_token(id, it.key());
    }
    if (m.contains("unk_token") && !m["unk_token"].is_null()) {
      const auto it = bpe_.vocab.find(m["unk_token"].get<std::string>());
      if (it == bpe_.vocab.end()) throw FormatError(path(), "model.unk_token is not in the vocabulary");
      bpe_.unk_id = it->second;
    }
    const json& merges = m.at("merges");
    int32_t rank = 0;
    std::string a, b;
    for (const json& mg : merges) {
      if (mg.is_string()) {
        const std::string& s = mg.get_ref<const std::string&>();
        const size_t sp = s.find(' ');
        if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos) {
          throw FormatError(path(), "merge " + std::to_string(rank) + " '" + s +
                                        "' is not two tokens separated by one space");
        }
        a = s.substr(0, sp);
        b = s.substr(sp + 1);
      } else if (mg.is_array() && mg.size() == 2) {
        a = mg[0].get<std::string>();
        b = mg[1].get<std::string>();
      } else {
        throw FormatError(path(), "merge " + std::to_string(rank) + " is neither \"a b\" nor [a, b]");
      }
      const auto ia = bpe_.vocab.find(a), ib = bpe_.vocab.find(b), im = bpe_.vocab.find(a + b);
      if (ia == bpe_.vocab.end() || ib == bpe_.vocab.end() || im == bpe_.vocab.end()) {
        throw FormatError(path(), "merge " + std::to_string(rank) + " ('" + a + "', '" + b +
                                      "') uses a token that is not in the vocabulary");
      }
      bpe_.add_merge(ia->second, ib->second, rank, im->second);
      ++rank;
    }
    bpe_.finish();
  }

  void parse_added(const json& list) {
    added_.reserve(list.size());  // pointers into added_ must stay valid
    for (const json& t : list) {
      AddedToken a;
      a.id = t.at("id").get<int32_t>();
      a.content = t.at("content").get<std::string>();
      a.single_word = t.value("single_word", false);
      a.lstrip = t.value("lstrip", false);
      a.rstrip = t.value("rstrip", false);
      a.normalized = t.value("normalized", false);
      set_token(a.id, a.content);
      added_.push_back(std::move(a));
    }
    for (const auto& a : added_) (a.normalized ? normalized_added_ : raw_added_).add(&a);
  }

  void parse_normalizer(const json& n) {
    if (n.is_null()) return;
    const std::string type = n.at("type").get<std::string>();
    if (type == "Sequence") {
      for (const json& c : n.at("normalizers")) parse_normalizer(c);
    } else if (type == "Prepend") {
      norm_.push_back({NormOp::kPrepend, n.at("prepend").get<std::string>(), {}});
    } else if (type == "Replace") {
      const json& p = n.at("pattern");
      if (!p.contains("String")) unsupported("normalizer Replace with a regex pattern");
      norm_.push_back({NormOp::kReplace, p["String"].get<std::string>(), n.at("content").get<std::string>()});
    } else {
      unsupported("normalizer '" + type + "'");
    }
  }

  void parse_pre_tokenizer(const json& p) {
    if (p.is_null()) return;
    const std::string type = p.at("type").get<std::string>();
    if (type == "Sequence") {
      for (const json& c : p.at("pretokenizers")) parse_pre_tokenizer(c);
    } else if (type == "ByteLevel") {
      PreOp op{PreOp::kByteLevel};
      op.add_prefix_space = p.value("add_prefix_space", true);
      op.use_regex = p.value("use_regex", true);
      pre_.push_back(op);
    } else if (type == "Digits") {
      PreOp op{PreOp::kDigits};
      op.individual = p.value("individual_digits", false);
      pre_.push_back(op);
    } else if (type == "Split") {
      const json& pat = p.at("pattern");
      if (!pat.contains("Regex")) unsupported("pre_tokenizer Split with a string pattern");
      const std::string rx = pat["Regex"].get<std::string>();
      const auto known = tok::recognise_split_pattern(rx);
      if (!known) unsupported("pre_tokenizer Split regex '" + rx + "'");
      if (p.value("behavior", std::string("Isolated")) != "Isolated" || p.value("invert", false)) {
        unsupported("pre_tokenizer Split behaviour other than Isolated");
      }
      PreOp op{PreOp::kSplit};
      op.pattern = *known;
      pre_.push_back(op);
    } else {
      unsupported("pre_tokenizer '" + type + "'");
    }
  }

  // Special tokens of one part of a TemplateProcessing template, split around $A.
  void parse_template(const json& p) {
    std::vector<int32_t>* side = &prefix_;
    const json& special = p.at("special_tokens");
    for (const json& item : p.at("single")) {
      if (item.contains("Sequence")) {
        side = &suffix_;
      } else if (item.contains("SpecialToken")) {
        const std::string name = item["SpecialToken"].at("id").get<std::string>();
        if (!special.contains(name)) {
          throw FormatError(path(), "post_processor template uses '" + name + "', which it does not define");
        }
        for (const json& id : special[name].at("ids")) side->push_back(id.get<int32_t>());
      }
    }
    template_bos_ = prefix_.empty() ? -1 : prefix_.front();
    template_eos_ = suffix_.empty() ? -1 : suffix_.back();
  }

  void parse_post_processor(const json& p) {
    if (p.is_null()) return;
    const std::string type = p.at("type").get<std::string>();
    if (type == "Sequence") {
      for (const json& c : p.at("processors")) parse_post_processor(c);
    } else if (type == "TemplateProcessing") {
      parse_template(p);
    } else if (type != "ByteLevel") {  // ByteLevel only trims offsets
      unsupported("post_processor '" + type + "'");
    }
  }

  void parse_decoder(const json& d) {
    const std::string type = d.at("type").get<std::string>();
    if (type == "Sequence") {
      for (const json& c : d.at("decoders")) parse_decoder(c);
    } else if (type == "Replace") {
      const json& p = d.at("pattern");
      if (!p.contains("String")) unsupported("decoder Replace with a regex pattern");
      dec_.push_back({DecOp::kReplace, p["String"].get<std::string>(), d.at("content").get<std::string>()});
    } else if (type == "ByteFallback") {
      dec_.push_back({DecOp::kByteFallback, {}, {}});
    } else if (type == "Fuse") {
      dec_.push_back({DecOp::kFuse, {}, {}});
    } else if (type == "Strip") {
      DecOp op{DecOp::kStrip, {}, {}};
      op.a = d.at("content").get<std::string>();
      op.start = d.value("start", 0);
      op.stop = d.value("stop", 0);
      dec_.push_back(op);
    } else if (type == "ByteLevel") {
      dec_.push_back({DecOp::kByteLevel, {}, {}});
    } else {
      unsupported("decoder '" + type + "'");
    }
  }

  void apply_config(const TokenizerConfig& c) {
    const auto resolve = [&](const std::optional<std::string>& name, const char* field) {
      if (!name) return -1;
      const int32_t id = lookup(*name);
      if (id < 0) {
        throw FormatError(c.path, std::string(field) + " '" + *name + "' is not a token of " + path());
      }
      return id;
    };
    int bos = resolve(c.bos_token, "bos_token");
    int eos = resolve(c.eos_token, "eos_token");
    // transformers' LlamaTokenizerFast rebuilds the template from add_bos/add_eos_token.
    if (c.tokenizer_class == "LlamaTokenizer" || c.tokenizer_class == "LlamaTokenizerFast") {
      prefix_.clear();
      suffix_.clear();
      if (c.add_bos_token.value_or(true) && bos >= 0) prefix_.push_back(bos);
      if (c.add_eos_token.value_or(false) && eos >= 0) suffix_.push_back(eos);
    }
    if (bos < 0) bos = template_bos_;
    if (eos < 0) eos = template_eos_;
    set_special(bos, eos, c.add_bos_token.value_or(!prefix_.empty()));
  }

  std::string normalize(std::string_view s) const {
    std::string out(s);
    for (const NormOp& op : norm_) {
      if (op.kind == NormOp::kPrepend) {
        if (!out.empty()) out.insert(0, op.a);
      } else {
        out = replace_all(out, op.a, op.b);
      }
    }
    return out;
  }

  void encode_normalized(std::string_view text, std::vector<int32_t>& out) const {
    if (text.empty()) return;
    if (pre_.empty()) {  // the SentencePiece-style family: the whole segment is one word
      bpe_.encode_word(text, out);
      return;
    }
    std::vector<std::string> pieces{std::string(text)}, next;
    tok::Ranges ranges;
    for (const PreOp& op : pre_) {
      next.clear();
      for (std::string& piece : pieces) {
        ranges.clear();
        if (op.kind == PreOp::kByteLevel) {
          if (op.add_prefix_space && piece[0] != ' ') piece = " " + piece;
          if (op.use_regex) tok::split_regex(piece, tok::SplitPattern::kGpt2, ranges);
          else ranges.emplace_back(0, piece.size());
          const auto& map = tok::byte_to_utf8();
          for (const auto& [b, e] : ranges) {
            std::string mapped;
            mapped.reserve(2 * (e - b));
            for (size_t i = b; i < e; ++i) mapped += map[static_cast<uint8_t>(piece[i])];
            next.push_back(std::move(mapped));
          }
          continue;
        }
        if (op.kind == PreOp::kDigits) tok::split_digits(piece, op.individual, ranges);
        else tok::split_regex(piece, op.pattern, ranges);
        for (const auto& [b, e] : ranges) next.emplace_back(piece, b, e - b);
      }
      pieces.swap(next);
    }
    for (const std::string& w : pieces) encode_cached(w, out);
  }

  // Pre-tokenized words repeat a lot ("Ġthe"); their ids are cached, as tokenizers does.
  void encode_cached(const std::string& word, std::vector<int32_t>& out) const {
    constexpr size_t kMaxCachedWord = 64, kMaxEntries = 1 << 18;
    if (word.size() > kMaxCachedWord) {
      bpe_.encode_word(word, out);
      return;
    }
    {
      std::lock_guard<std::mutex> lock(cache_mu_);
      const auto it = cache_.find(word);
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
    const size_t start = out.size();
    bpe_.encode_word(word, out);
    std::lock_guard<std::mutex> lock(cache_mu_);
    if (cache_.size() >= kMaxEntries) cache_.clear();
    cache_.emplace(word, std::vector<int32_t>(out.begin() + start, out.end()));
  }

  static std::vector<std::string> run_decoder(const DecOp& op, std::vector<std::string> tokens) {
    switch (op.kind) {
      case DecOp::kReplace:
        for (auto& t : tokens) t = replace_all(t, op.a, op.b);
        return tokens;
      case DecOp::kByteFallback: {
        // A run of <0xNN> tokens becomes its bytes when they are valid UTF-8, else one
        // U+FFFD per byte (tokenizers' ByteFallback).
        std::vector<std::string> out;
        std::string bytes;
        const auto flush = [&] {
          if (bytes.empty()) return;
          if (unicode::is_valid_utf8(bytes)) {
            out.push_back(bytes);
          } else {
            for (size_t i = 0; i < bytes.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
          }
          bytes.clear();
        };
        for (auto& t : tokens) {
          const int v = byte_token_value(t);
          if (v >= 0) {
            bytes.push_back(static_cast<char>(v));
          } else {
            flush();
            out.push_back(std::move(t));
          }
        }
        flush();
        return out;
      }
      case DecOp::kFuse: {
        std::string all;
        for (const auto& t : tokens) all += t;
        return {all};
      }
      case DecOp::kStrip:
        for (auto& t : tokens) {
          for (int i = 0; i < op.start && t.compare(0, op.a.size(), op.a) == 0 && !op.a.empty(); ++i) {
            t.erase(0, op.a.size());
          }
          for (int i = 0; i < op.stop && !op.a.empty() && t.size() >= op.a.size() &&
                          t.compare(t.size() - op.a.size(), op.a.size(), op.a) == 0;
               ++i) {
            t.erase(t.size() - op.a.size());
          }
        }
        return tokens;
      case DecOp::kByteLevel: {
        // Each token's chars map back to bytes; a token with a char outside the map keeps
        // its UTF-8 bytes. The bytes are then read as UTF-8 with replacement.
        std::string bytes;
        for (const auto& t : tokens) {
          std::string mapped;
          bool ok = true;
          size_t pos = 0;
          while (pos < t.size()) {
            size_t len;
            const int b = tok::unicode_to_byte(unicode::decode_utf8(t, pos, &len));
            if (b < 0) {
              ok = false;
              break;
            }
            mapped.push_back(static_cast<char>(b));
            pos += len;
          }
          bytes += ok ? mapped : t;
        }
        return {unicode::to_valid_utf8(bytes)};
      }
    }
    return tokens;
  }

  tok::BpeModel bpe_;
  std::vector<std::string> id_to_token_;
  std::vector<AddedToken> added_;
  AddedMatcher raw_added_, normalized_added_;
  std::vector<NormOp> norm_;
  std::vector<PreOp> pre_;
  std::vector<DecOp> dec_;
  bool has_decoder_ = false;
  std::vector<int32_t> prefix_, suffix_;
  int template_bos_ = -1, template_eos_ = -1;
  mutable std::mutex cache_mu_;
  mutable std::unordered_map<std::string, std::vector<int32_t>, tok::StringHash, std::equal_to<>> cache_;
};

}  // namespace

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& json_path, const TokenizerConfig& config) {
  return std::make_unique<HfBpeTokenizer>(json_path, config);
}

}  // namespace kvq
