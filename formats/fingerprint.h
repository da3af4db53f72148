// The model fingerprint stored in profiles and calibration files: what a KV quantizer was
// fitted to. Computed from a checkpoint (Hugging Face folder or llama2.c file) and
// compared field by field, so that kvq refuses a profile made for another model with one
// line naming the first field that differs and both values. docs/profile-format.md,
// "The fingerprint", defines every field and the exact bytes hashed.
#pragma once

#include <optional>
#include <string>
#include <string_view>

#include "formats/model_config.h"
#include "formats/tensor.h"

namespace kvq {

struct ModelFingerprint {
  std::string architecture;  // "LlamaForCausalLM"
  int layers = 0;
  int heads = 0;
  int kv_heads = 0;
  int head_dim = 0;
  std::string rope_layout;   // "rotate_half" | "interleaved"
  double rope_theta = 0.0;
  std::string config_source; // "config.json" | "llama2c-header"
  std::string config_sha256;
  std::string kv_weights_sha256;

  int kv_dim() const { return kv_heads * head_dim; }
  int q_dim() const { return heads * head_dim; }
  bool operator==(const ModelFingerprint&) const = default;
};

// From a model path: a folder with config.json and safetensors weights (single or
// sharded), a config.json inside such a folder, or a llama2.c .bin file. Throws IoError /
// FormatError from the readers, InvalidArgument when the path is none of these.
ModelFingerprint compute_fingerprint(const std::string& model_path);

// From parts already loaded: `config_bytes` are config.json's bytes (or the llama2.c
// header's 28 bytes) and `config_source` says which.
ModelFingerprint compute_fingerprint(const ModelConfig& config, const TensorSource& weights,
                                     std::string_view config_source,
                                     std::string_view config_bytes);

// The first differing field in the order of docs/profile-format.md, as
// "kv_heads: profile has 8, model has 32"; nullopt when they match. `file_label` names
// the stored side ("profile", "calibration").
std::optional<std::string> fingerprint_mismatch(const ModelFingerprint& stored,
                                                const ModelFingerprint& model,
                                                std::string_view file_label = "profile");

// Throws InvalidArgument(`file`, "profile is for another model: <mismatch>") with a hint.
void check_fingerprint(const ModelFingerprint& stored, const ModelFingerprint& model,
                       const std::string& file, std::string_view file_label = "profile");

// JSON object text with sorted keys (the form stored in documents) and its inverse; the
// parser throws FormatError naming `file` for a missing or mistyped field.
std::string fingerprint_to_json(const ModelFingerprint& fp);
ModelFingerprint fingerprint_from_json(std::string_view json_text, const std::string& file);

}  // namespace kvq
