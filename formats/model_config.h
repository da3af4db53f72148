// The architecture of a Llama-family checkpoint, whatever file it came from (HF
// config.json or a llama2.c header). Everything the forward pass, the codecs and the
// profile fingerprint need is explicit here; in particular the RoPE layout, which differs
// between llama2.c (interleaved pairs) and Hugging Face (rotate-half).
#pragma once

#include <cstdint>
#include <optional>
#include <string>

#include "formats/dtype.h"

namespace kvq {

enum class Architecture : uint8_t { kLlama, kMistral, kQwen2 };

// How RoPE pairs channels within a head of size d.
//  kRotateHalf  (Hugging Face): channel i pairs with i + d/2, frequency index i.
//  kInterleaved (llama2.c, Meta's original): channel 2i pairs with 2i+1, frequency index i.
enum class RopeLayout : uint8_t { kRotateHalf, kInterleaved };

enum class RopeScalingType : uint8_t { kNone, kLinear, kLlama3 };

struct RopeConfig {
  double theta = 10000.0;
  RopeLayout layout = RopeLayout::kRotateHalf;
  RopeScalingType scaling = RopeScalingType::kNone;
  double factor = 1.0;                  // linear and llama3
  double low_freq_factor = 1.0;         // llama3
  double high_freq_factor = 4.0;        // llama3
  int64_t original_max_position = 8192; // llama3
};

struct ModelConfig {
  Architecture arch = Architecture::kLlama;
  std::string model_type = "llama";  // as written in the source ("llama", "mistral", "qwen2")
  int n_layers = 0;
  int hidden = 0;        // d_model
  int n_heads = 0;       // query heads
  int n_kv_heads = 0;    // key/value heads (GQA when < n_heads)
  int head_dim = 0;      // hidden / n_heads unless the config says otherwise
  int intermediate = 0;  // SwiGLU inner size
  int vocab = 0;
  int max_position = 0;  // the model's context window
  float rms_norm_eps = 1e-5f;
  RopeConfig rope;
  bool tie_embeddings = false;
  bool qkv_bias = false;   // Qwen2, or Llama with attention_bias
  bool o_bias = false;     // Llama with attention_bias
  bool mlp_bias = false;
  std::optional<int> sliding_window;  // Mistral; attention beyond it is masked
  DType dtype = DType::kF32;          // storage dtype of the weights as published
  int bos_id = -1;                    // -1: none
  int eos_id = -1;

  int q_dim() const { return n_heads * head_dim; }
  int kv_dim() const { return n_kv_heads * head_dim; }
  int group_size() const { return n_heads / n_kv_heads; }
};

std::string_view architecture_name(Architecture a);  // "LlamaForCausalLM", ...
std::string_view rope_layout_name(RopeLayout l);      // "rotate_half", "interleaved"

}  // namespace kvq
