// The CUDA backend: the Llama forward pass of lib/cpu_backend on one GPU, behind the same
// Backend interface (lib/backend.h), with the same observer hooks (lib/observer.h).
//
// Precision (what the parity tests derive their tolerances from): weights, the activations
// fed to GEMMs and the KV cache are 16-bit (the checkpoint's fp16/bf16; fp32 checkpoints
// are rounded to fp16 once at upload); GEMMs accumulate in fp32 and write fp32, except the
// gate/up GEMM of bias-free MLPs, which writes 16 bits (where transformers rounds too); the
// residual stream, RMSNorm, RoPE, SwiGLU, softmax and the NLL are fp32.
#pragma once

#include <cstdint>
#include <memory>
#include <string>

#include "lib/backend.h"
#include "lib/model.h"

namespace kvq {

struct CudaOptions {
  int device = 0;
  // Largest number of tokens (rows x chunk) pushed through the layers at once; longer
  // chunks are split (causally equivalent) so activations stay bounded.
  int max_step_tokens = 8192;
};

std::unique_ptr<Backend> make_cuda_backend(std::shared_ptr<const Model> model,
                                           const CudaOptions& opt = {});

// Shapes of well-known checkpoints for synthetic models: "llama2-7b", "llama2-13b",
// "llama3-8b" and "testbed-23m" (see synthetic_model_names()); fp16.
ModelConfig synthetic_config(const std::string& name);
std::string synthetic_model_names();  // "llama2-7b, llama2-13b, llama3-8b, testbed-23m"

// A model with `cfg`'s shapes whose weights are drawn on the GPU from a seeded uniform
// distribution (scaled like a trained model's, 1/sqrt(fan_in), norms 1), so speed and
// memory can be measured at real sizes without a checkpoint. Its outputs mean nothing.
std::unique_ptr<Backend> make_synthetic_cuda_backend(const ModelConfig& cfg, uint64_t seed,
                                                     const CudaOptions& opt = {});

// Device-to-device copy bandwidth in bytes/s, counting bytes read plus bytes written
// (METHOD.md's memory ceiling): median of `reps` copies of `bytes`.
double measure_copy_bandwidth(int device, size_t bytes = size_t(1) << 30, int reps = 10);
// Free and total device memory in bytes.
void cuda_memory(int device, size_t& free_bytes, size_t& total_bytes);

// One-line description of the device ("NVIDIA H100 80GB HBM3, cc 9.0, 132 SMs, 79.1 GiB").
std::string cuda_device_summary(int device);

}  // namespace kvq
