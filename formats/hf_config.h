// Hugging Face config.json -> kvq::ModelConfig for the Llama family kvq supports:
// LlamaForCausalLM ("llama"), MistralForCausalLM ("mistral"), Qwen2ForCausalLM ("qwen2").
//
// Goals: read both the older layout (rope_theta / rope_scaling at the top level,
// torch_dtype) and the transformers 5 one (rope_parameters {rope_theta, rope_type, ...},
// dtype), as in ../shared/models/kvq-testbed-llama2-23m/config.json. Reject what would
// silently change the maths: an unknown model_type, an unknown RoPE scaling type, Qwen2's
// per-layer sliding window. Missing required fields are a FormatError naming the field;
// defaults otherwise follow transformers' LlamaConfig/MistralConfig/Qwen2Config.
// Non-goals: generation settings (generation_config.json), quantization_config.
#pragma once

#include <string>

#include "formats/model_config.h"

namespace kvq {

// `path` is a config.json or a folder containing one. Throws IoError when it cannot be
// read, FormatError for bad JSON / missing or mistyped fields, UnsupportedError for
// architectures and RoPE variants kvq does not implement.
ModelConfig load_hf_config(const std::string& path);

// Parses config.json text; `path` names it in errors.
ModelConfig parse_hf_config(const std::string& json_text, const std::string& path);

}  // namespace kvq
