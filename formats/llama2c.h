// llama2.c legacy checkpoints ("version 0", as written by llama2.c's export.py
// legacy_export and read by run.c), exposed under Hugging Face tensor names so lib/ loads
// them like any other checkpoint.
//
// Layout: 7 little-endian int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads,
// vocab_size, seq_len; a negative vocab_size means the classifier is not shared with the
// embedding), then fp32: token_embedding[vocab,dim], rms_att[L,dim], wq[L,dim,dim],
// wk[L,kv_dim,dim], wv[L,kv_dim,dim], wo[L,dim,dim], rms_ffn[L,dim], w1[L,hidden,dim],
// w2[L,dim,hidden], w3[L,hidden,dim], rms_final[dim], freq_cis_real[seq_len,head_dim/2],
// freq_cis_imag[seq_len,head_dim/2], and when unshared wcls[vocab,dim]
// (../shared/models/stories260K/PROVENANCE.md). Linear weights are PyTorch [out,in].
//
// Goals: no copies (views into the mapping; the weights start at byte 28, so they are
// 4-byte aligned), the file size checked exactly against the header, the RoPE layout
// explicit (llama2.c rotates interleaved pairs: RopeLayout::kInterleaved).
// Non-goals: the newer llama2.c "version 1/2" files (magic "ak42", int8 exports); the
// freq_cis tables are not exposed (lib/ computes RoPE from theta; they are only checked
// to be present).
#pragma once

#include <map>
#include <string>
#include <vector>

#include "formats/mapped_file.h"
#include "formats/model_config.h"
#include "formats/tensor.h"

namespace kvq {

struct Llama2cHeader {
  int32_t dim = 0, hidden_dim = 0, n_layers = 0, n_heads = 0, n_kv_heads = 0;
  int32_t vocab_size = 0;  // negative: unshared classifier
  int32_t seq_len = 0;
};

class Llama2cReader final : public TensorSource {
 public:
  // Throws IoError when the file cannot be opened, FormatError (file, offset) for a bad
  // header or a size that does not match it (expected vs actual bytes).
  explicit Llama2cReader(const std::string& path);

  const TensorView* find(const std::string& name) const override;
  std::vector<std::string> names() const override;  // sorted
  const std::string& path() const override { return file_.path(); }

  const Llama2cHeader& header() const { return header_; }
  // arch llama, layout kInterleaved, theta 10000, eps 1e-5, dtype F32, max_position =
  // seq_len, tie_embeddings = vocab_size > 0, bos 1 / eos 2 (run.c's constants).
  const ModelConfig& config() const { return config_; }

 private:
  MappedFile file_;
  Llama2cHeader header_;
  ModelConfig config_;
  std::map<std::string, TensorView> tensors_;
};

// Bytes a file with this header must have (28 + 4 x floats); throws FormatError naming
// `path` when the header is invalid (non-positive sizes, heads not dividing dim, ...).
uint64_t llama2c_expected_size(const Llama2cHeader& h, const std::string& path);

}  // namespace kvq
