// A read-only view of a tensor stored in a file (usually memory-mapped), and the
// interface every checkpoint reader offers so that lib/ loads weights the same way from
// safetensors (single or sharded) and llama2.c files. Tensor names follow Hugging Face
// ("model.layers.3.self_attn.k_proj.weight"); readers of other formats translate.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/dtype.h"

namespace kvq {

struct TensorView {
  std::string name;
  DType dtype = DType::kF32;
  std::vector<int64_t> shape;   // row-major, outermost first (PyTorch order)
  const void* data = nullptr;   // nbytes bytes, valid while the owning reader lives
  size_t nbytes = 0;
  std::string file;             // the file it lives in, for error messages

  int64_t numel() const {
    int64_t n = 1;
    for (int64_t d : shape) n *= d;
    return n;
  }
};

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  // nullptr when absent.
  virtual const TensorView* find(const std::string& name) const = 0;
  // Throws FormatError naming the source when absent.
  const TensorView& get(const std::string& name) const;
  virtual std::vector<std::string> names() const = 0;
  // The file or folder this source was opened from.
  virtual const std::string& path() const = 0;
};

}  // namespace kvq
