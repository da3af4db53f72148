#include "formats/model_config.h"

namespace kvq {

std::string_view architecture_name(Architecture a) {
  switch (a) {
    case Architecture::kLlama: return "LlamaForCausalLM";
    case Architecture::kMistral: return "MistralForCausalLM";
    case Architecture::kQwen2: return "Qwen2ForCausalLM";
  }
  return "?";
}

std::string_view rope_layout_name(RopeLayout l) {
  return l == RopeLayout::kRotateHalf ? "rotate_half" : "interleaved";
}

}  // namespace kvq
