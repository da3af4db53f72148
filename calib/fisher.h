// Fisher information for KVQuant: per layer, the sum over calibration sequences of the
// squared gradient of the sequence's mean next-token loss with respect to each k_proj
// output (pre-RoPE keys) and v_proj output, per [position, channel] -- the quantity
// ../shared/tools/hf_oracle.py `fisher` writes, so the two can be compared element by
// element when given the same starts.
//
// Calibration sequences: tokens[s .. s+seqlen) for starts s drawn uniformly from
// [0, n_tokens - seqlen - 1) -- the same range as the oracle's
// torch.randint(0, len(ids) - L - 1) -- with calib/rng.h's SplitMix64 seeded by `seed`
// (torch's generator cannot be reproduced here; pass the oracle's starts explicitly to
// compare). Starts are drawn independently (repeats allowed, as with torch.randint).
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "lib/model.h"

namespace kvq::calib {

// Throws InvalidArgument when the token stream is shorter than seqlen + 2.
std::vector<int64_t> sample_starts(int64_t n_tokens, int seqlen, int nseq, uint64_t seed);

struct FisherInfo {
  int seqlen = 0;
  int kv_dim = 0;
  std::vector<std::vector<float>> k, v;  // per layer [seqlen, kv_dim], summed over sequences
  std::vector<double> loss;              // per sequence
};

// Runs the CPU backward pass (lib/backward) on every sequence; squares are accumulated in
// double and rounded to float once.
FisherInfo fisher_information(std::shared_ptr<const Model> model, std::span<const int32_t> ids,
                              std::span<const int64_t> starts, int seqlen);

// The same on a chosen backend: "cpu" (above) or "cuda" / "cuda:N" (lib/cuda/cuda_gradient:
// the GPU backward pass, squares accumulated on the device in double). UnsupportedError in a
// build without CUDA.
FisherInfo fisher_information(std::shared_ptr<const Model> model, std::span<const int32_t> ids,
                              std::span<const int64_t> starts, int seqlen, const std::string& backend);

}  // namespace kvq::calib
