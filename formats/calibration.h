// The calibration file (.kvqc) that kvq-calibrate writes (and checkpoints after every
// layer) and kvq-convert turns into profiles: per-layer statistics and fitted parameters
// for every method and bit width. docs/calibration-format.md is the specification.
//
// Goals: one file serves every method and bit width; resumable (complete_layers);
// versioned, digest-verified, shape-checked against its own header, deterministic bytes.
// Non-goals: computing the statistics (calib/), choosing a method (kvq-convert).
#pragma once

#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "formats/fingerprint.h"
#include "formats/profile.h"
#include "formats/profile_container.h"

namespace kvq {

struct WkvquantFit {
  std::vector<int> bits;            // bit widths CRR was run for, increasing
  int group = 0;                    // channels per quantization group, divides head_dim
  int window = 0;                   // CRR window of consecutive blocks
  std::vector<double> loss_before;  // per block, informational (may be empty)
  std::vector<double> loss_after;
  bool operator==(const WkvquantFit&) const = default;
};

struct Calibration {
  ModelFingerprint fingerprint;
  CalibrationProvenance provenance;
  int sink_tokens = 1;
  double outlier_fraction = 0.01;          // excluded when fitting signposts and Q-Norm
  std::vector<double> outlier_fractions;   // key thresholds stored for these, increasing
  std::vector<int> nuq_bits;               // signposts and Q-Norm fitted for these
  bool fisher_weighted = true;
  // Robust signpost weights (calib/signposts.h SignpostWeighting); written to the file only
  // when not the defaults (1, 0), so files made without them keep their bytes.
  double signpost_clip_quantile = 1.0;
  double signpost_uniform_mix = 0.0;
  std::optional<WkvquantFit> wkvquant;     // nullopt: CRR not run
  int complete_layers = 0;
  FloatTensors tensors;

  // Filled by read_calibration.
  FormatVersion version;
  std::string tensors_sha256;
  std::string file_sha256;  // of the whole file, for profile provenance

  const FloatTensor* find(const std::string& name) const;
  // Throws InvalidArgument naming the tensor when absent.
  const FloatTensor& tensor(const std::string& name) const;
  // Index of `f` in outlier_fractions (compared with a relative tolerance of 1e-9, since
  // "1%" parses to 0.01 exactly as the writer's 0.01 does, but 1/100 computed may not); -1
  // when absent.
  int outlier_index(double f) const;
  bool has_nuq_bits(int bits) const;
};

// "layers.3.k.channel_range" (kind 'q', 'k' or 'v') and "layers.3.k.b3.signposts".
std::string calibration_tensor_name(int layer, char kind, std::string_view quantity);
std::string calibration_bits_name(int layer, KvKind kind, int bits, std::string_view quantity);

// The tensors the header requires (shapes, value rules); InvalidArgument for an
// inconsistent header (outlier_fraction not among outlier_fractions, ...).
TensorRules calibration_tensor_rules(const Calibration& c, const std::string& where);

struct CalibrationReadOptions {
  bool verify_digest = true;
};

Calibration read_calibration(const std::string& path, const CalibrationReadOptions& opts = {});
Calibration parse_calibration(const std::string& file, const uint8_t* bytes, size_t size,
                              const CalibrationReadOptions& opts = {});

// Checks like the reader, then writes atomically; identical inputs give identical bytes.
void write_calibration(const std::string& path, const Calibration& c);

// The `calibration` document JSON as written (sorted keys, digest filled in).
std::string calibration_document(const Calibration& c);

}  // namespace kvq
