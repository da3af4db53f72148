// kvq-calibrate's pipeline: from a model and a token stream to the calibration file
// (docs/calibration-format.md), resumable.
//
// 1. Capture: for each calibration sequence, one forward + backward pass on the CPU
//    (lib/backward): per layer the pre-RoPE keys, values, their gradients dL/dK, dL/dV,
//    and the absmax of post-RoPE queries/keys and of values. Each sequence is spilled to
//    WORK/seq{i}.bin (written to a temporary name, then renamed), so an interrupted run
//    never redoes a finished sequence. Memory: one sequence's backward (lib/backward
//    keeps only layer checkpoints), not the whole calibration set.
// 2. Fit, one layer at a time: read that layer's slice of every spill file, then
//    per-channel ranges and outlier thresholds, moments, Fisher-weighted NUQ signposts
//    for every bit width, Q-Norm, absmax; write the calibration file with
//    complete_layers = l + 1 (atomically: formats/calibration writes a temporary file
//    and renames). That file is the per-layer checkpoint: --resume reads it, checks that
//    it was made with the same model, data and settings, and continues at the next layer.
// 3. With `crr`: WKVQuant cross-block reconstruction (calib/crr.h) on the same sequences,
//    then the file is written once more with the `wkvquant` fit. A --resume of a complete
//    file without that fit (or with one for other bits/group/window) runs only this step.
// The work folder is removed when the last layer is written.
//
// Determinism: identical inputs and seed give identical bytes, resumed or not, for any
// thread count (every reduction has a fixed order; k-means is thread-count independent;
// Eigen's products run on one thread each, calib/serial_products.h, and CPU capture runs
// the sequences side by side instead). Other backends (CUDA) give other last bits.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "calib/crr_options.h"
#include "calib/signposts.h"
#include "formats/calibration.h"
#include "lib/model.h"

namespace kvq::calib {

struct CalibrateOptions {
  int seqlen = 2048;                  // tokens per sequence (already clamped to the window)
  std::vector<int64_t> starts;        // one per sequence (calib/fisher.h sample_starts)
  double outlier_fraction = 0.01;     // excluded from the signpost and Q-Norm fits
  std::vector<double> outlier_fractions{0.001, 0.005, 0.01, 0.02, 0.05};
  int sink = 1;                       // first tokens of each sequence left out
  std::vector<int> bits{2, 3, 4};
  // Robust signpost weights (calib/signposts.h); the default is KVQuant's raw F.
  SignpostWeighting weighting;
  std::string output;                 // the .kvqc path
  std::string work_dir;               // default: output + ".work"
  bool resume = false;
  // Stop after this many layers have been written (0: all); for tests of --resume.
  int stop_after_layers = 0;
  // WKVQuant CRR (calib/crr.h) after the last layer, on the same sequences, for the
  // `bits` list (crr_options.bits is replaced by it). Off by default: it costs far more
  // than the Fisher capture (docs/calibrate.md, "WKVQuant CRR").
  bool crr = false;
  CrrOptions crr_options;
  CrrProgressFn crr_progress;  // after each (block, bits)
  // Where the capture's forward+backward runs: "cpu" (lib/backward) or "cuda" / "cuda:N"
  // (lib/cuda/cuda_gradient; UnsupportedError in a build without CUDA). The tool resolves
  // "auto". Not part of the file: GPU and CPU gradients differ in the last bits, so their
  // files differ, but each backend is deterministic run to run.
  std::string backend = "cpu";
};

struct LayerFitSummary {
  std::vector<double> k_cost, v_cost;  // weighted k-means cost per bit width
  int64_t k_points = 0, v_points = 0;
};

struct CalibrateSummary {
  std::vector<double> seq_loss;        // per sequence (all of them, resumed ones too)
  int resumed_sequences = 0;
  int resumed_layers = 0;
  int complete_layers = 0;
  double capture_seconds = 0, fit_seconds = 0;
  // Parts of fit_seconds: reading the layer slices of the spill files; ranges, thresholds
  // and moments; NUQ points, signposts (k-means) and Q-Norm. fit_seconds also holds the
  // calibration file writes.
  double spill_read_seconds = 0, thresholds_seconds = 0, signposts_seconds = 0;
  size_t gpu_peak_bytes = 0;           // the CUDA backward pass's peak device memory (0 on CPU)
  std::vector<LayerFitSummary> layers; // the layers fitted in this run (index = layer)
  std::optional<CrrResult> crr;        // when CRR ran in this run
  bool crr_resumed = false;            // the resumed file already had the CRR fit asked for
};

// stage: "capture" (done/total sequences) or "fit" (done/total layers).
using ProgressFn = std::function<void(const char* stage, int64_t done, int64_t total)>;

// `base` carries the fingerprint and provenance; everything else is filled here. Throws
// InvalidArgument for inconsistent options or a --resume file made differently.
CalibrateSummary run_calibration(std::shared_ptr<const Model> model, std::span<const int32_t> ids,
                                 const CalibrateOptions& opt, Calibration base,
                                 const ProgressFn& progress = {});

}  // namespace kvq::calib
