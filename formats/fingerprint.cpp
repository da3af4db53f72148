// The model fingerprint; see fingerprint.h and docs/profile-format.md.
#include "formats/fingerprint.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>

#include "formats/error.h"
#include "formats/hf_config.h"
#include "formats/llama2c.h"
#include "formats/profile_json.h"
#include "formats/safetensors.h"
#include "formats/sha256.h"

namespace kvq {

namespace fs = std::filesystem;
using detail::json;

namespace {

std::string read_file_bytes(const std::string& path, size_t max_bytes) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path, "cannot open for reading");
  std::string bytes;
  bytes.resize(max_bytes);
  in.read(bytes.data(), static_cast<std::streamsize>(max_bytes));
  bytes.resize(static_cast<size_t>(in.gcount()));
  if (in.bad()) throw IoError(path, "read failed");
  return bytes;
}

std::string read_whole_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw IoError(path, "cannot open for reading");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) throw IoError(path, "read failed");
  return bytes;
}

ModelFingerprint from_hf_folder(const fs::path& folder) {
  const std::string config_path = (folder / "config.json").string();
  const std::string config_bytes = read_whole_file(config_path);
  const ModelConfig config = parse_hf_config(config_bytes, config_path);
  SafetensorsReader weights(folder.string());
  return compute_fingerprint(config, weights, "config.json", config_bytes);
}

std::string format_double(double v) {
  char buf[40];
  std::snprintf(buf, sizeof buf, "%.17g", v);
  return buf;
}

}  // namespace

ModelFingerprint compute_fingerprint(const ModelConfig& config, const TensorSource& weights,
                                     std::string_view config_source,
                                     std::string_view config_bytes) {
  ModelFingerprint fp;
  fp.architecture = std::string(architecture_name(config.arch));
  fp.layers = config.n_layers;
  fp.heads = config.n_heads;
  fp.kv_heads = config.n_kv_heads;
  fp.head_dim = config.head_dim;
  fp.rope_layout = std::string(rope_layout_name(config.rope.layout));
  fp.rope_theta = config.rope.theta;
  fp.config_source = std::string(config_source);
  Sha256 config_hash;
  config_hash.update(config_bytes.data(), config_bytes.size());
  fp.config_sha256 = config_hash.hex_digest();
  Sha256 kv;
  for (int i = 0; i < config.n_layers; ++i) {
    for (const char* proj : {"k_proj", "v_proj"}) {
      const TensorView& t = weights.get("model.layers." + std::to_string(i) + ".self_attn." +
                                        proj + ".weight");
      if (t.nbytes > 0) kv.update(t.data, t.nbytes);
    }
  }
  fp.kv_weights_sha256 = kv.hex_digest();
  return fp;
}

ModelFingerprint compute_fingerprint(const std::string& model_path) {
  std::error_code ec;
  const fs::path p(model_path);
  if (fs::is_directory(p, ec)) {
    if (!fs::exists(p / "config.json", ec)) {
      throw InvalidArgument(model_path, "folder has no config.json",
                            "--model takes a Hugging Face model folder or a llama2.c .bin file");
    }
    return from_hf_folder(p);
  }
  if (!fs::exists(p, ec)) throw IoError(model_path, "no such file or folder");
  if (p.filename() == "config.json") return from_hf_folder(p.parent_path().empty() ? "." : p.parent_path());
  if (p.extension() == ".bin") {
    Llama2cReader reader(model_path);
    const std::string header = read_file_bytes(model_path, 28);
    return compute_fingerprint(reader.config(), reader, "llama2c-header", header);
  }
  throw InvalidArgument(model_path, "not a model: expected a folder with config.json or a llama2.c .bin file",
                        "--model takes a Hugging Face model folder or a llama2.c .bin file");
}

std::optional<std::string> fingerprint_mismatch(const ModelFingerprint& stored,
                                                const ModelFingerprint& model,
                                                std::string_view file_label) {
  const std::string lhs = std::string(file_label) + " has ";
  auto diff = [&](const char* field, const std::string& a,
                  const std::string& b) -> std::optional<std::string> {
    if (a == b) return std::nullopt;
    return std::string(field) + ": " + lhs + a + ", model has " + b;
  };
  auto num = [](int v) { return std::to_string(v); };
  if (auto d = diff("architecture", stored.architecture, model.architecture)) return d;
  if (auto d = diff("layers", num(stored.layers), num(model.layers))) return d;
  if (auto d = diff("heads", num(stored.heads), num(model.heads))) return d;
  if (auto d = diff("kv_heads", num(stored.kv_heads), num(model.kv_heads))) return d;
  if (auto d = diff("head_dim", num(stored.head_dim), num(model.head_dim))) return d;
  if (auto d = diff("rope_layout", stored.rope_layout, model.rope_layout)) return d;
  if (stored.rope_theta != model.rope_theta) {
    return "rope_theta: " + lhs + format_double(stored.rope_theta) + ", model has " +
           format_double(model.rope_theta);
  }
  if (auto d = diff("config_source", stored.config_source, model.config_source)) return d;
  if (auto d = diff("config_sha256", stored.config_sha256, model.config_sha256)) return d;
  if (auto d = diff("kv_weights_sha256", stored.kv_weights_sha256, model.kv_weights_sha256)) return d;
  return std::nullopt;
}

void check_fingerprint(const ModelFingerprint& stored, const ModelFingerprint& model,
                       const std::string& file, std::string_view file_label) {
  if (auto d = fingerprint_mismatch(stored, model, file_label)) {
    throw InvalidArgument(file, std::string(file_label) + " is for another model: " + *d,
                          "make a profile for this model: kvq-calibrate, then kvq-convert");
  }
}

namespace detail {

json fingerprint_json(const ModelFingerprint& fp) {
  json j = json::object();
  j["architecture"] = fp.architecture;
  j["layers"] = fp.layers;
  j["heads"] = fp.heads;
  j["kv_heads"] = fp.kv_heads;
  j["head_dim"] = fp.head_dim;
  j["rope_layout"] = fp.rope_layout;
  j["rope_theta"] = fp.rope_theta;
  j["config_source"] = fp.config_source;
  j["config_sha256"] = fp.config_sha256;
  j["kv_weights_sha256"] = fp.kv_weights_sha256;
  return j;
}

ModelFingerprint fingerprint_from(const JsonObject& o) {
  // Limits well above any Llama-family model, low enough that shapes derived from them
  // (layers x tensors, heads x head_dim) stay small integers.
  constexpr int64_t kMaxLayers = 65536, kMaxHeads = 65536, kMaxHeadDim = 65536;
  ModelFingerprint fp;
  fp.architecture = o.get_enum("architecture", {"LlamaForCausalLM", "MistralForCausalLM",
                                                "Qwen2ForCausalLM"});
  fp.layers = static_cast<int>(o.get_int("layers", 1, kMaxLayers));
  fp.heads = static_cast<int>(o.get_int("heads", 1, kMaxHeads));
  fp.kv_heads = static_cast<int>(o.get_int("kv_heads", 1, fp.heads));
  if (fp.heads % fp.kv_heads != 0) {
    o.fail("kv_heads", "(" + std::to_string(fp.kv_heads) + ") must divide heads (" +
                           std::to_string(fp.heads) + ")");
  }
  fp.head_dim = static_cast<int>(o.get_int("head_dim", 1, kMaxHeadDim));
  fp.rope_layout = o.get_enum("rope_layout", {"rotate_half", "interleaved"});
  fp.rope_theta = o.get_double("rope_theta", 0.0, 1e300);
  fp.config_source = o.get_enum("config_source", {"config.json", "llama2c-header"});
  fp.config_sha256 = o.get_sha256("config_sha256");
  fp.kv_weights_sha256 = o.get_sha256("kv_weights_sha256");
  return fp;
}

}  // namespace detail

std::string fingerprint_to_json(const ModelFingerprint& fp) {
  return detail::fingerprint_json(fp).dump();
}

ModelFingerprint fingerprint_from_json(std::string_view json_text, const std::string& file) {
  const json j = detail::parse_document(file, "fingerprint", std::string(json_text));
  return detail::fingerprint_from(detail::JsonObject(j, file, "fingerprint"));
}

}  // namespace kvq
