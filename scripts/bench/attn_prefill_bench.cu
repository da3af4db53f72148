// Prefill-attention microbenchmark (not a test; METHOD.md: ceilings first, then each
// variant's time against them). One run prints:
//   1. the ceilings: cuBLAS fp16/bf16 GEMM 8192^3 (wgmma, what the chip can do) and a
//      register-only mma.sync m16n8k16 loop (what an mma.sync kernel can do at best);
//   2. for Llama-2-7B / Llama-3-8B attention shapes (32 heads, head_dim 128, 32 or 8 KV
//      heads) at 4K, 16K and 32K causal, each kernel's median time of 7 launches and
//      TFLOP/s, FLOPs counted exactly: 4 * heads * head_dim * sum over queries of visible
//      keys; and the relative L2 difference of each output from the first kernel's.
// Kernels, side by side in one run: the FA2 mma.sync kernel (kern::attention_prefill_fa2),
// the plain wgmma kernel (kern::attention_prefill_sm90: 1 warpgroup per block), the
// warp-specialized FA3-style kernel (kern::attention_prefill_fa3), the plain kernel's
// pipelined form (softmax overlapping P V; NaN at these sizes when last
// measured, see kernels/attention_prefill_sm90.cu) and its 2-warpgroup form (both compiled
// from the same source with -DKVQ_SM90_PIPE=1 / -DKVQ_SM90_WG=2 under renamed entry points,
// scripts/bench/run_attn_bench.sh), and the dispatcher kern::attention_prefill as the model
// calls it.
// (Session 2's variants of the FA2 kernel and the old wmma kernel were measured with the
// previous version of this file; their figures are in notes/cuda-perf.md.)
#include <cublas_v2.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <string>
#include <vector>

#include "kernels/attention_prefill_sm90.cuh"
#include "kernels/ops.cuh"

// Weak: defined only when run_attn_bench.sh links its renamed objects; a build that links
// libkvq_kernels.a alone (scripts/gpu/prefill_check.sh) leaves them null and skips them.
namespace kvq::kern {
__attribute__((weak)) cudaError_t attention_prefill_sm90_pipe(Act act, const AttentionArgs& a, cudaStream_t stream);
__attribute__((weak)) cudaError_t attention_prefill_sm90_wg2(Act act, const AttentionArgs& a, cudaStream_t stream);
}  // namespace kvq::kern

using kvq::kern::Act;

#define CHECK(call)                                                                                 \
  do {                                                                                              \
    cudaError_t e_ = (call);                                                                        \
    if (e_ != cudaSuccess) {                                                                        \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #call, cudaGetErrorString(e_)); \
      std::exit(1);                                                                                 \
    }                                                                                               \
  } while (0)

namespace {

// Uniform [-1, 1) 16-bit values from a counter hash (never zeros: METHOD.md).
__global__ void fill_rand(uint16_t* p, size_t n, uint64_t seed, bool bf16) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x) {
    uint64_t x = (i + 1) * 0x9E3779B97F4A7C15ull ^ seed;
    x ^= x >> 31; x *= 0xBF58476D1CE4E5B9ull; x ^= x >> 29; x *= 0x94D049BB133111EBull; x ^= x >> 32;
    const float u = float(x & 0xFFFFFF) / 8388608.f - 1.f;
    if (bf16) { __nv_bfloat16 b = __float2bfloat16_rn(u); p[i] = *reinterpret_cast<uint16_t*>(&b); }
    else { __half h = __float2half_rn(u); p[i] = *reinterpret_cast<uint16_t*>(&h); }
  }
}

// Register-only mma.sync throughput: 8 independent accumulator chains per warp.
__global__ void mma_peak(float* sink, int iters) {
  uint32_t a[4] = {threadIdx.x, threadIdx.x * 3u, threadIdx.x * 5u, threadIdx.x * 7u};
  uint32_t b0 = threadIdx.x * 11u, b1 = threadIdx.x * 13u;
  float d[8][4] = {};
  for (int it = 0; it < iters; ++it) {
#pragma unroll
    for (int c = 0; c < 8; ++c)
      asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, {%0,%1,%2,%3};\n"
                   : "+f"(d[c][0]), "+f"(d[c][1]), "+f"(d[c][2]), "+f"(d[c][3])
                   : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  }
  float s = 0.f;
  for (int c = 0; c < 8; ++c) s += d[c][0] + d[c][1] + d[c][2] + d[c][3];
  if (s == 12345.f) sink[threadIdx.x] = s;  // keeps the loop alive
}

template <typename F>
double median_ms(F&& f, int warm, int reps) {
  cudaEvent_t e0, e1;
  CHECK(cudaEventCreate(&e0));
  CHECK(cudaEventCreate(&e1));
  for (int i = 0; i < warm; ++i) f();
  std::vector<double> t;
  for (int i = 0; i < reps; ++i) {
    CHECK(cudaEventRecord(e0));
    f();
    CHECK(cudaEventRecord(e1));
    CHECK(cudaEventSynchronize(e1));
    float ms = 0;
    CHECK(cudaEventElapsedTime(&ms, e0, e1));
    t.push_back(ms);
  }
  CHECK(cudaGetLastError());
  std::sort(t.begin(), t.end());
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return t[t.size() / 2];
}

float h2f(uint16_t v, bool bf16) {
  if (bf16) { uint32_t u = uint32_t(v) << 16; float f; std::memcpy(&f, &u, 4); return f; }
  __half_raw r; r.x = v; return __half2float(__half(r));
}

struct Shape { const char* name; int heads, kv_heads, hd, pos0, n; };

}  // namespace

// Usage: attn_prefill_bench [KERNEL...]: KERNEL among fa2, sm90, pipe, wg2, fa3, dispatcher
// (default: all that are linked); the first one named is the reference of the relL2 column.
int main(int argc, char** argv) {
  cudaDeviceProp prop;
  CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("device: %s, %d SMs\n", prop.name, prop.multiProcessorCount);

  // 1. Ceilings.
  {
    cublasHandle_t hdl;
    cublasCreate(&hdl);
    const int N = 8192;
    uint16_t *A, *B;
    float* C;
    CHECK(cudaMalloc(&A, size_t(N) * N * 2));
    CHECK(cudaMalloc(&B, size_t(N) * N * 2));
    CHECK(cudaMalloc(&C, size_t(N) * N * 4));
    for (int bf = 0; bf < 2; ++bf) {
      fill_rand<<<1024, 256>>>(A, size_t(N) * N, 1, bf);
      fill_rand<<<1024, 256>>>(B, size_t(N) * N, 2, bf);
      const float one = 1.f, zero = 0.f;
      const cudaDataType t = bf ? CUDA_R_16BF : CUDA_R_16F;
      const double ms = median_ms([&] {
        cublasGemmEx(hdl, CUBLAS_OP_T, CUBLAS_OP_N, N, N, N, &one, A, t, N, B, t, N, &zero, C, CUDA_R_32F, N,
                     CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      }, 3, 10);
      std::printf("ceiling cuBLAS %s GEMM 8192^3 (fp32 out): %.3f ms, %.1f TFLOP/s\n", bf ? "bf16" : "fp16", ms,
                  2.0 * N * N * double(N) / ms / 1e9);
    }
    cudaFree(A); cudaFree(B); cudaFree(C);
    cublasDestroy(hdl);
    float* sink;
    CHECK(cudaMalloc(&sink, 4096));
    const int blocks = prop.multiProcessorCount * 8, iters = 4096;
    const double ms = median_ms([&] { mma_peak<<<blocks, 128>>>(sink, iters); }, 2, 5);
    std::printf("ceiling mma.sync m16n8k16 f16->f32, registers only: %.1f TFLOP/s\n",
                double(blocks) * 4 * iters * 8 * 4096.0 / ms / 1e9);
    cudaFree(sink);
  }

  // 2. Attention shapes.
  const Shape shapes[] = {
      {"llama2-7b T=4096", 32, 32, 128, 0, 4096},
      {"llama2-7b T=16384", 32, 32, 128, 0, 16384},
      {"llama2-7b T=32768", 32, 32, 128, 0, 32768},
      {"llama2-7b last 8K chunk of 32K", 32, 32, 128, 24576, 8192},
      {"llama3-8b T=4096", 32, 8, 128, 0, 4096},
      {"llama3-8b T=16384", 32, 8, 128, 0, 16384},
      {"llama3-8b T=32768", 32, 8, 128, 0, 32768},
  };
  struct Variant {
    const char* key;
    const char* name;
    cudaError_t (*fn)(Act, const kvq::kern::AttentionArgs&, cudaStream_t);
  };
  const std::vector<Variant> all = {{"fa2", "fa2 (mma.sync)", kvq::kern::attention_prefill_fa2},
                                    {"sm90", "sm90 plain 1 WG", kvq::kern::attention_prefill_sm90},
                                    {"pipe", "sm90 pipelined", kvq::kern::attention_prefill_sm90_pipe},
                                    {"wg2", "sm90 plain 2 WG", kvq::kern::attention_prefill_sm90_wg2},
                                    {"fa3", "sm90 fa3 (ws, 2 WG)", kvq::kern::attention_prefill_fa3},
                                    {"dispatcher", "dispatcher", kvq::kern::attention_prefill}};
  std::vector<Variant> variants;
  if (argc > 1) {
    for (int i = 1; i < argc; ++i)
      for (const Variant& v : all)
        if (std::strcmp(argv[i], v.key) == 0 && v.fn != nullptr) variants.push_back(v);
  } else {
    for (const Variant& v : all)
      if (v.fn != nullptr) variants.push_back(v);
  }
  std::printf("\n%-32s %-5s %-20s %10s %9s %10s\n", "shape", "type", "kernel", "ms", "TFLOP/s", "relL2 vs 1st");
  for (const Shape& s : shapes) {
    for (int bf = 0; bf < 2; ++bf) {
      if (bf && s.hd == 64) continue;
      const int keys = s.pos0 + s.n;
      const size_t qn = size_t(s.n) * s.heads * s.hd, kn = size_t(s.kv_heads) * keys * s.hd;
      uint16_t *q, *k, *v, *o;
      int32_t *slot, *pos;
      CHECK(cudaMalloc(&q, qn * 2));
      CHECK(cudaMalloc(&k, kn * 2));
      CHECK(cudaMalloc(&v, kn * 2));
      CHECK(cudaMalloc(&o, qn * 2));
      CHECK(cudaMalloc(&slot, 4));
      CHECK(cudaMalloc(&pos, 4));
      fill_rand<<<1024, 256>>>(q, qn, 11, bf);
      fill_rand<<<1024, 256>>>(k, kn, 12, bf);
      fill_rand<<<1024, 256>>>(v, kn, 13, bf);
      CHECK(cudaMemset(slot, 0, 4));
      CHECK(cudaMemcpy(pos, &s.pos0, 4, cudaMemcpyHostToDevice));
      kvq::kern::AttentionArgs a;
      a.q = q; a.k_cache = k; a.v_cache = v; a.slot = slot; a.pos0 = pos; a.out = o;
      a.rows = 1; a.n = s.n; a.n_heads = s.heads; a.kv_heads = s.kv_heads; a.head_dim = s.hd;
      a.max_tokens = keys; a.scale = 1.f / std::sqrt(float(s.hd));
      const double vis = double(s.n) * s.pos0 + double(s.n) * (s.n + 1) / 2.0;
      const double flops = 4.0 * s.heads * s.hd * vis;
      std::vector<float> first;
      for (const Variant& var : variants) {
        CHECK(cudaMemset(o, 0xFF, qn * 2));
        const Act act = bf ? Act::kBF16 : Act::kF16;
        const double ms = median_ms([&] { CHECK(var.fn(act, a, nullptr)); }, 2, 7);
        std::vector<uint16_t> out(qn);
        CHECK(cudaMemcpy(out.data(), o, qn * 2, cudaMemcpyDeviceToHost));
        std::vector<float> f(qn);
        bool finite = true;
        for (size_t i = 0; i < qn; ++i) { f[i] = h2f(out[i], bf); finite = finite && std::isfinite(f[i]); }
        double rel = 0;
        if (first.empty()) first = f;
        else {
          double num = 0, den = 0;
          for (size_t i = 0; i < qn; ++i) { num += double(f[i] - first[i]) * (f[i] - first[i]); den += double(first[i]) * first[i]; }
          rel = std::sqrt(num / den);
        }
        std::printf("%-32s %-5s %-20s %10.3f %9.1f %10.2e%s\n", s.name, bf ? "bf16" : "fp16", var.name, ms,
                    flops / ms / 1e9, rel, finite ? "" : "  NON-FINITE OUTPUT");
      }
      cudaFree(q); cudaFree(k); cudaFree(v); cudaFree(o); cudaFree(slot); cudaFree(pos);
    }
  }

  return 0;
}
