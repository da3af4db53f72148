// WKVQuant CRR's options, parameters and results without Eigen (calib/crr.h has the
// algorithm and its description), so that calib/calibrate.h and the tools can carry them.
#pragma once

#include <cstdint>
#include <functional>
#include <vector>

#include "formats/calibration.h"

namespace kvq::calib {

// Per-channel smoothing of one side of one layer, [kv_dim] each.
template <typename S>
struct Smoothing {
  std::vector<S> delta, s;
};

template <typename S>
struct BlockSmoothing {
  Smoothing<S> k, v;
};

struct SmoothingGrad {
  std::vector<double> delta, s;
};

struct CrrOptions {
  int window = 5;             // k, clamped to the layer count
  int epochs = 2;             // passes over the sequences per window
  double lr = 5e-3;           // Adam step on the normalised variables (calib/crr.h)
  std::vector<int> bits{2, 3, 4};
  int group = 0;              // 0: head_dim
  int sink = 1;               // tokens left out of the initialisation statistics
  double alpha = 0.5;         // initialisation exponent (init_smoothing; measured best)
};

struct CrrBitsResult {
  int bits = 0;
  std::vector<BlockSmoothing<float>> layers;
  std::vector<double> loss_before, loss_after;  // per block (window starting there)
  double loss_init = 0;  // window 0's loss at the statistics initialisation
  double loss_identity = 0;  // window 0's loss with delta 0, s 1 (the codec's defaults)
};

struct CrrResult {
  int window = 0, group = 0, epochs = 0;
  double lr = 0;
  std::vector<CrrBitsResult> per_bits;
  double seconds = 0;
};

// Called after each (block, bits): done/total over all of them.
using CrrProgressFn = std::function<void(int bits, int block, double before, double after, int64_t done,
                                         int64_t total)>;

// Stores the result in a calibration: wkvquant header (loss arrays bits-major: bits[0]'s
// blocks, then bits[1]'s, ...) and the smooth_delta / smooth_scale tensors per layer.
void store_crr(const CrrResult& r, Calibration& c);

}  // namespace kvq::calib
