// Small random-weight Llama models held in memory, for tests that need control over the
// architecture (GQA, biases, sliding window, RoPE layout, dtype) rather than real weights.
#pragma once

#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "formats/model_config.h"
#include "formats/tensor.h"
#include "lib/model.h"

namespace kvq_test {

// A TensorSource over owned buffers; path() is "memory:NAME".
class MemoryTensorSource final : public kvq::TensorSource {
 public:
  explicit MemoryTensorSource(std::string name) : path_("memory:" + std::move(name)) {}
  // Adds (or replaces) a tensor of the given dtype from fp32 values (rounded to it).
  void add(const std::string& name, std::vector<int64_t> shape, const std::vector<float>& values,
           kvq::DType dtype = kvq::DType::kF32);
  void remove(const std::string& name) { tensors_.erase(name); }
  kvq::TensorView* mutable_view(const std::string& name);

  const kvq::TensorView* find(const std::string& name) const override;
  std::vector<std::string> names() const override;
  const std::string& path() const override { return path_; }
  std::vector<kvq::TensorView> views() const;

 private:
  struct Entry {
    kvq::TensorView view;
    std::vector<uint8_t> bytes;
  };
  std::string path_;
  std::map<std::string, Entry> tensors_;
};

// A tiny config: 2 layers, hidden 32, 4 query heads / 2 KV heads of 8, intermediate 48,
// vocab 61, rotate-half RoPE, untied lm_head.
kvq::ModelConfig tiny_config();

// Random weights for `cfg` from `seed`: linear weights uniform in +-1/sqrt(in) (keeps
// activations O(1)), norms 1 +- 0.1, biases +-0.1, embedding +-1.
std::shared_ptr<MemoryTensorSource> random_weights(const kvq::ModelConfig& cfg, uint64_t seed,
                                                   kvq::DType dtype = kvq::DType::kF32);

std::shared_ptr<const kvq::Model> tiny_model(const kvq::ModelConfig& cfg, uint64_t seed,
                                             kvq::DType dtype = kvq::DType::kF32);

// Random token ids in [0, vocab).
std::vector<int32_t> random_tokens(int n, int vocab, uint64_t seed);

}  // namespace kvq_test
