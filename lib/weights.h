// Weight conversion helpers for backends that compute in fp32 (the CPU reference).
#pragma once

#include <vector>

#include "formats/tensor.h"

namespace kvq {

// The tensor's elements as fp32 (F32 copied, F16/BF16 widened exactly). Throws
// UnsupportedError naming the tensor for other dtypes.
std::vector<float> tensor_to_f32(const TensorView& t);

}  // namespace kvq
