// The launch interface of kvq's CUDA kernels: plain C++ declarations that both nvcc (the
// kernels/*.cu files) and g++ (lib/cuda/*.cpp, tests/gpu) compile. Every launcher enqueues
// work on `stream` and returns a status (cudaError_t, or a cublasStatus_t for gemm): kernels
// never exit, throw or print; the caller (lib/cuda/check.h) turns a status into a kvq::Error.
//
// Conventions
//  - Act: the element type of the weights, of the activations fed to GEMMs and of the KV
//    cache: fp16 or bf16 (the checkpoint's own; fp32 checkpoints are uploaded as fp16).
//    The residual stream, GEMM outputs and all reductions are fp32.
//  - "rows" of a forward call: the R = rows * n tokens of a chunk, token (r, i) at index
//    r * n + i. Row r continues cache slot slot[r] from position pos0[r].
//  - KV cache of one layer: [slots, kv_heads, max_tokens, head_dim] of Act, post-RoPE keys.
//  - Shapes are written next to every pointer, outermost first.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

typedef struct cublasContext* cublasHandle_t;

namespace kvq::kern {

enum class Act : int { kF16 = 0, kBF16 = 1 };

// Largest head_dim the attention kernels support; head_dim must be a multiple of 8.
constexpr int kMaxHeadDim = 128;
// Largest n_heads / n_kv_heads the decode kernel supports.
constexpr int kMaxGroup = 8;

// out[t, :] = table[ids[t], :] as fp32.  ids: [tokens] (validated by the caller),
// table: [vocab, hidden] Act, out: [tokens, hidden] fp32.
cudaError_t embed(Act act, const int32_t* ids, int tokens, const void* table, int hidden,
                  float* out, cudaStream_t stream);

// out = x * rsqrt(mean(x^2) + eps) * w, computed in fp32 and rounded once to Act.
// x: [tokens, hidden] fp32, w: [hidden] Act, out: [tokens, hidden] Act.
// flag (may be null): set to 1 when x holds a NaN or Inf (the cheap per-layer check).
cudaError_t rmsnorm(Act act, const float* x, int tokens, int hidden, const void* w, float eps,
                    void* out, int* flag, cudaStream_t stream);

// The same RMSNorm reading x once with 16-byte loads (the row held in registers): for
// hidden % 4 == 0, hidden <= 16384 and 16/8/8-byte aligned x/w/out; otherwise it calls
// rmsnorm(). The sum of squares is added in another order than rmsnorm()'s (a few ulps of
// the sum), so the two may differ by one 16-bit rounding step in rare elements.
cudaError_t rmsnorm_vec(Act act, const float* x, int tokens, int hidden, const void* w, float eps,
                        void* out, int* flag, cudaStream_t stream);

// y[t, c] += bias[c].  y: [tokens, ld] fp32 (first `cols` columns), bias: [cols] Act.
cudaError_t add_bias(Act act, float* y, int tokens, int cols, int64_t ld, const void* bias,
                     cudaStream_t stream);

// In-place RoPE on fp32 heads: x: [tokens, ld], heads at columns [h*head_dim, (h+1)*head_dim)
// for h < n_heads. Token t sits at position pos0[t / n] + t % n. inv_freq: [head_dim/2]
// fp32. interleaved: channel 2i pairs with 2i+1 (llama2.c); else i with i + head_dim/2 (HF).
// Angles are pos * inv_freq[i] in fp32, cos/sin by the accurate cosf/sinf, like the
// references (HF computes freqs in fp32 too).
cudaError_t rope(float* x, int tokens, int64_t ld, int n_heads, int head_dim, int n,
                 const int32_t* pos0, const float* inv_freq, bool interleaved,
                 cudaStream_t stream);

// Rounds a fp32 block to Act: out[t, c] = in[t, c] for c < cols.
// in: [tokens, ld_in] fp32, out: [tokens, ld_out] Act.
cudaError_t to_act(Act act, const float* in, int tokens, int cols, int64_t ld_in, void* out,
                   int64_t ld_out, cudaStream_t stream);

// Writes keys and values of a chunk into the cache at their positions.
// k, v: [tokens, ld] fp32 (kv_heads*head_dim columns each), tokens = rows * n, token (r, i)
// goes to cache[slot[r], h, pos0[r] + i, :].  k_cache, v_cache: [slots, kv_heads, max_tokens,
// head_dim] Act.
cudaError_t store_kv(Act act, const float* k, const float* v, int64_t ld, int rows, int n,
                     const int32_t* slot, const int32_t* pos0, int kv_heads, int head_dim,
                     int max_tokens, void* k_cache, void* v_cache, cudaStream_t stream);

// out[t, c] = silu(gu[t, c]) * gu[t, inter + c].  gu: [tokens, 2*inter] fp32 (gate | up),
// out: [tokens, inter] Act.
cudaError_t swiglu(Act act, const float* gu, int tokens, int inter, void* out,
                   cudaStream_t stream);

// The fused form of rope(q), rope(k), store_kv(k, v) and to_act(q), bit-identical to them:
// one pass over the fp32 GEMM output. qkv: [rows * n, ld] fp32, token (r, i) at row r * n + i,
// position pos0[r] + i; q at columns [0, QD), k at [QD, QD + KV), v at [QD + KV, QD + 2 KV)
// (QD = n_heads * head_dim, KV = kv_heads * head_dim). Writes q_out: [rows * n, QD] Act
// (rotated), k_cache / v_cache: [slots, kv_heads, max_tokens, head_dim] Act at
// [slot[r], g, pos0[r] + i, :] (keys rotated). inv_freq: [head_dim/2] fp32 (any scaling
// applied by the caller). Requires head_dim % 8 == 0 and head_dim <= 256; qkv is not written.
cudaError_t rope_store_qkv(Act act, const float* qkv, int64_t ld, int rows, int n, int n_heads,
                           int kv_heads, int head_dim, const int32_t* slot, const int32_t* pos0,
                           const float* inv_freq, bool interleaved, int max_tokens, void* q_out,
                           void* k_cache, void* v_cache, cudaStream_t stream);

// out[t, c] = round(silu(g) * u) in fp32 with g = gu[t, c], u = gu[t, inter + c] 16-bit:
// the same bits as swiglu() on the widened values. gu: [tokens, 2*inter] Act (gate | up),
// out: [tokens, inter] Act.
cudaError_t swiglu_act(Act act, const void* gu, int tokens, int inter, void* out,
                       cudaStream_t stream);

struct AttentionArgs {
  const void* q = nullptr;        // [rows, n, n_heads, head_dim] Act, post-RoPE
  const void* k_cache = nullptr;  // [slots, kv_heads, max_tokens, head_dim] Act
  const void* v_cache = nullptr;  // same
  const int32_t* slot = nullptr;  // [rows]
  const int32_t* pos0 = nullptr;  // [rows]: query (r, i) sits at pos0[r] + i and sees keys
                                  // 0 .. pos0[r] + i of its slot (causal)
  // Past-only quantization (WKVQuant POQ): when set, the key/value on the diagonal (key
  // position == query position) is taken from here instead of the cache.
  const void* k_self = nullptr;   // [rows, n, kv_heads, head_dim] Act, post-RoPE, or null
  const void* v_self = nullptr;   // same
  void* out = nullptr;            // [rows, n, n_heads, head_dim] Act
  int rows = 0, n = 0, n_heads = 0, kv_heads = 0, head_dim = 0, max_tokens = 0;
  int window = 0;                 // sliding window: key j visible iff pos - j < window; 0 = off
  float scale = 0.f;              // softmax scale, 1/sqrt(head_dim)
};

// Causal attention for chunks of any length: tiles of 64 queries x 64 keys on the tensor
// cores (fp16/bf16 operands, fp32 scores and accumulators), online softmax in fp32; never
// holds a [n, keys] matrix. Requires head_dim % 8 == 0 and head_dim <= kMaxHeadDim.
cudaError_t attention_prefill(Act act, const AttentionArgs& a, cudaStream_t stream);

// Workspace bytes attention_decode needs for `rows` sequences of up to `max_len` keys.
size_t attention_decode_workspace(const AttentionArgs& a, int max_len, int sm_count);

// Attention for one new token per row (a.n == 1) over up to max_len keys (max over rows of
// pos0 + 1): the keys are split into chunks processed by separate blocks (flash-decoding),
// then merged. workspace: attention_decode_workspace() bytes.
cudaError_t attention_decode(Act act, const AttentionArgs& a, int max_len, int sm_count,
                             void* workspace, size_t workspace_bytes, cudaStream_t stream);

// nll[t] = logsumexp(logits[t, :]) - logits[t, target[t]] in fp32; NaN when target[t] < 0.
// logits: [tokens, vocab] fp32, target: [tokens], nll: [tokens] fp32.
cudaError_t nll_rows(const float* logits, int tokens, int vocab, const int32_t* target,
                     float* nll, cudaStream_t stream);

// Counts non-finite values of x: [count] fp32 into *flag (set to 1 when any).
cudaError_t check_finite(const float* x, size_t count, int* flag, cudaStream_t stream);

// Seeded pseudo-random weights for synthetic models: dst[i] = scale * u(seed, i) with u
// uniform in [-1, 1) from a counter-based hash (the same values on any GPU and launch shape).
cudaError_t fill_uniform(Act act, void* dst, size_t count, float scale, uint64_t seed,
                         cudaStream_t stream);
// Fills dst with `value` (e.g. 1.0 for norm weights).
cudaError_t fill_const(Act act, void* dst, size_t count, float value, cudaStream_t stream);

// y[tokens, n_out] = x[tokens, k] * w[n_out, k]^T + beta * y, fp32 accumulation and output
// (cuBLAS, no TF32: the inputs are already 16-bit). Returns a cublasStatus_t as int (0 = ok).
int gemm(cublasHandle_t handle, Act act, const void* x, int tokens, int k, const void* w,
         int n_out, float* y, float beta, cudaStream_t stream);

// y[tokens, n_out] = x[tokens, k] * w[n_out, k]^T rounded once to Act (fp32 accumulation,
// the output conversion in cuBLAS's epilogue): for GEMMs whose consumer reads 16 bits anyway.
int gemm_act(cublasHandle_t handle, Act act, const void* x, int tokens, int k, const void* w,
             int n_out, void* y, cudaStream_t stream);

}  // namespace kvq::kern
