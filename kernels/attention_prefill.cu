// Causal prefill attention (any chunk length, GQA, sliding window, past-only diagonal),
// FlashAttention-2 style on mma.sync tensor-core instructions (m16n8k16, 16-bit operands,
// fp32 accumulators). Memory is O(tile), never [queries, keys].
//
// Measured on the H100 (2026-11-22, notes/cuda-perf.md, scripts/bench/run_attn_bench.sh):
// 256-263 TFLOP/s at 16K causal for head_dim 128 (fp16 and bf16, MHA and GQA 4:1), 208-214
// at 4K, 223 for head_dim 64; the wmma kernel it replaces reached 38-50 (its benchmark copy,
// untimed since e9b1d53, is gone: git show e277aa0:scripts/bench/attention_prefill_wmma.cu). The
// ceilings on the same GPU: cuBLAS 749 (fp16) / 774 (bf16), a register-only mma.sync loop
// 622 TFLOP/s; so this kernel is at ~42% of what mma.sync can do. Going further needs
// wgmma (sm_90a): kernels/attention_prefill_sm90.cu (+34-42%, session 3) and, for
// head_dim 128, its FlashAttention-3 style form kernels/attention_prefill_sm90_fa3.cu
// (+20-40% over that, session 4), which kern::attention_prefill (end of this file) takes
// instead on compute capability 9.0; this kernel serves every other case and any GPU, and
// KVQ_PREFILL=fa2 forces it.
//
// Work split: a block of 4 warps owns 64 queries of one head; warp w owns query rows
// [16w, 16w+16). Each warp keeps in registers its Q fragments (loaded once through shared
// memory), its S = Q K^T strip [16, 64] for the current key tile, the online-softmax state
// (row max m, partial row sums l) and its O strip [16, DP]. S turns into the A operand of
// P V without leaving registers: the m16n8k16 accumulator layout of two adjacent key
// n-tiles is exactly the A-fragment layout of one 16-key k-step, so P is rounded to 16 bits
// in place. Only the K/V tiles live in shared memory, double-buffered with cp.async so the
// next tile streams in while this one is multiplied.
//
// Causal structure: key tiles above the block's last query are never loaded; a warp skips
// the tiles its 16 rows cannot see (the block's diagonal tile is partly invisible to the
// lower warps), and only tiles that cross a warp's diagonal (or the sliding-window edge)
// evaluate the mask. Blocks are launched heaviest (latest queries, most keys) first so the
// tail of the grid is short.
//
// Shared memory (DP = head_dim rounded up to 16, rows padded by 16 bytes so that the 8 row
// addresses of each ldmatrix fall in distinct bank groups): 2 stages x (K, V) x [64][DP+8]
// 16-bit = 68 KB for DP = 128; registers (206 for DP = 128) allow two blocks (8 warps) per
// H100 SM. The Q tile is staged through the second stage's K buffer before the first
// prefetch into it.
//
// head_dim: 64 and 128 run at full width; other multiples of 8 up to 128 run on the next
// DP (16, 32, 64, 128) with zero padding columns (the padding costs tensor-core work only).
// Past-only quantization (k_self/v_self) masks the diagonal in the tiles and adds the
// diagonal key/value afterwards as one more online-softmax step in scalar code (slower,
// but it touches one key per query).
//
// Precision: scores are fp32 sums of exact 16-bit products; exp2 of fp32 (CUDA exp2f,
// <= 2 ulp) with the softmax scale folded into log2 units; P is rounded to 16 bits before
// P V (relative 2^-9 for bf16, 2^-12 for fp16 per weight) while the normaliser l sums the
// fp32 P, as in the previous wmma kernel; the output is rounded once (round to nearest
// even). The bound in tests/gpu/kernel_parity_test.cpp follows from this.
#include <cmath>
#include <cstdlib>
#include <cstring>

#include "kernels/attention_prefill_sm90.cuh"
#include "kernels/common.cuh"
#include "kernels/prefill_common.cuh"

namespace kvq::kern {
namespace {

// Blocks per SM the register allocation aims at (__launch_bounds__ min blocks). 2 (206
// registers for DP = 128, 149 for DP = 64, no spills) beat 3 (registers capped at 168 / 128
// with 92 / 52 bytes of spills) at every measured shape, by 4-10% for head_dim 128 (1% for
// 64): 259.6 vs 242.9 TFLOP/s at llama2-7b T=16384 fp16 (H100, 2026-11-22). The macros let
// session 2's microbenchmark time other choices from this one source (compile with
// -Dattention_prefill_fa2=NAME -Dattention_prefill=NAME_dispatch to rename the entries).
#ifndef KVQ_FA_MIN_BLOCKS_128
#define KVQ_FA_MIN_BLOCKS_128 2
#endif
#ifndef KVQ_FA_MIN_BLOCKS_64
#define KVQ_FA_MIN_BLOCKS_64 3
#endif

// Warps per block (16 query rows each). 8 warps (128 queries sharing each K/V tile, half
// the L2 -> shared traffic per FLOP) measured 3-5% slower than 4 warps x 2 blocks/SM
// (247.5 vs 259.6 TFLOP/s, llama2-7b T=16384 fp16): L2 bandwidth is not the limit.
#ifndef KVQ_FA_WARPS
#define KVQ_FA_WARPS 4
#endif
// Keys per tile (64; 32 is a microbenchmark variant: fewer registers, twice the barriers).
#ifndef KVQ_FA_BK
#define KVQ_FA_BK 64
#endif

constexpr int kWarps = KVQ_FA_WARPS;
constexpr int kThreads = 32 * kWarps;
constexpr int kBQ = 16 * kWarps;  // queries per block
constexpr int kBK = KVQ_FA_BK;     // keys per tile

template <int DP>
struct FaSmem {
  static constexpr int kLd = DP + 8;                      // 16-bit elements per smem row
  static constexpr int kTile = kBK * kLd;                 // elements per K or V tile
  static constexpr size_t kBytes = 4 * static_cast<size_t>(kTile) * 2;  // 2 stages x (K, V)
};
// The Q tile is staged in stage 1's K and V buffers (contiguous, same row pitch).
static_assert(kBQ <= 2 * kBK, "the Q tile must fit in stage 1's K and V buffers");

__device__ __forceinline__ void ldsm_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}
__device__ __forceinline__ void ldsm_x4_trans(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr));
}

// d[16x8] += a[16x16] b[16x8], fp32 accumulate.
template <typename T>
__device__ __forceinline__ void mma16816(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1);
template <>
__device__ __forceinline__ void mma16816<__half>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                 uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}
template <>
__device__ __forceinline__ void mma16816<__nv_bfloat16>(float (&d)[4], const uint32_t (&a)[4], uint32_t b0,
                                                        uint32_t b1) {
  asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Fragment ownership (PTX ISA, mma.m16n8k16): lane = 4 g + t holds accumulator elements
// (row g, cols 2t, 2t+1) in [0], [1] and (row g + 8, same cols) in [2], [3] of each n-tile.
template <typename T, int DP>
__global__ void __launch_bounds__(kThreads, DP == 128 ? KVQ_FA_MIN_BLOCKS_128 : KVQ_FA_MIN_BLOCKS_64)
attention_prefill_fa2(AttentionArgs a) {
  using S = FaSmem<DP>;
  constexpr int kLd = S::kLd;
  constexpr int kNT = kBK / 8;  // key n-tiles of S per tile
  constexpr int kDT = DP / 8;   // dim n-tiles of O
  extern __shared__ __align__(16) unsigned char smem_raw[];
  T* sm = reinterpret_cast<T*>(smem_raw);

  const int D = a.head_dim;
  const int qt = static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x);  // heavy first
  const int h = blockIdx.y, r = blockIdx.z, q0 = qt * kBQ;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const PrefillTile pt = prefill_tile<kBQ, kBK>(a, h, r, q0);
  const int window = a.window;
  const bool self = a.k_self != nullptr;
  const T* q = static_cast<const T*>(a.q);
  const T* kc = cache_rows<T>(a.k_cache, a, pt.slot, pt.kvh, D);
  const T* vc = cache_rows<T>(a.v_cache, a, pt.slot, pt.kvh, D);
  const int vecs = D >> 3;  // 16-byte vectors per row

  // Padding columns [D, DP) of every buffer are zero for the whole kernel (cp.async writes
  // columns < D only), so they add nothing to Q K^T and nothing non-finite to P V.
  if (D < DP) {
    const int pad = DP - D;
    for (int idx = tid; idx < 4 * kBK * pad; idx += kThreads) {
      const int rr = idx / pad, c = D + idx % pad;  // rr: row over the 4 buffers
      sm[(rr / kBK) * S::kTile + (rr % kBK) * kLd + c] = from_f<T>(0.f);
    }
  }

  // K and V rows [kt, kt + 64) into stage `st`; rows past key_end become zeros without
  // reading (the cache there may hold anything, NaN bits included).
  auto load_kv = [&](int st, int kt) {
    const int valid = min(kBK, pt.key_end - kt);
    T* ks = sm + (2 * st) * S::kTile;
    T* vs = ks + S::kTile;
    for (int idx = tid; idx < kBK * vecs; idx += kThreads) {
      const int row = idx / vecs, v = idx - row * vecs;
      const bool ok = row < valid;
      const int64_t off = static_cast<int64_t>(ok ? kt + row : 0) * D + v * 8;
      cp_async16(smem_addr(ks + row * kLd + v * 8), kc + off, ok ? 16 : 0);
      cp_async16(smem_addr(vs + row * kLd + v * 8), vc + off, ok ? 16 : 0);
    }
  };

  // Q tile -> stage 1's K (and, for 128 queries, V) buffer, free until the prefetch of
  // tile 1 -> registers.
  T* qs = sm + 2 * S::kTile;
  for (int idx = tid; idx < kBQ * vecs; idx += kThreads) {
    const int row = idx / vecs, v = idx - row * vecs;
    const bool ok = row < pt.nq;
    const T* src = q + ((static_cast<int64_t>(r) * a.n + q0 + (ok ? row : 0)) * a.n_heads + h) * D + v * 8;
    cp_async16(smem_addr(qs + row * kLd + v * 8), src, ok ? 16 : 0);
  }
  cp_async_commit();
  load_kv(0, pt.key_begin);
  cp_async_commit();
  cp_async_wait<1>();
  __syncthreads();
  uint32_t qf[DP / 16][4];
#pragma unroll
  for (int kk = 0; kk < DP / 16; ++kk)
    ldsm_x4(qf[kk], smem_addr(qs + (warp * 16 + (lane & 15)) * kLd + kk * 16 + (lane >> 4) * 8));
  __syncthreads();  // every warp holds its Q before stage 1 is overwritten

  // Per-lane ldmatrix offsets (elements): K (non-transposed, matrices ordered
  // keys 0-7/dims 0-7, keys 0-7/dims 8-15, keys 8-15/dims 0-7, keys 8-15/dims 8-15) and
  // V (transposed, keys 0-7/dims 0-7, keys 8-15/dims 0-7, keys 0-7/dims 8-15, ...).
  const int k_lane = (((lane >> 4) << 3) + (lane & 7)) * kLd + ((lane >> 3) & 1) * 8;
  const int v_lane = ((((lane >> 3) & 1) << 3) + (lane & 7)) * kLd + (lane >> 4) * 8;

  const float sl = a.scale * 1.4426950408889634f;  // scores -> log2 units
  float o[kDT][4];
#pragma unroll
  for (int i = 0; i < kDT; ++i) o[i][0] = o[i][1] = o[i][2] = o[i][3] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // rows g and g + 8 (raw scores)
  const int wp0 = pt.p0 + q0 + warp * 16;  // position of the warp's first row
  const int wp1 = wp0 + 15;
  const int pos1 = wp0 + g + 8;  // position of the lane's second row (the first: pos1 - 8)

  for (int it = 0; it < pt.n_tiles; ++it) {
    const int kt = pt.key_begin + it * kBK;
    const int st = it & 1;
    if (it + 1 < pt.n_tiles) load_kv(st ^ 1, kt + kBK);
    cp_async_commit();  // possibly empty: keeps "all but the newest group" = this tile
    cp_async_wait<1>();
    __syncthreads();

    // Tiles entirely after the warp's last row, or entirely before its window, are skipped.
    const bool visible = kt <= wp1 && !(window > 0 && kt + kBK - 1 < wp0 - window + 1);
    if (visible) {
      const uint32_t ks = smem_addr(sm + (2 * st) * S::kTile);
      const uint32_t vs = ks + S::kTile * 2;
      float s[kNT][4];
#pragma unroll
      for (int i = 0; i < kNT; ++i) s[i][0] = s[i][1] = s[i][2] = s[i][3] = 0.f;
#pragma unroll
      for (int kk = 0; kk < DP / 16; ++kk) {
#pragma unroll
        for (int np = 0; np < kNT / 2; ++np) {
          uint32_t b[4];
          ldsm_x4(b, ks + (k_lane + np * 16 * kLd + kk * 16) * 2);
          mma16816<T>(s[2 * np], qf[kk], b[0], b[1]);
          mma16816<T>(s[2 * np + 1], qf[kk], b[2], b[3]);
        }
      }

      // Mask (only tiles on the causal diagonal or the window's far edge), then the online
      // softmax on the fragments: row max over the quad's 4 lanes, rescale, exp2.
      mask_tile<kNT>(s, kt, wp0, pos1, window, self, t4);
      float alpha0, alpha1;
      softmax_tile<kNT, false>(s, m0, m1, l0, l1, alpha0, alpha1, sl);
#pragma unroll
      for (int i = 0; i < kDT; ++i) {
        o[i][0] *= alpha0;
        o[i][1] *= alpha0;
        o[i][2] *= alpha1;
        o[i][3] *= alpha1;
      }

      // O += P V: key n-tiles 2kk, 2kk+1 of S are the A fragment of k-step kk.
#pragma unroll
      for (int kk = 0; kk < kNT / 2; ++kk) {
        const uint32_t pa[4] = {pack2<T>(s[2 * kk][0], s[2 * kk][1]), pack2<T>(s[2 * kk][2], s[2 * kk][3]),
                                pack2<T>(s[2 * kk + 1][0], s[2 * kk + 1][1]),
                                pack2<T>(s[2 * kk + 1][2], s[2 * kk + 1][3])};
#pragma unroll
        for (int dp = 0; dp < DP / 16; ++dp) {
          uint32_t b[4];
          ldsm_x4_trans(b, vs + (v_lane + kk * 16 * kLd + dp * 16) * 2);
          mma16816<T>(o[2 * dp], pa, b[0], b[1]);
          mma16816<T>(o[2 * dp + 1], pa, b[2], b[3]);
        }
      }
    }
    __syncthreads();  // this stage is read by all warps before the next prefetch refills it
  }

  finish_rows<T, kDT>(a, o, D, m0, m1, l0, l1, warp * 16 + g, q0, pt.nq, r, h, pt.kvh, t4, sl);
}

template <typename T, int DP>
cudaError_t launch_prefill(const AttentionArgs& a, cudaStream_t stream) {
  const size_t smem = FaSmem<DP>::kBytes;
  cudaError_t e = cudaFuncSetAttribute(attention_prefill_fa2<T, DP>,
                                       cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  dim3 grid((a.n + kBQ - 1) / kBQ, a.n_heads, a.rows);
  attention_prefill_fa2<T, DP><<<grid, kThreads, smem, stream>>>(a);
  return launch_status();
}

template <typename T>
cudaError_t dispatch_prefill(const AttentionArgs& a, cudaStream_t stream) {
  if (a.head_dim <= 16) return launch_prefill<T, 16>(a, stream);
  if (a.head_dim <= 32) return launch_prefill<T, 32>(a, stream);
  if (a.head_dim <= 64) return launch_prefill<T, 64>(a, stream);
  return launch_prefill<T, 128>(a, stream);
}

// KVQ_PREFILL: "fa2" keeps every call on this kernel, "sm90" asks for the plain wgmma kernel
// where it applies (head_dim 64 or 128 on a compute capability 9.0 device), "fa3" for the
// warp-specialized one (head_dim 128 there; head_dim 64 then takes the plain wgmma kernel).
// Unset: kFa3Default / kSm90Default.
enum class PrefillPath { kDefault, kFa2, kSm90, kFa3 };
PrefillPath prefill_path() {
  static const PrefillPath path = [] {
    const char* v = std::getenv("KVQ_PREFILL");
    if (v != nullptr && std::strcmp(v, "fa2") == 0) return PrefillPath::kFa2;
    if (v != nullptr && std::strcmp(v, "sm90") == 0) return PrefillPath::kSm90;
    if (v != nullptr && std::strcmp(v, "fa3") == 0) return PrefillPath::kFa3;
    return PrefillPath::kDefault;
  }();
  return path;
}
// Whether the warp-specialized kernel (kernels/attention_prefill_sm90_fa3.cu) is the default
// for head_dim 128: yes, it passed the same parity cases and measured 385-494 TFLOP/s against
// the plain wgmma kernel's 279-360 at 4K-32K, whole llama2-7b prefill +10% at 16K and +16% at
// 32K (H100, 2026-11-22, notes/s4/results-h32.md). KVQ_PREFILL=sm90 keeps the plain kernel.
constexpr bool kFa3Default = true;
// Whether the wgmma kernel (kernels/attention_prefill_sm90.cu) is the default where usable:
// yes, it measured 340-361 TFLOP/s against this kernel's 249-261 at 16K-32K (H100,
// notes/cuda-perf.md) and passes the same parity cases.
constexpr bool kSm90Default = true;

}  // namespace

cudaError_t attention_prefill_fa2(Act act, const AttentionArgs& a, cudaStream_t stream) {
  if (a.head_dim % 8 != 0 || a.head_dim > kMaxHeadDim || a.head_dim <= 0 || a.kv_heads <= 0 ||
      a.n_heads % a.kv_heads != 0)
    return cudaErrorInvalidValue;
  if (a.rows == 0 || a.n == 0) return cudaSuccess;
  if (act == Act::kF16) return dispatch_prefill<__half>(a, stream);
  return dispatch_prefill<__nv_bfloat16>(a, stream);
}

cudaError_t attention_prefill(Act act, const AttentionArgs& a, cudaStream_t stream) {
  const PrefillPath path = prefill_path();
  const bool want_fa3 = path == PrefillPath::kFa3 || (path == PrefillPath::kDefault && kFa3Default);
  if (want_fa3 && attention_prefill_fa3_usable(a)) return attention_prefill_fa3(act, a, stream);
  const bool want_sm90 =
      want_fa3 || path == PrefillPath::kSm90 || (path == PrefillPath::kDefault && kSm90Default);
  if (want_sm90 && attention_prefill_sm90_usable(a))
    return attention_prefill_sm90(act, a, stream);
  return attention_prefill_fa2(act, a, stream);
}

}  // namespace kvq::kern
