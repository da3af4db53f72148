// The launch interface of the backward-pass kernels (kernels/backward.cu): plain C++
// declarations that nvcc and g++ both compile, used by lib/cuda/cuda_gradient.cpp.
//
// Everything here is fp32, row-major, and mirrors lib/backward/cpu_gradient.cpp step by
// step (same reductions in double, same rounding points), so that the GPU gradients differ
// from the CPU reference only by summation order. Why fp32 and not the forward's 16-bit
// GEMM inputs: the gradient check against the CPU (and PyTorch autograd in fp32) then has a
// tolerance derived from fp32 summation alone; 16-bit inputs would add ~2^-11 relative per
// rounding point, compounded over the backward chain (see tests/gpu/backward_test.cpp).
//
// Every launcher enqueues work on `stream` and returns a status (cudaError_t, or a
// cublasStatus_t as int for the GEMMs); kernels never throw, exit or print. Deterministic:
// no atomics, every reduction has a fixed order for a given shape.
// Shapes are written next to every pointer, outermost first.
#pragma once

#include <cstddef>
#include <cstdint>

#include <cuda_runtime.h>

#include "kernels/ops.cuh"

namespace kvq::kern::bwd {

// dst[i] = src[i] widened to fp32 (exact): the weights of fp16/bf16 checkpoints are uploaded
// as stored and widened on the GPU. src: [count] Act, dst: [count] fp32.
cudaError_t widen_f32(Act act, const void* src, size_t count, float* dst, cudaStream_t stream);

// out[t, :] = table[ids[t], :].  ids: [tokens] (validated by the caller),
// table: [vocab, hidden] fp32, out: [tokens, hidden] fp32.
cudaError_t embed_f32(const int32_t* ids, int tokens, const float* table, int hidden, float* out,
                      cudaStream_t stream);

// y[t, c] = (x[t, c] * r[t]) * w[c], r[t] = 1/sqrt(mean_c x[t, c]^2 + eps), the sum of
// squares in double (as the CPU reference). x, y: [tokens, hidden], w: [hidden], r: [tokens].
cudaError_t rms_forward(const float* x, int tokens, int hidden, const float* w, float eps,
                        float* y, float* r, cudaStream_t stream);

// dx[t, c] = r g - x[t, c] * coef (+ add[t, c] when add is not null), g = dy[t, c] * w[c],
// coef = r^3 (sum_c g x) / hidden, the dot in double.  x, dy, dx, add: [tokens, hidden].
// dx may alias add (not x or dy).
cudaError_t rms_backward(const float* x, int tokens, int hidden, const float* w, const float* r,
                         const float* dy, const float* add, float* dx, cudaStream_t stream);

// y[t, c] += bias[c] for c < cols.  y: [tokens, ld], bias: [cols].
cudaError_t add_bias_f32(float* y, int tokens, int cols, int64_t ld, const float* bias,
                         cudaStream_t stream);

// In-place rotation of heads h < n_heads (columns [h*head_dim, (h+1)*head_dim) of x:
// [tokens, ld]); token t at position t. cos_t, sin_t: [positions, head_dim/2] (the CPU
// reference's double angles rounded once). interleaved: 2i pairs with 2i+1, else i with
// i + head_dim/2. inverse: the transpose (the gradient of the rotation).
cudaError_t rope_f32(float* x, int tokens, int64_t ld, int n_heads, int head_dim,
                     const float* cos_t, const float* sin_t, bool interleaved, bool inverse,
                     cudaStream_t stream);

// mid = silu(g) * u, elementwise over count.  g, u, mid: [count].
cudaError_t swiglu_forward_f32(const float* g, const float* u, size_t count, float* mid,
                               cudaStream_t stream);
// du = dmid * silu(g), dg = dmid * u * s(g)(1 + g(1 - s(g))).  All [count]; dg may alias dmid.
cudaError_t swiglu_backward_f32(const float* dmid, const float* g, const float* u, size_t count,
                                float* dg, float* du, cudaStream_t stream);

// In-place causal softmax of `batch` score matrices s: [batch, n, n] (row i = query i):
// entries j in [lo(i), i] (lo = i - window + 1 when window > 0, else 0) become
// exp(s - max) / sum (the sum in double), all others 0.
cudaError_t causal_softmax(float* s, int batch, int n, int window, cudaStream_t stream);

// Softmax backward in place: dp[b, i, j] = p (dp - sum_j' p dp) over the row (dot in double).
// p, dp: [batch, n, n]; masked entries of p are 0 and give 0.
cudaError_t softmax_backward(const float* p, float* dp, int batch, int n, cudaStream_t stream);

// Cross entropy over rows of logits: loss[i] = logsumexp(lg[i, :]) - lg[i, target[i]]
// (double), and lg[i, :] is replaced by d(mean loss)/d(logit) = (softmax - onehot) / count.
// lg: [rows, vocab], target: [rows] (validated by the caller), loss: [rows] double.
// flag: set to 1 when a row's maximum is not finite (the caller reports it).
cudaError_t cross_entropy_rows(float* lg, int rows, int vocab, const int32_t* target,
                               double count, double* loss, int* flag, cudaStream_t stream);

// acc[i] += (double)g[i]^2 over count (the Fisher information accumulators).
cudaError_t square_accumulate(double* acc, const float* g, size_t count, cudaStream_t stream);

// Rounds double accumulators to float: out[i] = (float)acc[i].
cudaError_t double_to_float(const double* acc, size_t count, float* out, cudaStream_t stream);

// Row-major fp32 GEMMs through cuBLAS (no TF32: the caller keeps the handle in
// CUBLAS_DEFAULT_MATH, under which cublasSgemm computes in full fp32).
// y[rows, n_out] = x[rows, k] * w[n_out, k]^T + beta * y   (a linear layer's forward).
int gemm_xwt(cublasHandle_t h, const float* x, int rows, int k, const float* w, int n_out, float* y,
             float beta, cudaStream_t stream);
// dx[rows, k] = dy[rows, n_out] * w[n_out, k] + beta * dx   (its input gradient).
int gemm_xw(cublasHandle_t h, const float* dy, int rows, int n_out, const float* w, int k, float* dx,
            float beta, cudaStream_t stream);

// Attention GEMMs for `batch` kv heads g0 .. g0+batch-1 and one query head per kv head:
// query head h(g) = g * group + j. q: [n, ldq] (head h at column h*head_dim), k, v: [n, ldk]
// (kv head g at column g*head_dim), s: [batch, n, n] row-major (row = query position).
struct AttnGemm {
  int n = 0, head_dim = 0, group = 1, j = 0, g0 = 0, batch = 0;
  int64_t ldq = 0, ldk = 0;
};
// s[b, i, l] = alpha * sum_d a[i, h(g) d] * bmat[l, g d]: with a = q, bmat = k the scores;
// with a = dO, bmat = v the dP matrix.
int attn_scores(cublasHandle_t h, const AttnGemm& g, const float* a, const float* bmat, float alpha,
                float* s, cudaStream_t stream);
// out[i, h(g) d] = alpha * sum_l s[b, i, l] * bmat[l, g d]: with s = P, bmat = v the
// attention output; with s = dS, bmat = k (alpha = scale) dQ. out: [n, ldq].
int attn_apply(cublasHandle_t h, const AttnGemm& g, const float* s, const float* bmat, float alpha,
               float* out, cudaStream_t stream);
// out[l, g d] = alpha * sum_i s[b, i, l] * a[i, h(g) d] + beta * out: with s = P, a = dO
// the dV contribution; with s = dS, a = q (alpha = scale) the dK contribution. out: [n, ldk].
int attn_apply_t(cublasHandle_t h, const AttnGemm& g, const float* s, const float* a, float alpha,
                 float beta, float* out, cudaStream_t stream);

}  // namespace kvq::kern::bwd
