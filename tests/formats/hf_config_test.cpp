// HF config.json -> ModelConfig: the real testbed config (transformers 5 layout), the
// hand-written Mistral / Qwen2 / Llama 3 configs in tests/data/formats, and variants built
// here from a base config (linear scaling, head_dim, biases, token id lists, every error).
#include <filesystem>

#include <nlohmann/json.hpp>

#include "formats/error.h"
#include "formats/hf_config.h"
#include "tests/catch.h"
#include "tests/formats/expect_error.h"
#include "tests/support/test_support.h"

using namespace kvq;
using kvq_test::Approx;
using kvq_test::expect_error;
using kvq_test::HasSubstr;
using nlohmann::json;

namespace {

std::string data_file(const std::string& name) {
  return (kvq_test::source_dir() / "tests/data/formats" / name).string();
}

// A small Llama config in the older layout, the base of the variants below.
json base() {
  return json::parse(R"({
    "architectures": ["LlamaForCausalLM"], "model_type": "llama",
    "hidden_size": 256, "intermediate_size": 688, "num_hidden_layers": 3,
    "num_attention_heads": 8, "num_key_value_heads": 4, "vocab_size": 1000,
    "max_position_embeddings": 2048, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
    "torch_dtype": "float16", "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu"
  })");
}

ModelConfig parse(const json& j) { return parse_hf_config(j.dump(), "variant/config.json"); }

// parse must throw E naming the file and the problem.
template <class E>
E rejects(const json& j, const std::string& problem) {
  E e = expect_error<E>([&] { (void)parse(j); });
  CHECK_THAT(std::string(e.what()), HasSubstr("variant/config.json"));
  CHECK_THAT(std::string(e.what()), HasSubstr(problem));
  return e;
}

}  // namespace

TEST_CASE("hf_config: the testbed config (transformers 5 rope_parameters)", "[hf_config]") {
  const auto dir = kvq_test::shared_path("models/kvq-testbed-llama2-23m");
  for (const auto& p : {dir, dir / "config.json"}) {
    const ModelConfig c = load_hf_config(p.string());
    CHECK(c.arch == Architecture::kLlama);
    CHECK(c.model_type == "llama");
    CHECK(c.n_layers == 6);
    CHECK(c.hidden == 384);
    CHECK(c.n_heads == 6);
    CHECK(c.n_kv_heads == 6);
    CHECK(c.head_dim == 64);
    CHECK(c.intermediate == 1024);
    CHECK(c.vocab == 32000);
    CHECK(c.max_position == 1024);
    CHECK(c.rope.theta == 10000.0);
    CHECK(c.rope.scaling == RopeScalingType::kNone);
    CHECK(c.rope.layout == RopeLayout::kRotateHalf);
    CHECK(c.tie_embeddings);
    CHECK(c.dtype == DType::kF16);
    CHECK(c.rms_norm_eps == 1e-5f);
    CHECK_FALSE(c.qkv_bias);
    CHECK_FALSE(c.o_bias);
    CHECK_FALSE(c.mlp_bias);
    CHECK_FALSE(c.sliding_window.has_value());
    CHECK(c.bos_id == 1);
    CHECK(c.eos_id == 2);
  }
}

TEST_CASE("hf_config: Mistral with GQA and a sliding window", "[hf_config]") {
  const ModelConfig c = load_hf_config(data_file("mistral-7b.config.json"));
  CHECK(c.arch == Architecture::kMistral);
  CHECK(c.n_heads == 32);
  CHECK(c.n_kv_heads == 8);
  CHECK(c.group_size() == 4);
  CHECK(c.head_dim == 128);  // hidden / heads
  CHECK(c.kv_dim() == 1024);
  REQUIRE(c.sliding_window.has_value());
  CHECK(*c.sliding_window == 4096);
  CHECK(c.dtype == DType::kBF16);  // torch_dtype
  CHECK_FALSE(c.tie_embeddings);
  CHECK(c.max_position == 32768);

  json j = json::parse(kvq_test::read_bytes(data_file("mistral-7b.config.json")));
  j["sliding_window"] = nullptr;  // Mistral v0.2+ writes null
  CHECK_FALSE(parse(j).sliding_window.has_value());
}

TEST_CASE("hf_config: Qwen2 has q/k/v biases and a top-level rope_theta", "[hf_config]") {
  const ModelConfig c = load_hf_config(data_file("qwen2.5-0.5b.config.json"));
  CHECK(c.arch == Architecture::kQwen2);
  CHECK(c.model_type == "qwen2");
  CHECK(c.qkv_bias);
  CHECK_FALSE(c.o_bias);
  CHECK_FALSE(c.mlp_bias);
  CHECK(c.rope.theta == 1000000.0);
  CHECK(c.dtype == DType::kBF16);
  CHECK(c.n_heads == 14);
  CHECK(c.n_kv_heads == 2);
  CHECK(c.head_dim == 64);
  CHECK(c.tie_embeddings);
  CHECK(c.rms_norm_eps == 1e-6f);
  CHECK_FALSE(c.sliding_window.has_value());  // use_sliding_window false

  json j = json::parse(kvq_test::read_bytes(data_file("qwen2.5-0.5b.config.json")));
  j["use_sliding_window"] = true;
  rejects<UnsupportedError>(j, "use_sliding_window");
}

TEST_CASE("hf_config: Llama 3 rope_scaling llama3, head_dim, eos list", "[hf_config]") {
  const ModelConfig c = load_hf_config(data_file("llama-3.2-1b.config.json"));
  CHECK(c.rope.scaling == RopeScalingType::kLlama3);
  CHECK(c.rope.factor == 32.0);
  CHECK(c.rope.low_freq_factor == 1.0);
  CHECK(c.rope.high_freq_factor == 4.0);
  CHECK(c.rope.original_max_position == 8192);
  CHECK(c.rope.theta == 500000.0);
  CHECK(c.head_dim == 64);
  CHECK(c.eos_id == 128001);  // first of the list
  CHECK(c.bos_id == 128000);
  CHECK(c.max_position == 131072);

  // The same scaling written the transformers 5 way, inside rope_parameters.
  json j = json::parse(kvq_test::read_bytes(data_file("llama-3.2-1b.config.json")));
  json params = j["rope_scaling"];
  params["rope_theta"] = j["rope_theta"];
  j.erase("rope_scaling");
  j.erase("rope_theta");
  j["rope_parameters"] = params;
  const ModelConfig c5 = parse(j);
  CHECK(c5.rope.scaling == RopeScalingType::kLlama3);
  CHECK(c5.rope.theta == 500000.0);
  CHECK(c5.rope.factor == 32.0);

  json both = j;
  both["rope_scaling"] = {{"type", "linear"}, {"factor", 2.0}};
  rejects<FormatError>(both, "\"rope_parameters\" (type 'llama3') and \"rope_scaling\" (type 'linear') disagree");

  j["rope_parameters"].erase("low_freq_factor");
  rejects<FormatError>(j, "\"rope_parameters.low_freq_factor\" is missing");
}

TEST_CASE("hf_config: linear RoPE scaling, old 'type' key", "[hf_config]") {
  json j = base();
  j["rope_scaling"] = {{"type", "linear"}, {"factor", 4.0}};
  const ModelConfig c = parse(j);
  CHECK(c.rope.scaling == RopeScalingType::kLinear);
  CHECK(c.rope.factor == 4.0);
  j["rope_scaling"] = {{"type", "linear"}};
  rejects<FormatError>(j, "\"rope_scaling.factor\" is missing");
  j["rope_scaling"] = {{"rope_type", "default"}};
  CHECK(parse(j).rope.scaling == RopeScalingType::kNone);
  j["rope_scaling"] = nullptr;
  CHECK(parse(j).rope.scaling == RopeScalingType::kNone);
}

TEST_CASE("hf_config: unsupported RoPE scaling type", "[hf_config]") {
  json j = base();
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  rejects<UnsupportedError>(j, "RoPE scaling type 'yarn' is not supported");
}

TEST_CASE("hf_config: head_dim given overrides hidden / heads", "[hf_config]") {
  json j = base();
  j["head_dim"] = 128;
  const ModelConfig c = parse(j);
  CHECK(c.head_dim == 128);
  CHECK(c.q_dim() == 1024);
  CHECK(c.kv_dim() == 512);
  j["head_dim"] = nullptr;
  CHECK(parse(j).head_dim == 32);
}

TEST_CASE("hf_config: defaults and Llama attention/MLP biases", "[hf_config]") {
  json j = base();
  j.erase("num_key_value_heads");
  j.erase("rms_norm_eps");
  j.erase("torch_dtype");
  j.erase("eos_token_id");
  ModelConfig c = parse(j);
  CHECK(c.n_kv_heads == 8);          // = heads
  CHECK(c.rms_norm_eps == 1e-6f);    // transformers' default
  CHECK(c.dtype == DType::kF32);
  CHECK(c.eos_id == -1);
  CHECK_FALSE(c.tie_embeddings);
  j["attention_bias"] = true;
  j["mlp_bias"] = true;
  j["dtype"] = "bfloat16";  // transformers 5 spelling wins over torch_dtype
  j["torch_dtype"] = "float16";
  c = parse(j);
  CHECK(c.qkv_bias);
  CHECK(c.o_bias);
  CHECK(c.mlp_bias);
  CHECK(c.dtype == DType::kBF16);
}

TEST_CASE("hf_config: unsupported model_type names the file, the type and the supported ones",
          "[hf_config]") {
  json j = base();
  j["model_type"] = "gpt2";
  j["architectures"] = {"GPT2LMHeadModel"};
  const auto e = rejects<UnsupportedError>(j, "model_type 'gpt2' is not supported");
  CHECK_THAT(std::string(e.what()), HasSubstr("llama, mistral, qwen2"));

  // Without model_type the architecture decides.
  j.erase("model_type");
  rejects<UnsupportedError>(j, "architecture 'GPT2LMHeadModel' is not supported");
  j["architectures"] = {"MistralForCausalLM"};
  CHECK(parse(j).arch == Architecture::kMistral);
}

TEST_CASE("hf_config: missing and mistyped fields", "[hf_config]") {
  for (const char* field : {"hidden_size", "num_hidden_layers", "num_attention_heads",
                            "intermediate_size", "vocab_size", "max_position_embeddings"}) {
    json j = base();
    j.erase(field);
    rejects<FormatError>(j, std::string("required field \"") + field + "\" is missing");
  }
  json j = base();
  j["hidden_size"] = "256";
  rejects<FormatError>(j, "field \"hidden_size\" must be an integer");
  j = base();
  j["num_attention_heads"] = 0;
  rejects<FormatError>(j, "field \"num_attention_heads\" must be >= 1");
  j = base();
  j["num_key_value_heads"] = 3;
  rejects<FormatError>(j, "not a multiple of num_key_value_heads (3)");
  j = base();
  j["tie_word_embeddings"] = 1;
  rejects<FormatError>(j, "\"tie_word_embeddings\" must be true or false");
  j = base();
  j["torch_dtype"] = "float8_e4m3fn";
  rejects<UnsupportedError>(j, "'float8_e4m3fn' is not supported");
  j = base();
  j["rope_parameters"] = {{"rope_theta", 20000.0}, {"rope_type", "default"}};
  rejects<FormatError>(j, "disagree");
  j = base();
  j["hidden_act"] = "gelu";
  rejects<UnsupportedError>(j, "hidden_act 'gelu'");
  j = base();
  j["eos_token_id"] = "2";
  rejects<FormatError>(j, "\"eos_token_id\" must be a token id");
  j = base();
  j.erase("model_type");
  j.erase("architectures");
  rejects<FormatError>(j, "\"model_type\" is missing");
}

TEST_CASE("hf_config: invalid JSON gives the byte offset", "[hf_config]") {
  const auto e = expect_error<FormatError>(
      [] { (void)parse_hf_config("{\"hidden_size\": 12,,}", "bad/config.json"); });
  CHECK_THAT(std::string(e.what()), HasSubstr("bad/config.json: offset 19: not valid JSON"));
  CHECK(e.offset() == 19);
  // A number beyond double range is nlohmann's out_of_range, not a parse_error: still a
  // FormatError naming the file (found by fuzzing the safetensors header parser).
  const auto e_big = expect_error<FormatError>(
      [] { (void)parse_hf_config("{\"rope_theta\": 1e999}", "big/config.json"); });
  CHECK_THAT(std::string(e_big.what()), HasSubstr("big/config.json: not valid JSON"));
  const auto e2 = expect_error<FormatError>([] { (void)parse_hf_config("[]", "arr/config.json"); });
  CHECK_THAT(std::string(e2.what()), HasSubstr("not a JSON object"));
  const auto dir = kvq_test::scratch_dir("hf-missing");
  const auto e3 = expect_error<IoError>([&] { (void)load_hf_config(dir.string()); });
  CHECK_THAT(std::string(e3.what()), HasSubstr((dir / "config.json").string()));
}
