// A loaded checkpoint: the architecture (ModelConfig) and the weights as memory-mapped
// TensorViews, every one checked against the config (name, dtype F32/F16/BF16, shape)
// before any backend sees it. Backends convert or upload from the raw views (the CPU
// backend converts to fp32 once; the CUDA backend uploads fp16/bf16 as stored).
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "formats/model_config.h"
#include "formats/tensor.h"

namespace kvq {

// The tensors of one decoder layer; biases are nullptr unless the config has them.
struct LayerWeights {
  const TensorView* attn_norm = nullptr;  // [hidden]
  const TensorView* q = nullptr;          // [n_heads*head_dim, hidden]
  const TensorView* k = nullptr;          // [n_kv_heads*head_dim, hidden]
  const TensorView* v = nullptr;          // [n_kv_heads*head_dim, hidden]
  const TensorView* o = nullptr;          // [hidden, n_heads*head_dim]
  const TensorView* q_bias = nullptr;     // [n_heads*head_dim]      (qkv_bias)
  const TensorView* k_bias = nullptr;     // [n_kv_heads*head_dim]   (qkv_bias)
  const TensorView* v_bias = nullptr;     // [n_kv_heads*head_dim]   (qkv_bias)
  const TensorView* o_bias = nullptr;     // [hidden]                (o_bias)
  const TensorView* mlp_norm = nullptr;   // [hidden]
  const TensorView* gate = nullptr;       // [intermediate, hidden]
  const TensorView* up = nullptr;         // [intermediate, hidden]
  const TensorView* down = nullptr;       // [hidden, intermediate]
  const TensorView* gate_bias = nullptr;  // [intermediate]          (mlp_bias)
  const TensorView* up_bias = nullptr;    // [intermediate]          (mlp_bias)
  const TensorView* down_bias = nullptr;  // [hidden]                (mlp_bias)
};

class Model {
 public:
  // Checks the config (positive sizes, n_heads divisible by n_kv_heads, even head_dim)
  // and every expected tensor of `tensors`; throws FormatError naming the file and the
  // tensor ("model.layers.3.self_attn.k_proj.weight: shape [384,384], expected [128,384]").
  Model(const ModelConfig& config, std::shared_ptr<const TensorSource> tensors);

  const ModelConfig& config() const { return config_; }
  const TensorSource& tensors() const { return *tensors_; }
  const std::string& path() const { return tensors_->path(); }

  const TensorView& embedding() const { return *embedding_; }   // [vocab, hidden]
  const TensorView& final_norm() const { return *final_norm_; } // [hidden]
  const TensorView& lm_head() const { return *lm_head_; }       // [vocab, hidden]; the embedding when tied
  const LayerWeights& layer(int l) const { return layers_.at(static_cast<size_t>(l)); }

  // Parameters counted once (a tied lm_head is not counted twice).
  int64_t parameter_count() const;

 private:
  ModelConfig config_;
  std::shared_ptr<const TensorSource> tensors_;
  const TensorView* embedding_ = nullptr;
  const TensorView* final_norm_ = nullptr;
  const TensorView* lm_head_ = nullptr;
  std::vector<LayerWeights> layers_;
};

// Opens a checkpoint: a Hugging Face folder (config.json + model.safetensors or a sharded
// model.safetensors.index.json) or a llama2.c .bin file. Throws IoError / FormatError /
// UnsupportedError naming the file.
std::shared_ptr<const Model> load_model(const std::string& path);

}  // namespace kvq
