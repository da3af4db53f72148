// GEMM algorithm microbenchmark for the prefill projections (not a test; notes/cuda-perf.md).
// Question it answers: does cuBLAS's default choice in kern::gemm / kern::gemm_act
// (cublasGemmEx, CUBLAS_GEMM_DEFAULT) leave time on the table for the Llama-2-7B prefill
// shapes, against the best of cuBLASLt's heuristic candidates timed one by one?
// For each projection (qkv, o_proj with beta = 1, gate|up with a 16-bit output, down with
// beta = 1) at T = 8192, 16384, 32768 tokens it prints the median of 7 launches (after 2
// warm-ups) of: cublasGemmEx as kern::gemm calls it, cuBLASLt's first heuristic result, and
// the fastest of up to 16 heuristic results (its index), in TFLOP/s (2 T k n_out FLOPs).
// Inputs are random in [-1, 1) (fp16); outputs are not compared (same library, same
// fp32 accumulation; the algorithms differ in tiling and split-K only).
// Build: nvcc -std=c++17 -O3 -arch=sm_90 scripts/bench/gemm_algo_bench.cu -lcublasLt -lcublas
#include <cublasLt.h>
#include <cublas_v2.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <vector>

#define CK(x)                                                                              \
  do {                                                                                     \
    cudaError_t e_ = (x);                                                                  \
    if (e_ != cudaSuccess) {                                                               \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #x, cudaGetErrorString(e_)); \
      std::exit(1);                                                                        \
    }                                                                                      \
  } while (0)
#define CB(x)                                                                  \
  do {                                                                         \
    int s_ = static_cast<int>(x);                                              \
    if (s_ != 0) {                                                             \
      std::fprintf(stderr, "%s:%d: %s: status %d\n", __FILE__, __LINE__, #x, s_); \
      std::exit(1);                                                            \
    }                                                                          \
  } while (0)

namespace {

__global__ void fill(__half* p, size_t n, unsigned seed) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    unsigned h = static_cast<unsigned>(i) * 2654435761u ^ seed;
    h ^= h >> 15;
    h *= 2246822519u;
    h ^= h >> 13;
    p[i] = __float2half(static_cast<float>(h & 0xffff) / 32768.0f - 1.0f);
  }
}

template <typename F>
double median_ms(F&& launch, cudaStream_t s) {
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  for (int i = 0; i < 2; ++i) launch();
  std::vector<float> t;
  for (int i = 0; i < 7; ++i) {
    CK(cudaEventRecord(a, s));
    launch();
    CK(cudaEventRecord(b, s));
    CK(cudaEventSynchronize(b));
    float ms = 0;
    CK(cudaEventElapsedTime(&ms, a, b));
    t.push_back(ms);
  }
  std::sort(t.begin(), t.end());
  CK(cudaEventDestroy(a));
  CK(cudaEventDestroy(b));
  return t[t.size() / 2];
}

struct Shape {
  const char* name;
  int n_out, k;
  float beta;
  bool out16;  // 16-bit output (gate|up through kern::gemm_act), else fp32
};

}  // namespace

int main() {
  const Shape shapes[] = {{"qkv", 12288, 4096, 0.f, false},
                          {"o_proj", 4096, 4096, 1.f, false},
                          {"gate|up", 22016, 4096, 0.f, true},
                          {"down", 4096, 11008, 1.f, false}};
  const int Ts[] = {8192, 16384, 32768};
  cudaDeviceProp prop{};
  CK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device %s, %d SMs\n", prop.name, prop.multiProcessorCount);
  cudaStream_t s;
  CK(cudaStreamCreate(&s));
  cublasHandle_t hdl;
  CB(cublasCreate(&hdl));
  CB(cublasSetStream(hdl, s));
  cublasLtHandle_t lt;
  CB(cublasLtCreate(&lt));
  const size_t ws_bytes = size_t(64) << 20;
  void* ws = nullptr;
  CK(cudaMalloc(&ws, ws_bytes));
  const size_t max_x = size_t(32768) * 11008, max_w = size_t(22016) * 4096, max_y = size_t(32768) * 22016;
  __half *x, *w;
  float* y;
  CK(cudaMalloc(&x, max_x * 2));
  CK(cudaMalloc(&w, max_w * 2));
  CK(cudaMalloc(&y, max_y * 4));
  fill<<<1024, 256, 0, s>>>(x, max_x, 1u);
  fill<<<1024, 256, 0, s>>>(w, max_w, 2u);
  CK(cudaMemsetAsync(y, 0, max_y * 4, s));
  std::printf("%-8s %6s %9s %9s %9s %5s %9s\n", "gemm", "T", "GemmEx", "lt#0", "lt best", "idx", "best/ex");
  for (int T : Ts) {
    for (const Shape& sh : shapes) {
      const double flop = 2.0 * T * sh.k * sh.n_out;
      const float alpha = 1.0f;
      const cudaDataType_t ct = sh.out16 ? CUDA_R_16F : CUDA_R_32F;
      // As kern::gemm: column-major y^T[n_out, T] = w[n_out, k] x^T (w used transposed).
      const double t_ex = median_ms([&] {
        CB(cublasGemmEx(hdl, CUBLAS_OP_T, CUBLAS_OP_N, sh.n_out, T, sh.k, &alpha, w, CUDA_R_16F, sh.k, x,
                        CUDA_R_16F, sh.k, &sh.beta, y, ct, sh.n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT));
      }, s);
      cublasLtMatmulDesc_t op;
      CB(cublasLtMatmulDescCreate(&op, CUBLAS_COMPUTE_32F, CUDA_R_32F));
      const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
      CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof ta));
      CB(cublasLtMatmulDescSetAttribute(op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof tb));
      cublasLtMatrixLayout_t la, lb, lc;
      CB(cublasLtMatrixLayoutCreate(&la, CUDA_R_16F, sh.k, sh.n_out, sh.k));
      CB(cublasLtMatrixLayoutCreate(&lb, CUDA_R_16F, sh.k, T, sh.k));
      CB(cublasLtMatrixLayoutCreate(&lc, ct, sh.n_out, T, sh.n_out));
      cublasLtMatmulPreference_t pref;
      CB(cublasLtMatmulPreferenceCreate(&pref));
      CB(cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes,
                                              sizeof ws_bytes));
      cublasLtMatmulHeuristicResult_t res[16];
      int found = 0;
      CB(cublasLtMatmulAlgoGetHeuristic(lt, op, la, lb, lc, lc, pref, 16, res, &found));
      double t0 = 0, best = 1e30;
      int best_i = -1;
      for (int i = 0; i < found; ++i) {
        const double t = median_ms([&] {
          CB(cublasLtMatmul(lt, op, &alpha, w, la, x, lb, &sh.beta, y, lc, y, lc, &res[i].algo, ws, ws_bytes, s));
        }, s);
        if (i == 0) t0 = t;
        if (t < best) best = t, best_i = i;
      }
      std::printf("%-8s %6d %9.1f %9.1f %9.1f %5d %8.3fx  (%d candidates)\n", sh.name, T, flop / t_ex / 1e9,
                  flop / t0 / 1e9, flop / best / 1e9, best_i, t_ex / best, found);
      std::fflush(stdout);
      cublasLtMatmulPreferenceDestroy(pref);
      cublasLtMatrixLayoutDestroy(la);
      cublasLtMatrixLayoutDestroy(lb);
      cublasLtMatrixLayoutDestroy(lc);
      cublasLtMatmulDescDestroy(op);
    }
  }
  CK(cudaFree(x));
  CK(cudaFree(w));
  CK(cudaFree(y));
  CK(cudaFree(ws));
  cublasLtDestroy(lt);
  cublasDestroy(hdl);
  return 0;
}
