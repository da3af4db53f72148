// See backend_select.h.
#include "tools/common/backend_select.h"

#include <omp.h>

namespace kvq::cli {

void add_backend_option(CLI::App& app, std::string& name) {
  app.add_option("--backend", name,
                 "Compute backend: cpu, cuda, cuda:N, or auto (CUDA when built in and a GPU is present)")
      ->check(CLI::Validator(
          [](std::string& v) -> std::string {
            if (v == "cpu" || v == "cuda" || v == "auto" || (v.rfind("cuda:", 0) == 0 && v.size() > 5 &&
                                                              v.find_first_not_of("0123456789", 5) == std::string::npos)) {
              return {};
            }
            return "expected cpu, cuda, cuda:N or auto, got '" + v + "'";
          },
          "cpu|cuda|cuda:N|auto"))
      ->capture_default_str();
}

void add_threads_option(CLI::App& app, int& threads) {
  app.add_option("--threads", threads, "CPU threads (0: OMP_NUM_THREADS, else all cores)")
      ->check(CLI::NonNegativeNumber)
      ->capture_default_str();
}

int apply_threads(int threads) {
  if (threads > 0) omp_set_num_threads(threads);
  return omp_get_max_threads();
}

}  // namespace kvq::cli
