// Causal prefill attention on Hopper warpgroup MMA (wgmma, sm_90a), FlashAttention-3
// style, for head_dim 128 and 64: the fast path behind kern::attention_prefill on H100/H200
// (kernels/attention_prefill_sm90.cuh says how it is picked; the FA2 mma.sync kernel in
// kernels/attention_prefill.cu stays the portable path and serves every other head_dim).
// Same contract as the FA2 kernel: any chunk length over a cached prefix, GQA, sliding
// window, past-only diagonal (k_self/v_self), fp16 and bf16, fp32 accumulation, online
// softmax in exp2 units, output rounded once.
//
// Why wgmma: mma.sync kernels top out at 622 TFLOP/s on the H100 (a register-only
// m16n8k16 loop, measured 2026-11-22, notes/cuda-perf.md) and our FA2 kernel reaches
// 256-263; cuBLAS reaches 749-774 with wgmma. wgmma reads B (and here A for Q K^T) straight
// from shared memory through a matrix descriptor, so the ldmatrix traffic and register
// staging of the FA2 kernel disappear, and one instruction covers a 64 x N x 16 product.
//
// Two forms: the plain one (attention_prefill_wgmma, shipped), described here, and a
// pipelined one (attention_prefill_wgmma_pipe, KVQ_SM90_PIPE=1: one warpgroup per block,
// the softmax of tile j overlapping the P V of tile j - 1), which is not correct yet (see
// KVQ_SM90_PIPE below).
// Work split: a block of KVQ_SM90_WG consumer warpgroups (128 threads each) owns
// 64 x KVQ_SM90_WG queries of one head; warpgroup w owns query rows [64w, 64w + 64), warp
// j of it rows [16j, 16j + 16) of those (the wgmma m64 accumulator layout). Per 64-key
// tile: S[64, 64] = Q K^T with Q and K both in shared memory (wgmma m64n64k16, D/16
// k-steps over head_dim D), masks and online softmax on the S registers, P rounded to 16
// bits in registers as the A operand of O[64, D] += P V (m64nDk16, 4 k-steps over the
// keys, V read through the instruction's transpose bit). The wgmma accumulator layout of each warp
// equals the mma.sync m16n8 one, so the mask, softmax, past-only and epilogue code is the
// FA2 kernel's with o[i][e] -> o[4 i + e].
//
// Shared memory: the 128B-swizzled layout wgmma reads without bank conflicts. A tile of
// 64 rows x D 16-bit columns is stored as D/64 halves (columns 0-63, 64-127), each
// [64][128 bytes]; the 16-byte chunk c of row r sits at chunk c ^ (r % 8) of that row, and
// every tile starts on a 1024-byte boundary (the swizzle pattern's period). Q (64 rows per
// warpgroup) is loaded once; K and V tiles stream through 2 stages with cp.async issued by
// all threads, one tile ahead (a TMA producer warp is the next step, not done here).
// Descriptors: K-major (Q, K): stride byte offset 1024 (8 rows), k-step kk starts at half
// kk / 4, byte 32 (kk % 4); V is MN-major for P V: stride byte offset 1024 (8 keys),
// leading byte offset = one half (64 dims), k-step kk (16 keys) starts at 2048 kk.
//
// Causal structure as FA2: key tiles past the block's last query are never loaded; a
// warpgroup skips tiles its 64 rows cannot see (wgmma is warpgroup-wide, so per-warpgroup,
// not per-warp as in FA2), masks only on tiles crossing its diagonal or window edge; blocks
// run heaviest first.
//
// Precision: identical arithmetic to the FA2 kernel (fp32 sums of exact 16-bit products,
// exp2f of fp32, P rounded to 16 bits before P V, fp32 normaliser of the unrounded P, one
// final rounding), so tests/gpu/kernel_parity_test.cpp applies the same derived bound.
#include <cmath>

#include "kernels/attention_prefill_sm90.cuh"
#include "kernels/common.cuh"
#include "kernels/prefill_common.cuh"
#include "kernels/attention_prefill_sm90_wgmma.cuh"

namespace kvq::kern {
namespace {

// Consumer warpgroups per block: 1 (64 queries, 80 KB of shared memory, two blocks per SM)
// or 2 (128 queries sharing each K/V tile, 96 KB, one block per SM).
#ifndef KVQ_SM90_WG
#define KVQ_SM90_WG 1
#endif

constexpr int kBK = 64;               // keys per tile
constexpr int kWG = KVQ_SM90_WG;
constexpr int kThreads = 128 * kWG;
constexpr int kBQ = 64 * kWG;         // queries per block
constexpr uint32_t kHalf = 64 * 128;  // bytes of one [64 rows][64 columns] 16-bit half tile
static_assert(kBK == 64, "the K/V half-tile offsets below assume 64-row tiles");
// Shared memory for head_dim D (64 or 128): Q (one [64][D] tile per warpgroup), then 2
// stages x (K, V) [64][D] tiles, + 1024 bytes to align the base to the swizzle period.
template <int D>
struct Sm90Smem {
  static constexpr uint32_t kTile = (D / 64) * kHalf;
  static constexpr uint32_t kQ = kWG * kTile;
  static constexpr size_t kBytes = kQ + 4 * size_t(kTile) + 1024;
};

#ifdef KVQ_HAVE_WGMMA
// make_desc, the wgmma instructions and fences, online_softmax:
// kernels/attention_prefill_sm90_wgmma.cuh; finish_rows: kernels/prefill_common.cuh.
using namespace wgmma;

// Byte offset of the 16-byte chunk c16 (0..D/8-1) of row `row` in a swizzled [64][D] tile.
__device__ __forceinline__ uint32_t swz(int row, int c16) {
  return static_cast<uint32_t>((c16 >> 3) * kHalf + row * 128 + (((c16 & 7) ^ (row & 7)) << 4));
}
#endif  // sm_90a device code

// Fragment ownership (PTX ISA, wgmma m64nNk16 accumulators): warp j of the warpgroup,
// lane = 4 g + t, holds (row 16 j + g, cols 8 i + 2t, +1) in [4i], [4i+1] and (row
// 16 j + g + 8, same cols) in [4i+2], [4i+3].
template <typename T, int kD>
__global__ void __launch_bounds__(kThreads, kWG == 1 ? 2 : 1) attention_prefill_wgmma(AttentionArgs a) {
#ifdef KVQ_HAVE_WGMMA
  constexpr int kNT = kBK / 8;  // key n-tiles of S
  constexpr int kDT = kD / 8;   // dim n-tiles of O
  constexpr int kC16 = kD / 8;  // 16-byte chunks per row
  constexpr uint32_t kQBytes = Sm90Smem<kD>::kQ, kTileBytes = Sm90Smem<kD>::kTile;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const uint32_t sq = base;
  const uint32_t skv = base + kQBytes;  // stage st: K at skv + 2 st kTileBytes, V after it

  const int qt = static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x);  // heavy first
  const int h = blockIdx.y, r = blockIdx.z, q0 = qt * kBQ;
  const int tid = threadIdx.x, wg = tid >> 7, warp = (tid >> 5) & 3, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const PrefillTile pt = prefill_tile<kBQ, kBK>(a, h, r, q0);
  const int window = a.window;
  const bool self = a.k_self != nullptr;
  const T* q = static_cast<const T*>(a.q);
  const T* kc = cache_rows<T>(a.k_cache, a, pt.slot, pt.kvh, kD);
  const T* vc = cache_rows<T>(a.v_cache, a, pt.slot, pt.kvh, kD);

  // Q rows [0, kBQ): warpgroup w's 64 rows form its own swizzled tile. Rows past the chunk
  // are zeros (computed, never written).
  for (int idx = tid; idx < kBQ * kC16; idx += kThreads) {
    const int row = idx / kC16, c16 = idx % kC16;
    const bool ok = row < pt.nq;
    const T* src = q + ((static_cast<int64_t>(r) * a.n + q0 + (ok ? row : 0)) * a.n_heads + h) * kD + c16 * 8;
    cp_async16(sq + (row >> 6) * kTileBytes + swz(row & 63, c16), src, ok ? 16 : 0);
  }
  cp_async_commit();
  // K and V rows [kt, kt + 64) into stage st; rows past key_end become zeros without
  // reading (the cache there may hold anything, NaN bits included).
  auto load_kv = [&](int st, int kt) {
    const int valid = min(kBK, pt.key_end - kt);
    const uint32_t ks = skv + 2 * st * kTileBytes, vs = ks + kTileBytes;
    for (int idx = tid; idx < kBK * kC16; idx += kThreads) {
      const int row = idx / kC16, c16 = idx % kC16;
      const bool ok = row < valid;
      const int64_t off = static_cast<int64_t>(ok ? kt + row : 0) * kD + c16 * 8;
      const uint32_t o = swz(row, c16);
      cp_async16(ks + o, kc + off, ok ? 16 : 0);
      cp_async16(vs + o, vc + off, ok ? 16 : 0);
    }
  };
  load_kv(0, pt.key_begin);
  cp_async_commit();

  const float sl = a.scale * 1.4426950408889634f;  // scores -> log2 units
  float o[kDT * 4];
#pragma unroll
  for (int i = 0; i < kDT * 4; ++i) o[i] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // rows g and g + 8 (raw scores)
  const int gp0 = pt.p0 + q0 + wg * 64;  // position of the warpgroup's first row
  const int gp1 = gp0 + 63;
  const int pos0 = gp0 + warp * 16 + g, pos1 = pos0 + 8;
  const bool live = wg * 64 < pt.nq;  // a warpgroup entirely past the chunk only loads
  const uint32_t qdesc_base = sq + wg * kTileBytes;

  for (int it = 0; it < pt.n_tiles; ++it) {
    const int kt = pt.key_begin + it * kBK;
    const int st = it & 1;
    if (it + 1 < pt.n_tiles) load_kv(st ^ 1, kt + kBK);
    cp_async_commit();  // possibly empty: keeps "all but the newest group" = this tile
    cp_async_wait<1>();
    // cp.async writes are generic-proxy stores; wgmma reads through the async proxy.
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();

    const bool visible = live && kt <= gp1 && !(window > 0 && kt + kBK - 1 < gp0 - window + 1);
    if (visible) {
      const uint32_t ks = skv + 2 * st * kTileBytes, vs = ks + kTileBytes;
      float s[kNT * 4];
      reg_fence(s);
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < kD / 16; ++kk) {
        const uint32_t off = (kk >> 2) * kHalf + (kk & 3) * 32;
        wgmma_qk<T>(s, make_desc(qdesc_base + off, 16, 1024), make_desc(ks + off, 16, 1024), kk > 0);
      }
      wg_commit();
      wg_wait<0>();
      reg_fence(s);

      uint32_t pa[kNT / 2][4];
      float alpha0, alpha1;
      online_softmax<T, 8>(s, pa, m0, m1, l0, l1, alpha0, alpha1, kt, pos0 - g, pos1, window, self, t4, sl);
#pragma unroll
      for (int i = 0; i < kDT; ++i) {
        o[4 * i] *= alpha0;
        o[4 * i + 1] *= alpha0;
        o[4 * i + 2] *= alpha1;
        o[4 * i + 3] *= alpha1;
      }
      reg_fence(o);
      wg_fence();
#pragma unroll
      for (int kk = 0; kk < kNT / 2; ++kk) wgmma_pv<T, kD>(o, pa[kk], make_desc(vs + kk * 2048, kHalf, 1024));
      wg_commit();
      wg_wait<0>();
      reg_fence(o);
    }
    __syncthreads();  // this stage is read by every warpgroup before the next prefetch refills it
  }

  finish_rows<T, kD / 8>(a, o, kD, m0, m1, l0, l1, wg * 64 + warp * 16 + g, q0, pt.nq, r, h, pt.kvh, t4, sl);
#else
  // Compiled for a target without wgmma: this image must never run (the launcher checks
  // the device first); trap rather than return garbage.
  __trap();
#endif
}

// The pipelined form (FlashAttention-3's intra-warpgroup overlap), one warpgroup of 64
// queries per block: in iteration `it` the warpgroup issues S(it) = Q K(it) and then
// O += P(it-1) V(it-1) as two wgmma groups, waits for the first only, and computes the
// softmax of S(it) (exp2 on the SFU, shuffles) while the tensor cores still run P V; then
// waits for P V and rescales O. K runs one tile ahead of V, so two stages each suffice and
// one barrier per tile orders the refills: iteration it loads K(it+1) and V(it) into the
// stages that S(it-1) and P(it-2) V(it-2) read, both waited for before that barrier.
// Every loaded tile is visible to the warpgroup (key_begin/key_end come from its own rows).
template <typename T, int kD>
__global__ void __launch_bounds__(128, 2) attention_prefill_wgmma_pipe(AttentionArgs a) {
#ifdef KVQ_HAVE_WGMMA
  constexpr int kDT = kD / 8;   // dim n-tiles of O
  constexpr int kC16 = kD / 8;  // 16-byte chunks per row
  constexpr uint32_t kTileBytes = Sm90Smem<kD>::kTile;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const uint32_t sq = base;                        // Q [64][kD]
  const uint32_t sk = base + kTileBytes;           // K stages 0, 1
  const uint32_t sv = base + 3 * kTileBytes;       // V stages 0, 1

  const int qt = static_cast<int>(gridDim.x) - 1 - static_cast<int>(blockIdx.x);  // heavy first
  const int h = blockIdx.y, r = blockIdx.z, q0 = qt * 64;
  const int tid = threadIdx.x, warp = tid >> 5, lane = tid & 31;
  const int g = lane >> 2, t4 = lane & 3;
  const PrefillTile pt = prefill_tile<64, kBK>(a, h, r, q0);
  const int window = a.window;
  const bool self = a.k_self != nullptr;
  const T* q = static_cast<const T*>(a.q);
  const T* kc = cache_rows<T>(a.k_cache, a, pt.slot, pt.kvh, kD);
  const T* vc = cache_rows<T>(a.v_cache, a, pt.slot, pt.kvh, kD);

  for (int idx = tid; idx < 64 * kC16; idx += 128) {
    const int row = idx / kC16, c16 = idx % kC16;
    const bool ok = row < pt.nq;
    const T* src = q + ((static_cast<int64_t>(r) * a.n + q0 + (ok ? row : 0)) * a.n_heads + h) * kD + c16 * 8;
    cp_async16(sq + swz(row, c16), src, ok ? 16 : 0);
  }
  // Rows [kt, kt + 64) of the K or V cache into the tile at dst; rows past key_end become
  // zeros without reading (the cache there may hold anything, NaN bits included).
  auto load_tile = [&](uint32_t dst, const T* src, int kt) {
    const int valid = min(kBK, pt.key_end - kt);
    for (int idx = tid; idx < kBK * kC16; idx += 128) {
      const int row = idx / kC16, c16 = idx % kC16;
      const bool ok = row < valid;
      cp_async16(dst + swz(row, c16), src + static_cast<int64_t>(ok ? kt + row : 0) * kD + c16 * 8, ok ? 16 : 0);
    }
  };
  load_tile(sk, kc, pt.key_begin);
  cp_async_commit();

  const float sl = a.scale * 1.4426950408889634f;  // scores -> log2 units
  float o[kDT * 4];
#pragma unroll
  for (int i = 0; i < kDT * 4; ++i) o[i] = 0.f;
  float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // rows g and g + 8 (raw scores)
  const int wp0 = pt.p0 + q0 + warp * 16;  // position of the warp's first row
  const int pos1 = wp0 + g + 8;
  uint32_t pa[4][4];  // P of the previous tile, the A operand of its P V

  for (int it = 0; it < pt.n_tiles; ++it) {
    const int kt = pt.key_begin + it * kBK;
    cp_async_wait<0>();  // K(it) and V(it - 1)
    // cp.async writes are generic-proxy stores; wgmma reads through the async proxy.
    asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
    __syncthreads();
    if (it + 1 < pt.n_tiles) load_tile(sk + ((it + 1) & 1) * kTileBytes, kc, kt + kBK);
    load_tile(sv + (it & 1) * kTileBytes, vc, kt);
    cp_async_commit();

    const uint32_t ks = sk + (it & 1) * kTileBytes;
    float s[32];
    reg_fence(s);
    reg_fence(o);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < kD / 16; ++kk) {
      const uint32_t off = (kk >> 2) * kHalf + (kk & 3) * 32;
      wgmma_qk<T>(s, make_desc(sq + off, 16, 1024), make_desc(ks + off, 16, 1024), kk > 0);
    }
    wg_commit();
    if (it > 0) {
      const uint32_t vs = sv + ((it - 1) & 1) * kTileBytes;
#pragma unroll
      for (int kk = 0; kk < 4; ++kk) wgmma_pv<T, kD>(o, pa[kk], make_desc(vs + kk * 2048, kHalf, 1024));
      wg_commit();
      wg_wait<1>();  // S(it) done; P V may still run
    } else {
      wg_wait<0>();
    }
    reg_fence(s);

    uint32_t pn[4][4];
    float alpha0, alpha1;
    online_softmax<T, 8>(s, pn, m0, m1, l0, l1, alpha0, alpha1, kt, wp0, pos1, window, self, t4, sl);
    wg_wait<0>();
    reg_fence(o);
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)  // keeps pa live (unchanged) until P V has read it
#pragma unroll
      for (int e = 0; e < 4; ++e) asm volatile("" : "+r"(pa[kk][e])::"memory");
#pragma unroll
    for (int i = 0; i < kDT; ++i) {
      o[4 * i] *= alpha0;
      o[4 * i + 1] *= alpha0;
      o[4 * i + 2] *= alpha1;
      o[4 * i + 3] *= alpha1;
    }
#pragma unroll
    for (int kk = 0; kk < 4; ++kk)
#pragma unroll
      for (int e = 0; e < 4; ++e) pa[kk][e] = pn[kk][e];
  }
  // The last tile's P V.
  cp_async_wait<0>();
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
  __syncthreads();
  {
    const uint32_t vs = sv + ((pt.n_tiles - 1) & 1) * kTileBytes;
    reg_fence(o);
    wg_fence();
#pragma unroll
    for (int kk = 0; kk < 4; ++kk) wgmma_pv<T, kD>(o, pa[kk], make_desc(vs + kk * 2048, kHalf, 1024));
    wg_commit();
    wg_wait<0>();
    reg_fence(o);
  }

  finish_rows<T, kD / 8>(a, o, kD, m0, m1, l0, l1, warp * 16 + g, q0, pt.nq, r, h, pt.kvh, t4, sl);
#else
  __trap();  // see attention_prefill_wgmma
#endif
}

// 0 (shipped): the plain kernel, KVQ_SM90_WG warpgroups per block. 1: the pipelined kernel,
// NOT CORRECT YET: it passes every parity case (at most 68 blocks, one per SM) but returns
// NaN at 4K+ tokens with two blocks per SM (H100, 2026-11-22, run 2 of notes/s3/
// results-h22.md), a race or register hazard not found yet; it was also slower there
// (306-319 vs 350-361 TFLOP/s). Kept for the microbenchmark and the next attempt.
#ifndef KVQ_SM90_PIPE
#define KVQ_SM90_PIPE 0
#endif

template <typename T, int D>
cudaError_t launch(const AttentionArgs& a, cudaStream_t stream) {
  if (KVQ_SM90_PIPE) {
    constexpr size_t smem = Sm90Smem<D>::kTile * size_t(5) + 1024;
    cudaError_t e = cudaFuncSetAttribute(attention_prefill_wgmma_pipe<T, D>,
                                         cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
    dim3 grid((a.n + 63) / 64, a.n_heads, a.rows);
    attention_prefill_wgmma_pipe<T, D><<<grid, 128, smem, stream>>>(a);
    return launch_status();
  }
  constexpr size_t smem = Sm90Smem<D>::kBytes;
  cudaError_t e = cudaFuncSetAttribute(attention_prefill_wgmma<T, D>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                       static_cast<int>(smem));
  if (e != cudaSuccess) return e;
  dim3 grid((a.n + kBQ - 1) / kBQ, a.n_heads, a.rows);
  attention_prefill_wgmma<T, D><<<grid, kThreads, smem, stream>>>(a);
  return launch_status();
}

// Per device: 0 = not yet asked, 1 = compute capability 9.0 with a loadable sm_90a image,
// 2 = not. Racing first calls compute and store the same answer.
constexpr int kMaxDevices = 64;
int g_usable[kMaxDevices] = {};

bool device_usable() {
  int dev = 0;
  if (cudaGetDevice(&dev) != cudaSuccess || dev < 0 || dev >= kMaxDevices) {
    cudaGetLastError();
    return false;
  }
  if (g_usable[dev] == 0) {
    int major = 0, minor = 0;
    bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
              cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess &&
              major == 9 && minor == 0;
    cudaFuncAttributes fa;
    // No sm_90a image in this build (or another reason it cannot load): the FA2 path.
    ok = ok && cudaFuncGetAttributes(&fa, attention_prefill_wgmma<__half, 128>) == cudaSuccess &&
         fa.maxDynamicSharedSizeBytes >= 0;
    cudaGetLastError();  // a failed query must not show up as the next launch's status
    g_usable[dev] = ok ? 1 : 2;
  }
  return g_usable[dev] == 1;
}

}  // namespace

bool attention_prefill_sm90_usable(const AttentionArgs& a) {
  return (a.head_dim == 64 || a.head_dim == 128) && device_usable();
}

cudaError_t attention_prefill_sm90(Act act, const AttentionArgs& a, cudaStream_t stream) {
  if (a.head_dim % 8 != 0 || a.head_dim > kMaxHeadDim || a.head_dim <= 0 || a.kv_heads <= 0 ||
      a.n_heads % a.kv_heads != 0)
    return cudaErrorInvalidValue;
  if (!attention_prefill_sm90_usable(a)) return cudaErrorNotSupported;
  if (a.rows == 0 || a.n == 0) return cudaSuccess;
  if (a.head_dim == 64) return act == Act::kF16 ? launch<__half, 64>(a, stream) : launch<__nv_bfloat16, 64>(a, stream);
  return act == Act::kF16 ? launch<__half, 128>(a, stream) : launch<__nv_bfloat16, 128>(a, stream);
}

}  // namespace kvq::kern
