// Hugging Face config.json reader (see hf_config.h).
#include "formats/hf_config.h"

#include <cmath>
#include <filesystem>
#include <optional>
#include <string_view>

#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/json_text.h"
#include "formats/mapped_file.h"

namespace kvq {

using nlohmann::json;

namespace {

constexpr const char* kSupported = "llama, mistral, qwen2";

// Typed access to the fields of one JSON object; errors name the file and the field.
class Fields {
 public:
  Fields(const json& obj, const std::string& path, std::string prefix = {})
      : obj_(obj), path_(path), prefix_(std::move(prefix)) {}

  // nullptr when absent or null.
  const json* get(const char* key) const {
    const auto it = obj_.find(key);
    return (it == obj_.end() || it->is_null()) ? nullptr : &*it;
  }
  bool has(const char* key) const { return get(key) != nullptr; }

  std::optional<int64_t> opt_int(const char* key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number_integer()) fail(key, "must be an integer, got " + v->dump());
    return v->get<int64_t>();
  }
  int req_int(const char* key, int64_t min_value = 1) const {
    const auto v = opt_int(key);
    if (!v) missing(key);
    return checked(key, *v, min_value);
  }
  int checked(const char* key, int64_t v, int64_t min_value) const {
    if (v < min_value || v > INT32_MAX) {
      fail(key, "must be >= " + std::to_string(min_value) + ", got " + std::to_string(v));
    }
    return static_cast<int>(v);
  }
  std::optional<double> opt_num(const char* key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_number()) fail(key, "must be a number, got " + v->dump());
    return v->get<double>();
  }
  double req_positive(const char* key) const {
    const auto v = opt_num(key);
    if (!v) missing(key);
    if (!(*v > 0) || !std::isfinite(*v)) fail(key, "must be positive, got " + get(key)->dump());
    return *v;
  }
  bool opt_bool(const char* key, bool fallback) const {
    const json* v = get(key);
    if (v == nullptr) return fallback;
    if (!v->is_boolean()) fail(key, "must be true or false, got " + v->dump());
    return v->get<bool>();
  }
  std::optional<std::string> opt_string(const char* key) const {
    const json* v = get(key);
    if (v == nullptr) return std::nullopt;
    if (!v->is_string()) fail(key, "must be a string, got " + v->dump());
    return v->get<std::string>();
  }
  // A token id: an integer, null, or a list of integers (the first is taken).
  int token_id(const char* key) const {
    const json* v = get(key);
    if (v == nullptr) return -1;
    const json* first = v;
    if (v->is_array()) {
      if (v->empty()) return -1;
      first = &(*v)[0];
    }
    if (!first->is_number_integer() || first->get<int64_t>() < 0 ||
        first->get<int64_t>() > INT32_MAX) {
      fail(key, "must be a token id or a list of them, got " + v->dump());
    }
    return static_cast<int>(first->get<int64_t>());
  }

  [[noreturn]] void missing(const char* key) const {
    throw FormatError(path_, "required field \"" + prefix_ + key + "\" is missing");
  }
  [[noreturn]] void fail(const char* key, const std::string& what) const {
    throw FormatError(path_, "field \"" + prefix_ + key + "\" " + what);
  }

 private:
  const json& obj_;
  const std::string& path_;
  std::string prefix_;
};

Architecture architecture_for(const Fields& f, const json& root, const std::string& path,
                              std::string* model_type) {
  if (const auto mt = f.opt_string("model_type")) {
    *model_type = *mt;
    if (*mt == "llama") return Architecture::kLlama;
    if (*mt == "mistral") return Architecture::kMistral;
    if (*mt == "qwen2") return Architecture::kQwen2;
    throw UnsupportedError(path, "model_type '" + *mt + "' is not supported (supported: " +
                                     kSupported + ")");
  }
  const auto it = root.find("architectures");
  if (it == root.end() || !it->is_array() || it->empty() || !(*it)[0].is_string()) {
    throw FormatError(path, "required field \"model_type\" is missing (and no \"architectures\")");
  }
  const std::string arch = (*it)[0].get<std::string>();
  for (Architecture a : {Architecture::kLlama, Architecture::kMistral, Architecture::kQwen2}) {
    if (arch == architecture_name(a)) {
      *model_type = a == Architecture::kLlama ? "llama" : a == Architecture::kMistral ? "mistral"
                                                                                      : "qwen2";
      return a;
    }
  }
  throw UnsupportedError(path, "architecture '" + arch + "' is not supported (supported: " +
                                   kSupported + ")");
}

DType dtype_for(const Fields& f, const std::string& path) {
  // transformers 5 writes "dtype"; older versions "torch_dtype".
  const char* key = f.has("dtype") ? "dtype" : "torch_dtype";
  const auto s = f.opt_string(key);
  if (!s) return DType::kF32;  // transformers' default when unset
  std::string_view v = *s;
  if (v.substr(0, 6) == "torch.") v.remove_prefix(6);
  if (v == "float16" || v == "half") return DType::kF16;
  if (v == "bfloat16") return DType::kBF16;
  if (v == "float32" || v == "float") return DType::kF32;
  throw UnsupportedError(path, "\"" + std::string(key) + "\" '" + *s +
                                   "' is not supported (float16, bfloat16, float32)");
}

void rope_for(const Fields& f, const std::string& path, ModelConfig& c) {
  c.rope = RopeConfig{};
  c.rope.layout = RopeLayout::kRotateHalf;

  const json* params = f.get("rope_parameters");
  if (params != nullptr && !params->is_object()) {
    f.fail("rope_parameters", "must be an object, got " + params->dump());
  }
  const json* scaling = f.get("rope_scaling");
  if (scaling != nullptr && !scaling->is_object()) {
    f.fail("rope_scaling", "must be an object or null, got " + scaling->dump());
  }

  // theta: top level (older files) or inside rope_parameters (transformers 5).
  const auto top_theta = f.opt_num("rope_theta");
  std::optional<double> param_theta;
  if (params != nullptr) param_theta = Fields(*params, path, "rope_parameters.").opt_num("rope_theta");
  if (top_theta && param_theta && *top_theta != *param_theta) {
    throw FormatError(path, "\"rope_theta\" (" + std::to_string(*top_theta) +
                                ") and \"rope_parameters.rope_theta\" (" +
                                std::to_string(*param_theta) + ") disagree");
  }
  c.rope.theta = param_theta ? *param_theta : top_theta ? *top_theta : 10000.0;
  if (!(c.rope.theta > 0) || !std::isfinite(c.rope.theta)) {
    throw FormatError(path, "rope_theta must be positive");
  }

  // Scaling: rope_parameters (transformers 5) carries rope_type and its factors itself;
  // older files use a separate rope_scaling object with "type" or "rope_type".
  auto type_of = [&](const json* obj, const std::string& prefix) -> std::string {
    if (obj == nullptr) return "default";
    const Fields sf(*obj, path, prefix);
    if (const auto t = sf.opt_string("rope_type")) return *t;
    if (const auto t = sf.opt_string("type")) return *t;
    return "default";
  };
  const json* s = params != nullptr ? params : scaling;
  const std::string prefix = params != nullptr ? "rope_parameters." : "rope_scaling.";
  if (s == nullptr) return;
  const Fields sf(*s, path, prefix);
  const std::string type = type_of(s, prefix);
  // Both present (a file edited by hand after a transformers 5 save): they must agree,
  // or one of them would be silently ignored.
  if (params != nullptr && scaling != nullptr && type_of(scaling, "rope_scaling.") != type) {
    throw FormatError(path, "\"rope_parameters\" (type '" + type + "') and \"rope_scaling\" (type '" +
                                type_of(scaling, "rope_scaling.") + "') disagree");
  }
  if (type == "default") return;
  if (type == "linear") {
    c.rope.scaling = RopeScalingType::kLinear;
    c.rope.factor = sf.req_positive("factor");
    return;
  }
  if (type == "llama3") {
    c.rope.scaling = RopeScalingType::kLlama3;
    c.rope.factor = sf.req_positive("factor");
    c.rope.low_freq_factor = sf.req_positive("low_freq_factor");
    c.rope.high_freq_factor = sf.req_positive("high_freq_factor");
    c.rope.original_max_position = sf.req_int("original_max_position_embeddings");
    if (c.rope.high_freq_factor <= c.rope.low_freq_factor) {
      throw FormatError(path, "\"" + prefix + "high_freq_factor\" must exceed low_freq_factor");
    }
    return;
  }
  throw UnsupportedError(path, "RoPE scaling type '" + type +
                                   "' is not supported (supported: default, linear, llama3)");
}

}  // namespace

ModelConfig parse_hf_config(const std::string& json_text, const std::string& path) {
  const json root = detail::parse_json_text(path, json_text, "");
  if (!root.is_object()) throw FormatError(path, "config is not a JSON object");
  const Fields f(root, path);

  ModelConfig c;
  c.arch = architecture_for(f, root, path, &c.model_type);

  if (const auto act = f.opt_string("hidden_act"); act && *act != "silu") {
    throw UnsupportedError(path, "hidden_act '" + *act + "' is not supported (SwiGLU needs silu)");
  }
  if (const auto prf = f.opt_num("partial_rotary_factor"); prf && *prf != 1.0) {
    throw UnsupportedError(path, "partial_rotary_factor " + std::to_string(*prf) +
                                     " is not supported (RoPE on all channels only)");
  }

  c.n_layers = f.req_int("num_hidden_layers");
  c.hidden = f.req_int("hidden_size");
  c.n_heads = f.req_int("num_attention_heads");
  c.intermediate = f.req_int("intermediate_size");
  c.vocab = f.req_int("vocab_size");
  c.max_position = f.req_int("max_position_embeddings");
  const auto kv = f.opt_int("num_key_value_heads");
  c.n_kv_heads = kv ? f.checked("num_key_value_heads", *kv, 1) : c.n_heads;
  if (c.n_heads % c.n_kv_heads != 0) {
    throw FormatError(path, "num_attention_heads (" + std::to_string(c.n_heads) +
                                ") is not a multiple of num_key_value_heads (" +
                                std::to_string(c.n_kv_heads) + ")");
  }
  if (const auto hd = f.opt_int("head_dim")) {
    c.head_dim = f.checked("head_dim", *hd, 1);
  } else {
    if (c.hidden % c.n_heads != 0) {
      throw FormatError(path, "hidden_size (" + std::to_string(c.hidden) +
                                  ") is not a multiple of num_attention_heads (" +
                                  std::to_string(c.n_heads) + ") and there is no head_dim");
    }
    c.head_dim = c.hidden / c.n_heads;
  }
  if (c.head_dim % 2 != 0) {
    throw FormatError(path, "head_dim " + std::to_string(c.head_dim) +
                                " is odd; RoPE rotates channel pairs");
  }

  // transformers' defaults: rms_norm_eps 1e-6 for all three classes.
  const auto eps = f.opt_num("rms_norm_eps");
  c.rms_norm_eps = static_cast<float>(eps ? *eps : 1e-6);
  if (!(c.rms_norm_eps > 0)) throw FormatError(path, "field \"rms_norm_eps\" must be positive");

  rope_for(f, path, c);
  c.dtype = dtype_for(f, path);
  c.tie_embeddings = f.opt_bool("tie_word_embeddings", false);

  switch (c.arch) {
    case Architecture::kLlama: {
      const bool ab = f.opt_bool("attention_bias", false);
      c.qkv_bias = ab;
      c.o_bias = ab;
      c.mlp_bias = f.opt_bool("mlp_bias", false);
      break;
    }
    case Architecture::kMistral:
      if (const auto sw = f.opt_int("sliding_window")) {
        c.sliding_window = f.checked("sliding_window", *sw, 1);
      }
      break;
    case Architecture::kQwen2:
      // Qwen2 has q/k/v biases and no o/MLP biases, unconditionally (Qwen2Attention).
      c.qkv_bias = true;
      if (f.opt_bool("use_sliding_window", false)) {
        throw UnsupportedError(path, "use_sliding_window true is not supported for qwen2 "
                                     "(its window applies to some layers only)");
      }
      break;
  }

  c.bos_id = f.token_id("bos_token_id");
  c.eos_id = f.token_id("eos_token_id");
  return c;
}

ModelConfig load_hf_config(const std::string& path) {
  std::string file = path;
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) {
    file = (std::filesystem::path(path) / "config.json").string();
  }
  const MappedFile m(file);
  return parse_hf_config(std::string(reinterpret_cast<const char*>(m.data()), m.size()), file);
}

}  // namespace kvq
