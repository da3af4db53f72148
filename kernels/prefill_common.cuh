// Device helpers shared by the causal prefill attention kernels, the portable FA2 one on
// mma.sync (attention_prefill.cu) and the Hopper ones on wgmma (attention_prefill_sm90*.cu):
// a block's query tile and key range (prefill_tile), the cp.async copies that stream K/V
// tiles into shared memory, the mask and online-softmax step on the S fragments (mask_tile,
// softmax_tile), the 16-bit packing of P and O (one rounding, to nearest even) and the
// epilogue after the last key tile (the past-only diagonal step, the division by l, the
// store), so every kernel masks, exponentiates and rounds the same way. nvcc only; cp.async needs compute capability 8.0.
#pragma once

#include <cstdint>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "kernels/common.cuh"

namespace kvq::kern {

__device__ __forceinline__ uint32_t smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
// 16-byte global -> shared copy; src_bytes = 0 writes zeros and reads nothing.
__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, int src_bytes) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(src_bytes)
               : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;\n" ::: "memory"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;\n" ::"n"(N) : "memory");
}

// What a block of a prefill kernel works on: the query tile q0 .. q0 + nq - 1 (BQ rows, the
// last tile of a chunk shorter) of query head h of batch row r, its kv head, the row's cache
// slot and the position p0 of the chunk's first query (the row's cached length), and the
// keys it sees: [key_begin, key_end), from the first query's sliding-window start rounded
// down to a whole BK-key tile up to the last query's position + 1, n_tiles tiles.
struct PrefillTile {
  int kvh, slot, p0, nq;
  int key_begin, key_end, n_tiles;
};

template <int BQ, int BK>
__device__ __forceinline__ PrefillTile prefill_tile(const AttentionArgs& a, int h, int r, int q0) {
  PrefillTile t;
  t.kvh = h / (a.n_heads / a.kv_heads);
  t.slot = a.slot[r];
  t.p0 = a.pos0[r];
  t.nq = min(BQ, a.n - q0);
  t.key_end = t.p0 + q0 + t.nq;
  const int first = a.window > 0 ? max(0, t.p0 + q0 - a.window + 1) : 0;
  t.key_begin = (first / BK) * BK;
  t.n_tiles = (t.key_end - t.key_begin + BK - 1) / BK;
  return t;
}

// The K or V rows [max_tokens, d] of (slot, kv head) in a head-major cache
// [slots, kv_heads, max_tokens, d].
template <typename T>
__device__ __forceinline__ const T* cache_rows(const void* cache, const AttentionArgs& a, int slot, int kvh, int d) {
  return static_cast<const T*>(cache) + (static_cast<int64_t>(slot) * a.kv_heads + kvh) * a.max_tokens * d;
}

// Two floats -> one register of two 16-bit values (lo in the low half), round to nearest even.
template <typename T> __device__ __forceinline__ uint32_t pack2(float lo, float hi);
template <> __device__ __forceinline__ uint32_t pack2<__half>(float lo, float hi) {
  __half2 v = __floats2half2_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}
template <> __device__ __forceinline__ uint32_t pack2<__nv_bfloat16>(float lo, float hi) {
  __nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
  return *reinterpret_cast<uint32_t*>(&v);
}

// The lane's accumulator for output column 8 i + 2 t4 + (e & 1) of row e / 2 (m16n8
// accumulator layout: 4 floats per 8-column tile), stored flat (wgmma) or per tile (FA2).
template <int N>
__device__ __forceinline__ float& acc_at(float (&o)[N], int i, int e) { return o[4 * i + e]; }
template <int N>
__device__ __forceinline__ float& acc_at(float (&o)[N][4], int i, int e) { return o[i][e]; }

// kFtzExp: ex2.approx.ftz instead of exp2f (which compiles to the non-ftz ex2.approx, whose
// subnormal handling ptxas expands with a compare and two predicated multiplies around the
// MUFU.EX2). Same MUFU result for every weight >= 2^-126; smaller ones become 0, where P
// rounded to fp16 is 0 anyway (below 2^-24) and a bf16 P of < 2^-126 against a row maximum
// weight of 1 is below the fp32 normaliser's ulp. Used by the FA3-style kernel, whose
// consumer softmax sits on the critical path between its wgmma groups.
template <bool kFtzExp>
__device__ __forceinline__ float softmax_exp2(float x) {
  if constexpr (kFtzExp) {
    float y;
    asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
    return y;
  } else {
    return exp2f(x);
  }
}

// The two steps between S = Q K^T and O += P V that every prefill kernel takes on the lane's
// accumulator fragments s of a tile of NT 8-key n-tiles (acc_at layout): the lane holds rows
// pos0 = pos1 - 8 and pos1 of the warp's 16 (wp0: the first one's position), keys
// kt + 8 nt + 2 t4 + (e & 1).
// mask_tile: -inf for the keys a row must not see (after it, outside the window, its own
// position under past-only); only a tile that meets the causal diagonal (where the past-only
// diagonal lies too) or the window's far edge is looked at.
template <int NT, typename S>
__device__ __forceinline__ void mask_tile(S& s, int kt, int wp0, int pos1, int window, bool self, int t4) {
  const int pos0 = pos1 - 8;
  if (kt + NT * 8 - 1 >= wp0 || (window > 0 && kt < wp0 + 15 - window + 1)) {
#pragma unroll
    for (int nt = 0; nt < NT; ++nt)
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const int j = kt + nt * 8 + 2 * t4 + (e & 1);
        const int p = e < 2 ? pos0 : pos1;
        const bool ok = j <= p && (window == 0 || p - j < window) && !(self && j == p);
        if (!ok) acc_at(s, nt, e) = -INFINITY;
      }
  }
}

// softmax_tile: the online softmax step in log2 units (sl = scale * log2 e): the rows' new max
// over the quad's 4 lanes (m0, m1: running max of raw scores), alpha = exp2(m_old - m_new) (the
// factor that rescales O), s = exp2(s - m_new) in place, l = l alpha + this lane's sum (the
// quad sums l at the end).
template <int NT, bool kFtzExp, typename S>
__device__ __forceinline__ void softmax_tile(S& s, float& m0, float& m1, float& l0, float& l1, float& alpha0,
                                             float& alpha1, float sl) {
  float mx0 = m0, mx1 = m1;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    mx0 = fmaxf(mx0, fmaxf(acc_at(s, nt, 0), acc_at(s, nt, 1)));
    mx1 = fmaxf(mx1, fmaxf(acc_at(s, nt, 2), acc_at(s, nt, 3)));
  }
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 1));
  mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, 2));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 1));
  mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, 2));
  // A row with every key so far masked keeps max -inf: subtract 0 instead, so exp2 gives 0
  // for the masked scores and alpha = exp2(-inf) = 0 (never inf - inf).
  const float ms0 = mx0 == -INFINITY ? 0.f : mx0 * sl;
  const float ms1 = mx1 == -INFINITY ? 0.f : mx1 * sl;
  alpha0 = softmax_exp2<kFtzExp>(m0 * sl - ms0);
  alpha1 = softmax_exp2<kFtzExp>(m1 * sl - ms1);
  m0 = mx0;
  m1 = mx1;
  float sum0 = 0.f, sum1 = 0.f;
#pragma unroll
  for (int nt = 0; nt < NT; ++nt) {
    acc_at(s, nt, 0) = softmax_exp2<kFtzExp>(fmaf(acc_at(s, nt, 0), sl, -ms0));
    acc_at(s, nt, 1) = softmax_exp2<kFtzExp>(fmaf(acc_at(s, nt, 1), sl, -ms0));
    acc_at(s, nt, 2) = softmax_exp2<kFtzExp>(fmaf(acc_at(s, nt, 2), sl, -ms1));
    acc_at(s, nt, 3) = softmax_exp2<kFtzExp>(fmaf(acc_at(s, nt, 3), sl, -ms1));
    sum0 += acc_at(s, nt, 0) + acc_at(s, nt, 1);
    sum1 += acc_at(s, nt, 2) + acc_at(s, nt, 3);
  }
  l0 = l0 * alpha0 + sum0;
  l1 = l1 * alpha1 + sum1;
}

// After the last key tile: quad sums of l, the past-only diagonal step (k_self / v_self),
// the division by l and the one rounding of the output. o holds kDT 8-column tiles of the
// lane's rows row0 and row0 + 8 (rows within the block's query tile q0.., nq of them valid);
// d = head_dim <= 8 kDT (FA2 pads the head dimension: columns >= d are neither read nor
// stored). m0/m1, l0/l1: the rows' running max and the lane's partial sums; sl = scale log2 e.
// The diagonal step writes o alpha + p v as fmaf(p, v, o alpha), spelled out so that no
// kernel depends on how nvcc would contract it.
template <typename T, int kDT, typename Acc>
__device__ __forceinline__ void finish_rows(const AttentionArgs& a, Acc& o, int d, float m0, float m1,
                                            float l0, float l1, int row0, int q0, int nq, int r, int h,
                                            int kvh, int t4, float sl) {
  l0 += __shfl_xor_sync(0xffffffffu, l0, 1);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 2);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 1);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 2);

  const int row1 = row0 + 8;
  // Past-only: the diagonal key/value come from k_self/v_self, one more online step per
  // row. The quad splits the dot product over dims (lane t takes dims t, t+4, ...).
  if (a.k_self != nullptr) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int row = half == 0 ? row0 : row1;
      const bool mine = row < nq;
      const int64_t tok = static_cast<int64_t>(r) * a.n + q0 + (mine ? row : 0);
      const T* ksf = static_cast<const T*>(a.k_self) + (tok * a.kv_heads + kvh) * d;
      const T* vsf = static_cast<const T*>(a.v_self) + (tok * a.kv_heads + kvh) * d;
      const T* qrow = static_cast<const T*>(a.q) + (tok * a.n_heads + h) * d;
      float dot = 0.f;
      if (mine)
        for (int c = t4; c < d; c += 4) dot += to_f(qrow[c]) * to_f(ksf[c]);
      dot += __shfl_xor_sync(0xffffffffu, dot, 1);
      dot += __shfl_xor_sync(0xffffffffu, dot, 2);
      if (mine) {
        float& m = half == 0 ? m0 : m1;
        float& l = half == 0 ? l0 : l1;
        const float m_new = fmaxf(m, dot);
        const float alpha = exp2f((m - m_new) * sl);  // m = -inf (nothing else seen): 0
        const float p = exp2f((dot - m_new) * sl);
        l = l * alpha + p;
        m = m_new;
#pragma unroll
        for (int i = 0; i < kDT; ++i) {
          const int c = i * 8 + 2 * t4;
          const float v0 = c < d ? to_f(vsf[c]) : 0.f, v1 = c < d ? to_f(vsf[c + 1]) : 0.f;
          float& o0 = acc_at(o, i, 2 * half);
          float& o1 = acc_at(o, i, 2 * half + 1);
          o0 = fmaf(p, v0, o0 * alpha);
          o1 = fmaf(p, v1, o1 * alpha);
        }
      }
    }
  }

  T* out = static_cast<T*>(a.out);
#pragma unroll
  for (int half = 0; half < 2; ++half) {
    const int row = half == 0 ? row0 : row1;
    if (row >= nq) continue;
    const float l = half == 0 ? l0 : l1;
    T* orow = out + ((static_cast<int64_t>(r) * a.n + q0 + row) * a.n_heads + h) * d;
#pragma unroll
    for (int i = 0; i < kDT; ++i) {
      const int c = i * 8 + 2 * t4;
      if (c < d)
        *reinterpret_cast<uint32_t*>(orow + c) =
            pack2<T>(acc_at(o, i, 2 * half) / l, acc_at(o, i, 2 * half + 1) / l);
    }
  }
}

}  // namespace kvq::kern
