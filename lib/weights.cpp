// fp32 conversion of stored weights (see weights.h).
#include "lib/weights.h"

#include <string>

#include "formats/error.h"

namespace kvq {

std::vector<float> tensor_to_f32(const TensorView& t) {
  if (t.dtype != DType::kF32 && t.dtype != DType::kF16 && t.dtype != DType::kBF16)
    throw UnsupportedError(t.file, t.name + ": dtype " + std::string(dtype_name(t.dtype)) +
                                       " is not a weight type (F32, F16, BF16)");
  const int64_t n = t.numel();
  if (static_cast<size_t>(n) * dtype_size(t.dtype) != t.nbytes)
    throw FormatError(t.file, t.name + ": " + std::to_string(t.nbytes) + " bytes for " +
                                  std::to_string(n) + " elements of " +
                                  std::string(dtype_name(t.dtype)));
  std::vector<float> out(static_cast<size_t>(n));
  convert_to_f32(t.dtype, t.data, out.data(), out.size());
  return out;
}

}  // namespace kvq
