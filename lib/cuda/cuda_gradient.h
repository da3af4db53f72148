// The CUDA backward pass: the same function and the same outputs as lib/backward's
// CpuGradient<float> (activation gradients of the mean next-token cross entropy through
// the whole Llama stack; per layer dL/d(k_proj output) pre-RoPE and dL/d(v_proj output)),
// on one GPU, plus the Fisher information accumulated on the GPU.
//
// Memory (what bounds the sequence length): the weights in fp32 (4 bytes per parameter:
// 27 GB for Llama-2-7B), the per-layer residual checkpoints (layers * n * hidden fp32),
// one layer's recomputed activations and gradients (~(8 hidden + 6 q_dim + 4
// intermediate) * n fp32), the attention probabilities of one batch of heads at a time
// (2 * heads_per_batch * n^2 fp32, bounded by CudaGradientOptions::attention_bytes) and
// `logit_rows` rows of fp32 logits (never [n, vocab] at once). Nothing grows with depth
// except the checkpoints.
//
// Precision: fp32 everywhere, reductions in double where the CPU reference uses double
// (kernels/backward.cuh says why not 16-bit). Deterministic run to run on one GPU model:
// no atomics; cuBLAS SGEMMs on one stream are bit-reproducible; GQA heads add into their
// kv head's dK/dV in head order (beta = 1 GEMMs, one head after another).
//
// Goals: what kvq-calibrate's capture and the Fisher information need, fast enough that
// 16 x 2048 tokens of a 7B model take seconds per sequence. Non-goals: weight gradients
// (WKVQuant CRR), batching several sequences in one pass, the finite-difference
// perturbation hook (the CPU fp64 path is the checked reference).
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "lib/backward/cpu_gradient.h"
#include "lib/model.h"

namespace kvq {

struct CudaGradientOptions {
  int device = 0;
  // Bytes for the probabilities P and their gradient dP of one batch of heads ([heads, n, n]
  // fp32 each); at least one head is always processed. 512 MiB: 16 heads at n = 2048.
  size_t attention_bytes = size_t{512} << 20;
  // Rows of logits materialised at once ([rows, vocab] fp32; 1024 x 32000 = 131 MB).
  int logit_rows = 1024;
};

class CudaGradient {
 public:
  using LayerView = CpuGradient<float>::LayerView;
  using LayerVisitor = CpuGradient<float>::LayerVisitor;

  // Selects the device and uploads the weights (widened to fp32 on the GPU). Throws
  // UnsupportedError without a usable GPU, ResourceError when the weights do not fit.
  explicit CudaGradient(std::shared_ptr<const Model> model, const CudaGradientOptions& opt = {});
  ~CudaGradient();
  CudaGradient(const CudaGradient&) = delete;
  CudaGradient& operator=(const CudaGradient&) = delete;

  const ModelConfig& config() const;

  // The loss (forward only). tokens.size() >= 2, ids < vocab, at most max_position
  // (InvalidArgument otherwise, as CpuGradient).
  double loss(std::span<const int32_t> tokens);

  // Forward + backward; `visit` is called once per layer, L-1 .. 0, with host copies of
  // that layer's activations and gradients (the CpuGradient LayerView). Returns the loss.
  double backward(std::span<const int32_t> tokens, const LayerVisitor& visit);

  // Forward + backward adding this sequence's (dL/dK)^2 and (dL/dV)^2 into GPU
  // accumulators (double, [layers][n, kv_dim]); every sequence must have the same length
  // until reset_fisher(). Returns the loss.
  double accumulate_fisher(std::span<const int32_t> tokens);
  // The accumulators rounded once to float, per layer [n, kv_dim] (empty before any call).
  void fisher(std::vector<std::vector<float>>& k, std::vector<std::vector<float>>& v);
  void reset_fisher();

  // Most device bytes this object has held at once (weights, checkpoints, activations,
  // attention and logit blocks, Fisher accumulators), like torch.cuda.max_memory_allocated.
  size_t peak_device_bytes() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace kvq
