// Decode attention over the 16-bit (fp16/bf16) KV cache on the tensor cores: one new query
// per row over its whole cache, flash-decoding with split-K, the default of attention_decode()
// (kernels/attention_decode.cu) where decode_mma::fits() holds; the three-pass CUDA-core
// kernel there stays the fallback (KVQ_ATTN_DECODE=old forces it, for A/B).
//
// Why a second kernel (notes/kv-cuda-perf.md, "fp16/bf16 decode on the tensor cores"): the CUDA-core
// kernel reached 69-102% of copy bandwidth on MHA but 20% on llama3-8b (GQA 32/8 x 128) at
// batch 1, 32K (225 us against a 44.8 us floor; docs/results.md session 5, Table 1). Counted:
// its blocks hold one 16-byte load per lane in flight (a warp instruction = 512 B, 8 warps per
// SM: ~4 KB per SM, where ~3 TB/s x ~0.7 us / 132 SMs = ~16 KB per SM must be in flight),
// three barrier-separated passes per chunk, and G dots per row each reduced by a 4-step
// butterfly. The arithmetic is small: 2 x 2 x head_dim FLOP per (key, query head), G = 4:
// 4 FLOP per cache byte, far under any ceiling; so the work is to keep bytes in flight and the
// instruction count per byte low.
//
// Measured (H100, 2026-11-23, notes/s6/results-h53.md; one process, KVQ_ATTN_DECODE=old vs the
// variants): llama3-8b (G = 4) batch 1 32K 205.4 -> 56.4 us (22% -> 80% of copy), 128K 416.9 ->
// 195.0 us (92%), batch 8 93-98% (old 45-51%); llama2-7b batch 1 32K 261.1 -> 194.0 us (93%);
// batch 8 MHA from 32K 2.8-3.8% slower than the old kernel (which reads at 100-103% of the
// copy figure there), so attention_decode() keeps the old kernel for that case.
//
// Design:
// - Grid (split, kv head, row), W warps per block (default 8 at head_dim 128). Each warp
//   streams its own 16-token tiles (tiles w, w + W, ... of the block's key range) through an
//   NST-deep cp.async pipeline into its own shared-memory buffers (K and V tiles [16][D + 8],
//   the +8 pad puts the 8 rows of an ldmatrix in distinct bank groups), so no block barrier
//   until the end: NST - 1 tiles of K + V in flight per warp (8.5 KB each at D = 128).
//   Whole tiles are copied from one base pointer with constant offsets; only a split's last
//   tile and the diagonal's (past-only) take the predicated per-row path.
// - Scores on mma.sync m16n8k16 with the 16 tokens as M rows (A = the K tile by ldmatrix), the
//   query heads of the kv head as the 8 N columns (B = q, in registers for the whole block;
//   columns >= G are zero), fp32 accumulation: S[token][head]. A lane holds tokens g, g + 8 of
//   heads 2t, 2t + 1 (lane = 4 g + t), so the per-head max over the tile is 3 shuffles.
// - Online softmax per head in the log2 domain (scores x scale x log2 e, exp2f), running max
//   per lane, the sum of the weights kept per lane and reduced once at the end.
// - P V as O^T = V^T P^T on the same instruction: A = V^T from the V tile by ldmatrix.trans
//   (dims as M rows), B = P^T, which is the score tile's accumulator layout transposed: the
//   weights rounded to 16 bits, packed in pairs and transposed per 8 x 8 by movmatrix. O^T's
//   accumulator holds dims g, g + 8 of heads 2t, 2t + 1, the same heads as the lane's softmax
//   state, so the rescale is lane-local. The weights are rounded to 16 bits once (like the
//   prefill kernels); the normaliser adds the rounded weights, so the output is a convex
//   combination of the values with weights off by <= one rounding each.
// - The W warps merge their (max, sum, O) through shared memory; one split writes the output
//   directly, several write (max, sum, O) partials that combine_kernel merges. The combine is
//   launched with programmatic stream serialization on compute capability >= 9 (its launch
//   overlaps this kernel; griddepcontrol.wait before it reads), as kv_decode_stream.cu does.
// - The split count minimises waves x (tokens per block + 128) for the blocks the device
//   holds at once (occupancy API), so batch 1 fills all SMs and batch 8 runs whole waves.
// - What is left at batch 1 is a fixed ~12 us per decode (llama3-8b 1K: 10.7 us in total;
//   kvq-kvbench --latency: ~3-4 us of it exposed launch and host time, ~8-9 us device time for
//   kernel start to first tile, the warps' merge and the combine), so 32K reaches 80% of copy
//   and 128K 92%.
// Semantics as the CUDA-core kernel: causal (row r sees keys 0 .. pos0[r]), slot indirection,
// sliding window (keys before pos - window + 1 are not even read), past-only quantization
// (k_self / v_self replace the cache row on the diagonal, at staging time), rows past the end
// zero-filled by cp.async and masked, so NaN bits beyond a slot's length are never read.
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "kernels/attention_decode_mma.cuh"
#include "kernels/common.cuh"
#include "kernels/decode_chunk.cuh"
#include "kernels/prefill_common.cuh"

namespace kvq::kern::decode_mma {
namespace {

constexpr int kCT = 128;          // threads per combine block
constexpr int kCW = kCT / 32;     // its warps
constexpr int kTok = 16;          // tokens per tile (the mma's M)
constexpr float kLog2e = 1.4426950408889634f;

template <int D, int W, int NST>
struct Layout {
  static constexpr int kNst = NST;                 // pipeline depth (tiles per warp buffer)
  static constexpr int kLd = D + 8;                // 16-bit elements per smem row
  static constexpr int kTile = kTok * kLd;         // elements per K or V tile
  static constexpr size_t kPipeBytes = static_cast<size_t>(W) * kNst * 2 * kTile * 2;
  // The warps' merge reuses the pipeline buffers: [W][8][D] O, then [W][8][2] (max, sum).
  static constexpr size_t kMergeBytes = static_cast<size_t>(W) * 8 * (D + 2) * sizeof(float);
  static constexpr size_t kBytes = kPipeBytes > kMergeBytes ? kPipeBytes : kMergeBytes;
};

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_t(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
// The 8 x 8 16-bit matrix whose lane 4 g + t holds row g, cols 2t, 2t + 1, transposed.
__device__ __forceinline__ uint32_t movm_t(uint32_t x) {
  uint32_t y;
  asm volatile("movmatrix.sync.aligned.m8n8.trans.b16 %0, %1;\n" : "=r"(y) : "r"(x));
  return y;
}

// d[16x8] += a[16x16] b[16x8], fp32 accumulate.
template <typename T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                   uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// The two 16-bit halves of a packed pair as floats (lo, hi).
template <typename T>
__device__ __forceinline__ float2 unpack2(uint32_t x);
template <>
__device__ __forceinline__ float2 unpack2<__half>(uint32_t x) {
  return __half22float2(*reinterpret_cast<const __half2*>(&x));
}
template <>
__device__ __forceinline__ float2 unpack2<__nv_bfloat16>(uint32_t x) {
  return __bfloat1622float2(*reinterpret_cast<const __nv_bfloat162*>(&x));
}

// part_o: [rows, n_heads, splits, D] fp32 (unnormalised, relative to the split's max),
// part_ml: [rows, n_heads, splits, 2] (max in log2 units of score x scale, sum of weights);
// a split with no keys: (-inf, 0), o = 0. splits == 1: out is written directly.
template <typename T, int D, int W, int NST>
__global__ void __launch_bounds__(W * 32)
decode_kernel(AttentionArgs a, int chunk, int splits, float* part_o, float* part_ml) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Lets the combine (launched with programmatic stream serialization) be scheduled early;
  // it still waits for this grid's completion and memory (griddepcontrol.wait).
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
  using L = Layout<D, W, NST>;
  constexpr int kT = W * 32, kW = W;
  constexpr int kNst = L::kNst, kLd = L::kLd, kTile = L::kTile;
  constexpr int kPpr = D / 8;        // 16-byte pieces per cache row
  constexpr int kRpi = 32 / kPpr;    // rows per warp-wide copy
  constexpr int kNpl = kTok / kRpi;  // pieces per lane per K (or V) tile
  constexpr int kKs = D / 16;        // k-steps of the score mma, m-tiles of the P V mma
  static_assert(kKs % 2 == 0, "two score accumulators take the k-steps in pairs");
  extern __shared__ __align__(16) unsigned char smraw[];
  T* sm = reinterpret_cast<T*>(smraw);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int g = lane >> 2, t = lane & 3;
  const int G = a.n_heads / a.kv_heads;
  const int s = blockIdx.x, kvh = blockIdx.y, r = blockIdx.z;
  const int pos = a.pos0[r];
  const int lo = a.window > 0 ? max(0, pos - a.window + 1) : 0;
  const int b0 = max(s * chunk, lo), b1 = min(pos + 1, (s + 1) * chunk);
  const int64_t head0 = static_cast<int64_t>(r) * a.n_heads + static_cast<int64_t>(kvh) * G;
  T* out = static_cast<T*>(a.out);
  if (b0 >= b1) {  // no visible key in this split
    if (splits > 1) {
      store_empty_split<kT>(G, D, head0, splits, s, part_o, part_ml);
    } else {  // only for a row with pos0 < 0 (no key at all): zeros, never unwritten memory
      for (int i = threadIdx.x; i < G * D; i += kT) out[head0 * D + i] = from_f<T>(0.f);
    }
    return;
  }
  const int n_tiles = (b1 - b0 + kTok - 1) / kTok;
  const int64_t cache_base = (static_cast<int64_t>(a.slot[r]) * a.kv_heads + kvh) * a.max_tokens * D;
  const T* kc = static_cast<const T*>(a.k_cache) + cache_base;
  const T* vc = static_cast<const T*>(a.v_cache) + cache_base;
  const bool self = a.k_self != nullptr;
  const int64_t self_off = (static_cast<int64_t>(r) * a.kv_heads + kvh) * D;
  const T* ks = self ? static_cast<const T*>(a.k_self) + self_off : kc;
  const T* vs = self ? static_cast<const T*>(a.v_self) + self_off : vc;

  // q as the score mma's B operand (k = dims, n = heads): lane 4 g + t holds head g's dims
  // 16 kk + 2t, +1 and 16 kk + 8 + 2t, +1; heads >= G are zero columns.
  uint32_t qf[kKs][2];
  {
    const T* q = static_cast<const T*>(a.q) + (head0 + min(g, G - 1)) * D;
#pragma unroll
    for (int kk = 0; kk < kKs; ++kk) {
      qf[kk][0] = g < G ? *reinterpret_cast<const uint32_t*>(q + 16 * kk + 2 * t) : 0u;
      qf[kk][1] = g < G ? *reinterpret_cast<const uint32_t*>(q + 16 * kk + 8 + 2 * t) : 0u;
    }
  }

  // This warp's buffers: stage st holds K at wb + st * 2 kTile, V right after.
  T* wb = sm + static_cast<size_t>(warp) * kNst * 2 * kTile;
  const int crow = lane / kPpr, ccol = lane % kPpr;
  const uint32_t cdst = smem_addr(wb + crow * kLd + ccol * 8);
  // Issues tile i (tokens b0 + 16 i ..) into stage st: rows past b1 are zero-filled, the
  // diagonal row comes from k_self / v_self under past-only quantization.
  const T* kl = kc + static_cast<int64_t>(b0 + crow) * D + ccol * 8;  // this lane's first piece
  const T* vl = vc + static_cast<int64_t>(b0 + crow) * D + ccol * 8;
  auto issue = [&](int i, int st) {
    const int j0 = b0 + kTok * i + crow;
    const uint32_t dk = cdst + st * 2 * kTile * 2, dv = dk + kTile * 2;
    const int t0 = b0 + kTok * i;
    if (t0 + kTok <= b1 && !(self && pos >= t0 && pos < t0 + kTok)) {
      // A whole tile of cache rows (every tile but the last of a split and the diagonal's):
      // one 64-bit base per tile and constant offsets, no predicates. Measured on the
      // predicated form below: ~15 instructions per two copies (PTX, sm_90).
      const T* ksrc = kl + static_cast<int64_t>(kTok * i) * D;
      const T* vsrc = vl + static_cast<int64_t>(kTok * i) * D;
#pragma unroll
      for (int p = 0; p < kNpl; ++p) {
        cp_async16(dk + p * kRpi * kLd * 2, ksrc + p * kRpi * D, 16);
        cp_async16(dv + p * kRpi * kLd * 2, vsrc + p * kRpi * D, 16);
      }
      return;
    }
#pragma unroll
    for (int p = 0; p < kNpl; ++p) {
      const int j = j0 + kRpi * p;
      const bool ok = j < b1;
      const bool diag = self && j == pos;
      const T* ksrc = diag ? ks : kc + static_cast<int64_t>(ok ? j : 0) * D;
      const T* vsrc = diag ? vs : vc + static_cast<int64_t>(ok ? j : 0) * D;
      cp_async16(dk + p * kRpi * kLd * 2, ksrc + ccol * 8, ok ? 16 : 0);
      cp_async16(dv + p * kRpi * kLd * 2, vsrc + ccol * 8, ok ? 16 : 0);
    }
  };

  // ldmatrix addresses (bytes within a stage): the K tile as A (tokens = rows): matrices
  // (tokens 0-7, dims k..k+7), (8-15, k..), (0-7, k+8..), (8-15, k+8..); the V tile as A^T
  // through .trans (dims = rows): (tokens 0-7, dims m..m+7), (0-7, m+8..), (8-15, m..), (8-15, m+8..).
  const int mi = lane >> 3;
  const uint32_t kaddr = smem_addr(wb + ((lane & 7) + (mi & 1) * 8) * kLd + (mi >> 1) * 8);
  const uint32_t vaddr = smem_addr(wb + kTile + ((lane & 7) + (mi >> 1) * 8) * kLd + (mi & 1) * 8);

  const float sl = a.scale * kLog2e;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // heads 2t, 2t + 1
  float o[kKs][4];
#pragma unroll
  for (int mt = 0; mt < kKs; ++mt) o[mt][0] = o[mt][1] = o[mt][2] = o[mt][3] = 0.f;

  const int my_tiles = warp < n_tiles ? (n_tiles - warp + kW - 1) / kW : 0;
#pragma unroll
  for (int st = 0; st < kNst - 1; ++st) {
    if (st < my_tiles) issue(warp + kW * st, st);
    cp_async_commit();
  }
  for (int it = 0; it < my_tiles; ++it) {
    {
      const int nx = it + kNst - 1;
      if (nx < my_tiles) issue(warp + kW * nx, nx % kNst);
      cp_async_commit();  // possibly empty: keeps "all but the newest kNst - 1" = tile it
    }
    cp_async_wait<kNst - 1>();
    __syncwarp();
    const int st = it % kNst;
    const uint32_t so = st * 2 * kTile * 2;
    // Scores S[token][head] of this tile.
    // Two accumulators (even and odd k-steps): two independent mma chains of kKs / 2.
    float sc[4] = {0.f, 0.f, 0.f, 0.f}, sd[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int kk = 0; kk < kKs; kk += 2) {
      uint32_t ka[4], kb[4];
      ldsm_x4(ka, kaddr + so + kk * 32);
      ldsm_x4(kb, kaddr + so + kk * 32 + 32);
      mma<T>(sc, ka, qf[kk][0], qf[kk][1]);
      mma<T>(sd, kb, qf[kk + 1][0], qf[kk + 1][1]);
    }
#pragma unroll
    for (int e = 0; e < 4; ++e) sc[e] += sd[e];
    const int j0 = b0 + kTok * (warp + kW * it);
    const bool ok0 = j0 + g < b1, ok1 = j0 + g + 8 < b1;
    const float x0 = ok0 ? sc[0] * sl : -INFINITY, x1 = ok0 ? sc[1] * sl : -INFINITY;
    const float x2 = ok1 ? sc[2] * sl : -INFINITY, x3 = ok1 ? sc[3] * sl : -INFINITY;
    float mx0 = fmaxf(x0, x2), mx1 = fmaxf(x1, x3);
#pragma unroll
    for (int off = 4; off < 32; off <<= 1) {
      mx0 = fmaxf(mx0, __shfl_xor_sync(0xffffffffu, mx0, off));
      mx1 = fmaxf(mx1, __shfl_xor_sync(0xffffffffu, mx1, off));
    }
    // Token 0 of every tile is visible (the tile starts below b1), so mx and the new max are
    // finite for finite inputs and exp2f(-inf - max) = 0 on the first tile.
    const float n0 = fmaxf(m0, mx0), n1 = fmaxf(m1, mx1);
    const float al0 = exp2f(m0 - n0), al1 = exp2f(m1 - n1);
    m0 = n0;
    m1 = n1;
    const uint32_t p01 = pack2<T>(exp2f(x0 - n0), exp2f(x1 - n1));  // token g
    const uint32_t p23 = pack2<T>(exp2f(x2 - n0), exp2f(x3 - n1));  // token g + 8
    const float2 f01 = unpack2<T>(p01), f23 = unpack2<T>(p23);
    l0 = fmaf(l0, al0, f01.x + f23.x);
    l1 = fmaf(l1, al1, f01.y + f23.y);
    if (__any_sync(0xffffffffu, al0 != 1.f || al1 != 1.f)) {  // a head's max moved (rare after the first tiles)
#pragma unroll
      for (int mt = 0; mt < kKs; ++mt) {
        o[mt][0] *= al0;
        o[mt][1] *= al1;
        o[mt][2] *= al0;
        o[mt][3] *= al1;
      }
    }
    // P^T as the B operand (k = tokens, n = heads): lane 4 g + t needs head g, tokens 2t, 2t + 1
    // (and + 8): the transposes of the two 8 x 8 blocks the lane holds as (token g, heads 2t..).
    const uint32_t pb0 = movm_t(p01), pb1 = movm_t(p23);
#pragma unroll
    for (int mt = 0; mt < kKs; ++mt) {
      uint32_t va[4];
      ldsm_x4_t(va, vaddr + so + mt * 32);
      mma<T>(o[mt], va, pb0, pb1);
    }
    __syncwarp();  // this stage is refilled by the next iteration's issue
  }
  cp_async_wait<0>();
  l0 += __shfl_xor_sync(0xffffffffu, l0, 4);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 8);
  l0 += __shfl_xor_sync(0xffffffffu, l0, 16);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 4);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 8);
  l1 += __shfl_xor_sync(0xffffffffu, l1, 16);
  __syncthreads();  // every warp is done with its buffers: reuse them for the merge

  float* red = reinterpret_cast<float*>(smraw);  // [kW][8][D]
  float* ml = red + kW * 8 * D;                  // [kW][8][2]
#pragma unroll
  for (int mt = 0; mt < kKs; ++mt) {
    const int d = 16 * mt + g;
    red[(warp * 8 + 2 * t) * D + d] = o[mt][0];
    red[(warp * 8 + 2 * t + 1) * D + d] = o[mt][1];
    red[(warp * 8 + 2 * t) * D + d + 8] = o[mt][2];
    red[(warp * 8 + 2 * t + 1) * D + d + 8] = o[mt][3];
  }
  if (g == 0) {
    ml[(warp * 8 + 2 * t) * 2] = m0;
    ml[(warp * 8 + 2 * t) * 2 + 1] = l0;
    ml[(warp * 8 + 2 * t + 1) * 2] = m1;
    ml[(warp * 8 + 2 * t + 1) * 2 + 1] = l1;
  }
  __syncthreads();
  for (int i = threadIdx.x; i < G * D; i += kT) {
    const int h = i / D, d = i % D;
    float M = -INFINITY;
#pragma unroll
    for (int w = 0; w < kW; ++w) M = fmaxf(M, ml[(w * 8 + h) * 2]);
    float acc = 0.f, sum = 0.f;
#pragma unroll
    for (int w = 0; w < kW; ++w) {
      const float mw = ml[(w * 8 + h) * 2];
      if (mw == -INFINITY) continue;  // a warp without tiles
      const float f = exp2f(mw - M);
      acc = fmaf(f, red[(w * 8 + h) * D + d], acc);
      sum = fmaf(f, ml[(w * 8 + h) * 2 + 1], sum);
    }
    if (splits == 1) {
      out[(head0 + h) * D + d] = from_f<T>(acc / sum);
    } else {
      part_o[((head0 + h) * splits + s) * D + d] = acc;
      if (d == 0) {
        part_ml[((head0 + h) * splits + s) * 2] = M;
        part_ml[((head0 + h) * splits + s) * 2 + 1] = sum;
      }
    }
  }
}

// One block of kCT threads per (query head, row): out = sum_s 2^(m_s - M) o_s / sum_s 2^(m_s - M) l_s.
// Layouts as decode_kernel's partials (max in log2 units). The splits are read in parallel:
// the weights by one thread per split, the partial outputs by warp w for splits w, w + kCW, ...
// with 16-byte loads (lane: dims 4 lane .. 4 lane + 3), then added over the warps in order.
// (A loop over the splits per output element, as splitk_combine_kernel does, waits for each
// split's loads in turn: h41 measured 3-30% of a batch-1 decode for that in kv_decode_stream.cu.)
// ws: [splits] dynamic shared floats.
template <typename T>
__global__ void __launch_bounds__(kCT)
combine_kernel(const float* part_o, const float* part_ml, T* out, int n_heads, int D, int splits) {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
  extern __shared__ float wsm[];
  __shared__ float red[kCW], lred[kCW];
  __shared__ __align__(16) float part[kCW][128];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int64_t head = static_cast<int64_t>(blockIdx.y) * n_heads + blockIdx.x;
  const float* ml = part_ml + head * splits * 2;
  float m = -INFINITY;
  for (int s = threadIdx.x; s < splits; s += kCT) m = fmaxf(m, ml[2 * s]);
  m = warp_max(m);
  if (lane == 0) red[warp] = m;
  __syncthreads();
  float M = red[0];
#pragma unroll
  for (int w = 1; w < kCW; ++w) M = fmaxf(M, red[w]);
  float l = 0.f;
  for (int s = threadIdx.x; s < splits; s += kCT) {
    const float ms = ml[2 * s];
    const float w = ms == -INFINITY ? 0.f : exp2f(ms - M);  // an empty split weighs 0
    wsm[s] = w;
    l = fmaf(w, ml[2 * s + 1], l);
  }
  l = warp_sum(l);
  if (lane == 0) lred[warp] = l;
  __syncthreads();
  float4 acc = make_float4(0.f, 0.f, 0.f, 0.f);
  if (4 * lane < D) {
    const float* po = part_o + head * splits * D + 4 * lane;
#pragma unroll 4
    for (int s = warp; s < splits; s += kCW) {
      const float w = wsm[s];
      const float4 v = *reinterpret_cast<const float4*>(po + static_cast<int64_t>(s) * D);
      acc.x = fmaf(w, v.x, acc.x);
      acc.y = fmaf(w, v.y, acc.y);
      acc.z = fmaf(w, v.z, acc.z);
      acc.w = fmaf(w, v.w, acc.w);
    }
    *reinterpret_cast<float4*>(&part[warp][4 * lane]) = acc;
  }
  __syncthreads();
  float L = lred[0];
#pragma unroll
  for (int w = 1; w < kCW; ++w) L += lred[w];
  for (int d = threadIdx.x; d < D; d += kCT) {
    float o = part[0][d];
#pragma unroll
    for (int w = 1; w < kCW; ++w) o += part[w][d];
    out[head * D + d] = from_f<T>(o / L);
  }
}

// Build variants (warps per block W, pipeline depth NST in tiles per warp). The default is
// picked per head_dim (default_variant); KVQ_ATTN_DECODE=new-w4s2 etc. forces one (A/B only).
// head_dim 128: w8s2 (8 warps, 2 tiles each: 139 KB of shared memory, one block per SM),
// measured fastest or within 1.5% of the fastest variant in 19 of 20 cells (H100, 2026-11-23,
// notes/s6/results-h53.md: llama3-8b b1 32K 56.4 us against 57.2-59.7 for the others, 64K
// 101.8 against 103.0-106.0; the exception llama2-7b b1 64K, 385.0 against 383.7). The
// pipeline depth hardly mattered (2, 3 or 4 tiles within 3% of each other at 4 warps), so the
// bytes in flight were not the limit. head_dim 32/64: w4s4 (not timed; the testbed model's
// head_dim 64 runs it in the model tests).
struct Variant {
  int w, nst;
  const char* name;
};
constexpr Variant kVariants[] = {{4, 2, "new-w4s2"}, {4, 3, "new-w4s3"}, {4, 4, "new-w4s4"},
                                 {8, 2, "new-w8s2"}, {8, 3, "new-w8s3"}};
constexpr int kNumVariants = sizeof(kVariants) / sizeof(kVariants[0]);
int default_variant(int head_dim) { return head_dim >= 128 ? 3 : 2; }
// -1: an unknown "new-..." value.
int pick_variant(int head_dim) {
  const char* e = std::getenv("KVQ_ATTN_DECODE");
  if (e == nullptr || std::strncmp(e, "new-", 4) != 0) return default_variant(head_dim);
  for (int i = 0; i < kNumVariants; ++i)
    if (std::strcmp(e, kVariants[i].name) == 0) return i;
  return -1;
}

// Blocks of decode_kernel<T, D, W, NST> one SM holds (occupancy API, shared-memory limit
// raised first); cached per instantiation.
template <typename T, int D, int W, int NST>
int blocks_per_sm() {
  static const int n = [] {
    const int smem = static_cast<int>(Layout<D, W, NST>::kBytes);
    int b = 0;
    if (cudaFuncSetAttribute(decode_kernel<T, D, W, NST>, cudaFuncAttributeMaxDynamicSharedMemorySize, smem) !=
            cudaSuccess ||
        cudaOccupancyMaxActiveBlocksPerMultiprocessor(&b, decode_kernel<T, D, W, NST>, W * 32, smem) !=
            cudaSuccess) {
      cudaGetLastError();
      b = 0;
    }
    return std::max(b, 1);
  }();
  return n;
}

template <int D, int W, int NST>
int resident_per_sm() {  // the same plan (and workspace) for fp16 and bf16
  return std::min(blocks_per_sm<__half, D, W, NST>(), blocks_per_sm<__nv_bfloat16, D, W, NST>());
}

struct Plan {
  int chunk = 0, splits = 1;
};
constexpr int kMaxSplits = 4096;  // the combine's weights: 16 KB of shared memory at most

// The largest split count make_plan considers (its result's splits <= want <= this): the
// key range in 64-token pieces, at most about two waves of blocks, kMaxSplits.
int max_plan_splits(int pairs, int max_len, int resident) {
  return std::max(1, std::min({(max_len + 63) / 64, 2 * resident / std::max(pairs, 1) + 1, kMaxSplits}));
}

// The split count minimising waves x (tokens per block + 128): 128 tokens stand for a
// block's fixed cost (q set-up, pipeline fill, merge and partial writes; the per-block cost
// kv_decode_stream.cu's plan uses). Chunks are multiples of 16 tokens; ties keep fewer
// splits (a cheaper combine, none at all for one split). The search is up to ~130 steps of
// three integer divisions (a few us on the host); the runtime asks once per layer with the same
// arguments, so the last 4 answers are kept per thread (one search per decode step).
Plan make_plan(int pairs, int max_len, int resident) {
  struct Memo {
    int pairs = -1, max_len = -1, resident = -1;
    Plan plan;
  };
  thread_local Memo memo[4];
  thread_local int memo_next = 0;
  for (const Memo& m : memo)
    if (m.pairs == pairs && m.max_len == max_len && m.resident == resident) return m.plan;
  Plan best{((max_len + kTok - 1) / kTok) * kTok, 1};
  double best_cost = 1e300;
  const int max_s = max_plan_splits(pairs, max_len, resident);
  for (int want = 1; want <= max_s; ++want) {
    int chunk = (max_len + want - 1) / want;
    chunk = ((chunk + kTok - 1) / kTok) * kTok;
    const int splits = (max_len + chunk - 1) / chunk;
    const long long blocks = static_cast<long long>(pairs) * splits;
    const long long waves = (blocks + resident - 1) / resident;
    const double cost = static_cast<double>(waves) * (chunk + 128);
    if (cost < best_cost) {
      best_cost = cost;
      best = {chunk, splits};
    }
  }
  memo[memo_next] = {pairs, max_len, resident, best};
  memo_next = (memo_next + 1) % 4;
  return best;
}

template <int D>
int resident_for_variant(int v) {
  switch (v) {
    case 0: return resident_per_sm<D, 4, 2>();
    case 1: return resident_per_sm<D, 4, 3>();
    case 2: return resident_per_sm<D, 4, 4>();
    case 3: return resident_per_sm<D, 8, 2>();
    default: return resident_per_sm<D, 8, 3>();
  }
}
int resident_for(int head_dim, int v) {
  switch (head_dim) {
    case 32: return resident_for_variant<32>(v);
    case 64: return resident_for_variant<64>(v);
    default: return resident_for_variant<128>(v);
  }
}

Plan plan_for(const AttentionArgs& a, int max_len, int sm_count, int v) {
  return make_plan(a.rows * a.kv_heads, max_len, resident_for(a.head_dim, v) * std::max(sm_count, 1));
}

template <typename T, int D, int W, int NST>
cudaError_t launch(const AttentionArgs& a, const Plan& p, float* part_o, float* part_ml, cudaStream_t stream) {
  blocks_per_sm<T, D, W, NST>();  // raises the shared-memory limit once
  const size_t smem = Layout<D, W, NST>::kBytes;
  decode_kernel<T, D, W, NST><<<dim3(p.splits, a.kv_heads, a.rows), W * 32, smem, stream>>>(
      a, p.chunk, p.splits, part_o, part_ml);
  cudaError_t e = launch_status();
  if (e != cudaSuccess || p.splits == 1) return e;
  T* out = static_cast<T*>(a.out);
  const size_t csmem = static_cast<size_t>(p.splits) * sizeof(float);  // <= kMaxSplits floats: 16 KB
  if (device_has_pdl())
    return launch_pdl(combine_kernel<T>, dim3(a.n_heads, a.rows), dim3(kCT), csmem, stream,
                      static_cast<const float*>(part_o), static_cast<const float*>(part_ml), out, a.n_heads, D,
                      p.splits);
  combine_kernel<T><<<dim3(a.n_heads, a.rows), kCT, csmem, stream>>>(part_o, part_ml, out, a.n_heads, D, p.splits);
  return launch_status();
}

template <typename T, int D>
cudaError_t dispatch_variant(const AttentionArgs& a, const Plan& p, int v, float* o, float* ml, cudaStream_t stream) {
  switch (v) {
    case 0: return launch<T, D, 4, 2>(a, p, o, ml, stream);
    case 1: return launch<T, D, 4, 3>(a, p, o, ml, stream);
    case 2: return launch<T, D, 4, 4>(a, p, o, ml, stream);
    case 3: return launch<T, D, 8, 2>(a, p, o, ml, stream);
    default: return launch<T, D, 8, 3>(a, p, o, ml, stream);
  }
}

template <typename T>
cudaError_t dispatch(const AttentionArgs& a, const Plan& p, int v, float* o, float* ml, cudaStream_t stream) {
  switch (a.head_dim) {
    case 32: return dispatch_variant<T, 32>(a, p, v, o, ml, stream);
    case 64: return dispatch_variant<T, 64>(a, p, v, o, ml, stream);
    default: return dispatch_variant<T, 128>(a, p, v, o, ml, stream);
  }
}

size_t plan_bytes(const AttentionArgs& a, const Plan& p) {
  if (p.splits == 1) return 0;
  return static_cast<size_t>(a.rows) * a.n_heads * p.splits * (a.head_dim + 2) * sizeof(float);
}

bool aligned16(const void* p) { return (reinterpret_cast<uintptr_t>(p) & 15u) == 0; }

}  // namespace

bool fits(const AttentionArgs& a) {
  const int d = a.head_dim;
  if (a.n != 1 || a.kv_heads <= 0 || a.n_heads % a.kv_heads != 0 || a.n_heads / a.kv_heads > 8) return false;
  if (d != 32 && d != 64 && d != 128) return false;
  if (!aligned16(a.k_cache) || !aligned16(a.v_cache) || !aligned16(a.q)) return false;
  if (a.k_self != nullptr && (!aligned16(a.k_self) || !aligned16(a.v_self))) return false;
  return true;
}

size_t workspace(const AttentionArgs& a, int max_len, int sm_count) {
  if (a.kv_heads <= 0 || a.rows <= 0 || max_len <= 0) return 0;
  // Room for the largest split count any variant's plan can take (no search), so that
  // KVQ_ATTN_DECODE may change between calls.
  size_t bytes = 0;
  for (int v = 0; v < kNumVariants; ++v) {
    const int resident = resident_for(a.head_dim, v) * std::max(sm_count, 1);
    Plan bound;
    bound.splits = max_plan_splits(a.rows * a.kv_heads, max_len, resident);
    bytes = std::max(bytes, plan_bytes(a, bound));
  }
  return bytes;
}

cudaError_t run(Act act, const AttentionArgs& a, int max_len, int sm_count, void* ws, size_t ws_bytes,
                cudaStream_t stream) {
  if (!fits(a)) return cudaErrorInvalidValue;
  if (a.rows == 0) return cudaSuccess;
  const int v = pick_variant(a.head_dim);
  if (max_len <= 0 || v < 0) return cudaErrorInvalidValue;
  const Plan p = plan_for(a, max_len, sm_count, v);
  if (ws_bytes < plan_bytes(a, p) || (p.splits > 1 && !aligned16(ws))) return cudaErrorInvalidValue;
  float* part_o = static_cast<float*>(ws);
  float* part_ml = p.splits == 1 ? nullptr
                                 : part_o + static_cast<size_t>(a.rows) * a.n_heads * p.splits * a.head_dim;
  if (act == Act::kF16) return dispatch<__half>(a, p, v, part_o, part_ml, stream);
  return dispatch<__nv_bfloat16>(a, p, v, part_o, part_ml, stream);
}

}  // namespace kvq::kern::decode_mma
