// SentencePiece-backed tokenizer (see tokenizer_spm.h).
#include "formats/tokenizer_spm.h"

#include <sentencepiece_processor.h>

#include "formats/error.h"
#include "formats/tokenizer_bpe.h"

namespace kvq {

namespace {

class SpmTokenizer final : public Tokenizer {
 public:
  SpmTokenizer(const std::string& path, const TokenizerConfig& config) : Tokenizer(path) {
    // Read the bytes ourselves so that a missing file is an IoError and a bad one a
    // FormatError, both naming the path.
    const std::string bytes = tok::read_file(path);
    const auto status = sp_.LoadFromSerializedProto(bytes);
    if (!status.ok()) {
      throw FormatError(path, "not a SentencePiece model: " + status.ToString());
    }
    vocab_ = sp_.GetPieceSize();
    if (vocab_ <= 0) throw FormatError(path, "SentencePiece model has no pieces");
    const auto resolve = [&](const std::optional<std::string>& name, int fallback, const char* field) {
      if (!name) return fallback;
      const int id = sp_.PieceToId(*name);
      // PieceToId gives unk for an unknown piece; accept unk only when it was asked for.
      if (id == sp_.unk_id() && sp_.IdToPiece(id) != *name) {
        throw FormatError(config.path, std::string(field) + " '" + *name + "' is not a piece of " + path);
      }
      return id;
    };
    const int bos = resolve(config.bos_token, sp_.bos_id(), "bos_token");
    const int eos = resolve(config.eos_token, sp_.eos_id(), "eos_token");
    set_special(bos, eos, config.add_bos_token.value_or(bos >= 0));
  }

  std::string_view kind() const override { return "sentencepiece"; }
  int vocab_size() const override { return vocab_; }

  std::vector<int32_t> encode(std::string_view text, bool add_bos) const override {
    std::vector<int> ids;
    const auto status = sp_.Encode(std::string(text), &ids);
    if (!status.ok()) throw InvalidArgument(path(), "SentencePiece encode failed: " + status.ToString());
    std::vector<int32_t> out;
    out.reserve(ids.size() + 1);
    if (add_bos && bos_id() >= 0) out.push_back(bos_id());
    out.insert(out.end(), ids.begin(), ids.end());
    return out;
  }

  std::string decode(std::span<const int32_t> ids) const override {
    check_ids(ids);
    return sp_.DecodeIds(std::vector<int>(ids.begin(), ids.end()));
  }

  std::string token_text(int32_t id) const override {
    check_ids(std::span<const int32_t>(&id, 1));
    return sp_.IdToPiece(id);
  }

 private:
  sentencepiece::SentencePieceProcessor sp_;
  int vocab_ = 0;
};

}  // namespace

std::unique_ptr<Tokenizer> load_spm_tokenizer(const std::string& model_path,
                                              const TokenizerConfig& config) {
  return std::make_unique<SpmTokenizer>(model_path, config);
}

}  // namespace kvq
