// Validation of a checkpoint's tensors against its config (see model.h).
#include "lib/model.h"

#include <string>

#include "formats/error.h"

namespace kvq {
namespace {

std::string shape_string(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) {
    if (i) out += ",";
    out += std::to_string(s[i]);
  }
  return out + "]";
}

class Checker {
 public:
  explicit Checker(const TensorSource& src) : src_(src) {}

  const TensorView* need(const std::string& name, std::vector<int64_t> shape) {
    const TensorView* t = src_.find(name);
    if (t == nullptr)
      throw FormatError(src_.path(), "missing tensor '" + name + "' (expected shape " +
                                         shape_string(shape) + ")");
    const std::string& file = t->file.empty() ? src_.path() : t->file;
    if (t->dtype != DType::kF32 && t->dtype != DType::kF16 && t->dtype != DType::kBF16)
      throw FormatError(file, name + ": dtype " + std::string(dtype_name(t->dtype)) +
                                  ", expected F32, F16 or BF16");
    if (t->shape != shape)
      throw FormatError(file, name + ": shape " + shape_string(t->shape) + ", expected " +
                                  shape_string(shape));
    if (t->data == nullptr || t->nbytes != static_cast<size_t>(t->numel()) * dtype_size(t->dtype))
      throw FormatError(file, name + ": " + std::to_string(t->nbytes) + " bytes, expected " +
                                  std::to_string(t->numel() * dtype_size(t->dtype)));
    return t;
  }

 private:
  const TensorSource& src_;
};

void check_config(const ModelConfig& c, const std::string& path) {
  auto bad = [&](const std::string& what) {
    throw FormatError(path, "model config: " + what);
  };
  if (c.n_layers <= 0) bad("n_layers must be positive");
  if (c.hidden <= 0) bad("hidden size must be positive");
  if (c.n_heads <= 0 || c.n_kv_heads <= 0) bad("head counts must be positive");
  if (c.n_heads % c.n_kv_heads != 0)
    bad(std::to_string(c.n_heads) + " attention heads are not a multiple of " +
        std::to_string(c.n_kv_heads) + " key/value heads");
  if (c.head_dim <= 0 || c.head_dim % 2 != 0)
    bad("head_dim " + std::to_string(c.head_dim) + " must be even and positive");
  if (c.intermediate <= 0) bad("intermediate size must be positive");
  if (c.vocab <= 0) bad("vocab size must be positive");
  if (c.max_position <= 0) bad("max_position must be positive");
  if (!(c.rms_norm_eps > 0.0f)) bad("rms_norm_eps must be positive");
  if (c.sliding_window && *c.sliding_window <= 0) bad("sliding_window must be positive");
}

}  // namespace

Model::Model(const ModelConfig& config, std::shared_ptr<const TensorSource> tensors)
    : config_(config), tensors_(std::move(tensors)) {
  if (!tensors_) throw InvalidArgument("model", "no tensor source");
  const ModelConfig& c = config_;
  check_config(c, tensors_->path());
  Checker ck(*tensors_);
  const int64_t H = c.hidden, Q = c.q_dim(), KV = c.kv_dim(), I = c.intermediate, V = c.vocab;
  embedding_ = ck.need("model.embed_tokens.weight", {V, H});
  final_norm_ = ck.need("model.norm.weight", {H});
  lm_head_ = c.tie_embeddings ? embedding_ : ck.need("lm_head.weight", {V, H});
  layers_.resize(static_cast<size_t>(c.n_layers));
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights& w = layers_[static_cast<size_t>(l)];
    w.attn_norm = ck.need(p + "input_layernorm.weight", {H});
    w.q = ck.need(p + "self_attn.q_proj.weight", {Q, H});
    w.k = ck.need(p + "self_attn.k_proj.weight", {KV, H});
    w.v = ck.need(p + "self_attn.v_proj.weight", {KV, H});
    w.o = ck.need(p + "self_attn.o_proj.weight", {H, Q});
    if (c.qkv_bias) {
      w.q_bias = ck.need(p + "self_attn.q_proj.bias", {Q});
      w.k_bias = ck.need(p + "self_attn.k_proj.bias", {KV});
      w.v_bias = ck.need(p + "self_attn.v_proj.bias", {KV});
    }
    if (c.o_bias) w.o_bias = ck.need(p + "self_attn.o_proj.bias", {H});
    w.mlp_norm = ck.need(p + "post_attention_layernorm.weight", {H});
    w.gate = ck.need(p + "mlp.gate_proj.weight", {I, H});
    w.up = ck.need(p + "mlp.up_proj.weight", {I, H});
    w.down = ck.need(p + "mlp.down_proj.weight", {H, I});
    if (c.mlp_bias) {
      w.gate_bias = ck.need(p + "mlp.gate_proj.bias", {I});
      w.up_bias = ck.need(p + "mlp.up_proj.bias", {I});
      w.down_bias = ck.need(p + "mlp.down_proj.bias", {H});
    }
  }
}

int64_t Model::parameter_count() const {
  int64_t n = embedding_->numel() + final_norm_->numel();
  if (lm_head_ != embedding_) n += lm_head_->numel();
  for (const LayerWeights& w : layers_) {
    for (const TensorView* t : {w.attn_norm, w.q, w.k, w.v, w.o, w.q_bias, w.k_bias, w.v_bias,
                                w.o_bias, w.mlp_norm, w.gate, w.up, w.down, w.gate_bias,
                                w.up_bias, w.down_bias})
      if (t != nullptr) n += t->numel();
  }
  return n;
}

}  // namespace kvq
