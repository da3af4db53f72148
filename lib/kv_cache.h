// The CPU backend's KV cache: fp32, per layer and slot, post-RoPE keys and values exactly
// as the observer left them (so simulated quantization is what later positions attend to).
// Layout per (layer, slot): K and V are [max_tokens, kv_dim] row-major, contiguous.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

namespace kvq {

class KvCache {
 public:
  // Allocates zeroed storage; throws ResourceError naming the bytes when it cannot.
  void reset(int layers, int batch, int max_tokens, int kv_dim);

  int layers() const { return layers_; }
  int batch() const { return batch_; }
  int max_tokens() const { return max_tokens_; }
  int kv_dim() const { return kv_dim_; }
  size_t bytes() const { return (k_.size() + v_.size()) * sizeof(float); }

  int len(int slot) const { return len_.at(static_cast<size_t>(slot)); }
  void set_len(int slot, int len);

  // Row 0 of slot `slot` in layer `layer`; rows are kv_dim floats apart.
  float* k(int layer, int slot) { return k_.data() + offset(layer, slot); }
  float* v(int layer, int slot) { return v_.data() + offset(layer, slot); }
  const float* k(int layer, int slot) const { return k_.data() + offset(layer, slot); }
  const float* v(int layer, int slot) const { return v_.data() + offset(layer, slot); }

 private:
  size_t offset(int layer, int slot) const {
    return (static_cast<size_t>(layer) * batch_ + slot) * static_cast<size_t>(max_tokens_) * kv_dim_;
  }
  int layers_ = 0, batch_ = 0, max_tokens_ = 0, kv_dim_ = 0;
  std::vector<int> len_;
  std::vector<float> k_, v_;
};

}  // namespace kvq
