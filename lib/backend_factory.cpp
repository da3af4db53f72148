// Backend selection (see backend_factory.h).
#include "lib/backend_factory.h"

#include <string>

#include "formats/error.h"
#include "formats/version.h"
#include "lib/cpu_backend.h"
#if KVQ_HAVE_CUDA
#include "lib/cuda/cuda_backend.h"
#include "lib/cuda/check.h"
#endif

namespace kvq {

bool cuda_available() {
#if KVQ_HAVE_CUDA
  try {
    cuda::select_device(0);
    return true;
  } catch (const Error&) {
    return false;
  }
#else
  return false;
#endif
}

std::unique_ptr<Backend> make_backend(const std::string& name, std::shared_ptr<const Model> model) {
  if (name == "cpu") return make_cpu_backend(std::move(model));
  if (name == "auto") {
    if (cuda_available()) return make_backend("cuda", std::move(model));
    return make_cpu_backend(std::move(model));
  }
  if (name == "cuda" || name.rfind("cuda:", 0) == 0) {
#if KVQ_HAVE_CUDA
    CudaOptions opt;
    if (name.size() > 5) {
      try {
        opt.device = std::stoi(name.substr(5));
      } catch (const std::exception&) {
        throw InvalidArgument("--backend", "'" + name + "' is not cuda:N");
      }
    }
    return make_cuda_backend(std::move(model), opt);
#else
    throw UnsupportedError("--backend", "this build of kvq has no CUDA backend",
                           "rebuild with -DKVQ_CUDA=ON on a machine with the CUDA toolkit, or use --backend cpu");
#endif
  }
  throw InvalidArgument("--backend", "unknown backend '" + name + "'", "one of: cpu, cuda, cuda:N, auto");
}

}  // namespace kvq
