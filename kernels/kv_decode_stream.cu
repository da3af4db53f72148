// Version 4 of the tensor-core decode over packed KV caches (uniform per-token int2/int4, and
// KIVI at G <= 2, or G <= 4 with 32-channel value groups (KG, session 7); head_dim 128, fp16
// activations): the one build where mma_decode::fits()
// holds (kv_decode_mma.cu's run() calls stream_run; version 3 was retired after dfabb0b).
// Measured on the H100 (notes/s4/results-h31.md, notes/kv-cuda-perf.md "Version 4"): int4 MHA
// at 87-98% of copy bandwidth from 32K at batch 8 and from 64K at batch 1, 3.2-3.8x the fp16
// kernel; int2 issue-bound at 39-64%. The factorisation and error bound: the header of
// kv_decode_mma.cu; what differs is below. Codes -> fp16 by default folded (FOLD:
// off + c in one LOP3, the offsets removed once; KVQ_KV_FOLD=0 for the exact conversion):
// int2 MHA b8 2.5-4% faster, int4 unchanged (H100, notes/s4/results-h33.md). Session 5
// (notes/s5/results-h41.md, H100 2026-11-23): unrolled staging, merged reductions, 384-token
// stages at 2 bits for long blocks and an own split-K combine took int2 MHA b8 to 5.1-5.3x fp16
// from 64K (69-75% of copy; 4.9x at 32K), batch 1 4.2-4.9x; int4 MHA unchanged (95-98% at b8).
// The split-K combine is launched with programmatic stream serialization (PDL) by default:
// batch 1 1-3 us faster (notes/s5/results-h46.md; KVQ_KV_COMBINE=1 for the ordinary launch).
// Session 6 (h52, notes/s6/results-h52.md, H100 2026-11-23): at batch 1 the warps wait on
// dependency chains (ncu), so the key pass of the per-token G = 1 / G <= 4 builds runs two mma
// chains per tile and two tiles per iteration (KVQ_KV_ILP, default 3): llama3-8b int4 b8 5-7%
// faster, int2 MHA b1 1-2%, b8 4-5% (384-token builds: 5.10-5.44x fp16 from 32K); more blocks
// per SM (5-6) and a two-tile value loop did not help.
// Session 6 (h55, notes/s6/results-h55.md, H100 2026-11-23): at G <= 4 the softmax per warp
// over its own tiles (WS, KVQ_KV_WSM=0 for the block-wide one): llama3-8b int4 10-13.5% less time
// (b8 128K 90% of copy, 3.47x fp16), int2 14-19% (b8 128K 4.28x).
// Session 7 (h61, notes/s7/results-h61.md, H100 2026-11-23): KIVI at G = 3..4 with 32-channel value
// groups (KG: a value n-tile per value group, value codes staged permuted, the weights a warp per
// head, in the stage's dead key buffer at 4 bits): llama3-8b KIVI-4 b8 1.32-1.52x fp16 (39-46% of
// copy), KIVI-2 1.37-1.62x, b1 0.64-1.13x, where the CUDA-core kernels it replaces took 0.38-0.51x.
#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#if defined(KVQ_KV_TRACE) && KVQ_KV_TRACE
#include <cstdio>
#include <vector>
#endif

#include "kernels/common.cuh"
#include "kernels/decode_chunk.cuh"
#include "kernels/kv_decode_mma.cuh"
#include "kernels/kv_decode_mma_common.cuh"
#include "kernels/prefill_common.cuh"

namespace kvq::kern::mma_decode {
namespace {

// ---- Version 4: the chunk staged in shared memory, online softmax over 256-token stages ----
// Why (notes/kv-cuda-perf.md, version 3): the v3 kernel loads codes into registers, so the
// bytes in flight per warp are capped by the register budget (<= 128 per thread for 4
// blocks per SM), every pass waits for its own loads, and its three passes per 1024-token
// chunk leave the memory idle while a block does its softmax. Here every byte goes through
// cp.async into shared memory: while a block computes stage j, the key codes, key meta and
// value meta of stage j + 1 are in flight (double-buffered), and the value codes of stage
// j + 1 are issued as soon as stage j's value pass has read its buffer (single-buffered, so
// that 4 blocks of 128 threads fit an SM at G = 1: ~55 KB each at 4 bits). The softmax is
// online across stages (running max and sum per query head, the P V accumulators of the
// mma stay in registers and are rescaled by exp(m_old - m_new) * 2^(E_new - E_old) per
// stage, E the weights' exponent per value group), so a block can walk thousands of tokens
// and the split-K combine reads a few partials per head instead of one per 1024 tokens.
// The lane's key columns (head, group, q sum, score row) are computed once per block
// (the v3 SASS spent 5 of its 8.6 instructions per key element rebuilding them per tile).
constexpr int kS = 256;  // tokens per stage

// ---- KVQ_KV_TRACE=1 (a compile-time switch for device builds only; h71, session 8) ----
// A timeline of every block of the streaming kernel and of the combine, read from %globaltimer
// (ns, one clock for all SMs): per block of the attention grid, thread 0 stores the time at
// entry, after the q set-up, when stage 0's keys have landed, at the end of every stage, before
// and after the partial writes, and its %smid; per combine block, entry, after
// griddepcontrol.wait, end. Slots of kTraceCalls calls (a host counter modulo) in a __device__
// buffer, written to the file $KVQ_KV_TRACE_OUT (default kv_trace.bin) at process exit
// (trace_dump(): layout there). Without the macro nothing of this is compiled: the default
// build's PTX is unchanged (checked with nvcc -ptx against the file before it).
#ifndef KVQ_KV_TRACE
#define KVQ_KV_TRACE 0
#endif
#if KVQ_KV_TRACE
constexpr int kTraceCalls = 32, kTraceBlocks = 1024, kTraceEv = 64, kTraceHeads = 256;
constexpr int kTraceStages = kTraceEv - 8;  // event 8 + j: end of stage j
__device__ unsigned long long g_trace[kTraceCalls][kTraceBlocks][kTraceEv];
__device__ unsigned long long g_ctrace[kTraceCalls][kTraceHeads][4];
__device__ __forceinline__ unsigned long long gtime() {
  unsigned long long t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}
__device__ __forceinline__ unsigned smid() {
  unsigned s;
  asm volatile("mov.u32 %0, %%smid;" : "=r"(s));
  return s;
}
// This block's event row (nullptr: not traced, i.e. not thread 0 or past kTraceBlocks).
__device__ __forceinline__ unsigned long long* trace_row(int slot) {
  const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  return threadIdx.x == 0 && b < kTraceBlocks ? g_trace[slot][b] : nullptr;
}
#define KVQ_TRACE_PARAM , int trace_slot
#define KVQ_TRACE_ARG , trace_slot
#define KVQ_TRACE_AT(ev) \
  do {                   \
    if (trow) trow[ev] = gtime(); \
  } while (0)
#else
#define KVQ_TRACE_PARAM
#define KVQ_TRACE_ARG
#define KVQ_TRACE_AT(ev) \
  do {                   \
  } while (0)
#endif

__device__ __forceinline__ void cp_async4(uint32_t dst, const void* src) {
  asm volatile("cp.async.ca.shared.global [%0], [%1], 4;\n" ::"r"(dst), "l"(src) : "memory");
}

// n 16-byte pieces from gsrc (16-byte aligned) to sdst, spread over the block's threads.
__device__ __forceinline__ void stage16(void* sdst, const void* gsrc, int n) {
  const uint32_t d = smem_addr(sdst);
  const char* g = static_cast<const char*>(gsrc);
  for (int i = threadIdx.x; i < n; i += kT) cp_async16(d + 16 * i, g + 16 * i, 16);
}

// The same with at most MAXP pieces per thread, unrolled and predicated: the loop above cost
// ~8 instructions per 16-byte piece (compare, branch, 64-bit address rebuilt from i); here
// the thread's first source and destination are computed once and piece p sits at the
// constant offset 16 kT p from them (cp.async's [reg + imm] form).
// MAXP = 0: the loop (gsrc_t still this thread's first piece).
template <int MAXP>
__device__ __forceinline__ void stage16u(void* sdst, const char* gsrc_t, int n) {
  if constexpr (MAXP == 0) {
    stage16(sdst, gsrc_t - 16 * threadIdx.x, n);
    return;
  }
  const uint32_t d = smem_addr(sdst) + 16 * threadIdx.x;
#pragma unroll
  for (int p = 0; p < MAXP; ++p)
    if (static_cast<int>(threadIdx.x) + p * kT < n) cp_async16(d + 16 * kT * p, gsrc_t + 16 * kT * p, 16);
}

// Halves g[0, n) to s[off, off + n), off = 1 when g is 2 bytes past a 4-byte boundary (then
// the half before g, which lies in the same allocation because allocations are 256-byte
// aligned, is copied too); 4-byte copies, and a plain load for a last half whose word
// would reach past g + n.
__device__ __forceinline__ void stage_halves(uint16_t* s, const uint16_t* g, int n, int off) {
  const uint16_t* g4 = g - off;
  const int nw = (n + off) >> 1;
  const uint32_t d = smem_addr(s);
  for (int i = threadIdx.x; i < nw; i += kT) cp_async4(d + 4 * i, g4 + 2 * i);
  if (((n + off) & 1) && threadIdx.x == kT - 1) s[off + n - 1] = __ldg(g + n - 1);
}
// The same unrolled for at most MAXP words per thread (MAXP = 0: the loop above).
template <int MAXP>
__device__ __forceinline__ void stage_halves_u(uint16_t* s, const uint16_t* g, int n, int off) {
  if constexpr (MAXP == 0) {
    stage_halves(s, g, n, off);
  } else {
    const uint16_t* g4 = g - off + 2 * threadIdx.x;
    const int nw = (n + off) >> 1;
    const uint32_t d = smem_addr(s) + 4 * threadIdx.x;
#pragma unroll
    for (int p = 0; p < MAXP; ++p)
      if (static_cast<int>(threadIdx.x) + p * kT < nw) cp_async4(d + 4 * kT * p, g4 + 2 * kT * p);
    if (((n + off) & 1) && threadIdx.x == kT - 1) s[off + n - 1] = __ldg(g + n - 1);
  }
}

// N per-lane values reduced over the warp (sum, or max when MAX) in one butterfly: the
// first log2(P) steps (P = N rounded up to a power of two) exchange half of the values each
// (step s with lane offset 16 >> s keeps value 2k + bit or 2k + 1 - bit and ships the other),
// so the whole reduction takes P - 1 + 5 - log2(P) shuffles instead of 5 N (the softmax step
// of a 256-token stage did five 5-shuffle reductions per thread at G = 1, 60 at G = 4).
// Returns this lane's total; it is value e = warp_reduce_elem<N>(lane) (lanes with e >= N,
// and all but one lane per value, hold duplicates or padding).
template <int N>
__host__ __device__ constexpr int reduce_steps() {
  return N <= 1 ? 0 : N <= 2 ? 1 : N <= 4 ? 2 : N <= 8 ? 3 : N <= 16 ? 4 : 5;
}
template <int N>
__device__ __forceinline__ int warp_reduce_elem(int lane) {
  constexpr int L = reduce_steps<N>();
  int e = 0;
#pragma unroll
  for (int st = 0; st < L; ++st) e |= ((lane >> (4 - st)) & 1) << st;
  return e;
}
// True on the one lane per value that should write it (the low 5 - L lane bits zero).
template <int N>
__device__ __forceinline__ bool warp_reduce_writer(int lane) {
  constexpr int L = reduce_steps<N>();
  return (lane & ((32 >> L) - 1)) == 0;
}
template <int N, bool MAX>
__device__ __forceinline__ float warp_reduce_many(const float (&v)[N], int lane) {
  static_assert(N >= 1 && N <= 32, "1..32 values");
  constexpr int L = reduce_steps<N>();
  constexpr int P = 1 << L;
  const float pad = MAX ? -INFINITY : 0.f;
  float x[P];
#pragma unroll
  for (int i = 0; i < P; ++i) x[i] = i < N ? v[i] : pad;
#pragma unroll
  for (int st = 0; st < L; ++st) {
    const int o = 16 >> st;
    const bool hi = (lane & o) != 0;
#pragma unroll
    for (int k = 0; k < (P >> (st + 1)); ++k) {
      const float keep = hi ? x[2 * k + 1] : x[2 * k];
      const float send = hi ? x[2 * k] : x[2 * k + 1];
      const float got = __shfl_xor_sync(0xffffffffu, send, o);
      x[k] = MAX ? fmaxf(keep, got) : keep + got;
    }
  }
#pragma unroll
  for (int o = 16 >> L; o > 0; o >>= 1) {
    const float got = __shfl_xor_sync(0xffffffffu, x[0], o);
    x[0] = MAX ? fmaxf(x[0], got) : x[0] + got;
  }
  return x[0];
}

// a / b for powers of two a, b whose quotient is a normal float (the weights' 2^E factors,
// 2^-1 .. 2^38): exponent arithmetic, exact, instead of an IEEE division's ~10 instructions.
__device__ __forceinline__ float pow2_ratio(float a, float b) {
  return __int_as_float(__float_as_int(a) - __float_as_int(b) + (127 << 23));
}

// v[idx] for a run-time idx < N without indexing a register array (a chain of selects).
template <int N>
__device__ __forceinline__ float sel8(const float (&v)[N], int idx) {
  float x = v[0];
#pragma unroll
  for (int i = 1; i < N; ++i) x = idx == i ? v[i] : x;
  return x;
}

// WS builds: where row r of 16-token tile tb sits in the score and weight rows, the tiles of
// one warp (tb = warp + kW n) contiguous, so that a warp's softmax over its own tokens reads
// 32 consecutive words (tile-major, tiles kW apart would put lanes 16-31 on the banks of 0-15).
template <int KS>
__device__ __forceinline__ int ws_pos(int tb, int r) {
  return (tb % kW) * (KS / kW) + (tb / kW) * 16 + r;
}

// The (scale, zero) meta of one group of a staged token: halves m[0] (scale) and m[1]
// (zero, asym only). Asym rows have an even number of halves (2 per group) and start on a
// 4-byte boundary in global memory, so the stage copy has no shift and (scale, zero) is one
// 32-bit load; sym rows may be odd-aligned (one half per group).
__device__ __forceinline__ uint32_t meta_at(const uint16_t* m, bool sym) {
  return sym ? static_cast<uint32_t>(m[0]) : *reinterpret_cast<const uint32_t*>(m);
}

// Halves of a staged meta buffer (kS tokens of mpr halves, the shift half, 16-byte multiple).
// Rows gid and gid + 8 of 16-token key tile tb from the staged codes (kcb: this lane's NWK
// words of row 0, rows RW words apart): the two A-operand rows key_tile_dot takes.
template <int NWK>
__device__ __forceinline__ void load_key_rows(const uint32_t* kcb, int tb, int gid, int rw, uint32_t (&w)[2][NWK]) {
#pragma unroll
  for (int rr = 0; rr < 2; ++rr) {
    const int li = tb * 16 + gid + 8 * rr;
    if constexpr (NWK == 4) {
      const uint4 v = *reinterpret_cast<const uint4*>(kcb + li * rw);
      w[rr][0] = v.x; w[rr][1] = v.y; w[rr][2] = v.z; w[rr][3] = v.w;
    } else {
      const uint2 v = *reinterpret_cast<const uint2*>(kcb + li * rw);
      w[rr][0] = v.x; w[rr][1] = v.y;
    }
  }
}

__host__ __device__ inline int meta_stage_halves(int mpr, int ks) { return (ks * mpr + 2 + 7) / 8 * 8; }
// The KIVI GQA build (KG: KIVI at G = 3..4, 32-channel value groups; h61, session 7): where the
// value weight of token t in column col (head g: 2g = hi, 2g + 1 = lo) of value group grp sits,
// 4 x 8 columns of KS halves (16 KB at 256 tokens: at 4 bits the stage's key-code buffer, dead
// after the key pass, so 3 blocks fit an SM instead of 2). Tokens XOR-swizzled in 16-token
// blocks by (col & 3) ^ grp: the B loads of a half-warp (columns gid 0..3, 8 bytes per t4) and
// a warp's weight stores (4 groups x 8 lanes x 4 bytes) fall on distinct banks (unswizzled, all
// 8 columns of a load and all 4 groups of a store share one 32-byte bank range).
template <int KS>
__device__ __forceinline__ int kg_w(int grp, int col, int t) {
  return (grp * 8 + col) * KS + (t ^ (16 * ((col & 3) ^ grp)));
}
// The key side's: KIVI keys stage the (scale, zero) rows of ks / group token groups.
__host__ __device__ inline int key_meta_stage_halves(const PackedSide& K, int ks) {
  return K.format == KvFormat::kChannelAsym ? ks / K.group * 2 * kD : meta_stage_halves(K.mpr, ks);
}

// Blocks per SM the build is compiled for (__launch_bounds__): 4 (<= 128 registers) for one
// n-tile each way up to 384-token stages at 2 bits / 256 at 4 (~47-55 KB of shared memory
// each), else 3 (the two-n-tile builds keep 64 accumulators; 512-token stages at 2 bits take
// ~61 KB at G = 1, so 4 would not fit the 228 KB of an H100 SM anyway).
// 5 or 6 blocks per SM (<= 96 / <= 80 registers; 4-bit builds at 128-token stages to fit the
// shared memory) were tried for batch 1 (h52, session 6, KVQ_KV_OCC at ca2cd62; H100
// 2026-11-23, notes/s6/results-h52.md): more warps per scheduler (4.17 vs 3.48) but no faster
// (int2 MHA b1 64K 90.9 -> 91.4 / 97.4 us, int4 4-13% slower), so they were removed.
__host__ __device__ constexpr int stream_min_blocks(int ntk, int ntv, int ks, int bits) {
  return ntk == 1 && ntv == 1 && ks * bits <= 1024 && ks <= 384 ? 4 : 3;
}

// KONE: one channel group on both sides (group = 128: the default per-token codes), so the
// key column of B is the query head, the value combination is the head, and no per-column
// group bookkeeping is needed. GM >= G bounds the per-head loops of the softmax step: the
// first build unrolled them to 8 heads and 8 value groups whatever G was, and the stage's
// 32 warp reductions (160 SHFL), its max/exp/split loops and their predicates cost about as
// many instructions per thread as the key and value tiles (SASS, H100 run 1 of 2026-11-22).
// 4 blocks per SM (<= 128 registers) for one n-tile each way; the two-n-tile builds keep
// 64 accumulators and spill at 128 registers (ptxas), so they take 3 (<= 168).
// KCH: KIVI keys (kChannelAsym: per-channel (scale, zero) per group of K.group tokens), for
// the tokens whose key and value are both quantized (j < len - resid_cap); kivi_tail_kernel
// does the rest. KG (KCH at GM = 4: KIVI at G = 3..4, 32-channel value groups; h61, session 7):
// the key side is the same (G heads x hi/lo = 8 B columns, one n-tile), the value side one
// n-tile per value group (G heads x hi/lo) with each m-tile's rows inside one group: see the
// KG branches (value codes staged permuted, a warp per head for the weights). Per key group the B fragments are rebuilt from q' s, q' = q 2^-Eq (|q'| < 1,
// so q' s cannot overflow fp16), split into fp16 hi = RN(q' s) (HMUL2) and lo = RN(q' s - hi)
// (one HFMA2, fused) in two B columns per head; hi + lo = q' s exactly (q' s has <= 22
// significant bits) unless q' or lo fall below the fp16 normal range (<= 2^-25 each, the
// test's extra KIVI term). score = 2^Eq (acc_hi + acc_lo) + sum_d q_d z_d.
// NGVT > 0: the value group count at compile time (KIVI's default 32-channel value groups:
// 4), so the softmax step's per-group loops stop at NGVT instead of 8.
// FOLD: codes -> fp16 as off + c (pair_fold_at, kv_decode_mma_common.cuh: one LOP3 per pair,
// no HFMA2) on the value side, and on the key side unless KCH (KIVI's B is rebuilt per key
// group, so its sum q' s off would be too); the key mma starts from -sum_d q_d off(d), the
// value epilogue subtracts off(ch) * wrun, wrun the running sum of the weights' hi + lo.
// KS: tokens per stage (kS = 256, or 384 / 512 for the 2-bit per-token builds: same shared
// bytes of codes as 256 at 4 bits, so the stage's fixed work -- barriers, warp reductions,
// the running max / scale exponents, the accumulators' rescale -- is spread over 1.5-2x the
// tokens; KVQ_KV_STAGE picks, stage_tokens() below).
// OPT (A/B of this session's per-stage changes, KVQ_KV_OPT for the 4-bit G <= 4 build): bit 0
// the unrolled staging copies, bit 1 the merged warp reductions; 3 = both (the default except
// in the 4-bit G <= 4 build, where 1: the merged reductions made llama3-8b int4 5-9% slower,
// H100 2026-11-23 run 2: fewer SHFL (40 vs 105 static) but one long dependent butterfly of
// 16 values instead of 12 independent trees; at G = 1 the merged tree is 5 levels as before).
// KIVI with its tail kernel first (tail_first() below): the tail grid is launched before this
// one, which is launched as its programmatic dependent (the tail allows it at block start), so
// the two run at once; each KCH block waits here, after its partial writes, for the tail grid's
// completion and memory, so this grid completes after the tail and the combine (this grid's
// dependent) sees both. Launched the ordinary way (the tail after this grid), griddepcontrol.wait
// returns at once.
__device__ __forceinline__ void tail_first_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}

template <int BITS, int NTK, int NTV, bool KONE, int GM, bool KCH, int NGVT = 0, bool FOLD = true, int KS = kS,
          int OPT = 3>
__global__ void __launch_bounds__(kT, stream_min_blocks(NTK, NTV, KS, BITS))
stream_kernel(PackedSide K, PackedSide V, PackedDecodeArgs a, int span, int splits, float* part_o,
              float* part_ml KVQ_TRACE_PARAM) {
  constexpr int NP = 16 / BITS;   // fp16 pairs per code word
  constexpr int NWK = BITS;       // words per 32-code key block (a lane's share of a key row)
  constexpr int NWV = BITS / 2;   // words per 16-channel value run
  constexpr int RW = 4 * BITS;    // words per (token, head) row at head_dim 128
  static_assert(KS % kT == 0 && (KS == kS || !KCH), "stages of whole thread rounds; KIVI: 256 tokens");
  constexpr int KPT = KS / kT;    // softmax tokens per thread per stage
  // Staging copies per thread (unrolled, predicated): 16-byte code pieces of a stage, and
  // 4-byte meta words for up to 2 halves per token (KONE: one (scale, zero) group); the
  // per-group builds (up to 16 halves per token) keep the loop.
  // (The two-n-tile per-group builds keep the loop for the codes too: unrolled, ptxas spilled
  // 28-40 B there at 168 registers.)
  constexpr int CPT = (NTK == 2 && NTV == 2) || !(OPT & 1) ? 0 : KS * RW / 4 / kT;
  constexpr int MWPT = KONE && (OPT & 1) ? KS / kT : 0;  // <= KS words: 1 (sym) or 2 (asym) halves a token
  constexpr int GA = GM;                // head loop bound (G <= GM)
  constexpr int VA = KONE ? 1 : NGVT > 0 ? NGVT : 8;        // value group loop bound
  constexpr int CA = KONE ? GM : NGVT > 0 ? GM * NGVT : 8;  // (head, value group) combination loop bound
  // KG (KIVI at G = 3..4 with 32-channel value groups; h61, session 7): one value n-tile per
  // value group (G heads x hi/lo = 8 columns), each 16-channel m-tile taking its group's B
  // fragment; the softmax weights a warp per head. Its 16 (head, value group) combinations
  // keep their running sums in zsum / wrun of 16 (ZN) instead of 8.
  constexpr bool KG = KCH && GM == 4;
  // 128-token stages (4 blocks per SM instead of 3) were tried: 3-7% slower at batch 8, within
  // 3% at batch 1 (H100 2026-11-23, 446d5c7, --ab KVQ_KV_KIVI=1,128; notes/s7/results-h61.md).
  static_assert(!KG || (NGVT == 4 && NTK == 1 && NTV == 1), "KG: 32-channel value groups");
  constexpr int ZN = KG ? 16 : 8;
  static_assert(CA <= 8 || KG, "rbuf holds 8 combinations");
  constexpr bool KF = FOLD && !KCH;  // folded key codes
  // KKF (OPT bit 7; KG's default, KVQ_KV_KIVI=1 for the exact build; h64, session 7; 1.009-1.033x
  // on llama3-8b, kivi_key_fold() below): KG's key codes through the folded LOP3-only
  // conversion (off(d) + c, word_pairs<BITS, true>) instead of the exact LOP3 + HFMA2 one; the
  // tile's mma starts from -sum_d off(d) B(d, col) of the group's rebuilt B, one 8-mma chain per
  // key group against a constant A (every row -off of the k-step's channels). Count (per warp,
  // 16-token tile): 4 bits 8 words x (1 SHF + 4 LOP3 + 4 HFMA2) = 72 -> 8 x (2 SHF + 4 LOP3) = 48,
  // 2 bits 4 x (1 + 8 + 8) = 68 -> 4 x (2 + 8) = 40; + 8 mma per key group (2 tiles at group 32).
  constexpr bool KKF = KG && (OPT & 128) != 0;
  // WS (OPT bit 6; the default at G <= 4, KVQ_KV_WSM=0 for the block-wide softmax; h55,
  // session 6): the softmax per warp over the warp's own key tiles (the value pass walks the
  // same tiles), so no block barrier or block reduction in the softmax step; running sums per
  // lane, merged once at the end (the WS epilogue: each warp's (m, l, sum p z, sum w) and its
  // accumulators scaled by exp(m_w - M)). 10-19% less time on llama3-8b (warp_softmax() below).
  constexpr bool WS = (OPT & 64) != 0;
  static_assert(!WS || (KONE && !KCH && NTV == 1), "WS: the per-token one-n-tile builds");
  extern __shared__ __align__(16) float sm[];
#if KVQ_KV_TRACE
  unsigned long long* const trow = trace_row(trace_slot);
  if (trow) {
    trow[0] = gtime();
    trow[1] = smid();
  }
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Lets the combine, launched with programmatic stream serialization (the default, combine()
  // below), be scheduled while this grid runs; it still waits for this grid's completion and
  // memory (griddepcontrol.wait). Without such a dependent launch this is a no-op.
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
  const int G = a.n_heads / K.kv_heads;
  const int NGK = KONE || KCH ? 1 : kD / K.group, NGV = KONE ? 1 : NGVT > 0 ? NGVT : kD / V.group;
  const int NCK = G * NGK, NCV = 2 * G * NGV;
  const int kmpr = K.mpr, vmpr = V.mpr;
  const int kms = key_meta_stage_halves(K, KS), vms = meta_stage_halves(vmpr, KS);
  uint32_t* kc_s = reinterpret_cast<uint32_t*>(sm);        // [2][KS][RW] key codes
  uint32_t* vc_s = kc_s + 2 * KS * RW;                     // [KS][RW] value codes
  float* sc = reinterpret_cast<float*>(vc_s + KS * RW);    // [G][KS] scores, then p
  float* qsum = sc + G * KS;                               // [16] sum of q per key column
  float* zsum = qsum + 16;                                 // [ZN] running sum p z per (g, value group)
  float* wrun = zsum + ZN;                                 // [ZN] FOLD: running sum of w hi + lo, same
  float* lrun = zsum + 2 * ZN;                             // [8] running sum of p per head
  float* rbuf = lrun + 8;                                  // [kW][40] per-warp partials
  constexpr int QXN = KCH ? (KG ? 4 : 2) * kD : 0;
  float* qx = rbuf + kW * 40;                              // KCH: [GM <= 2 ? 2 : 4][kD] q (fp32)
  uint16_t* km_s = reinterpret_cast<uint16_t*>(qx + QXN);  // [2][kms] key meta
  uint16_t* vm_s = km_s + 2 * kms;                               // [2][vms] value meta
  __half* W = reinterpret_cast<__half*>(vm_s + 2 * vms);         // [NCV][KS] value weights hi/lo

  const int s = blockIdx.x, kvh = blockIdx.y, r = blockIdx.z;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int gid = lane >> 2, t4 = lane & 3;
  const int len = a.len[r];
  const int begin = s * span;
  const int end = min(KCH ? len - K.resid_cap : len, begin + span);
  const int64_t head0 = static_cast<int64_t>(r) * a.n_heads + kvh * G;
  if (begin >= end) {
    for (int i = threadIdx.x; i < G * kD; i += kT) part_o[((head0 + i / kD) * splits + s) * kD + i % kD] = 0.f;
    if (threadIdx.x < G) {
      part_ml[((head0 + threadIdx.x) * splits + s) * 2] = -INFINITY;
      part_ml[((head0 + threadIdx.x) * splits + s) * 2 + 1] = 0.f;
    }
#if KVQ_KV_TRACE
    if (trow) {
      trow[5] = gtime();
      trow[6] = 0;  // no stage
    }
#endif
    if constexpr (KCH) tail_first_wait();
    return;
  }
  const int64_t sh = static_cast<int64_t>(a.slot[r]) * K.kv_heads + kvh;
  const uint32_t* kcg = K.codes + sh * K.max_tokens * RW;
  const uint32_t* vcg = V.codes + sh * V.max_tokens * RW;
  const uint16_t* kmg = KCH ? K.cmeta + sh * (K.max_tokens / K.group) * 2 * kD : K.meta + sh * K.max_tokens * kmpr;
  const uint16_t* vmg = V.meta + sh * V.max_tokens * vmpr;
  // Stage starts are begin + j KS with begin a multiple of the plan's grain (64 or KS tokens,
  // both even), so the 2-byte shift is the block's.
  const int koff =
      KCH ? 0 : static_cast<int>((reinterpret_cast<uintptr_t>(kmg + static_cast<int64_t>(begin) * kmpr) >> 1) & 1u);
  const int voffs = static_cast<int>((reinterpret_cast<uintptr_t>(vmg + static_cast<int64_t>(begin) * vmpr) >> 1) & 1u);
  const int nsub = (end - begin + KS - 1) / KS;
  // The stage copies address from per-block bases plus a 32-bit offset advanced by a
  // constant per stage (j * KS * row bytes < 2^31: span <= 2^21 tokens of <= 64 B), this
  // thread's first 16-byte piece folded into the code bases once (stage16u).
  const char* kcg_t = reinterpret_cast<const char*>(kcg + static_cast<int64_t>(begin) * RW) + 16 * threadIdx.x;
  const char* vcg_t = reinterpret_cast<const char*>(vcg + static_cast<int64_t>(begin) * RW) + 16 * threadIdx.x;
  const uint16_t* kmg_b = kmg + (KCH ? 0 : static_cast<int64_t>(begin) * kmpr);
  const uint16_t* vmg_b = vmg + static_cast<int64_t>(begin) * vmpr;
  auto issue_a = [&](int j) {  // key codes, key meta, value meta of stage j
    const int n = min(KS, end - begin - j * KS);
    stage16u<CPT>(kc_s + (j & 1) * KS * RW, kcg_t + j * (KS * RW * 4), n * RW / 4);
    if constexpr (KCH) {  // the (scale, zero) rows of the stage's key groups (t0 is group-aligned)
      const int t0 = begin + j * KS;
      stage16(km_s + (j & 1) * kms, kmg + static_cast<int64_t>(t0 / K.group) * 2 * kD,
              (n + K.group - 1) / K.group * (4 * kD / 16));
    } else {
      stage_halves_u<MWPT>(km_s + (j & 1) * kms, kmg_b + j * (KS * kmpr), n * kmpr, koff);
    }
    stage_halves_u<MWPT>(vm_s + (j & 1) * vms, vmg_b + j * (KS * vmpr), n * vmpr, voffs);
  };
  auto issue_b = [&](int j) {  // value codes of stage j
    const int n = min(KS, end - begin - j * KS);
    if constexpr (KG) {
      // Word w = NWQ x' + x of a row (value group x', NWQ = RW / 4 words each) staged at
      // 4 x + x', so that the lane of the value pass finds its 4 channels of every group in
      // one 16-byte load (4-byte copies: 4x the copy instructions of stage16u, 32 per thread
      // at 4 bits against 16 more 4-byte shared loads per tile and lane without it).
      // Word i = threadIdx.x + kT p of the stage: kT is a multiple of RW, so its word in the
      // row (w) and hence the permuted destination offset are the thread's for every p, and the
      // unrolled copies address [reg + imm] (the first build's loop took 18 instructions per
      // copy, 13% of the kernel's: ncu source counters, H100 2026-11-23, 658ec60).
      constexpr int NWQ = RW / 4;
      constexpr int CP = KS * RW / kT;  // copies per thread (32 at 4 bits, 16 at 2)
      static_assert(kT % RW == 0, "a thread's word of the row is the same for every copy");
      const int w = static_cast<int>(threadIdx.x) % RW;
      const uint32_t d = smem_addr(vc_s) + 4 * (threadIdx.x - w + 4 * (w % NWQ) + w / NWQ);
      const uint32_t* src = vcg + (static_cast<int64_t>(begin) + j * KS) * RW + threadIdx.x;
      const int nw = n * RW;
      if (n == KS) {  // a whole stage: no predicates
#pragma unroll
        for (int p = 0; p < CP; ++p) cp_async4(d + 4 * kT * p, src + kT * p);
      } else {
#pragma unroll
        for (int p = 0; p < CP; ++p)
          if (static_cast<int>(threadIdx.x) + kT * p < nw) cp_async4(d + 4 * kT * p, src + kT * p);
      }
    } else {
      stage16u<CPT>(vc_s, vcg_t + j * (KS * RW * 4), n * RW / 4);
    }
  };
  issue_a(0);
  cp_async_commit();
  issue_b(0);
  cp_async_commit();

  // q staged in sc (free until the first key pass), per-column sums, B fragments.
  // The h71 trace (H100, 2026-11-23, f0c4e67, batch 1, L2 cold, int4 / int2 x both shapes x 32K /
  // 128K) puts the end of this set-up 8.7-9.3 us after block entry and stage 0's landing 0.6 us
  // later: the set-up waits for q behind the grid's stage-0 copies (~17 MB at int4 MHA). Three
  // orders were timed against this one (one process each; deleted): stage 1's copies issued
  // before the q set-up (h71's KVQ_KV_PRE) slower in 7 of 8 batch-1 cells (llama3-8b int2 32K
  // 29.4 -> 31.0 us); q loaded into registers before stage 0's copies (session 9, KVQ_KV_QF)
  // from 0.7% slower to 1.9% faster in 32 cells: stage 0's fill is the cost, not q's latency; a 64-token
  // last stage per block (h71's KVQ_KV_LAST, a plan change) slower in 11 of 16 (llama3-8b int2
  // b1 32K 29.0 -> 32.0, llama2-7b int4 b1 32K 60.3 -> 62.6).
  const uint16_t* q = static_cast<const uint16_t*>(a.q) + head0 * kD;  // [G][kD] fp16 bits
  float* qf = sc;
  for (int i = threadIdx.x; i < G * kD; i += kT) qf[i] = h2f(q[i]);
  if (threadIdx.x < 2 * ZN) {
    zsum[threadIdx.x] = 0.f;
    if (threadIdx.x < 8) lrun[threadIdx.x] = 0.f;
  }
  __syncthreads();
  uint32_t qk[8][2];  // KCH: q' of the lane's B column head, (channel ca, cb) pairs
  float qunscale = 0.f;
  if constexpr (KCH) {
    // 2^-Eq per head with max |q| 2^-Eq < 1 (in qsum), q copied to qx (sc is overwritten).
    for (int i = threadIdx.x; i < G * kD; i += kT) qx[i] = qf[i];
    if (warp < G) {
      float mq = 0.f;
      for (int d = lane; d < kD; d += 32) mq = fmaxf(mq, fabsf(qf[warp * kD + d]));
      mq = warp_max(mq);
      if (lane == 0) qsum[warp] = mq > 0.f ? ldexpf(1.f, -(ilogbf(mq) + 1)) : 1.f;
    }
    __syncthreads();
    const int g = gid >> 1;
    const bool ok = g < G;
    const float qsc = ok ? qsum[g] : 0.f;
#pragma unroll
    for (int kk = 0; kk < 8; ++kk)
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const int ca = 32 * t4 + key_pair_channel<BITS>(2 * kk + h), cb = ca + NP;
        qk[kk][h] = ok ? pack_h2(qf[g * kD + ca] * qsc, qf[g * kD + cb] * qsc) : 0u;
      }
    qunscale = t4 < G ? 1.f / qsum[t4] : 0.f;  // a power of two: exact
  } else {
    for (int col = warp; col < NCK; col += kW) {
      const int g = col / NGK, grp = col % NGK;
      float acc = 0.f, aoff = 0.f;
      for (int d = lane; d < K.group; d += 32) {
        const int ch = grp * K.group + d;
        acc += qf[g * kD + ch];
        if (KF) aoff = fmaf(qf[g * kD + ch], static_cast<float>(fold_offset<BITS>(ch)), aoff);
      }
      acc = warp_sum(acc);
      if (KF) aoff = warp_sum(aoff);
      if (lane == 0) {
        qsum[col] = acc;
        // KF: sum_d q_d off(d) of the column; rbuf is free until the first softmax step,
        // and every lane reads this slot below, before the stage loop's first barrier.
        if (KF) rbuf[col] = aoff;
      }
    }
  }
  uint32_t bq[NTK][8][2];
  key_q_fragments<BITS>(qf, NCK, NGK, K.group, gid, t4, bq);
  __syncthreads();  // qsum written; qf (sc) read no more
  KVQ_TRACE_AT(2);
  // The lane's key columns, once per block.
  const bool ksym = K.format == KvFormat::kTokenSym;
  const float koffv = static_cast<float>(1 << (BITS - 1));
  int moff[NTK][2];   // halves from a token's meta row to the column's group
  float cqs[NTK][2];  // sum of q over the column's group
  float kinit[NTK][2];  // KF: the key mma's start, -sum_d q_d off(d) of the column
  int sdst[NTK][2];   // score row (g * KS) this lane writes for the column, -1: none
#pragma unroll
  for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int col = nt * 8 + 2 * t4 + c;
      const bool ok = col < NCK;
      const int grp = ok ? col % NGK : 0;
      moff[nt][c] = ksym ? grp : 2 * grp;
      cqs[nt][c] = ok ? qsum[col] : 0.f;
      kinit[nt][c] = KF && ok ? -rbuf[col] : 0.f;
      if (KONE || KCH || NGK == 1)  // one key group: a column per head (KCH: unused)
        sdst[nt][c] = ok ? col * KS : -1;
      else
        sdst[nt][c] = c == 0 && ok && t4 % max(1, NGK / 2) == 0 ? (col / NGK) * KS : -1;
    }
  const float ascale = a.scale;
  const bool vsym = V.format == KvFormat::kTokenSym;
  const float voff = static_cast<float>(1 << (BITS - 1));
  const int vgroup = V.group;

  float m_run[GA], pw_run[VA];
  float lsl[GA], zsl[GA], wsl[GA];  // WS: the lane's running sums of p, p z and w hi + lo per head
#pragma unroll
  for (int g = 0; g < GA; ++g) lsl[g] = zsl[g] = wsl[g] = 0.f;
#pragma unroll
  for (int g = 0; g < GA; ++g) m_run[g] = -INFINITY;
#pragma unroll
  for (int grp = 0; grp < VA; ++grp) pw_run[grp] = 1.f;
  float acc[NTV][8][4];
#pragma unroll
  for (int nt = 0; nt < NTV; ++nt)
#pragma unroll
    for (int mt = 0; mt < 8; ++mt)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[nt][mt][e] = 0.f;

  for (int j = 0; j < nsub; ++j) {
    const int cnt = min(KS, end - begin - j * KS);
    const int ntiles = (cnt + 15) / 16;
    if (j + 1 < nsub) issue_a(j + 1);
    cp_async_commit();
    cp_async_wait<2>();  // stage j's keys and value meta (group A_j) have landed
    __syncthreads();
#if KVQ_KV_TRACE
    if (j == 0 && trow) {
      trow[3] = gtime();
      trow[6] = nsub;
      trow[7] = begin;
    }
#endif

    // ---- Keys: scores of the stage on the tensor cores. ----
    if constexpr (KCH) {
      // A warp takes whole key groups (tpg tiles each), so B is rebuilt once per group.
      const uint32_t* kcb = kc_s + (j & 1) * KS * RW + t4 * NWK;
      const int tpg = K.group / 16;
      const int ngr = (ntiles + tpg - 1) / tpg;
      const int part = gid & 1;  // this lane's B column: hi (0) or lo (1) of head gid / 2
      for (int gi = warp; gi < ngr; gi += kW) {
        const uint16_t* cmb = km_s + (j & 1) * kms + gi * 2 * kD;  // [kD][2] (scale, zero)
        uint32_t bk[1][8][2];
#pragma unroll
        for (int kk = 0; kk < 8; ++kk) {
          // KG: the (scale, zero) words of channels (ca, ca + 1) and (cb, cb + 1) of k-step kk as two
          // 8-byte loads (h = 0, 1 are adjacent channels: 2 kk is even and below NP - 1).
          uint2 sa = make_uint2(0u, 0u), sb = make_uint2(0u, 0u);
          if constexpr (KG) {
            const int ca0 = 32 * t4 + key_pair_channel<BITS>(2 * kk);
            sa = *reinterpret_cast<const uint2*>(cmb + 2 * ca0);
            sb = *reinterpret_cast<const uint2*>(cmb + 2 * (ca0 + NP));
          }
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int ca = 32 * t4 + key_pair_channel<BITS>(2 * kk + h), cb = ca + NP;
            const __half2 sp =
                KG ? bits_h2(__byte_perm(h ? sa.y : sa.x, h ? sb.y : sb.x, 0x5410u))
                   : bits_h2(static_cast<uint32_t>(cmb[2 * ca]) | (static_cast<uint32_t>(cmb[2 * cb]) << 16));
            const __half2 qq = bits_h2(qk[kk][h]);
            const __half2 hi = __hmul2(qq, sp);
            bk[0][kk][h] = part ? h2_bits(__hfma2(qq, sp, __hneg2(hi))) : h2_bits(hi);
          }
        }
        float zq[GA];  // sum_d q_d z_d of the group, per head
        float zmine;
        if constexpr (KG) {  // the 4 sums in one butterfly (6 shuffles instead of 20), then head t4's;
          // the lane's 4 zeros loaded and converted once for the G heads (one 16-byte load).
          const uint4 cz = *reinterpret_cast<const uint4*>(cmb + 8 * lane);  // (s, z) of channels 4 lane ..
          const float zf[4] = {h2f(static_cast<uint16_t>(cz.x >> 16)), h2f(static_cast<uint16_t>(cz.y >> 16)),
                               h2f(static_cast<uint16_t>(cz.z >> 16)), h2f(static_cast<uint16_t>(cz.w >> 16))};
#pragma unroll
          for (int g = 0; g < GA; ++g) {
            float z = 0.f;
            if (g < G) {
              const float4 q4 = *reinterpret_cast<const float4*>(qx + g * kD + 4 * lane);
              z = fmaf(q4.x, zf[0], z);
              z = fmaf(q4.y, zf[1], z);
              z = fmaf(q4.z, zf[2], z);
              z = fmaf(q4.w, zf[3], z);
            }
            zq[g] = z;
          }
          const float zt = warp_reduce_many<GA, false>(zq, lane);  // value warp_reduce_elem<4>(lane)
          zmine = __shfl_sync(0xffffffffu, zt, ((t4 & 1) << 4) | ((t4 >> 1) << 3));
        } else {
#pragma unroll
        for (int g = 0; g < GA; ++g) {
          float z = 0.f;
          if (g < G)
#pragma unroll
            for (int e = 0; e < 4; ++e) z = fmaf(qx[g * kD + 4 * lane + e], h2f(cmb[2 * (4 * lane + e) + 1]), z);
          zq[g] = warp_sum(z);
        }
        zmine = sel8(zq, t4);
        }
        float kin[1][2] = {{0.f, 0.f}};  // KKF: the group's -sum_d off(d) B(d, col), cols 2 t4, 2 t4 + 1
        if constexpr (KKF) {
          // Every A row is the same, so every row of the result holds the column sums: row gid's
          // (ai[0], ai[1]) are the lane's two columns. A pair p of the k-step: -off of its channels
          // (fold_offset: both codes of a pair share it), fp16 -2^e exact.
          float ai[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
          for (int kk = 0; kk < 8; ++kk) {
            constexpr int NPF = 8 / BITS;
            const uint32_t e0 = 0x8000u | static_cast<uint32_t>(8 - BITS * ((2 * kk) % NP % NPF) + 15) << 10;
            const uint32_t e1 = 0x8000u | static_cast<uint32_t>(8 - BITS * ((2 * kk + 1) % NP % NPF) + 15) << 10;
            const uint32_t a0 = e0 | (e0 << 16), a1 = e1 | (e1 << 16);
            mma16816(ai, a0, a0, a1, a1, bk[0][kk][0], bk[0][kk][1]);
          }
          kin[0][0] = ai[0];
          kin[0][1] = ai[1];
        }
        for (int tt = 0; tt < tpg; ++tt) {
          const int tb = gi * tpg + tt;
          if (tb >= ntiles) break;
          uint32_t w[2][NWK];
          load_key_rows(kcb, tb, gid, RW, w);
          float dots[1][4];
          key_tile_dot<BITS, KKF>(w, bk, dots, kin);
          // dots[0]: (row gid, cols 2t4 = hi, 2t4 + 1 = lo of head t4), (row gid + 8, same).
#pragma unroll
          for (int rr = 0; rr < 2; ++rr) {
            const int li = tb * 16 + gid + 8 * rr;
            const float v = fmaf(dots[0][2 * rr] + dots[0][2 * rr + 1], qunscale, zmine);
            if (t4 < G && li < cnt) sc[t4 * KS + li] = v * ascale;
          }
        }
      }
    } else {
      const uint32_t* kcb = kc_s + (j & 1) * KS * RW + t4 * NWK;
      const uint16_t* kmb = km_s + (j & 1) * kms + koff;
      auto key_tile = [&](int tb) {
        uint32_t w[2][NWK];
        uint32_t mk[2][NTK][2];
        load_key_rows(kcb, tb, gid, RW, w);
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          const int li = tb * 16 + gid + 8 * rr;
          const uint16_t* mrow = kmb + li * kmpr;
          if constexpr (KONE) {
            const uint32_t m = meta_at(mrow, ksym);
#pragma unroll
            for (int nt = 0; nt < NTK; ++nt) mk[rr][nt][0] = mk[rr][nt][1] = m;
          } else {
#pragma unroll
            for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
              for (int c = 0; c < 2; ++c) mk[rr][nt][c] = meta_at(mrow + moff[nt][c], ksym);
          }
        }
        float dots[NTK][4];
        key_tile_dot<BITS, KF, (OPT & 32) != 0>(w, bq, dots, kinit);
        // dots[nt]: (row gid, cols 2t4, 2t4+1), (row gid+8, same cols). With one head (KONE,
        // GM = 1) only column 0 is ever used: NC = 1 drops the other column's epilogue.
        constexpr int NC = KONE && GM == 1 ? 1 : 2;
#pragma unroll
        for (int nt = 0; nt < NTK; ++nt)
#pragma unroll
          for (int rr = 0; rr < 2; ++rr) {
            const int li = tb * 16 + gid + 8 * rr;
            float v[2];
#pragma unroll
            for (int c = 0; c < NC; ++c) {
              const uint32_t m = mk[rr][nt][c];
              const float sf = h2f(static_cast<uint16_t>(m & 0xFFFFu));
              const float dot = dots[nt][2 * rr + c];
              v[c] = ksym ? sf * fmaf(-koffv, cqs[nt][c], dot)
                          : fmaf(sf, dot, h2f(static_cast<uint16_t>(m >> 16)) * cqs[nt][c]);
            }
            if constexpr (WS) {  // the warp's tiles contiguous (ws_pos): conflict-free softmax reads
              const int pos = ws_pos<KS>(tb, gid + 8 * rr);
#pragma unroll
              for (int c = 0; c < NC; ++c)
                if (sdst[nt][c] >= 0 && li < cnt) sc[sdst[nt][c] + pos] = v[c] * ascale;
            } else if (KONE || NGK == 1) {  // a column per head (key group 128; value groups may differ)
#pragma unroll
              for (int c = 0; c < NC; ++c)
                if (sdst[nt][c] >= 0 && li < cnt) sc[sdst[nt][c] + li] = v[c] * ascale;
            } else {
              float sum = v[0] + v[1];
              for (int o = 1; o < NGK / 2; o <<= 1) sum += __shfl_xor_sync(0xffffffffu, sum, o);
              if (sdst[nt][0] >= 0 && li < cnt) sc[sdst[nt][0] + li] = sum * ascale;
            }
          }
      };
      if constexpr ((OPT & 16) != 0) {  // KVQ_KV_ILP=3: two tiles per iteration
#pragma unroll 2
        for (int tb = warp; tb < ntiles; tb += kW) key_tile(tb);
      } else {
        for (int tb = warp; tb < ntiles; tb += kW) key_tile(tb);
      }
    }
    float alpha[GA], pwn[VA], mnew[GA];
    if constexpr (WS) {
      __syncwarp();  // the warp's scores (its own tiles) written
      // ---- Softmax per warp over its own tiles tb = warp + kW n; lane token x = lane + 32 k of
      // the warp's KS / kW (n = x / 16), at ws_pos (conflict-free). ----
      const uint16_t* vmb = vm_s + (j & 1) * vms + voffs;
      float mm[GA + 1];
#pragma unroll
      for (int g = 0; g < GA; ++g) mm[g] = -INFINITY;
      mm[GA] = 0.f;
#pragma unroll
      for (int k = 0; k < KPT; ++k) {
        const int x = lane + 32 * k;
        const int li = (warp + kW * (x >> 4)) * 16 + (x & 15);
        const int pos = warp * (KS / kW) + x;
        if (li < cnt) {
#pragma unroll
          for (int g = 0; g < GA; ++g)
            if (g < G) mm[g] = fmaxf(mm[g], sc[g * KS + pos]);
          mm[GA] = fmaxf(mm[GA], fabsf(h2f(vmb[li * vmpr])));
        }
      }
#pragma unroll
      for (int i = 0; i <= GA; ++i) mm[i] = warp_max(mm[i]);
      // A warp without tokens so far keeps m = -inf (alpha 1) and its weights' exponent.
      pwn[0] = mm[GA] > 0.f && isfinite(mm[GA]) ? ldexpf(1.f, 14 - ilogbf(mm[GA])) : pw_run[0];
      const float ratio = pow2_ratio(pwn[0], pw_run[0]);
#pragma unroll
      for (int g = 0; g < GA; ++g) {
        mnew[g] = fmaxf(m_run[g], mm[g]);
        alpha[g] = mnew[g] == m_run[g] ? 1.f : expf(m_run[g] - mnew[g]);
        lsl[g] *= alpha[g];
        zsl[g] *= alpha[g];
        if (FOLD) wsl[g] *= alpha[g] * ratio;
      }
#pragma unroll
      for (int k = 0; k < KPT; ++k) {
        const int x = lane + 32 * k;
        const int tb = warp + kW * (x >> 4);
        const int li = tb * 16 + (x & 15);
        const int pos = warp * (KS / kW) + x;
        if (li < cnt) {
          const uint32_t m = meta_at(vmb + li * vmpr, vsym);
          const float sf = h2f(static_cast<uint16_t>(m & 0xFFFFu));
          const float zf = vsym ? -voff * sf : h2f(static_cast<uint16_t>(m >> 16));
#pragma unroll
          for (int g = 0; g < GA; ++g)
            if (g < G) {
              const float p = expf(sc[g * KS + pos] - mnew[g]);
              lsl[g] += p;
              const float w = p * sf * pwn[0];
              const __half hi = __float2half_rn(w);
              const __half lo = __float2half_rn(w - __half2float(hi));
              W[2 * g * KS + pos] = hi;
              W[(2 * g + 1) * KS + pos] = lo;
              zsl[g] = fmaf(p, zf, zsl[g]);
              if (FOLD) wsl[g] += __half2float(hi) + __half2float(lo);
            }
        } else if (tb < ntiles) {  // the last tile's padding: zero weights
#pragma unroll
          for (int g = 0; g < GA; ++g)
            if (g < G) W[2 * g * KS + pos] = W[(2 * g + 1) * KS + pos] = __float2half_rn(0.f);
        }
      }
      cp_async_wait<1>();  // stage j's value codes (group B_j) have landed
      __syncthreads();
    } else {
    __syncthreads();

    // ---- Softmax of the stage against the running max; weights split into fp16 hi/lo. ----
    const uint16_t* vmb = vm_s + (j & 1) * vms + voffs;
    {
      // Score maxima per head (values 0 .. GA - 1) and value-scale maxima per group (GA ..)
      // in one warp reduction (warp_reduce_many); rbuf slots g and 8 + grp.
      float mm[GA + VA];
#pragma unroll
      for (int g = 0; g < GA; ++g) {
        float ml = -INFINITY;
        if (g < G)
#pragma unroll
          for (int k = 0; k < KPT; ++k) {
            const int i = threadIdx.x + k * kT;
            if (i < cnt) ml = fmaxf(ml, sc[g * KS + i]);
          }
        mm[g] = ml;
      }
#pragma unroll
      for (int grp = 0; grp < VA; ++grp) {
        float mx = 0.f;
        if (grp < NGV)
#pragma unroll
          for (int k = 0; k < KPT; ++k) {
            const int i = threadIdx.x + k * kT;
            if (i < cnt) mx = fmaxf(mx, fabsf(h2f(vmb[i * vmpr + (vsym ? grp : 2 * grp)])));
          }
        mm[GA + grp] = mx;
      }
      if constexpr (GA + VA <= 9 && (OPT & 2)) {
        const float v = warp_reduce_many<GA + VA, true>(mm, lane);
        const int e = warp_reduce_elem<GA + VA>(lane);
        if (warp_reduce_writer<GA + VA>(lane) && e < GA + VA) rbuf[warp * 40 + (e < GA ? e : 8 + e - GA)] = v;
      } else {  // the per-group builds (8 heads x 8 groups): one reduction each (registers)
#pragma unroll
        for (int i = 0; i < GA + VA; ++i) {
          const float v = warp_max(mm[i]);
          if (lane == 0) rbuf[warp * 40 + (i < GA ? i : 8 + i - GA)] = v;
        }
      }
    }
    __syncthreads();
#pragma unroll
    for (int g = 0; g < GA; ++g) {
      float m = m_run[g];
#pragma unroll
      for (int w2 = 0; w2 < kW; ++w2) m = fmaxf(m, rbuf[w2 * 40 + g]);
      mnew[g] = m;
      alpha[g] = g < G ? expf(m_run[g] - m) : 0.f;  // m_run = -inf on the first stage: 0
    }
#pragma unroll
    for (int grp = 0; grp < VA; ++grp) {
      float mx = 0.f;
#pragma unroll
      for (int w2 = 0; w2 < kW; ++w2) mx = fmaxf(mx, rbuf[w2 * 40 + 8 + grp]);
      // 2^E per value group: w 2^E = p s 2^E < 2^15 (p <= 1).
      pwn[grp] = mx > 0.f && isfinite(mx) ? ldexpf(1.f, 14 - ilogbf(mx)) : 1.f;
    }
    if constexpr (KG) {
      // ---- KG: a warp per head g; p to sc, then the weights of the head's 4 value groups
      // (lane: group lane / 8, tokens 2 (lane % 8) + 16 k, two per 4-byte store). Each warp
      // holds whole sums for its head, so it updates lrun / zsum / wrun itself (no block
      // reduction: the 16 combinations would take 32 warp reductions per thread here).
      const int cpad = ntiles * 16;
      if (warp < G) {
        const int g = warp;
        float* scg = sc + g * KS;
        const float mg = sel8(mnew, g), ag = sel8(alpha, g);
        float sl = 0.f;
#pragma unroll
        for (int k = 0; k < KS / 32; ++k) {
          const int i = lane + 32 * k;
          if (i < cnt) {
            const float p = expf(scg[i] - mg);
            scg[i] = p;
            sl += p;
          }
        }
        __syncwarp();
        const int grp = lane >> 3, u = lane & 7;
        const float pwc = sel8(pwn, grp);
        // The weights: at 4 bits in this stage's key-code buffer (read by the key pass above, the
        // next write to it is stage j + 2's issue_a after this stage's last barrier). Token
        // i = 2 u + 16 k of column col goes to 2 u + 16 (k ^ s), s = (col & 3) ^ grp (kg_w):
        // per-thread bases for the 4 values of k & 3, the rest immediate offsets.
        __half* wk = BITS == 4 ? reinterpret_cast<__half*>(kc_s + (j & 1) * KS * RW) : W;
        const int shi = ((2 * g) & 3) ^ grp, slo = shi ^ 1;  // columns 2 g (hi), 2 g + 1 (lo)
        __half* whi = wk + (grp * 8 + 2 * g) * KS + 2 * u;
        __half* wlo = wk + (grp * 8 + 2 * g + 1) * KS + 2 * u;
        int ohi[4], olo[4];
#pragma unroll
        for (int kk = 0; kk < 4; ++kk) {
          ohi[kk] = 16 * (kk ^ shi);
          olo[kk] = 16 * (kk ^ slo);
        }
        constexpr int VM = 2 * NGVT;  // halves per token of the (asym) value meta
        const float* sp = scg + 2 * u;
        const uint16_t* mp = vmb + 2 * u * VM + 2 * grp;  // KIVI values: asym, so no 2-byte shift
        float zl = 0.f, wl = 0.f;
        // Two tokens' weights: w = p s 2^E split into fp16 hi and lo (one conversion each for
        // the pair), p z into zl, FOLD: hi + lo into wl. m = 0 (padding) gives w = 0, p z = 0.
        auto pair = [&](float p0, float p1, uint32_t m0, uint32_t m1, __half* dhi, __half* dlo) {
          const float2 sf = __half22float2(bits_h2(__byte_perm(m0, m1, 0x5410u)));
          const float2 zf = __half22float2(bits_h2(__byte_perm(m0, m1, 0x7632u)));
          const float w0 = p0 * sf.x * pwc, w1 = p1 * sf.y * pwc;
          zl = fmaf(p0, zf.x, zl);
          zl = fmaf(p1, zf.y, zl);
          const __half2 hi = __floats2half2_rn(w0, w1);
          const float2 hf = __half22float2(hi);
          const __half2 lo = __floats2half2_rn(w0 - hf.x, w1 - hf.y);
          *reinterpret_cast<__half2*>(dhi) = hi;
          *reinterpret_cast<__half2*>(dlo) = lo;
          if (FOLD) {
            const float2 lf = __half22float2(lo);
            wl += (hf.x + lf.x) + (hf.y + lf.y);
          }
        };
        if (cnt == KS) {  // a whole stage (all but a block's last): no bounds
#pragma unroll
          for (int k = 0; k < KS / 16; ++k) {
            const float2 pp = *reinterpret_cast<const float2*>(sp + 16 * k);
            pair(pp.x, pp.y, *reinterpret_cast<const uint32_t*>(mp + 16 * k * VM),
                 *reinterpret_cast<const uint32_t*>(mp + (16 * k + 1) * VM), whi + 16 * (k & ~3) + ohi[k & 3],
                 wlo + 16 * (k & ~3) + olo[k & 3]);
          }
        } else {
#pragma unroll 4
          for (int k = 0; k < KS / 16; ++k) {
            const int i = 2 * u + 16 * k;
            if (i >= cpad) break;
            float p0 = 0.f, p1 = 0.f;
            uint32_t m0 = 0u, m1 = 0u;
            if (i < cnt) {
              p0 = sp[16 * k];
              m0 = *reinterpret_cast<const uint32_t*>(mp + 16 * k * VM);
            }
            if (i + 1 < cnt) {
              p1 = sp[16 * k + 1];
              m1 = *reinterpret_cast<const uint32_t*>(mp + (16 * k + 1) * VM);
            }
            pair(p0, p1, m0, m1, whi + 16 * (k ^ shi), wlo + 16 * (k ^ slo));
          }
        }
        sl = warp_sum(sl);
#pragma unroll
        for (int o = 1; o < 8; o <<= 1) {
          zl += __shfl_xor_sync(0xffffffffu, zl, o);
          wl += __shfl_xor_sync(0xffffffffu, wl, o);
        }
        if (lane == 0) lrun[g] = fmaf(lrun[g], ag, sl);
        if (u == 0) {
          const int c = g * NGVT + grp;
          zsum[c] = fmaf(zsum[c], ag, zl);
          if (FOLD) wrun[c] = fmaf(wrun[c], ag * pow2_ratio(pwc, sel8(pw_run, grp)), wl);
        }
      }
      cp_async_wait<1>();  // stage j's value codes (group B_j) have landed
      __syncthreads();
    } else {
    {
      float sl[GA], zl[CA], wl[CA];
#pragma unroll
      for (int g = 0; g < GA; ++g) {
        sl[g] = 0.f;
        if (g < G)
#pragma unroll
          for (int k = 0; k < KPT; ++k) {
            const int i = threadIdx.x + k * kT;
            if (i < cnt) {
              const float p = expf(sc[g * KS + i] - mnew[g]);
              sc[g * KS + i] = p;
              sl[g] += p;
            }
          }
      }
      // Combination c = (g, value group grp): B columns 2c (hi) and 2c + 1 (lo).
#pragma unroll
      for (int c = 0; c < CA; ++c) {
        zl[c] = 0.f;
        wl[c] = 0.f;
        if (c < G * NGV) {
          const int g = KONE ? c : c / NGV, grp = KONE ? 0 : c % NGV;
          const float pwc = sel8(pwn, grp);
#pragma unroll
          for (int k = 0; k < KPT; ++k) {
            const int i = threadIdx.x + k * kT;
            if (i < cnt) {
              const float p = sc[g * KS + i];
              const uint32_t m = meta_at(vmb + i * vmpr + (vsym ? grp : 2 * grp), vsym);
              const float sf = h2f(static_cast<uint16_t>(m & 0xFFFFu));
              const float zf = vsym ? -voff * sf : h2f(static_cast<uint16_t>(m >> 16));
              const float w = p * sf * pwc;
              const __half hi = __float2half_rn(w);
              const __half lo = __float2half_rn(w - __half2float(hi));
              W[2 * c * KS + i] = hi;
              W[(2 * c + 1) * KS + i] = lo;
              zl[c] = fmaf(p, zf, zl[c]);
              if (FOLD) wl[c] += __half2float(hi) + __half2float(lo);  // what the mma multiplies
            }
          }
        }
      }
      // sl (rbuf slots 16 + g), zl (24 + c) and, folded, wl (32 + c) in one warp reduction.
      constexpr int NS = GA + (FOLD ? 2 : 1) * CA;
      float ss[NS];
#pragma unroll
      for (int g = 0; g < GA; ++g) ss[g] = sl[g];
#pragma unroll
      for (int c = 0; c < CA; ++c) {
        ss[GA + c] = zl[c];
        if constexpr (FOLD) ss[GA + CA + c] = wl[c];
      }
      if constexpr (NS <= 12 && (OPT & 2)) {  // 16 in the two-n-tile build spilled 32-36 B (ptxas, sm_90)
        const float v = warp_reduce_many<NS, false>(ss, lane);
        const int e = warp_reduce_elem<NS>(lane);
        if (warp_reduce_writer<NS>(lane) && e < NS)
          rbuf[warp * 40 + (e < GA ? 16 + e : e < GA + CA ? 24 + e - GA : 32 + e - GA - CA)] = v;
      } else {  // the per-group builds: one reduction each (registers: ptxas spilled the merged one)
#pragma unroll
        for (int i = 0; i < NS; ++i) {
          const float v = warp_sum(ss[i]);
          if (lane == 0) rbuf[warp * 40 + (i < GA ? 16 + i : i < GA + CA ? 24 + i - GA : 32 + i - GA - CA)] = v;
        }
      }
    }
    const int cpad = ntiles * 16;
    for (int i = threadIdx.x; i < NCV * (cpad - cnt); i += kT)
      W[(i / (cpad - cnt)) * KS + cnt + i % (cpad - cnt)] = __float2half_rn(0.f);
    cp_async_wait<1>();  // stage j's value codes (group B_j) have landed
    __syncthreads();
    if (threadIdx.x < 16) {  // running sums: l per head, sum p z per (head, value group)
      const int x = threadIdx.x;
      float l = 0.f, z = 0.f;
#pragma unroll
      for (int w2 = 0; w2 < kW; ++w2) {
        l += rbuf[w2 * 40 + 16 + (x & 7)];  // slots past GA / CA: unread below
        z += rbuf[w2 * 40 + 24 + (x & 7)];
      }
      if (x < 8 && x < G) lrun[x] = fmaf(lrun[x], sel8(alpha, x), l);
      if (x >= 8 && x - 8 < G * NGV) zsum[x - 8] = fmaf(zsum[x - 8], sel8(alpha, (x - 8) / NGV), z);
    }
    if (FOLD && threadIdx.x >= 32 && threadIdx.x < 32 + G * NGV) {  // wrun, rescaled as acc is
      const int c = threadIdx.x - 32;
      const int g = KONE ? c : c / NGV, grp = KONE ? 0 : c % NGV;
      float u = 0.f;
#pragma unroll
      for (int w2 = 0; w2 < kW; ++w2) u += rbuf[w2 * 40 + 32 + c];
      wrun[c] = fmaf(wrun[c], sel8(alpha, g) * pow2_ratio(sel8(pwn, grp), sel8(pw_run, grp)), u);
    }
    }  // !KG
    }  // !WS

    // ---- Values: P V on the tensor cores into the running accumulators. ----
    if constexpr (KG) {
      // Lane (gid, t4) holds channels 32 x' + 4 gid .. + 3 of every value group x' (issue_b's
      // order: one 16-byte load per token row), as local channels 4 x' .. 4 x' + 3, so m-tiles
      // 2 x' and 2 x' + 1 lie in group x' and take its B fragment (columns 2 g hi, 2 g + 1 lo).
      // Rows of m-tile mt: channel 32 (mt / 2) + 4 gid + 2 (mt % 2) (+ 1 for row gid + 8).
      constexpr int NWQ = RW / 4;               // words of a group per row: 4 (4 bits), 2 (2 bits)
      const int bsh = gid % (8 / NWQ);          // the lane's half (4 bits) or byte (2 bits) of a word
      const uint32_t selw = BITS == 4 ? (bsh ? 0x7632u : 0x5410u) : static_cast<uint32_t>(bsh | ((4 + bsh) << 4));
      float f[4];
#pragma unroll
      for (int x = 0; x < 4; ++x) f[x] = t4 < G ? sel8(alpha, t4) * pow2_ratio(pwn[x], pw_run[x]) : 1.f;
      if (__any_sync(0xffffffffu, f[0] != 1.f || f[1] != 1.f || f[2] != 1.f || f[3] != 1.f))
#pragma unroll
        for (int mt = 0; mt < 8; ++mt)
#pragma unroll
          for (int e = 0; e < 4; ++e) acc[0][mt][e] *= f[mt >> 1];
      // Tile tb = warp + kW n: its rows n 16 kW RW words on from the warp's first, and in kg_w
      // (tb * 16 + 4 t4) ^ 16 s = 16 (warp ^ s) + 64 n + 4 t4 (s < 4 = kW touches tb's low bits).
      static_assert(kW == 4, "kg_w's swizzle: tb ^ s = (warp ^ s) + 4 n");
      const uint32_t* vcb = vc_s + 4 * (gid / (8 / NWQ)) + (warp * 16 + 4 * t4) * RW;
      const __half* wk = BITS == 4 ? reinterpret_cast<const __half*>(kc_s + (j & 1) * KS * RW) : W;  // kg_w
      int boff[4];
#pragma unroll
      for (int x = 0; x < 4; ++x) boff[x] = (x * 8 + gid) * KS + 16 * (warp ^ ((gid & 3) ^ x)) + 4 * t4;
      const bool bok = gid < 2 * G;
      for (int tb = warp, n = 0; tb < ntiles; tb += kW, ++n) {
        uint32_t w[4][4];  // [token 4 t4 + k][group]
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const uint4 v = *reinterpret_cast<const uint4*>(vcb + (n * 16 * kW + k) * RW);
          w[k][0] = v.x; w[k][1] = v.y; w[k][2] = v.z; w[k][3] = v.w;
        }
        uint32_t b[4][2];
#pragma unroll
        for (int x = 0; x < 4; ++x) {
          uint2 v = make_uint2(0, 0);
          if (bok) v = *reinterpret_cast<const uint2*>(wk + boff[x] + 64 * n);
          b[x][0] = v.x; b[x][1] = v.y;
        }
        uint32_t p01[16], p23[16];
        if constexpr (BITS == 4) {
#pragma unroll
          for (int x = 0; x < 4; ++x) {
            word_pairs<4, FOLD>(__byte_perm(w[0][x], w[1][x], selw), &p01[4 * x]);
            word_pairs<4, FOLD>(__byte_perm(w[2][x], w[3][x], selw), &p23[4 * x]);
          }
        } else {
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {  // groups 2 hh, 2 hh + 1: the lane's byte of each
            uint32_t uu[4];
#pragma unroll
            for (int k = 0; k < 4; ++k) uu[k] = __byte_perm(w[k][2 * hh], w[k][2 * hh + 1], selw);
            word_pairs<2, FOLD>(__byte_perm(uu[0], uu[1], 0x5410u), &p01[8 * hh]);
            word_pairs<2, FOLD>(__byte_perm(uu[2], uu[3], 0x5410u), &p23[8 * hh]);
          }
        }
#pragma unroll
        for (int mt = 0; mt < 8; ++mt)
          mma16816(acc[0][mt], p01[2 * mt], p01[2 * mt + 1], p23[2 * mt], p23[2 * mt + 1], b[mt >> 1][0],
                   b[mt >> 1][1]);
      }
    } else {
#pragma unroll
      for (int nt = 0; nt < NTV; ++nt) {
        const int k = nt * 4 + t4;
        float f = 1.f;
        if (k < G * NGV) {
          const int g = KONE ? k : k / NGV, grp = KONE ? 0 : k % NGV;
          f = sel8(alpha, g) * pow2_ratio(sel8(pwn, grp), sel8(pw_run, grp));
        }
        // f = 1 exactly when neither the running max nor the weights' exponent moved (most
        // stages once a block has seen its largest scores; always for the unused columns):
        // skip the 32 multiplies then, per warp (a vote against 32 FMUL per thread).
        if (__any_sync(0xffffffffu, f != 1.f))
#pragma unroll
          for (int mt = 0; mt < 8; ++mt)
#pragma unroll
            for (int e = 0; e < 4; ++e) acc[nt][mt][e] *= f;
      }
      const uint32_t* vcb = vc_s + gid * NWV;
      for (int tb = warp; tb < ntiles; tb += kW) {
        uint32_t w[4][NWV];
#pragma unroll
        for (int k = 0; k < 4; ++k) {
          const uint32_t* row = vcb + (tb * 16 + 4 * t4 + k) * RW;
          if constexpr (NWV == 2) {
            const uint2 v = *reinterpret_cast<const uint2*>(row);
            w[k][0] = v.x; w[k][1] = v.y;
          } else {
            w[k][0] = row[0];
          }
        }
        uint32_t b[NTV][2];
#pragma unroll
        for (int nt = 0; nt < NTV; ++nt) {
          const int col = nt * 8 + gid;
          uint2 v = make_uint2(0, 0);
          if constexpr (WS) {
            if (col < NCV) v = *reinterpret_cast<const uint2*>(W + col * KS + ws_pos<KS>(tb, 4 * t4));
          } else {
            if (col < NCV) v = *reinterpret_cast<const uint2*>(W + col * KS + tb * 16 + 4 * t4);
          }
          b[nt][0] = v.x; b[nt][1] = v.y;
        }
        // p01[c] / p23[c]: (token 4t, 4t+1) / (4t+2, 4t+3) codes of local channel c (0..15).
        uint32_t p01[16], p23[16];
#pragma unroll
        for (int i = 0; i < NWV; ++i) {
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const uint32_t sel = hh ? 0x7632u : 0x5410u;
            const uint32_t x01 = __byte_perm(w[0][i], w[1][i], sel);
            const uint32_t x23 = __byte_perm(w[2][i], w[3][i], sel);
            uint32_t t01[8], t23[8];
            word_pairs<BITS, FOLD>(x01, t01);
            word_pairs<BITS, FOLD>(x23, t23);
#pragma unroll
            for (int jj = 0; jj < NP; ++jj) {
              const int c = (32 / BITS) * i + NP * hh + jj;
              p01[c] = t01[jj];
              p23[c] = t23[jj];
            }
          }
        }
#pragma unroll
        for (int mt = 0; mt < 8; ++mt)
#pragma unroll
          for (int nt = 0; nt < NTV; ++nt)
            mma16816(acc[nt][mt], p01[2 * mt], p01[2 * mt + 1], p23[2 * mt], p23[2 * mt + 1], b[nt][0],
                     b[nt][1]);
      }
    }
#pragma unroll
    for (int g = 0; g < GA; ++g) m_run[g] = mnew[g];
#pragma unroll
    for (int grp = 0; grp < VA; ++grp) pw_run[grp] = pwn[grp];
    __syncthreads();  // value codes, scores and weights of stage j read by every warp
#if KVQ_KV_TRACE
    if (trow && j < kTraceStages) trow[8 + j] = gtime();
#endif
    if (j + 1 < nsub) issue_b(j + 1);
    cp_async_commit();
  }

  // acc[nt][mt]: rows = channels 16 gid + 2 mt (+1 for row gid + 8), cols 2t4 (hi), 2t4+1 (lo)
  // of combination k = nt * 4 + t4 = (g, value group). red aliases the key stages (no copy
  // is pending: the last stage issued none).
  float* red = reinterpret_cast<float*>(kc_s);  // [kW][G][kD]
  if constexpr (WS) {
    // Each warp ran its own softmax: its (m, l, sum p z, sum w 2^-E) per head in rbuf slots
    // 0 / 8 / 16 / 24 + g, its factor exp(m_w - M) in 32 + g, M the block's max.
#pragma unroll
    for (int g = 0; g < GA; ++g) {
      const float lt = warp_sum(lsl[g]), zt = warp_sum(zsl[g]);
      const float wt = FOLD ? warp_sum(wsl[g]) : 0.f;
      if (lane == 0 && g < G) {
        rbuf[warp * 40 + g] = m_run[g];
        rbuf[warp * 40 + 8 + g] = lt;
        rbuf[warp * 40 + 16 + g] = zt;
        rbuf[warp * 40 + 24 + g] = wt * (1.f / pw_run[0]);  // a power of two: exact
      }
    }
    __syncthreads();
    if (t4 < G) {
      float M = -INFINITY;
#pragma unroll
      for (int w2 = 0; w2 < kW; ++w2) M = fmaxf(M, rbuf[w2 * 40 + t4]);
      const float mw = sel8(m_run, t4);
      const float f = (mw == -INFINITY ? 0.f : expf(mw - M)) * (1.f / pw_run[0]);
#pragma unroll
      for (int mt = 0; mt < 8; ++mt)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          const int ch = 16 * gid + 2 * mt + rr;
          red[(warp * G + t4) * kD + ch] = (acc[0][mt][2 * rr] + acc[0][mt][2 * rr + 1]) * f;
        }
    }
    if (threadIdx.x < kW * G) {
      const int w2 = threadIdx.x / G, g = threadIdx.x % G;
      float M = -INFINITY;
#pragma unroll
      for (int w3 = 0; w3 < kW; ++w3) M = fmaxf(M, rbuf[w3 * 40 + g]);
      const float mw = rbuf[w2 * 40 + g];
      rbuf[w2 * 40 + 32 + g] = mw == -INFINITY ? 0.f : expf(mw - M);
    }
    __syncthreads();
    KVQ_TRACE_AT(4);
    for (int i = threadIdx.x; i < G * kD; i += kT) {
      const int g = i / kD, d = i % kD;
      float v = 0.f, wsum = 0.f, zs = 0.f;
      for (int w2 = 0; w2 < kW; ++w2) {
        const float f = rbuf[w2 * 40 + 32 + g];
        v += red[(w2 * G + g) * kD + d];
        wsum = fmaf(rbuf[w2 * 40 + 24 + g], f, wsum);
        zs = fmaf(rbuf[w2 * 40 + 16 + g], f, zs);
      }
      if (FOLD) v = fmaf(-static_cast<float>(fold_offset<BITS>(d)), wsum, v);
      part_o[((head0 + g) * splits + s) * kD + d] = v + zs;
    }
    if (threadIdx.x < G) {
      const int g = threadIdx.x;
      float M = -INFINITY, l = 0.f;
      for (int w2 = 0; w2 < kW; ++w2) M = fmaxf(M, rbuf[w2 * 40 + g]);
      for (int w2 = 0; w2 < kW; ++w2) l = fmaf(rbuf[w2 * 40 + 8 + g], rbuf[w2 * 40 + 32 + g], l);
      part_ml[((head0 + g) * splits + s) * 2] = M;
      part_ml[((head0 + g) * splits + s) * 2 + 1] = l;
    }
  } else {
  if constexpr (KG) {  // rows: channel 32 (mt / 2) + 4 gid + 2 (mt % 2) + rr; columns hi, lo of head t4
    if (t4 < G)
#pragma unroll
      for (int mt = 0; mt < 8; ++mt)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          const int ch = 32 * (mt >> 1) + 4 * gid + 2 * (mt & 1) + rr;
          red[(warp * G + t4) * kD + ch] = (acc[0][mt][2 * rr] + acc[0][mt][2 * rr + 1]) * (1.f / pw_run[mt >> 1]);
        }
  } else {
#pragma unroll
  for (int nt = 0; nt < NTV; ++nt) {
    const int k = nt * 4 + t4;
    if (k < G * NGV) {
      const int g = KONE ? k : k / NGV, grp = KONE ? 0 : k % NGV;
      const float inv = 1.f / sel8(pw_run, grp);  // a power of two: exact
#pragma unroll
      for (int mt = 0; mt < 8; ++mt)
#pragma unroll
        for (int rr = 0; rr < 2; ++rr) {
          const int ch = 16 * gid + 2 * mt + rr;
          if (ch / vgroup == grp) red[(warp * G + g) * kD + ch] = (acc[nt][mt][2 * rr] + acc[nt][mt][2 * rr + 1]) * inv;
        }
    }
  }
  }  // !KG
  if (FOLD && threadIdx.x >= 32 && threadIdx.x < 32 + G * NGV) {  // wrun's writers: 2^-E as the partials
    const int c = threadIdx.x - 32;
    wrun[c] *= 1.f / sel8(pw_run, KONE ? 0 : c % NGV);  // a power of two: exact
  }
  __syncthreads();
  KVQ_TRACE_AT(4);
  for (int i = threadIdx.x; i < G * kD; i += kT) {
    const int g = i / kD, d = i % kD;
    float v = 0.f;
    for (int w2 = 0; w2 < kW; ++w2) v += red[(w2 * G + g) * kD + d];
    // FOLD: the warps' accumulators hold off(d) x their own tiles' weights, so the block's
    // sum loses off(d) * wrun once, here (the first device run subtracted it in every warp).
    if (FOLD) v = fmaf(-static_cast<float>(fold_offset<BITS>(d)), wrun[g * NGV + d / vgroup], v);
    part_o[((head0 + g) * splits + s) * kD + d] = v + zsum[g * NGV + d / vgroup];
  }
  if (threadIdx.x < G) {
    part_ml[((head0 + threadIdx.x) * splits + s) * 2] = sel8(m_run, threadIdx.x);
    part_ml[((head0 + threadIdx.x) * splits + s) * 2 + 1] = lrun[threadIdx.x];
  }
  }  // !WS
  if constexpr (KCH) tail_first_wait();
  KVQ_TRACE_AT(5);
}

size_t stream_smem_bytes(int bits, int G, const PackedSide& k, int vmpr, int ncv, int ks) {
  const size_t rw = 4 * static_cast<size_t>(bits);
  const bool kch = k.format == KvFormat::kChannelAsym;
  const bool kg = kch && G > 2;  // stream_kernel's KG: zsum / wrun of 16, W of 32 columns (4 bits: none)
  return 3 * ks * rw * 4 + static_cast<size_t>(G) * ks * 4 +
         (16 + (kg ? 32 : 16) + 8 + kW * 40 + (kch ? (kg ? 4 : 2) * kD : 0)) * 4 +
         2 * static_cast<size_t>(key_meta_stage_halves(k, ks) + meta_stage_halves(vmpr, ks)) * 2 +
         (kg ? (bits == 4 ? 0 : 32 * static_cast<size_t>(ks)) : static_cast<size_t>(ncv) * ks) * 2;
}

// KIVI tail: tokens [len - R, len) of a row (R = resid_cap), whose values sit in the fp16
// ring and whose keys are quantized per channel below floor(len / R) R and in the ring from
// there, on CUDA cores (at most R tokens per (row, kv head): 128 by default, under 0.4% of
// a 32K context). One block per (kv head, row); writes split s_tail of the partials. Keys
// dequantized by the reference formula fma(c, s, z) (kv_layout.h), dot products and P V in
// fp32 as in the CUDA-core kernels.
// The tail runs after the attention grid, so its latency adds to every decode: its rows are
// staged into shared memory by cp.async, kTailRows tokens at a time, every load of a chunk in
// flight at once. Why (H100, 2026-11-23, f0c4e67, one process, kvq-kvbench --reps 20 --batch 1,8
// --contexts 4096,32768,131072 --kv kivi:bits=4 --kv kivi:bits=2 --ab KVQ_KV_TAIL=default,staged,
// L2 cold): the build before, which read the key rows and then the value ring from global memory
// in dependent rounds (a thread walked the R value rows a few loads at a time, once per head),
// was slower in all 24 cells, by 10.8-13.0 us per decode on llama2-7b (b1 4K KIVI-4 55.3 ->
// 42.3 us) and 16.1-24.0 on llama3-8b (b1 4K KIVI-2 58.2 -> 35.6; b1 32K KIVI-4 83.3 -> 66.1;
// b8 128K +34 us on llama2-7b); it was deleted. Each token's dot product is in channel order,
// each output channel's sum in token order, per head (the same order as that build).
// GT >= G: the heads a thread's dot products cover (2 for the G <= 2 builds, 4 for KG).
// A tail token's dot products with the G <= GT queries qs (fp32 [G][kD]), in channel order:
// from its fp16 key row kr, or from its 4 BITS code words cw and its key group's (scale, zero)
// halves cm by the reference formula (operands in shared memory).
template <int GT>
__device__ __forceinline__ void tail_dot_resid(float (&dot)[GT], const uint16_t* kr, const float* qs, int G) {
#pragma unroll 4
  for (int d = 0; d < kD; d += 8) {
    const uint4 u = *reinterpret_cast<const uint4*>(kr + d);
    const uint32_t wv[4] = {u.x, u.y, u.z, u.w};
#pragma unroll
    for (int e = 0; e < 8; ++e) {
      const float kv = h2f(static_cast<uint16_t>(wv[e >> 1] >> (16 * (e & 1))));
      dot[0] = fmaf(qs[d + e], kv, dot[0]);
#pragma unroll
      for (int g = 1; g < GT; ++g)
        if (G > g) dot[g] = fmaf(qs[g * kD + d + e], kv, dot[g]);
    }
  }
}

template <int BITS, int GT>
__device__ __forceinline__ void tail_dot_codes(float (&dot)[GT], const uint32_t* cw, const uint16_t* cm,
                                               const float* qs, int G) {
#pragma unroll 2
  for (int wi = 0; wi < 4 * BITS; ++wi) {
    const uint32_t word = cw[wi];
#pragma unroll
    for (int e = 0; e < 32 / BITS; ++e) {
      const int d = wi * (32 / BITS) + e;  // code d of the row (kv_layout.h bit stream)
      const uint32_t c = (word >> (BITS * e)) & ((1u << BITS) - 1u);
      const float kv = kvlayout::dequantize_asym(c, h2f(cm[2 * d]), h2f(cm[2 * d + 1]));
      dot[0] = fmaf(qs[d], kv, dot[0]);
#pragma unroll
      for (int g = 1; g < GT; ++g)
        if (G > g) dot[g] = fmaf(qs[g * kD + d], kv, dot[g]);
    }
  }
}

constexpr int kTailRows = 128;  // tokens per staged chunk: 32 KB of fp16 rows

size_t kivi_tail_smem_bytes(int G, int gt, int cap) {
  return (static_cast<size_t>(G) * (kD + cap) + 2 * gt) * sizeof(float) + static_cast<size_t>(kTailRows) * kD * 2;
}

template <int BITS, int GT>
__global__ void __launch_bounds__(kT) kivi_tail_kernel(PackedSide K, PackedSide V, PackedDecodeArgs a,
                                                              int splits, int s_tail, float* part_o, float* part_ml) {
  extern __shared__ __align__(16) float tsm[];
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Tail first (tail_first()): the attention grid, launched after this one as its programmatic
  // dependent, starts now (tail_first_wait); otherwise the combine may (it waits for this grid).
  asm volatile("griddepcontrol.launch_dependents;" ::: "memory");
#endif
  const int kvh = blockIdx.x, r = blockIdx.y;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  const int G = a.n_heads / K.kv_heads, cap = K.resid_cap;
  const int len = a.len[r];
  const int v0 = max(0, len - cap), kq = len / cap * cap, n = len - v0;
  const int64_t sh = static_cast<int64_t>(a.slot[r]) * K.kv_heads + kvh;
  const int64_t head0 = static_cast<int64_t>(r) * a.n_heads + kvh * G;
  float* qs = tsm;            // [G][kD]
  float* ps = qs + G * kD;    // [G][cap] scores, then p
  float* st = ps + G * cap;   // [G][2] (max, sum); 2 GT floats keep `rows` 16-byte aligned
  uint4* rows = reinterpret_cast<uint4*>(st + 2 * GT);  // [kTailRows][16]: a key row, its codes, or a value row
  const uint32_t rows_s = smem_addr(rows);
  const uint16_t* q = static_cast<const uint16_t*>(a.q) + head0 * kD;
  for (int i = threadIdx.x; i < G * kD; i += kT) qs[i] = h2f(q[i]);
  // Scores, one token per thread per chunk (kT == kTailRows): the token's fp16 key row
  // (j >= kq) or its 4 BITS code words (j < kq) staged first.
  for (int c = 0; c < n; c += kTailRows) {
    const int m = min(kTailRows, n - c);
    for (int i = threadIdx.x; i < m * 16; i += kT) {
      const int w = i & 15, j = v0 + c + (i >> 4);
      if (j >= kq)
        cp_async16(rows_s + 16 * i, K.resid + (sh * cap + j % cap) * kD + 8 * w, 16);
      else if (w < BITS)
        cp_async16(rows_s + 16 * i, K.codes + (sh * K.max_tokens + j) * (4 * BITS) + 4 * w, 16);
    }
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
    const int t = c + static_cast<int>(threadIdx.x);
    if (t < n) {
      const int j = v0 + t;
      const uint4* row = rows + threadIdx.x * 16;
      float dot[GT];
#pragma unroll
      for (int g = 0; g < GT; ++g) dot[g] = 0.f;
      if (j >= kq)
        tail_dot_resid<GT>(dot, reinterpret_cast<const uint16_t*>(row), qs, G);
      else
        tail_dot_codes<BITS, GT>(dot, reinterpret_cast<const uint32_t*>(row),
                                 K.cmeta + (sh * (K.max_tokens / K.group) + j / K.group) * kD * 2, qs, G);
      ps[t] = dot[0] * a.scale;
#pragma unroll
      for (int g = 1; g < GT; ++g)
        if (G > g) ps[g * cap + t] = dot[g] * a.scale;
    }
    __syncthreads();  // the chunk's rows are read before the next chunk overwrites them
  }
  chunk_softmax<kW, false>(ps, cap, n, G, warp, lane, st);
  __syncthreads();
  // P V: one channel per thread (kT == kD), the value rows staged per chunk, every head's sum
  // in token order.
  const int d = threadIdx.x;
  const uint16_t* vrows = reinterpret_cast<const uint16_t*>(rows);
  float o[GT];
#pragma unroll
  for (int g = 0; g < GT; ++g) o[g] = 0.f;
  for (int c = 0; c < n; c += kTailRows) {
    const int m = min(kTailRows, n - c);
    for (int i = threadIdx.x; i < m * 16; i += kT)
      cp_async16(rows_s + 16 * i, V.resid + (sh * cap + (v0 + c + (i >> 4)) % cap) * kD + 8 * (i & 15), 16);
    cp_async_commit();
    cp_async_wait<0>();
    __syncthreads();
#pragma unroll 8
    for (int t = 0; t < m; ++t) {
      const float vv = h2f(vrows[t * kD + d]);
#pragma unroll
      for (int g = 0; g < GT; ++g)
        if (G > g) o[g] = fmaf(ps[g * cap + c + t], vv, o[g]);
    }
    __syncthreads();
  }
#pragma unroll
  for (int g = 0; g < GT; ++g)
    if (G > g) part_o[((head0 + g) * splits + s_tail) * kD + d] = o[g];
  if (threadIdx.x < G) {
    part_ml[((head0 + threadIdx.x) * splits + s_tail) * 2] = st[2 * threadIdx.x];
    part_ml[((head0 + threadIdx.x) * splits + s_tail) * 2 + 1] = st[2 * threadIdx.x + 1];
  }
}
static_assert(kT == kD && kT == kTailRows, "kivi_tail_kernel: one thread per channel, one token per thread per chunk");

// Split-K combine for the streaming kernel's partials (same layout and formula as
// splitk_combine_kernel in common.cuh: out = sum_s w_s o_s / sum_s w_s l_s, w_s = exp(m_s - m),
// splits with m_s = -inf skipped). Why a second one: that kernel walks the splits serially
// in every thread (three loops of dependent-latency rounds), which at batch 1 is a fixed cost
// comparable to the attention itself: version 4's batch-1 times fit ~20-25 us + ~4.6 us per
// 256-token stage (H100, 2026-11-23, notes/s5/results-h41.md), and llama3-8b at batch 1 uses
// 66 splits at 32K. Here the split statistics are read once in parallel (thread s), the
// weights go through shared memory, and the kCT threads of a block split the (split, channel)
// sum four ways (a channel per thread, every fourth split) with the loads unrolled, so a
// thread keeps several loads in flight and walks splits / 4 of them.
constexpr int kCT = 4 * kD;  // combine threads: 4 split phases x 128 channels
__global__ void __launch_bounds__(kCT) stream_combine_kernel(const float* part_o, const float* part_ml,
                                                             __half* out, int n_heads, int splits KVQ_TRACE_PARAM) {
  extern __shared__ float cw[];  // [splits] weights, then [4][kD] partial sums
  __shared__ float red[kCT / 32];
  __shared__ float mtot, ltot;
#if KVQ_KV_TRACE
  const unsigned tb = blockIdx.x + gridDim.x * blockIdx.y;
  unsigned long long* const crow = threadIdx.x == 0 && tb < kTraceHeads ? g_ctrace[trace_slot][tb] : nullptr;
  if (crow) {
    crow[0] = gtime();
    crow[3] = smid();
  }
#endif
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  // Launched early (programmatic stream serialization, combine() below): wait until the
  // producing grid has finished and its partials are visible (at once when launched the
  // ordinary way).
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
#if KVQ_KV_TRACE
  if (crow) crow[1] = gtime();
#endif
  const int h = blockIdx.x, r = blockIdx.y;
  const int64_t head = static_cast<int64_t>(r) * n_heads + h;
  const float* ml = part_ml + head * splits * 2;
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31;
  float m = -INFINITY;
  for (int s = threadIdx.x; s < splits; s += kCT) m = fmaxf(m, ml[2 * s]);
  m = warp_max(m);
  if (lane == 0) red[warp] = m;
  __syncthreads();
  if (threadIdx.x == 0) {
    float x = red[0];
    for (int w = 1; w < kCT / 32; ++w) x = fmaxf(x, red[w]);
    mtot = x;
  }
  __syncthreads();
  const float M = mtot;
  float l = 0.f;
  for (int s = threadIdx.x; s < splits; s += kCT) {
    const float ms = ml[2 * s];
    const float w = ms == -INFINITY ? 0.f : expf(ms - M);
    cw[s] = w;
    l += w * ml[2 * s + 1];
  }
  l = warp_sum(l);
  __syncthreads();  // red reused
  if (lane == 0) red[warp] = l;
  __syncthreads();
  if (threadIdx.x == 0) {
    float x = 0.f;
    for (int w = 0; w < kCT / 32; ++w) x += red[w];
    ltot = x;
  }
  const int d = threadIdx.x % kD, ph = threadIdx.x / kD;
  const float* po = part_o + head * splits * kD + d;
  float o = 0.f;
#pragma unroll 4
  for (int s = ph; s < splits; s += 4) o = fmaf(cw[s], po[static_cast<int64_t>(s) * kD], o);
  float* ps = cw + splits;
  ps[ph * kD + d] = o;
  __syncthreads();
  if (ph == 0) {
    const float v = ((ps[d] + ps[kD + d]) + (ps[2 * kD + d] + ps[3 * kD + d])) / ltot;
    out[head * kD + d] = __float2half_rn(v);
  }
#if KVQ_KV_TRACE
  if (crow) crow[2] = gtime();
#endif
}

// KVQ_KV_COMBINE (read per call, for A/Bs in one process). Unset (or anything else): this
// file's combine launched with programmatic stream serialization (cudaLaunchKernelEx; h46,
// session 5): its launch is processed while the attention kernel runs (that kernel allows it
// at block start, griddepcontrol.launch_dependents) and its blocks wait in griddepcontrol.wait
// for the attention grid's completion and memory; only on devices of compute capability >= 9,
// elsewhere the ordinary launch. 1: the same combine, ordinary launch (the default before).
// 0: the shared splitk_combine_kernel.
// Measured (H100, 2026-11-23, 1207ec6, one process, same caches; notes/s5/results-h46.md):
// PDL against the ordinary launch, batch 1: llama2-7b int2 4K 20.7 -> 19.2 us, 32K 57.9 ->
// 55.5, 64K 95.8 -> 93.5, 128K 173.4 -> 170.4; llama3-8b 1-2.7 us faster in all 8 cells;
// int4 MHA 32K equal (76.7 / 76.9), 64K / 128K 3-5.5 us faster; batch 8 equal or faster (up
// to 6.8 us, int2 MHA 32K). Single-decode host time 6.7-7.0 us instead of 8.0-8.3 (4K int2).
// Tried and removed: the combine done by the last block of each (row, kv head) to finish
// (atomic counter, "last block reduces"; KVQ_KV_COMBINE=fuse in 1207ec6): at batch 1 MHA
// between the two launches above (4K int2 20.2 us, 32K 56.5), slower than PDL at GQA (66
// splits in one block's serial loop: it stayed with the kernel there), and its epilogue
// changed the register allocation of the attention builds (int4 G = 1 107 -> 103, G = 4
// 112 -> 127 registers) for no measured gain.
enum class CombineMode { kShared, kOwn, kPdl };
CombineMode combine_mode() {
  const char* e = std::getenv("KVQ_KV_COMBINE");
  if (e == nullptr) return CombineMode::kPdl;
  if (std::strcmp(e, "0") == 0) return CombineMode::kShared;
  if (std::strcmp(e, "1") == 0) return CombineMode::kOwn;
  return CombineMode::kPdl;
}

cudaError_t combine(const float* part_o, const float* part_ml, void* out, int n_heads, int rows, int splits,
                    cudaStream_t stream, CombineMode mode KVQ_TRACE_PARAM) {
  if (mode == CombineMode::kShared) {
    splitk_combine_kernel<__half><<<dim3(n_heads, rows), 128, 0, stream>>>(part_o, part_ml, static_cast<__half*>(out),
                                                                          n_heads, kD, splits);
    return launch_status();
  }
  const size_t smem = (static_cast<size_t>(splits) + 4 * kD) * sizeof(float);
  if (smem > 48 * 1024) {  // > 8K splits: more than the default dynamic shared memory
    const cudaError_t e = cudaFuncSetAttribute(stream_combine_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                               static_cast<int>(smem));
    if (e != cudaSuccess) return e;
  }
  if (mode == CombineMode::kPdl && device_has_pdl())
    return launch_pdl(stream_combine_kernel, dim3(n_heads, rows), dim3(kCT), smem, stream, part_o, part_ml,
                      static_cast<__half*>(out), n_heads, splits KVQ_TRACE_ARG);
  stream_combine_kernel<<<dim3(n_heads, rows), kCT, smem, stream>>>(part_o, part_ml, static_cast<__half*>(out),
                                                                    n_heads, splits KVQ_TRACE_ARG);
  return launch_status();
}

// Tokens per block (a multiple of `grain` tokens: the stage, ks, or a finer grain, below) and
// the split count for the streaming kernel: the split count that minimises (waves of blocks) x
// (tokens per block + a per-block cost of kS / 2 = 128 tokens: q set-up, partial writes, the
// combine's share), for `resident` blocks at once on the device. The split count stays <=
// ceil(max_len / ks) whatever the grain (the partial buffers hold stream_max_splits()).
// The search walks max_len / ks candidates (512 at 128K) and runs twice per decode call
// (default_stage_2bit and launch_stream), on the host before the first launch, i.e. inside
// the decode's measured latency: its last answers are kept per thread (4 entries).
#if KVQ_KV_TRACE
// The trace's host side: one TraceMeta per traced call (int32 fields, in this order in the
// file), the slot = call % kTraceCalls. trace_dump (at exit, registered after the CUDA runtime
// has started, so it runs before the runtime's own teardown) writes the last kTraceCalls calls:
// "KVQTRC01", int32 count, then per call its TraceMeta, min(grid blocks, kTraceBlocks) rows of
// kTraceEv uint64 (0 entry ns, 1 smid, 2 after q set-up, 3 stage 0 landed, 4 before the partial
// writes, 5 end, 6 stages, 7 first token, 8 + j end of stage j), then min(heads x rows,
// kTraceHeads) combine rows of 4 uint64 (entry, after griddepcontrol.wait, end, smid).
struct TraceMeta {
  int32_t call, slot, gx, gy, gz, span, splits, ks, bits, g, heads, max_len;
};
std::vector<TraceMeta>& trace_log() {
  static std::vector<TraceMeta> log;
  return log;
}
void trace_dump() {
  const std::vector<TraceMeta>& log = trace_log();
  if (cudaDeviceSynchronize() != cudaSuccess) return;
  const char* path = std::getenv("KVQ_KV_TRACE_OUT");
  FILE* f = std::fopen(path != nullptr ? path : "kv_trace.bin", "wb");
  if (f == nullptr) return;
  const size_t first = log.size() > static_cast<size_t>(kTraceCalls) ? log.size() - kTraceCalls : 0;
  const int32_t count = static_cast<int32_t>(log.size() - first);
  std::fwrite("KVQTRC01", 1, 8, f);
  std::fwrite(&count, sizeof count, 1, f);
  std::vector<unsigned long long> buf;
  for (size_t i = first; i < log.size(); ++i) {
    const TraceMeta& m = log[i];
    std::fwrite(&m, sizeof m, 1, f);
    const size_t nb = std::min<size_t>(static_cast<size_t>(m.gx) * m.gy * m.gz, kTraceBlocks);
    buf.resize(nb * kTraceEv);
    cudaMemcpyFromSymbol(buf.data(), g_trace, buf.size() * 8, static_cast<size_t>(m.slot) * kTraceBlocks * kTraceEv * 8);
    std::fwrite(buf.data(), 8, buf.size(), f);
    const size_t nh = std::min<size_t>(static_cast<size_t>(m.heads), kTraceHeads);
    buf.resize(nh * 4);
    cudaMemcpyFromSymbol(buf.data(), g_ctrace, buf.size() * 8, static_cast<size_t>(m.slot) * kTraceHeads * 4 * 8);
    std::fwrite(buf.data(), 8, buf.size(), f);
  }
  std::fclose(f);
}
int trace_next(TraceMeta m) {
  std::vector<TraceMeta>& log = trace_log();
  if (log.empty()) std::atexit(trace_dump);
  m.call = static_cast<int32_t>(log.size());
  m.slot = m.call % kTraceCalls;
  log.push_back(m);
  return m.slot;
}
#endif

void stream_plan_search(int kv_heads, int rows, int max_len, int resident, int ks, int grain, int* span, int* splits);
void stream_plan(int kv_heads, int rows, int max_len, int resident, int ks, int* span, int* splits, int grain = 0) {
  if (grain <= 0 || ks % grain != 0) grain = ks;
  struct Entry {
    int kv_heads = -1, rows = 0, max_len = 0, resident = 0, ks = 0, grain = 0, span = 0, splits = 0;
  };
  thread_local Entry memo[4];
  thread_local int next = 0;
  for (const Entry& m : memo)
    if (m.kv_heads == kv_heads && m.rows == rows && m.max_len == max_len && m.resident == resident && m.ks == ks &&
        m.grain == grain) {
      *span = m.span;
      *splits = m.splits;
      return;
    }
  stream_plan_search(kv_heads, rows, max_len, resident, ks, grain, span, splits);
  memo[next] = Entry{kv_heads, rows, max_len, resident, ks, grain, *span, *splits};
  next = (next + 1) % 4;
}
void stream_plan_search(int kv_heads, int rows, int max_len, int resident, int ks, int grain, int* span, int* splits) {
  const int per_split = std::max(1, kv_heads * rows);
  const int max_splits = std::max(1, (max_len + ks - 1) / ks);
  double best = 1e300;
  int bs = 1, bspan = max_splits * ks;
  for (int sp = 1; sp <= max_splits; ++sp) {
    const int tok = ((max_len + sp - 1) / sp + grain - 1) / grain * grain;  // tokens per block
    const int real = (max_len + tok - 1) / tok;  // splits actually used
    if (real != sp) continue;
    const double waves = std::ceil(static_cast<double>(per_split) * sp / std::max(1, resident));
    const double cost = waves * (static_cast<double>(tok) + kS / 2);
    if (cost < best) {
      best = cost;
      bs = sp;
      bspan = tok;
    }
  }
  *span = bspan;
  *splits = bs;
}

// KVQ_KV_SPAN (read per call; h67, session 7): unset or anything but "stage" (the default), the
// plan's blocks are whole 64-token grains (4 tiles: one per warp) instead of whole stages, so a
// block's last stage may be partial (as a row's last stage always could be: the stage loop
// copies and walks min(KS, left) tokens, tiles past it skipped); "stage": whole stages (the
// plan before, for A/Bs in one process). Not for KIVI (KCH: blocks start on key groups and its
// tail kernel takes one more split). The kernels are the same (no PTX change): only span and
// splits differ. Why (count, H100: 132 SMs): llama3-8b int4 b1 has 8 (row, kv head) pairs for
// 3 x 132 = 396 resident blocks (62 KB of shared memory each): whole stages give 43 splits x 3
// stages at 32K (344 blocks), 43 x 6 at 64K, 47 x 11 at 128K (376); 64-token grains 47 x 2.75
// (376), 49 x 5.25, 49 x 10.5 (392). MHA and the 2-bit G = 4 build (4 blocks per SM, 528 slots)
// get the same plans as before at 32K-128K (512 blocks of whole stages already).
// Measured (H100, 2026-11-23, archive of 687337f, one process, kvq-kvbench --reps 20 --batch 1
// --contexts 32768,65536,131072 --kv int4 --kv int2 --ab KVQ_KV_SPAN=stage,64;
// notes/s7/results-h67.md): llama3-8b int4 b1 32K 31.9 -> 30.8 us, 64K 47.5 -> 46.2, 128K
// 73.0 -> 71.6 (1.9-3.4% less time; the count gave 0.25 / 0.75 / 0.5 of a ~5.2 us stage round:
// the SMs that now hold 3 blocks instead of 2 run their rounds slower); the cells whose plan is
// unchanged moved -1.3% to +1.4% (noise); b8 128K int4 (86 -> 85.5 stages) 424.5 -> 423.2 us.
int span_grain(int ks) {
  const char* e = std::getenv("KVQ_KV_SPAN");
  if (e != nullptr && std::strcmp(e, "stage") == 0) return ks;
  return 64;
}

// KIVI's tail grid first, the attention grid beside it as its programmatic dependent
// (tail_first_wait; devices of compute capability >= 9 only), where the tail grid (a block per
// kv head and row) has at most one block per SM; otherwise the tail after the attention grid.
// KVQ_KV_TAILFIRST (read per call) "1" / "0" forces one order. Why: after the attention grid
// the tail's whole latency adds to the decode. Measured (H100, 2026-11-23, 49c8a39, one process,
// kvq-kvbench --reps 20 --batch 1,8 --contexts 4096,32768,131072 --kv kivi:bits=4 --kv
// kivi:bits=2 --ab KVQ_KV_TAILFIRST=0,1, L2 cold, us): tail first faster in 22 of 24 cells;
// batch 1 llama2-7b 4K KIVI-4 42.3 -> 29.3, 32K KIVI-2 105.9 -> 95.0; llama3-8b 32K KIVI-4
// 66.9 -> 49.4, 128K KIVI-2 139.9 -> 122.6; batch 8 llama3-8b (64 tail blocks) 0.5-6.5%
// faster. Slower only on llama2-7b batch 8 (256 tail blocks: they take SM slots the attention
// grid's plan counted on), KIVI-2 32K 620.2 -> 636.3 and 128K 2399.1 -> 2462.8, where KIVI-4
// was 0.6-3.5% faster; the SM-count rule keeps that shape in the old order.
bool tail_first(int tail_blocks, int sm_count) {
  const char* e = std::getenv("KVQ_KV_TAILFIRST");
  if (e != nullptr && std::strcmp(e, "1") == 0) return true;
  if (e != nullptr && std::strcmp(e, "0") == 0) return false;
  return tail_blocks <= sm_count;
}

template <int BITS, int NTK, int NTV, bool KONE, int GM, bool KCH = false, int NGVT = 0, bool FOLD = true,
          int KS = kS, int OPT = 3>
cudaError_t launch_stream(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                          int sm_count, float* part_o, float* part_ml, cudaStream_t stream) {
  const int G = a.n_heads / k.kv_heads;
  const int ncv = 2 * G * (kD / v.group);
  const size_t smem = stream_smem_bytes(BITS, G, k, v.mpr, ncv, KS);
  auto* kernel = stream_kernel<BITS, NTK, NTV, KONE, GM, KCH, NGVT, FOLD, KS, OPT>;
  // The attribute and the occupancy query once per build and smem size (host time per decode).
  static size_t last_smem = 0;
  static int per_sm = 0;
  cudaError_t e = cudaSuccess;
  if (smem != last_smem) {
    if ((e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(smem))) !=
        cudaSuccess)
      return e;
    if ((e = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, kernel, kT, smem)) != cudaSuccess) return e;
    last_smem = smem;
  }
  int span = 0, splits = 0;
  stream_plan(k.kv_heads, a.rows, max_len, std::max(1, per_sm) * std::max(1, sm_count), KS, &span, &splits,
              KCH ? KS : span_grain(KS));
  // KIVI: one more split, the tail kernel's (the last R tokens of each row).
  const int total = KCH ? splits + 1 : splits;
#if KVQ_KV_TRACE
  const int trace_slot =
      trace_next({0, 0, splits, k.kv_heads, a.rows, span, total, KS, BITS, G, a.n_heads * a.rows, max_len});
#endif
  const dim3 grid(splits, k.kv_heads, a.rows);
  if constexpr (KCH) {
    constexpr int GT = GM > 2 ? 4 : 2;
    auto* tail = kivi_tail_kernel<BITS, GT>;
    const size_t tsmem = kivi_tail_smem_bytes(G, GT, k.resid_cap);
    // Above 48 KB (at G = 4: R > 895; kivi_fits allows R up to 4,096) the launch needs the
    // opt-in attribute, once per build and size.
    static size_t tail_smem = 0;
    if (tsmem > 48 * 1024 && tsmem > tail_smem) {
      if ((e = cudaFuncSetAttribute(tail, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(tsmem))) !=
          cudaSuccess)
        return e;
      tail_smem = tsmem;
    }
    const bool first = tail_first(k.kv_heads * a.rows, sm_count) && device_has_pdl();
    if (!first) {
      kernel<<<grid, kT, smem, stream>>>(k, v, a, span, total, part_o, part_ml KVQ_TRACE_ARG);
      if ((e = launch_status()) != cudaSuccess) return e;
    }
    tail<<<dim3(k.kv_heads, a.rows), kT, tsmem, stream>>>(k, v, a, total, splits, part_o, part_ml);
    if ((e = launch_status()) != cudaSuccess) return e;
    if (first && (e = launch_pdl(kernel, grid, dim3(kT), smem, stream, k, v, a, span, total, part_o,
                                 part_ml KVQ_TRACE_ARG)) != cudaSuccess)
      return e;
  } else {
    kernel<<<grid, kT, smem, stream>>>(k, v, a, span, total, part_o, part_ml KVQ_TRACE_ARG);
    if ((e = launch_status()) != cudaSuccess) return e;
  }
  return combine(part_o, part_ml, a.out, a.n_heads, a.rows, total, stream, combine_mode() KVQ_TRACE_ARG);
}

// The folded conversion (stream_kernel's FOLD) unless KVQ_KV_FOLD=0; the unfolded builds exist
// only for the default per-token codes (group 128), to compare the two in one process.
bool fold_codes() {
  static const bool on = [] {
    const char* e = std::getenv("KVQ_KV_FOLD");
    return e == nullptr || std::strcmp(e, "0") != 0;
  }();
  return on;
}

// Tokens per stage of the folded 2-bit per-token builds at G <= 4: KVQ_KV_STAGE=256|384|512,
// read on every call (a getenv per decode, against tens of microseconds of kernel) so that
// one process can compare them; 0 (unset or anything else): the default below.
// At G = 8 (two value n-tiles) a 384/512-token stage would leave 2 blocks per SM: 256 there.
int stage_tokens_2bit() {
  if (const char* e = std::getenv("KVQ_KV_STAGE")) {
    if (std::strcmp(e, "256") == 0) return 256;
    if (std::strcmp(e, "384") == 0) return 384;
    if (std::strcmp(e, "512") == 0) return 512;
  }
  return 0;
}
// KVQ_KV_ILP=0|2|3 (read per call; h52, session 6): the per-token builds at G = 1 and G <= 4
// with the key pass's 8-deep mma chain per tile split in two (key_tile_dot's SPLIT,
// stream_kernel's OPT bit 5) and, at 3 (the default: unset or anything else), also the key tile
// loop unrolled by two (bit 4), so a warp has two tiles' conversions and chains to interleave;
// 0: neither (the builds before, for A/B). Why: ncu of int2 MHA batch 1 (H100 2026-11-23) shows
// the warps stalled mostly on fixed-latency dependencies ("wait", 1.85 cycles per issued
// instruction) with issue slots 52-55% busy, and 5-6 blocks per SM (more warps) did not help.
// Measured (H100, 2026-11-23, archive of 2e3f476, one process, same caches, --ab
// KVQ_KV_ILP=0,2,3; notes/s6/results-h52.md): 3 is the fastest or equal in every affected cell,
// llama3-8b int4 b8 5.1-6.7% faster (128K 529.4 -> 493.8 us), b1 2.7-4.4%; int2 MHA b1 1.3-2.1%
// (64K 90.4 -> 88.5 us); int4 MHA within 1%. The 2-bit 384-token builds take 3 too (below:
// int2 MHA b8 4-5% faster). The G = 2 builds (not measured) keep neither.
// Tried and removed: the value tile loop unrolled by two on top of 3 (KVQ_KV_ILP=4 at 1726145):
// llama3-8b int4 5-7% slower than 3 at batch 8 (128K 487.6 -> 520.6 us), the rest within 1%
// (H100 2026-11-23, --ab KVQ_KV_ILP=0,3,4).
int key_ilp() {
  if (const char* e = std::getenv("KVQ_KV_ILP")) {
    if (std::strcmp(e, "0") == 0) return 0;
    if (std::strcmp(e, "2") == 0) return 2;
  }
  return 3;
}
// KVQ_KV_WSM (read per call; h55, session 6): unset or anything but "0" (the default), the G <= 4
// per-token builds of the default key pass (KVQ_KV_ILP=3; 256- and 384-token stages) run the
// softmax per warp (stream_kernel's WS): a warp's scores, weights and value tiles are its own
// key tiles, so a stage needs no block reduction of the maxima, no running sums in shared
// memory and two block barriers fewer; the lanes keep their sums in registers and the warps
// are merged once per block. 0: the block-wide softmax (the builds before). Why: at G = 4 the
// softmax step is 4x MHA's per stage (4 heads x 256 tokens) while the key and value mma work
// per stage is the same, and int2 ran no faster than int4 on llama3-8b (so not bytes).
// Measured (H100, 2026-11-23, archive of 4e446e2 where 1 was opt-in; the same instantiations
// as now, normalized PTX identical; one process, same caches, kvq-kvbench --ab KVQ_KV_WSM=0,1;
// notes/s6/results-h55.md): llama3-8b less time in all 12 cells, int4 b1 10-12% (128K 83.6 ->
// 73.9 us, 57% -> 65% of copy), b8 12-13.5% (128K 494.1 -> 427.5 us, 78% -> 90%, 3.47x fp16);
// int2 b1 14-18% (128K 78.4 -> 64.3 us, 3.06x), b8 18-19% (128K 422.7 -> 347.1 us, 4.28x).
bool warp_softmax() {
  const char* e = std::getenv("KVQ_KV_WSM");
  return e == nullptr || std::strcmp(e, "0") != 0;
}
// Default: 384-token stages where blocks are long (>= 48 stages of 256 tokens in the 256-token
// plan at 4 blocks per SM), else 256. Measured (H100, 2026-11-23, notes/s5/results-h41.md, int2,
// one process, same caches): llama2-7b batch 8 (64-256 stages per block) 384 is 7-10% faster
// than 256 (128K 1171 -> 1077 us) and 512 (3 blocks per SM) in between; at batch 1 (8-32
// stages per block) 384 was 3-7% slower at 32K and 128K, 3% faster at 64K.
int default_stage_2bit(const PackedSide& k, const PackedDecodeArgs& a, int max_len, int sm_count) {
  int span = 0, splits = 0;
  stream_plan(k.kv_heads, a.rows, max_len, 4 * std::max(1, sm_count), kS, &span, &splits);
  return span / kS >= 48 ? 384 : 256;
}

// The folded per-token build for G <= GM at KS tokens per stage. At 2 bits and G <= 4,
// KVQ_KV_OPT=1 (read per call) takes the build with per-value warp reductions, the 4-bit
// G <= 4 build's default (5-9% faster there, run 2 of 2026-11-23); at 2 bits it is an A/B
// not yet run, so the default stays the measured merged build (OPT 3).
template <int BITS, int GM, int KS>
cudaError_t launch_token(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                         int sm_count, float* o, float* ml, cudaStream_t stream) {
  if constexpr (BITS == 2 && GM == 4 && KS != 512) {
    const char* e = std::getenv("KVQ_KV_OPT");
    if (e != nullptr && std::strcmp(e, "1") == 0)
      return launch_stream<BITS, 1, 1, true, GM, false, 0, true, KS, 1>(k, v, a, max_len, sm_count, o, ml, stream);
  }
  constexpr int O = BITS == 4 && GM == 4 ? 1 : 3;  // the build's OPT without the key-pass ILP
  if constexpr (KS == kS && (GM == 1 || GM == 4)) {
    // KVQ_KV_ILP (read per call, default 3): two mma chains per key tile (OPT bit 5) and the
    // key tile loop unrolled by two (bit 4); 2: the chains only; 0: neither.
    const int ilp = key_ilp();
    if (ilp == 2) return launch_stream<BITS, 1, 1, true, GM, false, 0, true, KS, O | 32>(k, v, a, max_len, sm_count, o, ml, stream);
    if (ilp == 3) {
      // G <= 4: the per-warp softmax (OPT bit 6) on this key pass unless KVQ_KV_WSM=0.
      if constexpr (GM == 4)
        if (warp_softmax()) return launch_stream<BITS, 1, 1, true, GM, false, 0, true, KS, O | 112>(k, v, a, max_len, sm_count, o, ml, stream);
      return launch_stream<BITS, 1, 1, true, GM, false, 0, true, KS, O | 48>(k, v, a, max_len, sm_count, o, ml, stream);
    }
  }
  if constexpr (KS == 384 && (GM == 1 || GM == 4)) {
    // The 384-token 2-bit builds (batch 8's long walks) take the default's key pass too
    // (KVQ_KV_ILP=3; 0 or 2: the build before). Measured (H100 2026-11-23, a local build of
    // 1fa23a4 plus this branch as KVQ_KV_ILP=5, --ab KVQ_KV_ILP=3,5,0; the same instantiations as
    // now): llama2-7b int2 b8 4.2-5.0% faster (32K 293.8 -> 281.0 us, 4.88x -> 5.10x fp16; 128K
    // 1088.7 -> 1033.9), llama3-8b int2 b8 within 0.7%.
    if (key_ilp() == 3) {
      if constexpr (GM == 4)  // the per-warp softmax, as at 256 tokens
        if (warp_softmax()) return launch_stream<BITS, 1, 1, true, GM, false, 0, true, KS, O | 112>(k, v, a, max_len, sm_count, o, ml, stream);
      return launch_stream<BITS, 1, 1, true, GM, false, 0, true, KS, O | 48>(k, v, a, max_len, sm_count, o, ml, stream);
    }
  }
  return launch_stream<BITS, 1, 1, true, GM, false, 0, true, KS, O>(k, v, a, max_len, sm_count, o, ml, stream);
}
template <int BITS, int GM>
cudaError_t launch_token_staged(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                                int sm_count, float* o, float* ml, cudaStream_t stream) {
  if constexpr (BITS == 2) {
    int ks = stage_tokens_2bit();
    if (ks == 0) ks = default_stage_2bit(k, a, max_len, sm_count);
    if (ks == 512) return launch_token<BITS, GM, 512>(k, v, a, max_len, sm_count, o, ml, stream);
    if (ks == 384) return launch_token<BITS, GM, 384>(k, v, a, max_len, sm_count, o, ml, stream);
  }
  if constexpr (BITS == 4 && GM == 4) {
    // KVQ_KV_OPT=0|2|3 (read per call): this build without the unrolled staging (bit 0) and / or
    // with the merged reductions (bit 1). Default 1, measured (H100, 2026-11-23, run 2, one
    // process, llama3-8b int4, us at 32K / 64K / 128K): batch 8 OPT 0 (= ce81fd6's code)
    // 158.0 / 287.0 / 546.0, 1: 153.9 / 275.0 / 525.8, 2: 172.5 / 313.1 / 598.6, 3: 166.7 /
    // 302.0 / 576.1; batch 1 OPT 1 fastest too (38.5 / 60.4 / 91.9).
    if (const char* e = std::getenv("KVQ_KV_OPT")) {
      if (std::strcmp(e, "0") == 0)
        return launch_stream<BITS, 1, 1, true, GM, false, 0, true, kS, 0>(k, v, a, max_len, sm_count, o, ml, stream);
      if (std::strcmp(e, "2") == 0)
        return launch_stream<BITS, 1, 1, true, GM, false, 0, true, kS, 2>(k, v, a, max_len, sm_count, o, ml, stream);
      if (std::strcmp(e, "3") == 0)
        return launch_stream<BITS, 1, 1, true, GM, false, 0, true, kS, 3>(k, v, a, max_len, sm_count, o, ml, stream);
    }
    // OPT 1, with the key-pass ILP of KVQ_KV_ILP (launch_token).
  }
  return launch_token<BITS, GM, kS>(k, v, a, max_len, sm_count, o, ml, stream);
}

// KG's keys through the folded conversion (stream_kernel's KKF; h64, session 7) unless
// KVQ_KV_KIVI=1 (read per call: the exact LOP3 + HFMA2 conversion, KG as h61 left it, for A/Bs in
// one process; 2 = the default). Measured (H100, 2026-11-23, archive of 0ed60a9, one process,
// --ab KVQ_KV_KIVI=1,2, llama3-8b b1 / b8 x 32K / 128K x KIVI-4 / -2): KKF faster in all 8 cells,
// 1.009-1.033x (b8 128K KIVI-4 960.5 -> 929.9 us, KIVI-2 911.2 -> 885.9; notes/s7/results-h64.md).
bool kivi_key_fold() {
  const char* e = std::getenv("KVQ_KV_KIVI");
  return e == nullptr || std::strcmp(e, "1") != 0;
}

template <int BITS>
cudaError_t dispatch_stream(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                            int sm_count, float* o, float* ml, cudaStream_t stream) {
  const int G = a.n_heads / k.kv_heads;
  const int ntk = (G * (kD / k.group) + 7) / 8, ntv = (2 * G * (kD / v.group) + 7) / 8;
  if (k.format == KvFormat::kChannelAsym) {  // KIVI (kivi_fits: G <= 2 with 2 G * 128/value group <= 16, or KG)
    // KG (h61, session 7): G = 3..4, 32-channel value groups, a value n-tile per group.
    if (v.group == 32 && G > 2) {
      if (kivi_key_fold())  // KG with the folded key conversion (KKF, h64), unless KVQ_KV_KIVI=1
        return launch_stream<BITS, 1, 1, false, 4, true, 4, true, kS, 3 | 128>(k, v, a, max_len, sm_count, o, ml,
                                                                               stream);
      return launch_stream<BITS, 1, 1, false, 4, true, 4>(k, v, a, max_len, sm_count, o, ml, stream);
    }
    if (v.group == 32 && G == 1) return launch_stream<BITS, 1, 1, false, 1, true, 4>(k, v, a, max_len, sm_count, o, ml, stream);
    if (v.group == 32) return launch_stream<BITS, 1, 2, false, 2, true, 4>(k, v, a, max_len, sm_count, o, ml, stream);
    if (G == 1 && ntv == 1) return launch_stream<BITS, 1, 1, false, 1, true>(k, v, a, max_len, sm_count, o, ml, stream);
    if (ntv == 1) return launch_stream<BITS, 1, 1, false, 2, true>(k, v, a, max_len, sm_count, o, ml, stream);
    return launch_stream<BITS, 1, 2, false, 2, true>(k, v, a, max_len, sm_count, o, ml, stream);
  }
  if (k.format != KvFormat::kChannelAsym && k.group == kD && v.group == kD) {  // default per-token codes
    if (!fold_codes()) {  // KVQ_KV_FOLD=0: the exact LOP3 + HFMA2 conversion (for comparison)
      if (G == 1) return launch_stream<BITS, 1, 1, true, 1, false, 0, false>(k, v, a, max_len, sm_count, o, ml, stream);
      if (G == 2) return launch_stream<BITS, 1, 1, true, 2, false, 0, false>(k, v, a, max_len, sm_count, o, ml, stream);
      if (G <= 4) return launch_stream<BITS, 1, 1, true, 4, false, 0, false>(k, v, a, max_len, sm_count, o, ml, stream);
      return launch_stream<BITS, 1, 2, true, 8, false, 0, false>(k, v, a, max_len, sm_count, o, ml, stream);
    }
    if (G == 1) return launch_token_staged<BITS, 1>(k, v, a, max_len, sm_count, o, ml, stream);
    if (G == 2) return launch_token_staged<BITS, 2>(k, v, a, max_len, sm_count, o, ml, stream);
    if (G <= 4) return launch_token_staged<BITS, 4>(k, v, a, max_len, sm_count, o, ml, stream);
    return launch_stream<BITS, 1, 2, true, 8>(k, v, a, max_len, sm_count, o, ml, stream);
  }
  if (ntk == 1 && ntv == 1) return launch_stream<BITS, 1, 1, false, 8>(k, v, a, max_len, sm_count, o, ml, stream);
  if (ntk == 1) return launch_stream<BITS, 1, 2, false, 8>(k, v, a, max_len, sm_count, o, ml, stream);
  if (ntv == 1) return launch_stream<BITS, 2, 1, false, 8>(k, v, a, max_len, sm_count, o, ml, stream);
  // Two n-tiles each way: unfolded (folded, ptxas spilled 28-32 bytes at 168 registers; the
  // unfolded build spills 0 at 2 bits, 4 bytes at 4 bits, as before).
  return launch_stream<BITS, 2, 2, false, 8, false, 0, false>(k, v, a, max_len, sm_count, o, ml, stream);
}

// KVQ_KV_KIVI (read per call; h61, session 7): unset or anything but "0", KIVI at G = 3..4 with
// 32-channel value groups runs on stream_kernel's KG build (1: with the exact key conversion,
// else the folded one, kivi_key_fold() above); 0: those pairs are not served here
// (kv_decode_attention falls back to the CUDA-core kernels, the only path before). Measured (H100,
// 2026-11-23, archive of 446d5c7, one process --ab KVQ_KV_KIVI=0,1, llama3-8b 32K-128K): KG 1.7-3.1x
// faster in all 12 cells (KIVI-4 b8 128K 3029.7 -> 970.1 us, b1 32K 151.6 -> 90.0 us).
bool kivi_gqa_on() {
  const char* e = std::getenv("KVQ_KV_KIVI");
  return e == nullptr || std::strcmp(e, "0") != 0;
}

// KIVI (version 4 only): per-channel keys in token groups of 16..256 dividing the stage,
// per-token values, one residual length R on both sides; G <= 2 (the value side's
// 2 G * 128/value group B columns: KIVI's default 32-channel value groups give 8 G <= 16), or
// G = 3..4 with 32-channel value groups (the KG build: one n-tile per value group).
bool kivi_fits(const PackedSide& k, const PackedSide& v, int G) {
  if (k.format != KvFormat::kChannelAsym || v.format != KvFormat::kTokenAsym) return false;
  if (k.n_sink > 0 || k.outliers || k.inv_s || k.lut || v.n_sink > 0 || v.outliers || v.inv_s || v.lut) return false;
  if (k.head_dim != kD || v.head_dim != kD || (k.bits != 2 && k.bits != 4)) return false;
  if (k.group < 16 || k.group % 16 != 0 || kS % k.group != 0) return false;
  if (k.resid_cap <= 0 || k.resid_cap > 4096 || k.resid_cap % k.group != 0 || v.resid_cap != k.resid_cap) return false;
  if (v.group < 16 || v.group > kD || kD % v.group != 0) return false;
  if (G <= 2) return 2 * G * (kD / v.group) <= kMaxCols;
  // KG (stream_kernel): G = 3..4 with KIVI's 32-channel value groups, unless KVQ_KV_KIVI=0
  // (read per call: the CUDA-core kernels there, as before session 7, for A/Bs in one process).
  return G <= 4 && v.group == 32 && v.mpr == 2 * (kD / 32) && kivi_gqa_on();  // KG reads 8 meta halves a token
}

}  // namespace

bool stream_kivi_fits(const PackedSide& k, const PackedSide& v, int G) { return kivi_fits(k, v, G); }

int stream_max_splits(int max_len) { return (std::max(max_len, 1) + kS - 1) / kS + 1; }  // + 1: KIVI's tail

cudaError_t stream_run(const PackedSide& k, const PackedSide& v, const PackedDecodeArgs& a, int max_len,
                       int sm_count, float* part_o, float* part_ml, cudaStream_t stream) {
  if (k.bits == 4) return dispatch_stream<4>(k, v, a, max_len, sm_count, part_o, part_ml, stream);
  return dispatch_stream<2>(k, v, a, max_len, sm_count, part_o, part_ml, stream);
}

}  // namespace kvq::kern::mma_decode
