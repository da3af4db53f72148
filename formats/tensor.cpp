#include "formats/tensor.h"

#include "formats/error.h"

namespace kvq {

const TensorView& TensorSource::get(const std::string& name) const {
  const TensorView* t = find(name);
  if (t == nullptr) throw FormatError(path(), "missing tensor '" + name + "'");
  return *t;
}

}  // namespace kvq
