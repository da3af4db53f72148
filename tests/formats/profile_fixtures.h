// Synthetic calibration files and profiles for the profile/calibration tests and the
// golden files: every value comes from SplitMix64 (portable, unlike the distributions of
// <random>), so the same seed gives the same bytes on every compiler. Each fixture obeys
// its format's value rules (ordered ranges, increasing signposts in [-1, 1], positive
// scales); the tests break them on purpose.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "formats/calibration.h"
#include "formats/profile.h"
#include "formats/profile_convert.h"

namespace kvq_test {

struct SplitMix64 {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  // Uniform in [0, 1) with 24 bits: exactly representable as float.
  float unit() { return static_cast<float>(next() >> 40) * (1.0f / 16777216.0f); }
  float range(float lo, float hi) { return lo + (hi - lo) * unit(); }
};

// An awkward small model: GQA 2 query heads per kv head, 3 layers, head_dim 8.
inline kvq::ModelFingerprint tiny_fingerprint() {
  kvq::ModelFingerprint fp;
  fp.architecture = "LlamaForCausalLM";
  fp.layers = 3;
  fp.heads = 4;
  fp.kv_heads = 2;
  fp.head_dim = 8;
  fp.rope_layout = "rotate_half";
  fp.rope_theta = 10000.0;
  fp.config_source = "config.json";
  fp.config_sha256 = std::string(64, 'a');
  fp.kv_weights_sha256 = std::string(64, 'b');
  return fp;
}

inline kvq::CalibrationProvenance tiny_provenance() {
  kvq::CalibrationProvenance p;
  p.dataset = "synthetic";
  p.dataset_sha256 = std::string(64, 'c');
  p.sequences = 4;
  p.tokens = 128;
  p.seed = 7;
  p.tool = "kvq-test";
  p.version = "0.0.0";
  p.git_revision = "none";
  return p;
}

inline kvq::WriterInfo golden_writer() { return {"kvq-test-golden", "0.0.0", "none"}; }

inline kvq::FloatTensor random_vector(SplitMix64& rng, int64_t n, float lo, float hi) {
  kvq::FloatTensor t{{n}, std::vector<float>(static_cast<size_t>(n))};
  for (auto& x : t.data) x = rng.range(lo, hi);
  return t;
}

// Shape [2, d]: row 0 below row 1 in every column.
inline kvq::FloatTensor random_rows(SplitMix64& rng, int64_t d, float spread) {
  kvq::FloatTensor t{{2, d}, std::vector<float>(static_cast<size_t>(2 * d))};
  for (int64_t j = 0; j < d; ++j) {
    const float lo = rng.range(-spread, -0.1f * spread);
    t.data[static_cast<size_t>(j)] = lo;
    t.data[static_cast<size_t>(d + j)] = rng.range(0.1f * spread, spread);
  }
  return t;
}

// 2^bits strictly increasing values in [-1, 1], one per equal cell (so gaps stay >= 0.2 of
// a cell: a flipped low mantissa byte cannot break the order).
inline kvq::FloatTensor random_signposts(SplitMix64& rng, int bits) {
  const int n = 1 << bits;
  kvq::FloatTensor t{{n}, std::vector<float>(static_cast<size_t>(n))};
  for (int i = 0; i < n; ++i) {
    t.data[static_cast<size_t>(i)] = -1.0f + 2.0f * (static_cast<float>(i) + 0.1f + 0.8f * rng.unit()) / static_cast<float>(n);
  }
  return t;
}

// A complete (or partial) calibration with every quantity of docs/calibration-format.md.
inline kvq::Calibration synthetic_calibration(const kvq::ModelFingerprint& fp, uint64_t seed,
                                              int complete_layers, bool with_wkvquant = true) {
  SplitMix64 rng{seed};
  kvq::Calibration c;
  c.fingerprint = fp;
  c.provenance = tiny_provenance();
  c.sink_tokens = 1;
  c.outlier_fraction = 0.01;
  c.outlier_fractions = {0.001, 0.01, 0.05};
  c.nuq_bits = {2, 3, 4};
  c.fisher_weighted = true;
  if (with_wkvquant) c.wkvquant = kvq::WkvquantFit{{3, 4}, fp.head_dim, 2, {0.5, 0.25}, {0.125, 0.0625}};
  c.complete_layers = complete_layers;
  const int64_t d = fp.kv_dim(), q = fp.q_dim();
  const auto nf = static_cast<int64_t>(c.outlier_fractions.size());
  for (int i = 0; i < complete_layers; ++i) {
    for (kvq::KvKind kind : {kvq::KvKind::kKeys, kvq::KvKind::kValues}) {
      const char k = kvq::kind_letter(kind);
      c.tensors[kvq::calibration_tensor_name(i, k, "channel_range")] = random_rows(rng, d, 8.0f);
      c.tensors[kvq::calibration_tensor_name(i, k, "moments")] = kvq::FloatTensor{{2}, {rng.range(-1, 1), rng.range(0.5f, 2)}};
      for (int b : c.nuq_bits) {
        c.tensors[kvq::calibration_bits_name(i, kind, b, "signposts")] = random_signposts(rng, b);
        c.tensors[kvq::calibration_bits_name(i, kind, b, "qnorm")] = kvq::FloatTensor{{2}, {rng.range(0.9f, 1.1f), rng.range(-0.1f, 0.1f)}};
      }
      if (c.wkvquant) {
        for (int b : c.wkvquant->bits) {
          c.tensors[kvq::calibration_bits_name(i, kind, b, "smooth_delta")] = random_vector(rng, d, -1, 1);
          c.tensors[kvq::calibration_bits_name(i, kind, b, "smooth_scale")] = random_vector(rng, d, 0.25f, 4);
        }
      }
    }
    // Thresholds nested: a larger outlier fraction gives a narrower band.
    kvq::FloatTensor th{{nf, 2, d}, std::vector<float>(static_cast<size_t>(nf * 2 * d))};
    for (int64_t j = 0; j < d; ++j) {
      const float lo = rng.range(-6, -3), hi = rng.range(3, 6);
      for (int64_t f = 0; f < nf; ++f) {
        const float shrink = 1.0f - 0.1f * static_cast<float>(f);
        th.data[static_cast<size_t>(f * 2 * d + j)] = lo * shrink;
        th.data[static_cast<size_t>(f * 2 * d + d + j)] = hi * shrink;
      }
    }
    c.tensors[kvq::calibration_tensor_name(i, 'k', "outlier_threshold")] = std::move(th);
    c.tensors[kvq::calibration_tensor_name(i, 'q', "post_rope_absmax")] = random_vector(rng, q, 0.5f, 12);
    c.tensors[kvq::calibration_tensor_name(i, 'k', "post_rope_absmax")] = random_vector(rng, d, 0.5f, 12);
    c.tensors[kvq::calibration_tensor_name(i, 'v', "absmax")] = random_vector(rng, d, 0.5f, 12);
  }
  return c;
}

// A profile made through make_profile from a synthetic calibration.
inline kvq::Profile synthetic_profile(const std::string& spec, uint64_t seed = 1) {
  const kvq::ModelFingerprint fp = tiny_fingerprint();
  kvq::Calibration c = synthetic_calibration(fp, seed, fp.layers);
  c.file_sha256 = std::string(64, 'd');
  return kvq::make_profile(kvq::parse_profile_spec(spec), &c, nullptr, golden_writer(), nullptr);
}

}  // namespace kvq_test
