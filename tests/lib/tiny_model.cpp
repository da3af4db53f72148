// Random in-memory Llama models for tests (see tiny_model.h).
#include "tests/lib/tiny_model.h"

#include <cmath>
#include <cstring>
#include <random>

namespace kvq_test {

void MemoryTensorSource::add(const std::string& name, std::vector<int64_t> shape,
                             const std::vector<float>& values, kvq::DType dtype) {
  Entry e;
  const size_t es = kvq::dtype_size(dtype);
  e.bytes.resize(values.size() * es);
  for (size_t i = 0; i < values.size(); ++i) {
    if (dtype == kvq::DType::kF32) {
      std::memcpy(e.bytes.data() + i * 4, &values[i], 4);
    } else if (dtype == kvq::DType::kF16) {
      const uint16_t h = kvq::float_to_half(values[i]);
      std::memcpy(e.bytes.data() + i * 2, &h, 2);
    } else if (dtype == kvq::DType::kBF16) {
      const uint16_t h = kvq::float_to_bf16(values[i]);
      std::memcpy(e.bytes.data() + i * 2, &h, 2);
    } else {
      std::memset(e.bytes.data() + i * es, 0, es);  // integer dtypes: only the type matters
    }
  }
  e.view.name = name;
  e.view.dtype = dtype;
  e.view.shape = std::move(shape);
  e.view.nbytes = e.bytes.size();
  e.view.file = path_;
  auto& slot = tensors_[name];
  slot = std::move(e);
  slot.view.data = slot.bytes.data();
}

kvq::TensorView* MemoryTensorSource::mutable_view(const std::string& name) {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second.view;
}

const kvq::TensorView* MemoryTensorSource::find(const std::string& name) const {
  auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second.view;
}

std::vector<std::string> MemoryTensorSource::names() const {
  std::vector<std::string> out;
  for (const auto& [k, v] : tensors_) out.push_back(k);
  return out;
}

std::vector<kvq::TensorView> MemoryTensorSource::views() const {
  std::vector<kvq::TensorView> out;
  for (const auto& [k, v] : tensors_) out.push_back(v.view);
  return out;
}

kvq::ModelConfig tiny_config() {
  kvq::ModelConfig c;
  c.n_layers = 2;
  c.hidden = 32;
  c.n_heads = 4;
  c.n_kv_heads = 2;
  c.head_dim = 8;
  c.intermediate = 48;
  c.vocab = 61;
  c.max_position = 512;
  c.rms_norm_eps = 1e-5f;
  c.tie_embeddings = false;
  c.bos_id = 1;
  c.eos_id = 2;
  return c;
}

std::shared_ptr<MemoryTensorSource> random_weights(const kvq::ModelConfig& c, uint64_t seed,
                                                   kvq::DType dtype) {
  auto src = std::make_shared<MemoryTensorSource>("tiny-" + std::to_string(seed));
  std::mt19937_64 rng(seed);
  auto uniform = [&](int64_t n, float a, float center = 0.0f) {
    std::uniform_real_distribution<float> d(-a, a);
    std::vector<float> v(static_cast<size_t>(n));
    for (float& x : v) x = center + d(rng);
    return v;
  };
  auto lin = [&](const std::string& name, int64_t out, int64_t in) {
    src->add(name, {out, in}, uniform(out * in, 1.0f / std::sqrt(static_cast<float>(in))), dtype);
  };
  const int64_t H = c.hidden, Q = c.q_dim(), KV = c.kv_dim(), I = c.intermediate, V = c.vocab;
  src->add("model.embed_tokens.weight", {V, H}, uniform(V * H, 1.0f), dtype);
  src->add("model.norm.weight", {H}, uniform(H, 0.1f, 1.0f), dtype);
  if (!c.tie_embeddings) lin("lm_head.weight", V, H);
  for (int l = 0; l < c.n_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    src->add(p + "input_layernorm.weight", {H}, uniform(H, 0.1f, 1.0f), dtype);
    src->add(p + "post_attention_layernorm.weight", {H}, uniform(H, 0.1f, 1.0f), dtype);
    lin(p + "self_attn.q_proj.weight", Q, H);
    lin(p + "self_attn.k_proj.weight", KV, H);
    lin(p + "self_attn.v_proj.weight", KV, H);
    lin(p + "self_attn.o_proj.weight", H, Q);
    lin(p + "mlp.gate_proj.weight", I, H);
    lin(p + "mlp.up_proj.weight", I, H);
    lin(p + "mlp.down_proj.weight", H, I);
    if (c.qkv_bias) {
      src->add(p + "self_attn.q_proj.bias", {Q}, uniform(Q, 0.1f), dtype);
      src->add(p + "self_attn.k_proj.bias", {KV}, uniform(KV, 0.1f), dtype);
      src->add(p + "self_attn.v_proj.bias", {KV}, uniform(KV, 0.1f), dtype);
    }
    if (c.o_bias) src->add(p + "self_attn.o_proj.bias", {H}, uniform(H, 0.1f), dtype);
    if (c.mlp_bias) {
      src->add(p + "mlp.gate_proj.bias", {I}, uniform(I, 0.1f), dtype);
      src->add(p + "mlp.up_proj.bias", {I}, uniform(I, 0.1f), dtype);
      src->add(p + "mlp.down_proj.bias", {H}, uniform(H, 0.1f), dtype);
    }
  }
  return src;
}

std::shared_ptr<const kvq::Model> tiny_model(const kvq::ModelConfig& cfg, uint64_t seed,
                                             kvq::DType dtype) {
  return std::make_shared<kvq::Model>(cfg, random_weights(cfg, seed, dtype));
}

std::vector<int32_t> random_tokens(int n, int vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> d(0, vocab - 1);
  std::vector<int32_t> v(static_cast<size_t>(n));
  for (int32_t& x : v) x = d(rng);
  return v;
}

}  // namespace kvq_test
