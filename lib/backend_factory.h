// Chooses a compute backend by name for the tools: "cpu", "cuda" (or "cuda:N") and "auto"
// (CUDA when this build has it and a usable GPU is present, else the CPU reference).
// Compiles with and without CUDA; asking for "cuda" in a build without it is an error
// with a hint, never a silent fallback.
#pragma once

#include <cstddef>
#include <memory>
#include <string>

#include "lib/backend.h"
#include "lib/model.h"

namespace kvq {

std::unique_ptr<Backend> make_backend(const std::string& name, std::shared_ptr<const Model> model);

// True when this build has the CUDA backend and a device of compute capability >= 8.0.
bool cuda_available();

// Device memory in use now on the GPU of a CUDA backend (cudaMemGetInfo: total - free, so
// the CUDA context and any other process on that device count too) and the device's total.
// False (nothing written) for a CPU backend or a build without CUDA. kvq-eval samples it
// after every forward call for its peak-GPU-memory column.
bool gpu_memory_in_use(const Backend& backend, size_t& used_bytes, size_t& total_bytes);

}  // namespace kvq
