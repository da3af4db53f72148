// Tokenizers of Llama-family checkpoints: text <-> token ids.
//
// Goals: the same ids as the reference implementations for the three files users bring:
//   - Hugging Face tokenizer.json with a BPE model (tokenizer_hf.h), both the
//     SentencePiece-style family (Llama 2, TinyLlama: byte fallback, "▁" for spaces) and the
//     byte-level family (Llama 3, Qwen2, SmolLM: GPT-2 byte map and a regex pre-tokenizer);
//   - SentencePiece tokenizer.model, through libsentencepiece (tokenizer_spm.h);
//   - llama2.c tokenizer .bin (tokenizer_llama2c.h), with llama2.c's own encoder.
// BOS handling follows the checkpoint: tokenizer_config.json beside the file, when present.
// Non-goals: training, sampling/dropout, offsets, padding/truncation, pair inputs, chat
// templates, WordPiece/Unigram tokenizer.json models (they are reported as unsupported).
#pragma once

#include <cstdint>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

namespace kvq {

class Tokenizer {
 public:
  virtual ~Tokenizer();

  // Token ids of `text`. add_bos = true adds the special tokens the tokenizer's own
  // template adds around a single sequence (BOS for Llama 2; nothing for SmolLM, whose
  // tokenizer.json has no post-processor); add_bos = false gives the plain ids.
  virtual std::vector<int32_t> encode(std::string_view text, bool add_bos) const = 0;
  std::vector<int32_t> encode(std::string_view text) const {
    return encode(text, add_bos_by_default());
  }
  // Text of `ids`. Throws InvalidArgument for an id outside [0, vocab_size()).
  virtual std::string decode(std::span<const int32_t> ids) const = 0;
  // The vocabulary entry of one id as stored ("▁Hello", "ĠHello", "<0x0A>"), for printing.
  virtual std::string token_text(int32_t id) const = 0;
  // One past the largest id (added tokens included).
  virtual int vocab_size() const = 0;

  int bos_id() const { return bos_id_; }  // -1 = none
  int eos_id() const { return eos_id_; }  // -1 = none
  // Whether the checkpoint's tokenizer adds BOS (tokenizer_config.json add_bos_token, else
  // the format's default).
  bool add_bos_by_default() const { return add_bos_by_default_; }
  // The file the tokenizer was read from.
  const std::string& path() const { return path_; }
  // "hf-bpe", "sentencepiece" or "llama2c".
  virtual std::string_view kind() const = 0;

 protected:
  explicit Tokenizer(std::string path) : path_(std::move(path)) {}
  void set_special(int bos, int eos, bool add_bos_default) {
    bos_id_ = bos;
    eos_id_ = eos;
    add_bos_by_default_ = add_bos_default;
  }
  void check_ids(std::span<const int32_t> ids) const;

 private:
  std::string path_;
  int bos_id_ = -1;
  int eos_id_ = -1;
  bool add_bos_by_default_ = false;
};

// What tokenizer_config.json (transformers) says about special tokens; every field optional.
struct TokenizerConfig {
  std::string path;  // empty when there was no file
  std::optional<bool> add_bos_token;
  std::optional<bool> add_eos_token;
  std::optional<std::string> bos_token;
  std::optional<std::string> eos_token;
  std::string tokenizer_class;
};

// Reads tokenizer_config.json; FormatError on bad JSON or wrongly typed fields.
TokenizerConfig read_tokenizer_config(const std::string& path);

// Loads a tokenizer from a tokenizer.json, a SentencePiece .model, a llama2.c tokenizer
// .bin, or a model folder (tokenizer.json, else tokenizer.model, else tokenizer.bin).
// tokenizer_config.json in the same folder, when present, sets add_bos / bos / eos.
// Throws IoError (missing/unreadable), FormatError (bad bytes, with the offset where one
// is known) or UnsupportedError (a tokenizer.json feature kvq does not implement).
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

}  // namespace kvq
