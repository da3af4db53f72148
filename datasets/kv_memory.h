// Memory figures of kvq-eval's compare table: KV bytes of a context of T tokens for a KV
// method (from the codecs' exact byte counts), an estimate of the activation workspace,
// and the longest context that fits a GPU memory budget.
//
// Budget formula (what the "ctx@budget" column solves for the largest T):
//
//   weights_bytes + kv_bytes(T) + workspace_bytes(T) <= budget
//
//   weights_bytes   = parameter count x 2 (the CUDA backend keeps weights in 16 bits, fp32
//                     checkpoints rounded to fp16 at upload; lib/cuda/cuda_backend.h).
//   kv_bytes(T)     = one sequence of T tokens: sum over layers of K codec bytes_for(T) +
//                     V codec bytes_for(T) (codes, scales, zeros, fp16 residuals and the
//                     static parameters: Codec::bytes_for, lib/codecs/codec.h). fp16 (no
//                     codec): T x 2 x layers x kv_heads x head_dim x 2 bytes. A codec whose
//                     size depends on the data (KVQuant's key outliers: bytes_for = -1) uses
//                     the bits per element measured on the evaluation run instead.
//   workspace_bytes = the CUDA backend's step buffers (cuda_backend.cpp ensure_scratch) for a
//                     prefill step of S = min(T, 8192) tokens:
//                     S x (6 hidden + 4 (q_dim + 2 kv_dim) + 4 q_dim + 10 intermediate + 4)
//                     + 1024 x vocab x 4 (a block of fp32 logits) + 2 hidden.
//                     Not counted: the CUDA context and cuBLAS workspace (a fixed few hundred
//                     MiB per process) and the decode-attention split buffers
//                     (n_heads x splits x (head_dim + 2) x 4 bytes, under 1 MiB).
//
// The answer is a memory figure: it is not capped at the model's trained window. Codec
// sizes grow with T except inside one quantization group (KIVI moves a group from its fp16
// residual into codes, which shrinks it), so the bisection is exact to within one group.
// Simulated quantization does not shrink the evaluation's own cache: these are the bytes a
// packed cache of that method holds (lib/cuda/packed_cache.h, kernels/kv_layout.h).
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>

#include "formats/model_config.h"

namespace kvq::codecs {
class SimQuantObserver;
}

namespace kvq::datasets {

// "80GiB", "80 GB", "512MiB", "1.5TiB", "123456" (bytes). Binary units KiB/MiB/GiB/TiB
// (and K/M/G/T) are powers of 1024; KB/MB/GB/TB are powers of 1000. InvalidArgument naming
// `option` for anything else, zero or a negative value.
int64_t parse_byte_size(std::string_view text, std::string_view option);

// KV bytes of one sequence of T tokens. `observer` null: fp16. measured_bits_per_element is
// used for codecs whose size depends on the data (NaN or <= 0: such a codec throws
// InvalidArgument, since the size is then unknown).
int64_t kv_bytes_for_context(const ModelConfig& cfg, const codecs::SimQuantObserver* observer,
                             int64_t T, double measured_bits_per_element);

// The workspace estimate above, for a context of T tokens.
int64_t activation_workspace_bytes(const ModelConfig& cfg, int64_t T, int max_step_tokens = 8192);

// Largest T in [0, max_T] with weights + kv(T) + workspace(T) <= budget (0 when not even
// one token fits), by bisection on T.
int64_t longest_context(int64_t budget_bytes, int64_t weights_bytes,
                        const std::function<int64_t(int64_t)>& kv_bytes,
                        const std::function<int64_t(int64_t)>& workspace_bytes,
                        int64_t max_T = int64_t{1} << 34);

}  // namespace kvq::datasets
