// The GEMM of every projection: y = x w^T (+ beta y) through cuBLAS, 16-bit operands, fp32
// accumulation and fp32 output. beta = 1 fuses the residual add of o_proj / down_proj into
// the GEMM's epilogue, so the residual stream never makes an extra pass through memory.
#include <cublas_v2.h>

#include "kernels/common.cuh"

namespace kvq::kern {

int gemm(cublasHandle_t handle, Act act, const void* x, int tokens, int k, const void* w,
         int n_out, float* y, float beta, cudaStream_t stream) {
  if (tokens == 0 || n_out == 0) return CUBLAS_STATUS_SUCCESS;
  cublasStatus_t st = cublasSetStream(handle, stream);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  const cudaDataType_t dt = act == Act::kF16 ? CUDA_R_16F : CUDA_R_16BF;
  const float alpha = 1.0f;
  // Row-major y[tokens, n_out] is column-major y^T[n_out, tokens] = w[n_out, k] x^T, where
  // row-major w[n_out, k] is the column-major [k, n_out] matrix, used transposed.
  return cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n_out, tokens, k, &alpha, w, dt, k, x,
                      dt, k, &beta, y, CUDA_R_32F, n_out, CUBLAS_COMPUTE_32F,
                      CUBLAS_GEMM_DEFAULT);
}

int gemm_act(cublasHandle_t handle, Act act, const void* x, int tokens, int k, const void* w,
             int n_out, void* y, cudaStream_t stream) {
  if (tokens == 0 || n_out == 0) return CUBLAS_STATUS_SUCCESS;
  cublasStatus_t st = cublasSetStream(handle, stream);
  if (st != CUBLAS_STATUS_SUCCESS) return st;
  const cudaDataType_t dt = act == Act::kF16 ? CUDA_R_16F : CUDA_R_16BF;
  const float alpha = 1.0f, beta = 0.0f;
  // As gemm(), with a 16-bit C: cuBLAS accumulates in fp32 (COMPUTE_32F) and rounds the
  // result once on output.
  return cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, n_out, tokens, k, &alpha, w, dt, k, x,
                      dt, k, &beta, y, dt, n_out, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
}

}  // namespace kvq::kern
