// BENCHMARK BASELINE, not built into kvq: the wmma prefill-attention kernel that
// kernels/attention_prefill.cu shipped until 2026-11-22 (38-50 TFLOP/s on the H100), kept so
// scripts/bench/run_attn_bench.sh can time the shipped FA2 kernel against it and report the
// relative L2 difference between the two on full-size inputs. Compiled there with
// -Dattention_prefill=attention_prefill_wmma.
//
// Causal prefill attention (any chunk length, GQA, sliding window, past-only diagonal),
// flash-attention style: a block owns 64 queries of one head and walks the keys in tiles of
// 64, S = Q K^T and O += P V on the tensor cores (wmma 16x16x16, 16-bit operands, fp32
// accumulators) with the online softmax in fp32 between them. Memory is O(tile), never
// [queries, keys].
//
// Layout of a block (4 warps): warp w owns query rows [16w, 16w+16) of the tile, both for
// its strip of S and for its strip of O, so only the K/V tile loads need block barriers.
// Shared memory (DP = head_dim rounded up to 16, padded rows against bank conflicts):
//   Ks, Vs: [64][DP+8] 16-bit; Ss: [64][68] fp32; Ps: [64][72] 16-bit; Os: [64][DP+4] fp32;
//   m, l: [64] fp32. DP = 128: 95 KB, so two blocks fit on an SM of 227 KB.
// Precision: scores are exact fp32 sums of 16-bit products; P is rounded to 16 bits before
// P V (relative 2^-9 for bf16, 2^-12 for fp16 per weight), the normaliser l sums the fp32 P.
#include <mma.h>

#include <cmath>

#include "kernels/common.cuh"

namespace kvq::kern {
namespace {

using namespace nvcuda;

constexpr int kBQ = 64;
constexpr int kBK = 64;
constexpr int kThreads = 128;
constexpr int kLdS = kBK + 4;
constexpr int kLdP = kBK + 8;

template <int DP>
struct PrefillSmem {
  static constexpr int kLdKV = DP + 8;
  static constexpr int kLdO = DP + 4;
  static constexpr size_t kKV = static_cast<size_t>(kBK) * kLdKV * 2;  // bytes, 16-bit
  static constexpr size_t kS = static_cast<size_t>(kBQ) * kLdS * 4;
  static constexpr size_t kP = static_cast<size_t>(kBQ) * kLdP * 2;
  static constexpr size_t kO = static_cast<size_t>(kBQ) * kLdO * 4;
  static constexpr size_t kBytes = 2 * kKV + kS + kP + kO + 2 * kBQ * 4;
};

// Loads rows [0, valid) of a [64, head_dim] tile from src (row stride head_dim) into
// dst (row stride ld) with 16-byte vectors; rows >= valid become zero so that neither
// stale data nor unwritten cache memory (possibly NaN bits) reaches the products.
template <typename T>
__device__ void load_tile(T* dst, int ld, const T* src, int valid, int head_dim) {
  const int vecs = head_dim / 8;
  for (int idx = threadIdx.x; idx < kBK * vecs; idx += kThreads) {
    const int r = idx / vecs, v = idx % vecs;
    uint4 val = make_uint4(0, 0, 0, 0);
    if (r < valid) val = *reinterpret_cast<const uint4*>(src + static_cast<int64_t>(r) * head_dim + v * 8);
    *reinterpret_cast<uint4*>(dst + r * ld + v * 8) = val;
  }
}

template <typename T, int DP>
__global__ void __launch_bounds__(kThreads)
attention_prefill_kernel(AttentionArgs a) {
  using S = PrefillSmem<DP>;
  extern __shared__ __align__(16) unsigned char smem[];
  T* Ks = reinterpret_cast<T*>(smem);
  T* Vs = reinterpret_cast<T*>(smem + S::kKV);
  float* Ss = reinterpret_cast<float*>(smem + 2 * S::kKV);
  T* Ps = reinterpret_cast<T*>(smem + 2 * S::kKV + S::kS);
  float* Os = reinterpret_cast<float*>(smem + 2 * S::kKV + S::kS + S::kP);
  float* row_m = reinterpret_cast<float*>(smem + 2 * S::kKV + S::kS + S::kP + S::kO);
  float* row_l = row_m + kBQ;

  const int D = a.head_dim;
  const int r = blockIdx.z, h = blockIdx.y, q0 = blockIdx.x * kBQ;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int kvh = h / (a.n_heads / a.kv_heads);
  const int slot = a.slot[r], p0 = a.pos0[r];
  const int nq = min(kBQ, a.n - q0);
  const T* q = static_cast<const T*>(a.q);
  const int64_t cache_base = (static_cast<int64_t>(slot) * a.kv_heads + kvh) * a.max_tokens * D;
  const T* kc = static_cast<const T*>(a.k_cache) + cache_base;
  const T* vc = static_cast<const T*>(a.v_cache) + cache_base;

  // Q tile goes through Ks (free until the first key tile); padding columns are zeroed
  // once here and never written again by load_tile (it writes columns < head_dim only).
  for (int idx = threadIdx.x; idx < kBK * (S::kLdKV - D); idx += kThreads) {
    const int rr = idx / (S::kLdKV - D), c = D + idx % (S::kLdKV - D);
    Ks[rr * S::kLdKV + c] = from_f<T>(0.f);
    Vs[rr * S::kLdKV + c] = from_f<T>(0.f);
  }
  __syncthreads();
  load_tile(Ks, S::kLdKV, q, 0, D);  // valid = 0: zeroes the tile, reads nothing
  __syncthreads();
  // Queries of one head are n_heads * head_dim apart: load them row by row.
  for (int idx = threadIdx.x; idx < nq * (D / 8); idx += kThreads) {
    const int rr = idx / (D / 8), v = idx % (D / 8);
    const T* src = q + ((static_cast<int64_t>(r) * a.n + q0 + rr) * a.n_heads + h) * D + v * 8;
    *reinterpret_cast<uint4*>(Ks + rr * S::kLdKV + v * 8) = *reinterpret_cast<const uint4*>(src);
  }
  for (int idx = threadIdx.x; idx < kBQ * S::kLdO; idx += kThreads) Os[idx] = 0.f;
  if (threadIdx.x < kBQ) {
    row_m[threadIdx.x] = -INFINITY;
    row_l[threadIdx.x] = 0.f;
  }
  __syncthreads();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> qf[DP / 16];
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk)
    wmma::load_matrix_sync(qf[kk], Ks + warp * 16 * S::kLdKV + kk * 16, S::kLdKV);

  const int last_pos = p0 + q0 + nq - 1;  // the last query's position
  const int key_end = last_pos + 1;       // keys [key_begin, key_end)
  int key_begin = 0;
  if (a.window > 0) key_begin = max(0, p0 + q0 - a.window + 1);
  key_begin = (key_begin / kBK) * kBK;
  const bool self = a.k_self != nullptr;

  // Each row of the warp's strip is handled by two lanes: lane/2 = row, lane%2 = half.
  const int my_row = warp * 16 + (lane >> 1);
  const int my_half = lane & 1;
  const int my_pos = p0 + q0 + my_row;

  for (int kt = key_begin; kt < key_end; kt += kBK) {
    const int valid = min(kBK, key_end - kt);
    __syncthreads();  // the previous tile's K/V are no longer read
    load_tile(Ks, S::kLdKV, kc + static_cast<int64_t>(kt) * D, valid, D);
    load_tile(Vs, S::kLdKV, vc + static_cast<int64_t>(kt) * D, valid, D);
    __syncthreads();

    // S strip [16, 64] = Q strip [16, DP] K^T.
#pragma unroll
    for (int c = 0; c < kBK / 16; ++c) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      wmma::fill_fragment(acc, 0.f);
#pragma unroll
      for (int kk = 0; kk < DP / 16; ++kk) {
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> kf;
        wmma::load_matrix_sync(kf, Ks + c * 16 * S::kLdKV + kk * 16, S::kLdKV);
        wmma::mma_sync(acc, qf[kk], kf, acc);
      }
      wmma::store_matrix_sync(Ss + warp * 16 * kLdS + c * 16, acc, kLdS, wmma::mem_row_major);
    }
    __syncwarp();

    // Online softmax of the warp's 16 rows.
    {
      float* srow = Ss + my_row * kLdS + my_half * 32;
      T* prow = Ps + my_row * kLdP + my_half * 32;
      float tmax = -INFINITY;
      for (int c = 0; c < 32; ++c) {
        const int j = kt + my_half * 32 + c;
        bool ok = j <= my_pos && (a.window == 0 || my_pos - j < a.window) && !(self && j == my_pos);
        const float s = ok ? srow[c] * a.scale : -INFINITY;
        srow[c] = s;
        tmax = fmaxf(tmax, s);
      }
      tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
      const float m_old = row_m[my_row];
      const float m_new = fmaxf(m_old, tmax);
      // All keys so far masked: keep the state empty (avoids inf - inf).
      const float alpha = m_new == -INFINITY ? 1.f : expf(m_old - m_new);
      float sum = 0.f;
      for (int c = 0; c < 32; ++c) {
        const float p = m_new == -INFINITY ? 0.f : expf(srow[c] - m_new);
        sum += p;
        prow[c] = from_f<T>(p);
      }
      sum += __shfl_xor_sync(0xffffffffu, sum, 1);
      float* orow = Os + my_row * S::kLdO;
      for (int c = my_half; c < DP; c += 2) orow[c] *= alpha;
      __syncwarp();
      if (my_half == 0) {
        row_m[my_row] = m_new;
        row_l[my_row] = row_l[my_row] * alpha + sum;
      }
    }
    __syncwarp();

    // O strip [16, DP] += P strip [16, 64] V [64, DP].
#pragma unroll
    for (int c = 0; c < DP / 16; ++c) {
      wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
      float* optr = Os + warp * 16 * S::kLdO + c * 16;
      wmma::load_matrix_sync(acc, optr, S::kLdO, wmma::mem_row_major);
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> pf;
        wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> vf;
        wmma::load_matrix_sync(pf, Ps + warp * 16 * kLdP + kk * 16, kLdP);
        wmma::load_matrix_sync(vf, Vs + kk * 16 * S::kLdKV + c * 16, S::kLdKV);
        wmma::mma_sync(acc, pf, vf, acc);
      }
      wmma::store_matrix_sync(optr, acc, S::kLdO, wmma::mem_row_major);
    }
    __syncwarp();
  }

  // Past-only: the diagonal key/value come from k_self/v_self (one extra online step).
  // Scores here use the same 16-bit inputs, summed in fp32.
  {
    const bool mine = self && my_row < nq;
    float m_new = 0.f, l_new = 0.f;
    if (mine) {
      const int64_t off = ((static_cast<int64_t>(r) * a.n + q0 + my_row) * a.kv_heads + kvh) * D;
      const T* ks = static_cast<const T*>(a.k_self) + off;
      const T* vs = static_cast<const T*>(a.v_self) + off;
      const T* qrow = q + ((static_cast<int64_t>(r) * a.n + q0 + my_row) * a.n_heads + h) * D;
      float dot = 0.f;
      for (int d = 0; d < D; ++d) dot += to_f(qrow[d]) * to_f(ks[d]);
      const float s = dot * a.scale;
      const float m_old = row_m[my_row];
      m_new = fmaxf(m_old, s);
      const float alpha = expf(m_old - m_new);
      const float p = expf(s - m_new);
      l_new = row_l[my_row] * alpha + p;
      float* orow = Os + my_row * S::kLdO;
      for (int d = my_half; d < D; d += 2) orow[d] = orow[d] * alpha + p * to_f(vs[d]);
    }
    __syncwarp();
    if (mine && my_half == 0) {
      row_m[my_row] = m_new;
      row_l[my_row] = l_new;
    }
  }
  __syncthreads();

  T* out = static_cast<T*>(a.out);
  for (int idx = threadIdx.x; idx < nq * D; idx += kThreads) {
    const int rr = idx / D, d = idx % D;
    out[((static_cast<int64_t>(r) * a.n + q0 + rr) * a.n_heads + h) * D + d] =
        from_f<T>(Os[rr * S::kLdO + d] / row_l[rr]);
  }
}

template <typename T, int DP>
cudaError_t launch_prefill(const AttentionArgs& a, cudaStream_t stream) {
  const size_t smem = PrefillSmem<DP>::kBytes;
  cudaError_t e = cudaFuncSetAttribute(attention_prefill_kernel<T, DP>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  dim3 grid((a.n + kBQ - 1) / kBQ, a.n_heads, a.rows);
  attention_prefill_kernel<T, DP><<<grid, kThreads, smem, stream>>>(a);
  return launch_status();
}

template <typename T>
cudaError_t dispatch_prefill(const AttentionArgs& a, cudaStream_t stream) {
  if (a.head_dim <= 16) return launch_prefill<T, 16>(a, stream);
  if (a.head_dim <= 32) return launch_prefill<T, 32>(a, stream);
  if (a.head_dim <= 64) return launch_prefill<T, 64>(a, stream);
  return launch_prefill<T, 128>(a, stream);
}

}  // namespace

cudaError_t attention_prefill(Act act, const AttentionArgs& a, cudaStream_t stream) {
  if (a.head_dim % 8 != 0 || a.head_dim > kMaxHeadDim || a.head_dim <= 0 || a.kv_heads <= 0 ||
      a.n_heads % a.kv_heads != 0)
    return cudaErrorInvalidValue;
  if (a.rows == 0 || a.n == 0) return cudaSuccess;
  if (act == Act::kF16) return dispatch_prefill<__half>(a, stream);
  return dispatch_prefill<__nv_bfloat16>(a, stream);
}

}  // namespace kvq::kern
