// The CPU reference backend: the Llama forward pass in fp32 with Eigen GEMMs and OpenMP,
// written for clarity first and checked against Hugging Face transformers' numbers
// (tests/lib). Every other backend is validated against it.
#pragma once

#include <memory>

#include "lib/backend.h"
#include "lib/model.h"

namespace kvq {

// Converts the model's weights to fp32 once (4 bytes per parameter of host memory) and
// keeps a shared reference to the model. The cache is empty until reset(batch, max_tokens).
std::unique_ptr<Backend> make_cpu_backend(std::shared_ptr<const Model> model);

}  // namespace kvq
