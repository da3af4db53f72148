// Kernels and cuBLAS wrappers of the CUDA backward pass (see backward.cuh for the shapes).
// Each kernel mirrors the matching loop of lib/backward/cpu_gradient.cpp: the same
// float operations in the same order per element, and the same reductions in double
// (RMSNorm sums, softmax denominators, softmax-backward row dots, the log-sum-exp), so
// the two differ by summation order only. One block per row for row reductions; block
// reductions go through shared memory in a fixed tree, so results do not depend on
// timing (no atomics anywhere).
#include <cublas_v2.h>

#include <cmath>

#include "kernels/backward.cuh"
#include "kernels/common.cuh"

namespace kvq::kern::bwd {

namespace {

constexpr int kRowThreads = 256;

// Sum over the block in a fixed order: warp trees, then warp 0 over the warp sums.
template <typename T>
__device__ T block_sum(T v, T* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  __syncthreads();  // shared may still be read by a previous reduction
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) >> 5;
  T s = lane < nw ? shared[lane] : T(0);
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1) s += __shfl_xor_sync(0xffffffffu, s, o);
    if (lane == 0) shared[0] = s;
  }
  __syncthreads();
  return shared[0];
}

__device__ float block_max(float v, float* shared) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  __syncthreads();
  if (lane == 0) shared[warp] = v;
  __syncthreads();
  const int nw = (blockDim.x + 31) >> 5;
  float s = lane < nw ? shared[lane] : -INFINITY;
  if (warp == 0) {
    for (int o = 16; o > 0; o >>= 1) s = fmaxf(s, __shfl_xor_sync(0xffffffffu, s, o));
    if (lane == 0) shared[0] = s;
  }
  __syncthreads();
  return shared[0];
}

__global__ void embed_kernel(const int32_t* ids, const float* table, int hidden, float* out) {
  const int t = blockIdx.x;
  const float* src = table + static_cast<int64_t>(ids[t]) * hidden;
  float* dst = out + static_cast<int64_t>(t) * hidden;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) dst[c] = src[c];
}

__global__ void rms_forward_kernel(const float* x, int hidden, const float* w, float eps, float* y,
                                   float* r) {
  __shared__ double sh[32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * hidden;
  double ss = 0.0;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
    const double v = x[row + c];
    ss += v * v;
  }
  ss = block_sum(ss, sh);
  const float inv = static_cast<float>(1.0 / sqrt(ss / static_cast<double>(hidden) + static_cast<double>(eps)));
  if (threadIdx.x == 0) r[blockIdx.x] = inv;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) y[row + c] = (x[row + c] * inv) * w[c];
}

__global__ void rms_backward_kernel(const float* x, int hidden, const float* w, const float* r,
                                    const float* dy, const float* add, float* dx) {
  __shared__ double sh[32];
  const int64_t row = static_cast<int64_t>(blockIdx.x) * hidden;
  double dot = 0.0;
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
    dot += static_cast<double>(dy[row + c] * w[c]) * static_cast<double>(x[row + c]);
  }
  dot = block_sum(dot, sh);
  const float rt = r[blockIdx.x];
  const double rd = rt;
  const float coef = static_cast<float>(rd * rd * rd * dot / static_cast<double>(hidden));
  for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
    float v = rt * (dy[row + c] * w[c]) - x[row + c] * coef;
    if (add) v += add[row + c];
    dx[row + c] = v;
  }
}

__global__ void add_bias_kernel(float* y, int tokens, int cols, int64_t ld, const float* bias) {
  const size_t total = static_cast<size_t>(tokens) * cols;
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < total;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const size_t t = i / cols, c = i % cols;
    y[t * ld + c] += bias[c];
  }
}

__global__ void rope_kernel(float* x, int tokens, int64_t ld, int n_heads, int head_dim, const float* cos_t,
                            const float* sin_t, bool interleaved, bool inverse) {
  const int half = head_dim / 2;
  const size_t total = static_cast<size_t>(tokens) * n_heads * half;
  for (size_t idx = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; idx < total;
       idx += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const int i = static_cast<int>(idx % half);
    const size_t th = idx / half;
    const int h = static_cast<int>(th % n_heads);
    const size_t t = th / n_heads;
    float* v = x + t * ld + static_cast<int64_t>(h) * head_dim;
    const int ia = interleaved ? 2 * i : i;
    const int ib = interleaved ? 2 * i + 1 : i + half;
    const float c = cos_t[t * half + i];
    const float s = inverse ? -sin_t[t * half + i] : sin_t[t * half + i];
    const float a = v[ia], b = v[ib];
    v[ia] = a * c - b * s;
    v[ib] = b * c + a * s;
  }
}

__global__ void swiglu_forward_kernel(const float* g, const float* u, size_t count, float* mid) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float gv = g[i];
    mid[i] = (gv / (1.0f + expf(-gv))) * u[i];
  }
}

__global__ void swiglu_backward_kernel(const float* dmid, const float* g, const float* u, size_t count,
                                       float* dg, float* du) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const float gv = g[i];
    const float sg = 1.0f / (1.0f + expf(-gv));
    const float d = dmid[i];
    du[i] = d * (gv * sg);
    dg[i] = d * u[i] * (sg * (1.0f + gv * (1.0f - sg)));
  }
}

// grid (n, batch): one block per row of one score matrix.
__global__ void causal_softmax_kernel(float* s, int n, int window) {
  __shared__ double shd[32];
  __shared__ float shf[32];
  const int i = blockIdx.x;
  float* row = s + (static_cast<int64_t>(blockIdx.y) * n + i) * n;
  const int lo = window > 0 ? max(0, i - window + 1) : 0;
  float m = -INFINITY;
  for (int j = lo + threadIdx.x; j <= i; j += blockDim.x) m = fmaxf(m, row[j]);
  m = block_max(m, shf);
  double sum = 0.0;
  for (int j = lo + threadIdx.x; j <= i; j += blockDim.x) {
    const float e = expf(row[j] - m);
    row[j] = e;
    sum += static_cast<double>(e);
  }
  sum = block_sum(sum, shd);
  const float inv = static_cast<float>(1.0 / sum);
  for (int j = threadIdx.x; j < n; j += blockDim.x) {
    row[j] = (j >= lo && j <= i) ? row[j] * inv : 0.0f;
  }
}

__global__ void softmax_backward_kernel(const float* p, float* dp, int n) {
  __shared__ double shd[32];
  const int i = blockIdx.x;
  const int64_t off = (static_cast<int64_t>(blockIdx.y) * n + i) * n;
  const float* pr = p + off;
  float* dr = dp + off;
  double dot = 0.0;
  for (int j = threadIdx.x; j <= i; j += blockDim.x) dot += static_cast<double>(pr[j]) * static_cast<double>(dr[j]);
  dot = block_sum(dot, shd);
  const float d = static_cast<float>(dot);
  for (int j = threadIdx.x; j < n; j += blockDim.x) dr[j] = pr[j] * (dr[j] - d);
}

__global__ void cross_entropy_kernel(float* lg, int vocab, const int32_t* target, double count, double* loss,
                                     int* flag) {
  __shared__ double shd[32];
  __shared__ float shf[32];
  float* row = lg + static_cast<int64_t>(blockIdx.x) * vocab;
  const int tgt = target[blockIdx.x];
  const float at_target = row[tgt];
  float m = -INFINITY;
  for (int v = threadIdx.x; v < vocab; v += blockDim.x) m = fmaxf(m, row[v]);
  m = block_max(m, shf);
  if (!isfinite(m)) {
    if (threadIdx.x == 0) {
      *flag = 1;
      loss[blockIdx.x] = NAN;
    }
    return;  // uniform across the block: m is the block's shared value
  }
  double sum = 0.0;
  for (int v = threadIdx.x; v < vocab; v += blockDim.x) sum += exp(static_cast<double>(row[v] - m));
  sum = block_sum(sum, shd);
  if (threadIdx.x == 0) {
    loss[blockIdx.x] = (static_cast<double>(m) + log(sum)) - static_cast<double>(at_target);
  }
  for (int v = threadIdx.x; v < vocab; v += blockDim.x) {
    row[v] = static_cast<float>(exp(static_cast<double>(row[v] - m)) / sum / count);
  }
  __syncthreads();
  if (threadIdx.x == 0) row[tgt] -= static_cast<float>(1.0 / count);
}

__global__ void square_accumulate_kernel(double* acc, const float* g, size_t count) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    const double v = g[i];
    acc[i] += v * v;
  }
}

__global__ void double_to_float_kernel(const double* acc, size_t count, float* out) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    out[i] = static_cast<float>(acc[i]);
  }
}

template <typename T>
__global__ void widen_kernel(const T* src, size_t count, float* dst) {
  for (size_t i = blockIdx.x * static_cast<size_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<size_t>(gridDim.x) * blockDim.x) {
    dst[i] = to_f<T>(src[i]);
  }
}

int set_stream(cublasHandle_t h, cudaStream_t stream) { return static_cast<int>(cublasSetStream(h, stream)); }

}  // namespace

cudaError_t widen_f32(Act act, const void* src, size_t count, float* dst, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  KVQ_DISPATCH_ACT(act, T, widen_kernel<T><<<blocks_for(count, 256), 256, 0, stream>>>(static_cast<const T*>(src), count, dst));
  return launch_status();
}

cudaError_t embed_f32(const int32_t* ids, int tokens, const float* table, int hidden, float* out,
                      cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  embed_kernel<<<tokens, 128, 0, stream>>>(ids, table, hidden, out);
  return launch_status();
}

cudaError_t rms_forward(const float* x, int tokens, int hidden, const float* w, float eps, float* y, float* r,
                        cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  rms_forward_kernel<<<tokens, kRowThreads, 0, stream>>>(x, hidden, w, eps, y, r);
  return launch_status();
}

cudaError_t rms_backward(const float* x, int tokens, int hidden, const float* w, const float* r, const float* dy,
                         const float* add, float* dx, cudaStream_t stream) {
  if (tokens <= 0) return cudaSuccess;
  rms_backward_kernel<<<tokens, kRowThreads, 0, stream>>>(x, hidden, w, r, dy, add, dx);
  return launch_status();
}

cudaError_t add_bias_f32(float* y, int tokens, int cols, int64_t ld, const float* bias, cudaStream_t stream) {
  const size_t total = static_cast<size_t>(tokens) * cols;
  if (total == 0) return cudaSuccess;
  add_bias_kernel<<<blocks_for(total, 256), 256, 0, stream>>>(y, tokens, cols, ld, bias);
  return launch_status();
}

cudaError_t rope_f32(float* x, int tokens, int64_t ld, int n_heads, int head_dim, const float* cos_t,
                     const float* sin_t, bool interleaved, bool inverse, cudaStream_t stream) {
  const size_t total = static_cast<size_t>(tokens) * n_heads * (head_dim / 2);
  if (total == 0) return cudaSuccess;
  rope_kernel<<<blocks_for(total, 256), 256, 0, stream>>>(x, tokens, ld, n_heads, head_dim, cos_t, sin_t,
                                                           interleaved, inverse);
  return launch_status();
}

cudaError_t swiglu_forward_f32(const float* g, const float* u, size_t count, float* mid, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  swiglu_forward_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(g, u, count, mid);
  return launch_status();
}

cudaError_t swiglu_backward_f32(const float* dmid, const float* g, const float* u, size_t count, float* dg,
                                float* du, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  swiglu_backward_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(dmid, g, u, count, dg, du);
  return launch_status();
}

cudaError_t causal_softmax(float* s, int batch, int n, int window, cudaStream_t stream) {
  if (batch <= 0 || n <= 0) return cudaSuccess;
  causal_softmax_kernel<<<dim3(n, batch), kRowThreads, 0, stream>>>(s, n, window);
  return launch_status();
}

cudaError_t softmax_backward(const float* p, float* dp, int batch, int n, cudaStream_t stream) {
  if (batch <= 0 || n <= 0) return cudaSuccess;
  softmax_backward_kernel<<<dim3(n, batch), kRowThreads, 0, stream>>>(p, dp, n);
  return launch_status();
}

cudaError_t cross_entropy_rows(float* lg, int rows, int vocab, const int32_t* target, double count, double* loss,
                               int* flag, cudaStream_t stream) {
  if (rows <= 0) return cudaSuccess;
  cross_entropy_kernel<<<rows, kRowThreads, 0, stream>>>(lg, vocab, target, count, loss, flag);
  return launch_status();
}

cudaError_t square_accumulate(double* acc, const float* g, size_t count, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  square_accumulate_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(acc, g, count);
  return launch_status();
}

cudaError_t double_to_float(const double* acc, size_t count, float* out, cudaStream_t stream) {
  if (count == 0) return cudaSuccess;
  double_to_float_kernel<<<blocks_for(count, 256), 256, 0, stream>>>(acc, count, out);
  return launch_status();
}

// Row-major A[r, c] is column-major A^T: every product below is written for cuBLAS's
// column-major view of the row-major buffers.
int gemm_xwt(cublasHandle_t h, const float* x, int rows, int k, const float* w, int n_out, float* y, float beta,
             cudaStream_t stream) {
  if (int st = set_stream(h, stream)) return st;
  const float alpha = 1.0f;
  // y^T [n_out, rows] = w^T^T ... : op(A) = w (col-major [k, n_out], transposed), B = x^T [k, rows].
  return static_cast<int>(cublasSgemm(h, CUBLAS_OP_T, CUBLAS_OP_N, n_out, rows, k, &alpha, w, k, x, k, &beta, y,
                                      n_out));
}

int gemm_xw(cublasHandle_t h, const float* dy, int rows, int n_out, const float* w, int k, float* dx, float beta,
            cudaStream_t stream) {
  if (int st = set_stream(h, stream)) return st;
  const float alpha = 1.0f;
  // dx^T [k, rows] = w^T [k, n_out] (col-major view of w, as is) * dy^T [n_out, rows].
  return static_cast<int>(cublasSgemm(h, CUBLAS_OP_N, CUBLAS_OP_N, k, rows, n_out, &alpha, w, k, dy, n_out, &beta,
                                      dx, k));
}

int attn_scores(cublasHandle_t h, const AttnGemm& g, const float* a, const float* bmat, float alpha, float* s,
                cudaStream_t stream) {
  if (int st = set_stream(h, stream)) return st;
  const float beta = 0.0f;
  const int hd = g.head_dim;
  const float* A = bmat + static_cast<int64_t>(g.g0) * hd;                          // [hd, n] per kv head
  const float* B = a + (static_cast<int64_t>(g.g0) * g.group + g.j) * hd;            // [hd, n] per query head
  // s^T [n_l, n_i] = bmat_g [n_l, hd] * a_h^T [hd, n_i]
  return static_cast<int>(cublasSgemmStridedBatched(h, CUBLAS_OP_T, CUBLAS_OP_N, g.n, g.n, hd, &alpha, A,
                                                    static_cast<int>(g.ldk), hd, B, static_cast<int>(g.ldq),
                                                    static_cast<long long>(g.group) * hd, &beta, s, g.n,
                                                    static_cast<long long>(g.n) * g.n, g.batch));
}

int attn_apply(cublasHandle_t h, const AttnGemm& g, const float* s, const float* bmat, float alpha, float* out,
               cudaStream_t stream) {
  if (int st = set_stream(h, stream)) return st;
  const float beta = 0.0f;
  const int hd = g.head_dim;
  const float* A = bmat + static_cast<int64_t>(g.g0) * hd;
  float* C = out + (static_cast<int64_t>(g.g0) * g.group + g.j) * hd;
  // out_h^T [hd, n_i] = bmat_g^T [hd, n_l] * s^T [n_l, n_i]
  return static_cast<int>(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_N, hd, g.n, g.n, &alpha, A,
                                                    static_cast<int>(g.ldk), hd, s, g.n,
                                                    static_cast<long long>(g.n) * g.n, &beta, C,
                                                    static_cast<int>(g.ldq), static_cast<long long>(g.group) * hd,
                                                    g.batch));
}

int attn_apply_t(cublasHandle_t h, const AttnGemm& g, const float* s, const float* a, float alpha, float beta,
                 float* out, cudaStream_t stream) {
  if (int st = set_stream(h, stream)) return st;
  const int hd = g.head_dim;
  const float* A = a + (static_cast<int64_t>(g.g0) * g.group + g.j) * hd;
  float* C = out + static_cast<int64_t>(g.g0) * hd;
  // out_g^T [hd, n_l] = a_h^T [hd, n_i] * s [n_i, n_l]  (s^T in the col-major view, transposed back)
  return static_cast<int>(cublasSgemmStridedBatched(h, CUBLAS_OP_N, CUBLAS_OP_T, hd, g.n, g.n, &alpha, A,
                                                    static_cast<int>(g.ldq), static_cast<long long>(g.group) * hd,
                                                    s, g.n, static_cast<long long>(g.n) * g.n, &beta, C,
                                                    static_cast<int>(g.ldk), hd, g.batch));
}

}  // namespace kvq::kern::bwd
