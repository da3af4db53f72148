// A scope in which every Eigen matrix product runs on one thread, so that calibration
// results do not depend on the OpenMP thread count.
//
// Why: Eigen 3.4 chooses the depth blocking kc of a GEMM with one heuristic when it splits
// the product over threads and another when it runs on one thread
// (Eigen/src/Core/products/GeneralBlockPanelKernel.h, evaluateProductBlockingSizesHeuristic:
// kc <= 320 for num_threads > 1, a cache-derived kc otherwise). kc decides how each output
// element's float sum is grouped, so the same product gives other last bits. Measured:
// kvq-calibrate on stories260K (3 x 256 tokens, CPU) wrote different .kvqc bytes with
// OMP_NUM_THREADS=1 and 2 before this scope existed (2, 3 and 4 threads agreed), and
// identical bytes for 1, 2 and 3 threads with it (tests/cli/calibrate_threads.sh).
//
// Inside the scope the parallelism comes from kvq's own loops (calibration sequences,
// attention heads, rows), whose per-element arithmetic does not depend on the number of
// threads. Eigen also runs a product on one thread when called inside an OpenMP team of
// more than one thread; the scope covers the remaining case, a product called outside any
// team (or in a team of one) while OpenMP would give Eigen several threads.
#pragma once

#include <Eigen/Core>

namespace kvq::calib {

class SerialEigenProducts {
 public:
  SerialEigenProducts() { Eigen::setNbThreads(1); }
  // 0 = follow omp_get_max_threads() again: Eigen's default (Parallelizer.h treats any
  // value <= 0 so); kvq sets Eigen's thread count nowhere else.
  ~SerialEigenProducts() { Eigen::setNbThreads(0); }
  SerialEigenProducts(const SerialEigenProducts&) = delete;
  SerialEigenProducts& operator=(const SerialEigenProducts&) = delete;
};

}  // namespace kvq::calib
