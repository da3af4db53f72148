// llama2.c legacy checkpoints: stories260K (header, config, values spot-checked against a
// plain fread at offsets computed here from PROVENANCE.md's layout), a synthetic unshared
// checkpoint whose every float is its own index (so each tensor's position in the file is
// checked, lm_head included), and the bad inputs: truncated, padded, bad header, "ak42".
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <random>

#include "formats/error.h"
#include "formats/llama2c.h"
#include "tests/catch.h"
#include "tests/formats/expect_error.h"
#include "tests/support/test_support.h"

using namespace kvq;
using kvq_test::expect_error;
using kvq_test::HasSubstr;
namespace fs = std::filesystem;

namespace {

std::string stories() { return kvq_test::shared_path("models/stories260K/stories260K.bin").string(); }

// The float at element index `i` of the weights (after the 28-byte header), by fread.
float fread_float(const std::string& path, int64_t i) {
  std::FILE* f = std::fopen(path.c_str(), "rb");
  REQUIRE(f != nullptr);
  REQUIRE(std::fseek(f, 28 + 4 * i, SEEK_SET) == 0);
  float v = 0;
  REQUIRE(std::fread(&v, 4, 1, f) == 1);
  std::fclose(f);
  return v;
}

float at(const TensorView& t, int64_t i) {
  REQUIRE(i < t.numel());
  float v;
  std::memcpy(&v, static_cast<const float*>(t.data) + i, 4);
  return v;
}

// A llama2.c file whose float k holds the value k (exact in fp32 below 2^24).
std::string synthetic(const fs::path& path, const int32_t header[7], int64_t floats) {
  std::vector<uint8_t> bytes(28 + 4 * static_cast<size_t>(floats));
  std::memcpy(bytes.data(), header, 28);
  for (int64_t k = 0; k < floats; ++k) {
    const float v = static_cast<float>(k);
    std::memcpy(bytes.data() + 28 + 4 * k, &v, 4);
  }
  kvq_test::write_bytes(path, bytes.data(), bytes.size());
  return path.string();
}

// Opening a file with this header (and 10 floats) must throw E naming the file and `problem`.
template <class E>
void header_refused(const fs::path& dir, const char* name, const int32_t (&header)[7], const std::string& problem) {
  const std::string path = synthetic(dir / name, header, 10);
  kvq_test::expect_file_error<E>(path, problem, [&] { Llama2cReader r(path); });
}

}  // namespace

TEST_CASE("llama2c: stories260K header and config", "[llama2c]") {
  Llama2cReader r(stories());
  const Llama2cHeader& h = r.header();
  CHECK(h.dim == 64);
  CHECK(h.hidden_dim == 172);
  CHECK(h.n_layers == 5);
  CHECK(h.n_heads == 8);
  CHECK(h.n_kv_heads == 4);
  CHECK(h.vocab_size == 512);
  CHECK(h.seq_len == 512);
  const ModelConfig& c = r.config();
  CHECK(c.arch == Architecture::kLlama);
  CHECK(c.hidden == 64);
  CHECK(c.intermediate == 172);
  CHECK(c.n_layers == 5);
  CHECK(c.n_heads == 8);
  CHECK(c.n_kv_heads == 4);
  CHECK(c.head_dim == 8);
  CHECK(c.vocab == 512);
  CHECK(c.max_position == 512);
  CHECK(c.tie_embeddings);
  CHECK(c.dtype == DType::kF32);
  CHECK(c.rope.layout == RopeLayout::kInterleaved);
  CHECK(c.rope.theta == 10000.0);
  CHECK(c.rope.scaling == RopeScalingType::kNone);
  CHECK(c.rms_norm_eps == 1e-5f);
  CHECK(c.bos_id == 1);
  CHECK(c.eos_id == 2);
  CHECK(llama2c_expected_size(h, stories()) == 1056540);  // PROVENANCE.md's byte count
}

TEST_CASE("llama2c: stories260K tensors under HF names, values equal a plain fread", "[llama2c]") {
  const std::string path = stories();
  Llama2cReader r(path);
  // 1 embedding + 9 per layer + final norm; tied, so no lm_head.
  CHECK(r.names().size() == 1 + 9 * 5 + 1);
  CHECK(r.find("lm_head.weight") == nullptr);
  const int64_t dim = 64, hid = 172, L = 5, kv = 32, vocab = 512;

  // Offsets (in floats) of each block, from PROVENANCE.md's order, written out here
  // independently of the reader.
  const int64_t emb = 0;
  const int64_t rms_att = emb + vocab * dim;
  const int64_t wq = rms_att + L * dim;
  const int64_t wk = wq + L * dim * dim;
  const int64_t wv = wk + L * kv * dim;
  const int64_t wo = wv + L * kv * dim;
  const int64_t rms_ffn = wo + L * dim * dim;
  const int64_t w1 = rms_ffn + L * dim;
  const int64_t w2 = w1 + L * hid * dim;
  const int64_t w3 = w2 + L * dim * hid;
  const int64_t rms_final = w3 + L * hid * dim;
  CHECK(rms_final + dim + 2 * 512 * 4 == (1056540 - 28) / 4);

  std::mt19937_64 rng(kvq_test::test_seed(260));
  struct Case {
    std::string name;
    int64_t base;  // float offset of this tensor
    std::vector<int64_t> shape;
  };
  std::vector<Case> cases = {{"model.embed_tokens.weight", emb, {vocab, dim}},
                             {"model.norm.weight", rms_final, {dim}}};
  for (int64_t l = 0; l < L; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    cases.push_back({p + "input_layernorm.weight", rms_att + l * dim, {dim}});
    cases.push_back({p + "self_attn.q_proj.weight", wq + l * dim * dim, {dim, dim}});
    cases.push_back({p + "self_attn.k_proj.weight", wk + l * kv * dim, {kv, dim}});
    cases.push_back({p + "self_attn.v_proj.weight", wv + l * kv * dim, {kv, dim}});
    cases.push_back({p + "self_attn.o_proj.weight", wo + l * dim * dim, {dim, dim}});
    cases.push_back({p + "post_attention_layernorm.weight", rms_ffn + l * dim, {dim}});
    cases.push_back({p + "mlp.gate_proj.weight", w1 + l * hid * dim, {hid, dim}});
    cases.push_back({p + "mlp.down_proj.weight", w2 + l * dim * hid, {dim, hid}});
    cases.push_back({p + "mlp.up_proj.weight", w3 + l * hid * dim, {hid, dim}});
  }
  for (const Case& c : cases) {
    INFO(c.name);
    const TensorView& t = r.get(c.name);
    CHECK(t.dtype == DType::kF32);
    CHECK(t.shape == c.shape);
    CHECK(t.nbytes == static_cast<size_t>(t.numel()) * 4);
    CHECK(t.file == path);
    // First, last and three random elements.
    std::vector<int64_t> idx = {0, t.numel() - 1};
    for (int k = 0; k < 3; ++k) idx.push_back(static_cast<int64_t>(rng() % static_cast<uint64_t>(t.numel())));
    for (int64_t i : idx) CHECK(float_bits(at(t, i)) == float_bits(fread_float(path, c.base + i)));
  }
  // Norm weights of a trained model are not zero; the embedding is not constant.
  CHECK(at(r.get("model.norm.weight"), 0) != 0.0f);
  CHECK(at(r.get("model.embed_tokens.weight"), 0) != at(r.get("model.embed_tokens.weight"), 1));
}

TEST_CASE("llama2c: unshared classifier and every tensor's position", "[llama2c]") {
  // dim 6 (3 heads of 2), hidden 5, 2 layers, 1 KV head, vocab -7 (unshared), seq_len 3.
  const int32_t header[7] = {6, 5, 2, 3, 1, -7, 3};
  const int64_t dim = 6, hid = 5, L = 2, kv = 2, vocab = 7, seq = 3;
  const int64_t floats = vocab * dim + L * dim + L * dim * dim + 2 * L * kv * dim + L * dim * dim +
                         L * dim + 3 * L * hid * dim + dim + 2 * seq * 1 + vocab * dim;
  const std::string path = synthetic(kvq_test::scratch_dir("l2c") / "tiny.bin", header, floats);
  Llama2cReader r(path);
  const ModelConfig& c = r.config();
  CHECK_FALSE(c.tie_embeddings);
  CHECK(c.vocab == 7);
  CHECK(c.head_dim == 2);
  CHECK(c.n_kv_heads == 1);
  CHECK(r.names().size() == 1 + 9 * 2 + 1 + 1);
  // Every tensor starts where the previous block (in file order) ends.
  int64_t next = 0;
  auto expect_at = [&](const std::string& name, std::vector<int64_t> shape) {
    INFO(name);
    const TensorView& t = r.get(name);
    CHECK(t.shape == shape);
    CHECK(at(t, 0) == static_cast<float>(next));
    CHECK(at(t, t.numel() - 1) == static_cast<float>(next + t.numel() - 1));
    next += t.numel();
  };
  auto layers = [&](const std::string& suffix, std::vector<int64_t> shape) {
    for (int l = 0; l < L; ++l) expect_at("model.layers." + std::to_string(l) + "." + suffix, shape);
  };
  expect_at("model.embed_tokens.weight", {vocab, dim});
  layers("input_layernorm.weight", {dim});
  layers("self_attn.q_proj.weight", {dim, dim});
  layers("self_attn.k_proj.weight", {kv, dim});
  layers("self_attn.v_proj.weight", {kv, dim});
  layers("self_attn.o_proj.weight", {dim, dim});
  layers("post_attention_layernorm.weight", {dim});
  layers("mlp.gate_proj.weight", {hid, dim});
  layers("mlp.down_proj.weight", {dim, hid});
  layers("mlp.up_proj.weight", {hid, dim});
  expect_at("model.norm.weight", {dim});
  next += 2 * seq * 1;  // freq_cis_real, freq_cis_imag
  expect_at("lm_head.weight", {vocab, dim});
  CHECK(next == floats);
}

TEST_CASE("llama2c: truncated stories260K names expected and actual size", "[llama2c][bad]") {
  const auto bytes = kvq_test::read_bytes(stories());
  const fs::path cut = kvq_test::scratch_dir("l2c-bad") / "truncated.bin";
  kvq_test::write_bytes(cut, bytes.data(), bytes.size() - 1000);
  const auto e = expect_error<FormatError>([&] { Llama2cReader r(cut.string()); });
  CHECK_THAT(std::string(e.what()), HasSubstr(cut.string()));
  CHECK_THAT(std::string(e.what()), HasSubstr("file is 1055540 bytes"));
  CHECK_THAT(std::string(e.what()), HasSubstr("needs exactly 1056540 bytes"));
  CHECK(e.offset() == 1055540);
  CHECK_THAT(e.hint(), HasSubstr("truncated"));

  // Extra bytes are an error too: the size must match exactly.
  std::vector<uint8_t> longer = bytes;
  longer.resize(bytes.size() + 4, 0);
  const fs::path pad = kvq_test::scratch_dir("l2c-bad") / "padded.bin";
  kvq_test::write_bytes(pad, longer.data(), longer.size());
  const auto e2 = expect_error<FormatError>([&] { Llama2cReader r(pad.string()); });
  CHECK_THAT(std::string(e2.what()), HasSubstr("file is 1056544 bytes"));
}

TEST_CASE("llama2c: bad headers", "[llama2c][bad]") {
  const fs::path dir = kvq_test::scratch_dir("l2c-header");
  SECTION("shorter than the header") {
    kvq_test::write_bytes(dir / "short.bin", "\x40\0\0\0", 4);
    const auto e = expect_error<FormatError>([&] { Llama2cReader r((dir / "short.bin").string()); });
    CHECK_THAT(std::string(e.what()), HasSubstr("shorter than the 28-byte llama2.c header"));
  }
  SECTION("zero heads") {
    header_refused<FormatError>(dir, "heads.bin", {64, 172, 5, 0, 4, 512, 512},
                                "heads.bin: offset 12: llama2.c header: n_heads is 0");
  }
  SECTION("heads do not divide dim") {
    header_refused<FormatError>(dir, "div.bin", {64, 172, 5, 7, 7, 512, 512}, "dim 64 is not a multiple of n_heads 7");
  }
  SECTION("kv heads do not divide heads") {
    header_refused<FormatError>(dir, "kv.bin", {64, 172, 5, 8, 3, 512, 512},
                                "n_heads 8 is not a multiple of n_kv_heads 3");
  }
  SECTION("huge sizes do not overflow") {
    header_refused<FormatError>(dir, "huge.bin", {INT32_MAX - 1, INT32_MAX, INT32_MAX, 1, 1, INT32_MAX, INT32_MAX},
                                "more than 2^63 bytes");
  }
  SECTION("newer export version") {
    header_refused<UnsupportedError>(dir, "v1.bin", {0x616b3432, 1, 0, 0, 0, 0, 0}, "export version 1");
  }
  SECTION("missing file") {
    const auto e = expect_error<IoError>([&] { Llama2cReader r((dir / "absent.bin").string()); });
    CHECK_THAT(std::string(e.what()), HasSubstr("absent.bin"));
  }
}
