// Causal prefill attention on Hopper, FlashAttention-3 style (Shah et al. 2024): warp
// specialization, 128-key tiles and two consumer warpgroups taking turns on the tensor cores,
// for head_dim 128 (the Llama 7B/8B shapes where prefill time goes at 16K-32K tokens).
// Same contract and arithmetic as the plain wgmma kernel (kernels/attention_prefill_sm90.cu,
// which serves head_dim 64 and stays the fallback): any chunk over a cached prefix, GQA,
// sliding window, past-only diagonal, fp16/bf16, fp32 scores and accumulators, P rounded to
// 16 bits before P V, one final rounding; mask, softmax and epilogue are the same functions
// (kernels/attention_prefill_sm90_wgmma.cuh).
//
// Why (notes/cuda-perf.md, H100 2026-11-22): the plain kernel reaches 338-361 TFLOP/s alone and
// ~313 inside the 7B model, where transformers' attention implies ~400+; its consumer
// threads issue their own K/V copies, wait at 2 block barriers per 64-key tile, and the
// softmax of a warpgroup never overlaps its own matrix work. Measured (H100, 2026-11-22,
// notes/s4/results-h32.md): 385-423 TFLOP/s at 4K, 479-494 at 16K, 437-462 at 32K causal
// (plain kernel in the same runs: 279-295, 353-360, 338-358); whole llama2-7b prefill +10%
// at 16K, +16% at 32K; all 28 head_dim-128 parity cases pass. With ex2.approx.ftz in the
// softmax (kFtzExp, notes/s4/results-h34.md, same binary A/B): 422-443 / 519-526 / 475-503
// TFLOP/s at 4K/16K/32K vs 415-421 / 489-494 / 458-486 with exp2f; 32K whole prefill
// 1.396 -> 1.366 s (the attention stage 718 -> 680 ms: the prefill runs at the 700 W cap,
// ~1.5 GHz, so instructions per FLOP are what count).
//
// Block: 384 threads = 3 warpgroups for 128 queries of one head.
//  - warpgroup 0, the producer (setmaxnreg down to kProducerRegs): cp.async copies of Q
//    (once) and of the K and V tiles into 2-stage rings, each stage guarded by a "full"
//    mbarrier (the producer's 128 threads arrive through cp.async.mbarrier.arrive.noinc when
//    their copies land) and an "empty" one (each consumer warp arrives when the wgmma
//    reading the stage has completed). Rows past the last visible key are zero-filled without
//    reading (the cache there may hold anything, NaN included), as in the other kernels.
//    cp.async rather than TMA: the zero fill of a partial last tile and the per-row chunk
//    boundary come for free; the tensor-map path is the next step if the copies show up.
//  - warpgroups 1 and 2, the consumers (setmaxnreg up to kConsumerRegs): query rows
//    [0, 64) and [64, 128) of the block. Per 128-key tile: S[64, 128] = Q K^T (wgmma
//    m64n128k16, both operands in shared memory), masked online softmax on the registers,
//    O[64, 128] += P V (m64n128k16, P from registers, V through the transpose bit).
//  - Ping-pong: the matrix work of one step of a consumer is "P V of tile j, then Q K^T of
//    tile j + 1", issued together after its softmax of tile j; two named barriers make the
//    consumers issue those groups strictly in turn, so one warpgroup's softmax runs while the
//    tensor cores work through the other's group. No register stays in flight across a
//    softmax (each group is waited for before the next softmax), which avoids the hazard that
//    broke the intra-warpgroup pipelined form of the plain kernel.
// Heavy (late, most keys) query tiles first. Grid order: for chunks of 8K+ tokens the query
// tiles of one head run fastest (the blocks on the GPU at once stream the same head's K/V
// through L2), below that the heads (measured, see kQTileFastFrom).
//
// Shared memory (1024-byte aligned for the 128-byte swizzle, layout as in the plain kernel:
// a tile is stored as 64-column halves, row r's 16-byte chunk c at chunk c ^ (r % 8)):
// Q 2 x [64][128] (32 KB), K 2 stages x [128][128] (64 KB), V the same (64 KB), barriers:
// ~161 KB, one block per SM (3 stages fit too, 225 KB, and measured no faster). wgmma descriptors: Q, K K-major (stride byte offset 1024 = 8
// rows, k-step kk at half kk / 4, byte 32 (kk % 4)); V MN-major (leading byte offset = one
// 64-dim half = 16 KB, stride 1024 = 8 keys, k-step kk of 16 keys at 2048 kk).
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <type_traits>

#include "kernels/attention_prefill_sm90.cuh"
#include "kernels/attention_prefill_sm90_wgmma.cuh"
#include "kernels/common.cuh"
#include "kernels/prefill_common.cuh"

namespace kvq::kern {
namespace {

constexpr int kD = 128;         // head_dim
constexpr int kBK = 128;        // keys per tile
constexpr int kBQ = 128;        // queries per block (2 consumer warpgroups x 64)
constexpr int kThreads = 384;   // producer warpgroup + 2 consumer warpgroups
constexpr int kC16 = kD / 8;    // 16-byte chunks per row
constexpr uint32_t kQHalf = 64 * 128;    // [64 rows][64 columns] 16-bit
constexpr uint32_t kQTile = 2 * kQHalf;  // one consumer's Q [64][128]
constexpr uint32_t kKVHalf = 128 * 128;  // [128 rows][64 columns]
constexpr uint32_t kKVTile = 2 * kKVHalf;
// Shared memory for kStages-deep K and V rings: Q, K stages, V stages, then the mbarriers
// (q_full, then k_full, k_empty, v_full, v_empty, kStages each), + 1024 alignment slack.
template <int kStages>
struct Fa3Smem {
  static constexpr uint32_t kOffK = 2 * kQTile;
  static constexpr uint32_t kOffV = kOffK + kStages * kKVTile;
  static constexpr uint32_t kOffBar = kOffV + kStages * kKVTile;
  static constexpr size_t kBytes = kOffBar + 8 * (1 + 4 * kStages) + 1024;
};
static_assert(Fa3Smem<3>::kBytes <= 227 * 1024, "3 stages must fit the H100's 227 KB per block");
// 128 x 40 + 256 x 232 = 64512 <= 65536 registers per SM: the producer only computes
// addresses; the consumers hold O (64), S (64) and P (32) fp32/packed registers per thread.
constexpr int kProducerRegs = 40;
constexpr int kConsumerRegs = 232;
// Named barrier ids (0 is __syncthreads): consumer c waits on kTurn + c for its turn.
constexpr int kTurn = 1;

#ifdef KVQ_HAVE_WGMMA
using namespace wgmma;

__device__ __forceinline__ void mbar_init(uint32_t bar, uint32_t count) {
  asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
__device__ __forceinline__ void mbar_arrive(uint32_t bar) {
  asm volatile("{\n.reg .b64 st;\nmbarrier.arrive.shared::cta.b64 st, [%0];\n}\n" ::"r"(bar) : "memory");
}
// Arrives on `bar` once every cp.async this thread issued so far has landed.
__device__ __forceinline__ void mbar_arrive_cp_async(uint32_t bar) {
  asm volatile("cp.async.mbarrier.arrive.noinc.shared::cta.b64 [%0];\n" ::"r"(bar) : "memory");
}
__device__ __forceinline__ void mbar_wait(uint32_t bar, uint32_t parity) {
  uint32_t done = 0;
  do {
    asm volatile(
        "{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\nselp.u32 %0, 1, 0, p;\n}\n"
        : "=r"(done)
        : "r"(bar), "r"(parity)
        : "memory");
  } while (!done);
}
__device__ __forceinline__ void named_sync(int id) {
  asm volatile("bar.sync %0, 256;\n" ::"r"(id) : "memory");
}
__device__ __forceinline__ void named_arrive(int id) {
  asm volatile("bar.arrive %0, 256;\n" ::"r"(id) : "memory");
}
// The copies landed in shared memory through the generic proxy (cp.async); wgmma reads
// through the async proxy.
__device__ __forceinline__ void fence_async_shared() {
  asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory");
}
// Byte offset of chunk c16 (0..15) of row `row` in a swizzled tile of 64-column halves.
template <uint32_t kHalfBytes>
__device__ __forceinline__ uint32_t swz(int row, int c16) {
  return static_cast<uint32_t>((c16 >> 3) * kHalfBytes + row * 128 + (((c16 & 7) ^ (row & 7)) << 4));
}
#endif  // KVQ_HAVE_WGMMA

// Fragment ownership: as in the plain kernel (warp j of a consumer, lane 4 g + t: rows
// 16 j + g and + 8, columns 8 i + 2 t, + 1 in [4 i], [4 i + 1], [4 i + 2], [4 i + 3]).
// kStages: depth of the K and V rings (2 or 3). kQTileFast: grid x = query tiles (the
// blocks running at once are mostly one head's query tiles, all streaming that head's K/V
// through L2) instead of x = heads (the heads of one GQA group side by side).
// kFtzExp: the softmax weights by ex2.approx.ftz (prefill_common.cuh's softmax_exp2: the same
// values down to 2^-126), which saves ptxas's subnormal guard of 3 instructions per score on the
// consumers' critical path (the softmax between two of a consumer's wgmma groups).
template <typename T, int kStages, bool kQTileFast, bool kFtzExp = true>
__global__ void __launch_bounds__(kThreads, 1) attention_prefill_fa3(AttentionArgs a) {
#ifdef KVQ_HAVE_WGMMA
  using L = Fa3Smem<kStages>;
  extern __shared__ __align__(16) unsigned char smem_raw[];
  const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const uint32_t sq = base, sk = base + L::kOffK, sv = base + L::kOffV, bars = base + L::kOffBar;
  const uint32_t q_full = bars;
  auto k_full = [&](int st) { return bars + 8 + 8 * st; };
  auto k_empty = [&](int st) { return bars + 8 + 8 * (kStages + st); };
  auto v_full = [&](int st) { return bars + 8 + 8 * (2 * kStages + st); };
  auto v_empty = [&](int st) { return bars + 8 + 8 * (3 * kStages + st); };

  const int h = kQTileFast ? blockIdx.y : blockIdx.x;
  const int n_qt = static_cast<int>(kQTileFast ? gridDim.x : gridDim.y);
  const int qt = n_qt - 1 - static_cast<int>(kQTileFast ? blockIdx.x : blockIdx.y);  // heavy first
  const int r = blockIdx.z, q0 = qt * kBQ;
  const int tid = threadIdx.x;
  const PrefillTile pt = prefill_tile<kBQ, kBK>(a, h, r, q0);
  const int window = a.window;

  if (tid == 0) {
    mbar_init(q_full, 128);
    for (int st = 0; st < kStages; ++st) {
      mbar_init(k_full(st), 128);  // the producer's threads, through cp.async
      mbar_init(v_full(st), 128);
      mbar_init(k_empty(st), 8);   // one arrival per consumer warp
      mbar_init(v_empty(st), 8);
    }
    asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
  }
  __syncthreads();

  if (tid < 128) {
    // ---- producer ----
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;\n" ::"n"(kProducerRegs));
    const T* q = static_cast<const T*>(a.q);
    const T* kc = cache_rows<T>(a.k_cache, a, pt.slot, pt.kvh, kD);
    const T* vc = cache_rows<T>(a.v_cache, a, pt.slot, pt.kvh, kD);
    // Q rows [0, 128): consumer c's 64 rows form its own tile. Rows past the chunk are zeros.
#pragma unroll 4
    for (int idx = tid; idx < kBQ * kC16; idx += 128) {
      const int row = idx >> 4, c16 = idx & 15;
      const bool ok = row < pt.nq;
      const T* src = q + ((static_cast<int64_t>(r) * a.n + q0 + (ok ? row : 0)) * a.n_heads + h) * kD + c16 * 8;
      cp_async16(sq + (row >> 6) * kQTile + swz<kQHalf>(row & 63, c16), src, ok ? 16 : 0);
    }
    mbar_arrive_cp_async(q_full);
    // Rows [kt, kt + 128) of src into the tile at dst; rows from key_end on become zeros.
    auto load_tile = [&](uint32_t dst, const T* src, int kt) {
      const int valid = min(kBK, pt.key_end - kt);
#pragma unroll 4
      for (int idx = tid; idx < kBK * kC16; idx += 128) {
        const int row = idx >> 4, c16 = idx & 15;
        const bool ok = row < valid;
        cp_async16(dst + swz<kKVHalf>(row, c16), src + static_cast<int64_t>(ok ? kt + row : 0) * kD + c16 * 8,
                   ok ? 16 : 0);
      }
    };
    for (int t = 0; t < pt.n_tiles; ++t) {
      const int st = t % kStages, kt = pt.key_begin + t * kBK;
      const uint32_t parity = (t / kStages - 1) & 1;  // the release of tile t - kStages
      if (t >= kStages) mbar_wait(k_empty(st), parity);
      load_tile(sk + st * kKVTile, kc, kt);
      mbar_arrive_cp_async(k_full(st));
      if (t >= kStages) mbar_wait(v_empty(st), parity);
      load_tile(sv + st * kKVTile, vc, kt);
      mbar_arrive_cp_async(v_full(st));
    }
    asm volatile("cp.async.wait_all;\n" ::: "memory");
  } else {
    // ---- consumers ----
    asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;\n" ::"n"(kConsumerRegs));
    const int c = (tid >> 7) - 1;
    const int warp = (tid >> 5) & 3, lane = tid & 31;
    const int g = lane >> 2, t4 = lane & 3;
    const bool self = a.k_self != nullptr;
    const float sl = a.scale * 1.4426950408889634f;  // scores -> log2 units
    const int pos0 = pt.p0 + q0 + c * 64 + warp * 16 + g, pos1 = pos0 + 8;
    const uint32_t qa = sq + c * kQTile;
    const int mine = kTurn + c, other = kTurn + 1 - c;

    float o[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) o[i] = 0.f;
    float m0 = -INFINITY, m1 = -INFINITY, l0 = 0.f, l1 = 0.f;  // rows g and g + 8 (raw scores)
    float s[64];

    // S = Q K^T for the tile in K stage st (8 k-steps of 16 dims).
    auto issue_qk = [&](int st) {
      const uint32_t ks = sk + st * kKVTile;
      wgmma_qk128_first<T>(s, make_desc(qa, 16, 1024), make_desc(ks, 16, 1024));
#pragma unroll
      for (int kk = 1; kk < kD / 16; ++kk) {
        const uint32_t off_q = (kk >> 2) * kQHalf + (kk & 3) * 32;
        const uint32_t off_k = (kk >> 2) * kKVHalf + (kk & 3) * 32;
        wgmma_qk128<T>(s, make_desc(qa + off_q, 16, 1024), make_desc(ks + off_k, 16, 1024), 1);
      }
    };

    mbar_wait(q_full, 0);
    if (c == 1) named_arrive(kTurn);  // consumer 0 issues first
    // Step 0: S of tile 0 alone.
    mbar_wait(k_full(0), 0);
    fence_async_shared();
    named_sync(mine);
    wg_fence();
    issue_qk(0);
    wg_commit();
    named_arrive(other);
    wg_wait<0>();
    reg_fence(s);
    __syncwarp();
    if (lane == 0) mbar_arrive(k_empty(0));

    // One step: softmax of tile it, then (in turn) P V of tile it and, when kNext, S of tile
    // it + 1. kNext is a compile-time constant (the last step is peeled off below) so that no
    // wgmma sits in a branch: ptxas serializes wgmma issued on divergent paths (C7520).
    auto step = [&](int it, auto next_tag) {
      constexpr bool next = decltype(next_tag)::value;
      const int kt = pt.key_begin + it * kBK, st = it % kStages, st1 = (it + 1) % kStages;
      uint32_t pa[8][4];
      float alpha0, alpha1;
      online_softmax<T, 16, kFtzExp>(s, pa, m0, m1, l0, l1, alpha0, alpha1, kt, pos0 - g, pos1, window, self, t4,
                                     sl);
#pragma unroll
      for (int i = 0; i < 16; ++i) {
        o[4 * i] *= alpha0;
        o[4 * i + 1] *= alpha0;
        o[4 * i + 2] *= alpha1;
        o[4 * i + 3] *= alpha1;
      }
      mbar_wait(v_full(st), (it / kStages) & 1);
      if (next) mbar_wait(k_full(st1), ((it + 1) / kStages) & 1);
      fence_async_shared();
      named_sync(mine);
      reg_fence(o);
      wg_fence();
      const uint32_t vs = sv + st * kKVTile;
#pragma unroll
      for (int kk = 0; kk < kBK / 16; ++kk) wgmma_pv<T, kD>(o, pa[kk], make_desc(vs + kk * 2048, kKVHalf, 1024));
      if constexpr (next) issue_qk(st1);
      wg_commit();
      // Consumer 1's last group is followed by no turn of consumer 0.
      if (!(c == 1 && !next)) named_arrive(other);
      wg_wait<0>();
      reg_fence(o);
      reg_fence(s);
#pragma unroll
      for (int kk = 0; kk < 8; ++kk)  // P stays allocated until the P V that reads it is done
#pragma unroll
        for (int e = 0; e < 4; ++e) asm volatile("" ::"r"(pa[kk][e]) : "memory");
      __syncwarp();
      if (lane == 0) {
        mbar_arrive(v_empty(st));
        if (next) mbar_arrive(k_empty(st1));
      }
    };
    for (int it = 0; it + 1 < pt.n_tiles; ++it) step(it, std::true_type{});
    step(pt.n_tiles - 1, std::false_type{});

    finish_rows<T, kD / 8>(a, o, kD, m0, m1, l0, l1, c * 64 + warp * 16 + g, q0, pt.nq, r, h, pt.kvh, t4, sl);
  }
#else
  // Compiled for a target without wgmma: never launched (the launcher checks the device).
  __trap();
#endif
}

// Ring depth and grid order, measured on the H100 (2026-11-22, notes/s4/results-h32.md,
// TFLOP/s of fp16/bf16 llama2-7b | llama3-8b shapes, one run):
//   order, stages     4K                    16K                   32K
//   heads, 2     385/412 | 418/423   460/477 | 471/492   408/427 | 432/454
//   heads, 3     406/415 | 412/417   459/476 | 477/489   409/439 | 432/469
//   qtiles, 2    344/378 | 373/379   480/491 | 479/494   437/462 | 441/458
//   qtiles, 3    380/373 | 374/380   480/485 | 481/490   434/449 | 435/455
// A third stage buys nothing measurable: 2. Query tiles fastest wins from 16K on (+4-7% at
// 32K for llama2-7b: the blocks running together share one head's K/V in L2) and loses at 4K
// (-8..-11%: there every head's K/V fits in L2 anyway): so query tiles fastest for chunks of
// kQTileFastFrom tokens or more (the last 8K chunk of 32K: 459/493 vs 415/474), heads fastest
// below. KVQ_FA3_STAGES (2, 3) and KVQ_FA3_ORDER (head, qtile) override (read once; for the
// microbenchmark); KVQ_FA3_EXP=exact takes exp2f in the softmax instead of ex2.approx.ftz
// (2 stages only; the A/B of the choice in notes/cuda-perf.md).
constexpr int kDefaultStages = 2;
constexpr int kQTileFastFrom = 8192;
struct Fa3Config {
  int stages;
  int order;  // 0: by chunk length, 1: heads fastest, 2: query tiles fastest
  bool ftz_exp;
};
Fa3Config fa3_config() {
  static const Fa3Config cfg = [] {
    Fa3Config c{kDefaultStages, 0, true};
    const char* st = std::getenv("KVQ_FA3_STAGES");
    if (st != nullptr && std::strcmp(st, "2") == 0) c.stages = 2;
    if (st != nullptr && std::strcmp(st, "3") == 0) c.stages = 3;
    const char* order = std::getenv("KVQ_FA3_ORDER");
    if (order != nullptr && std::strcmp(order, "head") == 0) c.order = 1;
    if (order != nullptr && std::strcmp(order, "qtile") == 0) c.order = 2;
    const char* ex = std::getenv("KVQ_FA3_EXP");
    if (ex != nullptr && std::strcmp(ex, "exact") == 0) c.ftz_exp = false;
    return c;
  }();
  return cfg;
}

}  // namespace

bool attention_prefill_fa3_usable(const AttentionArgs& a) {
  return a.head_dim == kD && attention_prefill_sm90_usable(a);
}

cudaError_t attention_prefill_fa3(Act act, const AttentionArgs& a, cudaStream_t stream) {
  if (a.head_dim % 8 != 0 || a.head_dim > kMaxHeadDim || a.head_dim <= 0 || a.kv_heads <= 0 ||
      a.n_heads % a.kv_heads != 0)
    return cudaErrorInvalidValue;
  if (!attention_prefill_fa3_usable(a)) return cudaErrorNotSupported;
  if (a.rows == 0 || a.n == 0) return cudaSuccess;
  const Fa3Config cfg = fa3_config();
  const bool qtile_fast = cfg.order == 2 || (cfg.order == 0 && a.n >= kQTileFastFrom);
  const unsigned n_qt = static_cast<unsigned>((a.n + kBQ - 1) / kBQ);
  const dim3 grid = qtile_fast ? dim3(n_qt, a.n_heads, a.rows) : dim3(a.n_heads, n_qt, a.rows);
  if (grid.y > 65535u || grid.z > 65535u) return cudaErrorInvalidValue;
  auto run = [&](auto kernel, size_t smem) {
    cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem));
    if (e != cudaSuccess) return e;
    kernel<<<grid, kThreads, smem, stream>>>(a);
    return launch_status();
  };
  auto pick = [&](auto t_tag) {
    using T = decltype(t_tag);
    if (!cfg.ftz_exp)
      return qtile_fast ? run(attention_prefill_fa3<T, 2, true, false>, Fa3Smem<2>::kBytes)
                        : run(attention_prefill_fa3<T, 2, false, false>, Fa3Smem<2>::kBytes);
    if (cfg.stages == 3)
      return qtile_fast ? run(attention_prefill_fa3<T, 3, true>, Fa3Smem<3>::kBytes)
                        : run(attention_prefill_fa3<T, 3, false>, Fa3Smem<3>::kBytes);
    return qtile_fast ? run(attention_prefill_fa3<T, 2, true>, Fa3Smem<2>::kBytes)
                      : run(attention_prefill_fa3<T, 2, false>, Fa3Smem<2>::kBytes);
  };
  return act == Act::kF16 ? pick(__half{}) : pick(__nv_bfloat16{});
}

}  // namespace kvq::kern
