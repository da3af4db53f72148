// llama2.c legacy checkpoint reader (see llama2c.h).
#include "formats/llama2c.h"

#include <algorithm>
#include <cstring>

#include "formats/error.h"

namespace kvq {

namespace {

constexpr uint64_t kHeaderBytes = 7 * 4;

// Header field offsets, for error messages.
constexpr int64_t kOffDim = 0, kOffHidden = 4, kOffLayers = 8, kOffHeads = 12, kOffKv = 16,
                  kOffVocab = 20, kOffSeq = 24;

void require_positive(const std::string& path, int64_t offset, const char* name, int64_t v) {
  if (v <= 0) {
    throw FormatError(path, offset, std::string("llama2.c header: ") + name + " is " +
                                        std::to_string(v) + ", expected > 0",
                      "not a llama2.c legacy checkpoint (or a newer \"ak42\" version)");
  }
}

// One weight block of the file, in file order.
struct Block {
  const char* what;  // for messages
  uint64_t floats;
};

}  // namespace

uint64_t llama2c_expected_size(const Llama2cHeader& h, const std::string& path) {
  require_positive(path, kOffDim, "dim", h.dim);
  require_positive(path, kOffHidden, "hidden_dim", h.hidden_dim);
  require_positive(path, kOffLayers, "n_layers", h.n_layers);
  require_positive(path, kOffHeads, "n_heads", h.n_heads);
  require_positive(path, kOffKv, "n_kv_heads", h.n_kv_heads);
  if (h.vocab_size == 0 || h.vocab_size == INT32_MIN) {
    throw FormatError(path, kOffVocab, "llama2.c header: vocab_size is " +
                                           std::to_string(h.vocab_size));
  }
  require_positive(path, kOffSeq, "seq_len", h.seq_len);
  if (h.dim % h.n_heads != 0) {
    throw FormatError(path, kOffHeads, "llama2.c header: dim " + std::to_string(h.dim) +
                                           " is not a multiple of n_heads " +
                                           std::to_string(h.n_heads));
  }
  if (h.n_heads % h.n_kv_heads != 0) {
    throw FormatError(path, kOffKv, "llama2.c header: n_heads " + std::to_string(h.n_heads) +
                                        " is not a multiple of n_kv_heads " +
                                        std::to_string(h.n_kv_heads));
  }
  const uint64_t head_dim = static_cast<uint64_t>(h.dim / h.n_heads);
  if (head_dim % 2 != 0) {
    throw FormatError(path, kOffHeads, "llama2.c header: head size " + std::to_string(head_dim) +
                                           " is odd; RoPE rotates channel pairs");
  }
  // All int32 inputs are < 2^31, so each product of at most three of them is < 2^93:
  // compute in 128 bits and reject anything past what a file can hold.
  using u128 = unsigned __int128;
  const u128 dim = static_cast<u128>(h.dim), hid = static_cast<u128>(h.hidden_dim);
  const u128 L = static_cast<u128>(h.n_layers), seq = static_cast<u128>(h.seq_len);
  const u128 vocab = static_cast<u128>(h.vocab_size < 0 ? -static_cast<int64_t>(h.vocab_size)
                                                        : h.vocab_size);
  const u128 kv_dim = static_cast<u128>(h.n_kv_heads) * head_dim;
  u128 floats = vocab * dim                              // token_embedding
                + L * dim                                // rms_att
                + L * dim * dim + 2 * L * kv_dim * dim  // wq, wk, wv
                + L * dim * dim                          // wo
                + L * dim                                // rms_ffn
                + 3 * L * hid * dim                      // w1, w2, w3
                + dim                                    // rms_final
                + 2 * seq * (head_dim / 2);              // freq_cis_real, freq_cis_imag
  if (h.vocab_size < 0) floats += vocab * dim;           // wcls
  const u128 bytes = kHeaderBytes + 4 * floats;
  if (bytes > static_cast<u128>(INT64_MAX)) {
    throw FormatError(path, 0, "llama2.c header describes a model of more than 2^63 bytes");
  }
  return static_cast<uint64_t>(bytes);
}

Llama2cReader::Llama2cReader(const std::string& path) : file_(path) {
  if (file_.size() < kHeaderBytes) {
    throw FormatError(path, 0, "file is " + std::to_string(file_.size()) +
                                   " bytes, shorter than the 28-byte llama2.c header");
  }
  int32_t raw[7];
  std::memcpy(raw, file_.data(), sizeof(raw));
  // export.py's version 1/2 files start with the magic "ak42" (0x616b3432 little-endian).
  if (static_cast<uint32_t>(raw[0]) == 0x616b3432u) {
    throw UnsupportedError(path, "llama2.c export version " + std::to_string(raw[1]) +
                                     " (magic \"ak42\") is not supported; only the legacy "
                                     "(version 0) layout is",
                           "re-export with llama2.c export.py --version 0");
  }
  header_ = Llama2cHeader{raw[0], raw[1], raw[2], raw[3], raw[4], raw[5], raw[6]};
  const uint64_t expected = llama2c_expected_size(header_, path);
  if (expected != file_.size()) {
    throw FormatError(path, static_cast<int64_t>(std::min<uint64_t>(expected, file_.size())),
                      "file is " + std::to_string(file_.size()) + " bytes, but its llama2.c "
                      "header (dim " + std::to_string(header_.dim) + ", hidden_dim " +
                          std::to_string(header_.hidden_dim) + ", n_layers " +
                          std::to_string(header_.n_layers) + ", vocab_size " +
                          std::to_string(header_.vocab_size) + ", seq_len " +
                          std::to_string(header_.seq_len) + ") needs exactly " +
                          std::to_string(expected) + " bytes",
                      expected > file_.size() ? "the file is probably truncated"
                                              : "not a llama2.c legacy checkpoint, or a "
                                                "different export version");
  }

  const Llama2cHeader& h = header_;
  const bool shared = h.vocab_size > 0;
  const int64_t vocab = shared ? h.vocab_size : -static_cast<int64_t>(h.vocab_size);
  const int64_t dim = h.dim, hid = h.hidden_dim, L = h.n_layers;
  const int64_t head_dim = dim / h.n_heads, kv_dim = h.n_kv_heads * head_dim;

  config_.arch = Architecture::kLlama;
  config_.model_type = "llama";
  config_.n_layers = h.n_layers;
  config_.hidden = h.dim;
  config_.n_heads = h.n_heads;
  config_.n_kv_heads = h.n_kv_heads;
  config_.head_dim = static_cast<int>(head_dim);
  config_.intermediate = h.hidden_dim;
  config_.vocab = static_cast<int>(vocab);
  config_.max_position = h.seq_len;
  config_.rms_norm_eps = 1e-5f;  // llama2.c model.py ModelArgs.norm_eps
  config_.rope = RopeConfig{};
  config_.rope.theta = 10000.0;  // llama2.c precompute_freqs_cis default
  config_.rope.layout = RopeLayout::kInterleaved;
  config_.tie_embeddings = shared;
  config_.dtype = DType::kF32;
  config_.bos_id = 1;  // run.c: BOS = 1, EOS = 2
  config_.eos_id = 2;

  const float* p = reinterpret_cast<const float*>(file_.data() + kHeaderBytes);
  auto add = [&](const std::string& name, std::vector<int64_t> shape) {
    TensorView t;
    t.name = name;
    t.dtype = DType::kF32;
    t.shape = std::move(shape);
    t.data = p;
    t.nbytes = static_cast<size_t>(t.numel()) * 4;
    t.file = path;
    p += t.numel();
    tensors_.emplace(name, std::move(t));
  };
  // Per-layer blocks are stored layer-major within each kind ([L, out, in]).
  auto add_layers = [&](const std::string& suffix, std::vector<int64_t> shape) {
    for (int64_t l = 0; l < L; ++l) add("model.layers." + std::to_string(l) + "." + suffix, shape);
  };
  add("model.embed_tokens.weight", {vocab, dim});
  add_layers("input_layernorm.weight", {dim});
  add_layers("self_attn.q_proj.weight", {dim, dim});
  add_layers("self_attn.k_proj.weight", {kv_dim, dim});
  add_layers("self_attn.v_proj.weight", {kv_dim, dim});
  add_layers("self_attn.o_proj.weight", {dim, dim});
  add_layers("post_attention_layernorm.weight", {dim});
  add_layers("mlp.gate_proj.weight", {hid, dim});  // w1
  add_layers("mlp.down_proj.weight", {dim, hid});  // w2
  add_layers("mlp.up_proj.weight", {hid, dim});    // w3
  add("model.norm.weight", {dim});
  p += 2 * static_cast<int64_t>(h.seq_len) * (head_dim / 2);  // freq_cis_real, freq_cis_imag
  if (!shared) add("lm_head.weight", {vocab, dim});
  if (reinterpret_cast<const uint8_t*>(p) != file_.data() + file_.size()) {
    // Unreachable when llama2c_expected_size and the layout above agree; kept so that a
    // future edit to one of them cannot hand out views past the mapping.
    throw FormatError(path, "internal error: llama2.c layout does not match the size check");
  }
}

const TensorView* Llama2cReader::find(const std::string& name) const {
  const auto it = tensors_.find(name);
  return it == tensors_.end() ? nullptr : &it->second;
}

std::vector<std::string> Llama2cReader::names() const {
  std::vector<std::string> out;
  for (const auto& [name, t] : tensors_) out.push_back(name);
  return out;
}

}  // namespace kvq
