// Backend selection (see backend_factory.h).
#include "lib/backend_factory.h"

#include <cstdlib>
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

bool gpu_memory_in_use(const Backend& backend, size_t& used_bytes, size_t& total_bytes) {
#if KVQ_HAVE_CUDA
  // CudaBackend::name() is "cuda:N (DEVICE NAME)".
  const std::string name = backend.name();
  if (name.rfind("cuda:", 0) != 0) return false;
  const int device = std::atoi(name.c_str() + 5);
  int previous = 0;
  KVQ_CUDA_CHECK(cudaGetDevice(&previous));
  KVQ_CUDA_CHECK(cudaSetDevice(device));
  size_t free_b = 0, total_b = 0;
  KVQ_CUDA_CHECK(cudaMemGetInfo(&free_b, &total_b));
  KVQ_CUDA_CHECK(cudaSetDevice(previous));
  used_bytes = total_b - free_b;
  total_bytes = total_b;
  return true;
#else
  (void)backend;
  (void)used_bytes;
  (void)total_bytes;
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
