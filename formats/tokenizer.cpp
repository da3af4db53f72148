// Tokenizer base class, tokenizer_config.json and the loader that picks the reader.
#include "formats/tokenizer.h"

#include <filesystem>
#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/json_text.h"
#include "formats/tokenizer_bpe.h"
#include "formats/tokenizer_hf.h"
#include "formats/tokenizer_llama2c.h"
#include "formats/tokenizer_spm.h"

namespace kvq {

namespace fs = std::filesystem;

Tokenizer::~Tokenizer() = default;

void Tokenizer::check_ids(std::span<const int32_t> ids) const {
  const int n = vocab_size();
  for (size_t i = 0; i < ids.size(); ++i) {
    if (ids[i] < 0 || ids[i] >= n) {
      throw InvalidArgument(path_, "token id " + std::to_string(ids[i]) + " at position " +
                                       std::to_string(i) + " is outside the vocabulary (0.." +
                                       std::to_string(n - 1) + ")");
    }
  }
}

TokenizerConfig read_tokenizer_config(const std::string& path) {
  using json = nlohmann::json;
  TokenizerConfig c;
  c.path = path;
  const std::string text = tok::read_file(path);
  const json j = detail::parse_json_text(path, text, "");
  if (!j.is_object()) throw FormatError(path, "expected a JSON object");
  const auto flag = [&](const char* key) -> std::optional<bool> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    if (!j[key].is_boolean()) throw FormatError(path, std::string(key) + " is not true/false");
    return j[key].get<bool>();
  };
  // A special token is a string, or (older files) an AddedToken object with "content".
  const auto token = [&](const char* key) -> std::optional<std::string> {
    if (!j.contains(key) || j[key].is_null()) return std::nullopt;
    const json& v = j[key];
    if (v.is_string()) return v.get<std::string>();
    if (v.is_object() && v.contains("content") && v["content"].is_string()) {
      return v["content"].get<std::string>();
    }
    throw FormatError(path, std::string(key) + " is neither a string nor a token object");
  };
  c.add_bos_token = flag("add_bos_token");
  c.add_eos_token = flag("add_eos_token");
  c.bos_token = token("bos_token");
  c.eos_token = token("eos_token");
  if (j.contains("tokenizer_class") && j["tokenizer_class"].is_string()) {
    c.tokenizer_class = j["tokenizer_class"].get<std::string>();
  }
  return c;
}

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  std::error_code ec;
  fs::path file(path);
  if (fs::is_directory(file, ec)) {
    fs::path found;
    for (const char* name : {"tokenizer.json", "tokenizer.model", "tokenizer.bin"}) {
      if (fs::is_regular_file(file / name, ec)) {
        found = file / name;
        break;
      }
    }
    if (found.empty()) {
      throw IoError(path, "no tokenizer.json, tokenizer.model or tokenizer.bin in this folder",
                    "pass the tokenizer file itself with --tokenizer");
    }
    file = found;
  } else if (!fs::exists(file, ec)) {
    throw IoError(path, "no such file or folder");
  }
  TokenizerConfig config;
  const fs::path config_path = file.parent_path() / "tokenizer_config.json";
  if (fs::is_regular_file(config_path, ec)) config = read_tokenizer_config(config_path.string());

  const std::string ext = file.extension().string();
  const std::string p = file.string();
  if (ext == ".json") return load_hf_tokenizer(p, config);
  if (ext == ".model") return load_spm_tokenizer(p, config);
  if (ext == ".bin") return load_llama2c_tokenizer(p, config);
  // Unknown extension: a JSON object starts with '{' (after whitespace).
  const std::string head = tok::read_file(p).substr(0, 64);
  const size_t first = head.find_first_not_of(" \t\r\n");
  if (first != std::string::npos && head[first] == '{') return load_hf_tokenizer(p, config);
  throw UnsupportedError(p, "not a recognised tokenizer file",
                         "expected tokenizer.json, a SentencePiece .model or a llama2.c .bin");
}

}  // namespace kvq
