// Append / quantize kernels of the packed KV cache (layout: kernels/kv_ops.cuh). Every code,
// scale, zero and outlier record is computed with the rules of kernels/kv_layout.h exactly
// as the CPU reference codecs (lib/codecs/) compute them: fp32 min/max with std::min/max
// semantics (kvlayout::seq_min/seq_max: the first of equal values wins, -0 vs +0), one
// IEEE fp32 division for the scale (nvcc's default -prec-div=true; never --use_fast_math),
// __float2half_rn for the stored binary16 values (round half to even, like
// kvq::float_to_half), the reciprocal of the *stored* scale, nearbyintf (cvt.rni).
// tests/gpu/kv_packed_test.cpp compares the packed bytes with the CPU's bit for bit.
//
// Work split: token formats, one thread per (token, head) (it owns the row's code words,
// which start zeroed, so it ORs them in without atomics); KIVI keys, one thread per
// (token group, head, channel), atomicOr into shared code words; KVQuant, one warp per
// (token, head): top-k ranks and CSR positions by warp ballots, records placed by a block
// scan of the per-token counts.
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/common.cuh"
#include "kernels/kv_codes.cuh"
#include "kernels/kv_ops.cuh"

namespace kvq::kern {
namespace {

using kvlayout::Outlier;

// Value of channel i of token j as the encoder sees it: from the fp16 ring when the token
// was appended earlier (j < old_len), else from the new rows; windowed codecs round to fp16
// first (the CPU reference's window holds fp16); smoothing last.
struct Source {
  const float* rows;
  int64_t ld;
  int64_t old_len;
  bool round16;
  __device__ float get(const PackedSide& p, int slot, int h, int64_t j, int i) const {
    float x;
    if (j < old_len) {
      const int64_t sh = static_cast<int64_t>(slot) * p.kv_heads + h;
      x = h2f(p.resid[(sh * p.resid_cap + j % p.resid_cap) * p.head_dim + i]);
    } else {
      x = rows[(j - old_len) * ld + h * p.head_dim + i];
      if (round16) x = h2f(f2h(x));
    }
    if (p.inv_s) {
      const int c = h * p.head_dim + i;
      x = (x - p.delta[c]) * p.inv_s[c];
    }
    return x;
  }
};

// Per-token groups, tokens [j0, j1): thread per (token, head).
__global__ void token_groups_kernel(PackedSide p, int slot, Source src, int64_t j0, int64_t j1) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t count = (j1 - j0) * p.kv_heads;
  if (idx >= count) return;
  const int64_t j = j0 + idx / p.kv_heads;
  const int h = static_cast<int>(idx % p.kv_heads);
  const int64_t row = (static_cast<int64_t>(slot) * p.kv_heads + h) * p.max_tokens + j;
  uint32_t* w = p.codes + row * p.wpr;
  uint16_t* meta = p.meta + row * p.mpr;
  const bool sym = p.format == KvFormat::kTokenSym;
  for (int g0 = 0, gi = 0; g0 < p.head_dim; g0 += p.group, ++gi) {
    auto x = [&](int i) { return src.get(p, slot, h, j, i); };  // channel i of token j
    if (sym) {
      const SymParams q = sym_params_of(g0, g0 + p.group, p.bits, x);
      meta[gi] = q.sh;
      for (int i = g0; i < g0 + p.group; ++i)
        kvlayout::put_code(w, p.bits, i, kvlayout::quantize_sym(x(i), q.inv, p.bits));
    } else {
      const AsymParams q = asym_params_of(g0, g0 + p.group, p.bits, x);
      meta[2 * gi] = q.sh;
      meta[2 * gi + 1] = q.zh;
      for (int i = g0; i < g0 + p.group; ++i)
        kvlayout::put_code(w, p.bits, i, kvlayout::quantize_asym(x(i), q.zf, q.inv, p.bits));
    }
  }
}

// Per-channel groups of G tokens, tokens [j0, j1) (a multiple of G): thread per
// (group, head, channel).
__global__ void channel_groups_kernel(PackedSide p, int slot, Source src, int64_t j0, int64_t j1) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t groups = (j1 - j0) / p.group;
  if (idx >= groups * p.kv_heads * p.head_dim) return;
  const int i = static_cast<int>(idx % p.head_dim);
  const int h = static_cast<int>((idx / p.head_dim) % p.kv_heads);
  const int64_t gl = idx / (static_cast<int64_t>(p.head_dim) * p.kv_heads);
  const int64_t t0 = j0 + gl * p.group;
  const AsymParams q =
      asym_params_of(t0, t0 + p.group, p.bits, [&](int64_t t) { return src.get(p, slot, h, t, i); });
  const int64_t sh_idx = static_cast<int64_t>(slot) * p.kv_heads + h;
  uint16_t* cm = p.cmeta + ((sh_idx * (p.max_tokens / p.group) + t0 / p.group) * p.head_dim + i) * 2;
  cm[0] = q.sh;
  cm[1] = q.zh;
  const int bit_in_row = i * p.bits;
  for (int64_t t = t0; t < t0 + p.group; ++t)
    atomic_put_code(p.codes + (sh_idx * p.max_tokens + t) * p.wpr, bit_in_row, p.bits,
                    kvlayout::quantize_asym(src.get(p, slot, h, t, i), q.zf, q.inv, p.bits));
}

// Moves new tokens [j0, j1) (all from rows) into the fp16 ring: thread per element.
__global__ void ring_kernel(PackedSide p, int slot, const float* rows, int64_t ld, int64_t old_len,
                            int64_t j0, int64_t j1) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int64_t per_tok = static_cast<int64_t>(p.kv_heads) * p.head_dim;
  if (idx >= (j1 - j0) * per_tok) return;
  const int64_t j = j0 + idx / per_tok;
  const int c = static_cast<int>(idx % per_tok);
  const int h = c / p.head_dim, i = c % p.head_dim;
  const int64_t sh = static_cast<int64_t>(slot) * p.kv_heads + h;
  p.resid[(sh * p.resid_cap + j % p.resid_cap) * p.head_dim + i] = f2h(rows[(j - old_len) * ld + c]);
}

// KVQuant: one warp per (token, head). mode 0: sinks, counts of outliers into cnt[t * H + h];
// mode 1: codes, metadata and outlier records (offsets from the scan).
constexpr int kLutMaxChunks = kMaxHeadDim / 32;

__global__ void kvquant_kernel(PackedSide p, int slot, const float* rows, int64_t ld,
                               int64_t old_len, int n, int mode, uint32_t* cnt) {
  const int warp_global = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp_global >= n * p.kv_heads) return;
  const int t = warp_global / p.kv_heads, h = warp_global % p.kv_heads;
  const int64_t j = old_len + t;
  const int hd = p.head_dim;
  const int64_t sh = static_cast<int64_t>(slot) * p.kv_heads + h;
  const float* xr = rows + t * ld + h * hd;
  float x[kLutMaxChunks];
#pragma unroll
  for (int k = 0; k < kLutMaxChunks; ++k) {
    const int i = k * 32 + lane;
    x[k] = i < hd ? xr[i] : 0.f;
  }
  if (j < p.n_sink) {
    if (mode == 0) {
      for (int i = lane; i < hd; i += 32) p.sink[(sh * p.n_sink + j) * hd + i] = f2h(xr[i]);
      if (lane == 0 && p.outliers) cnt[t * p.kv_heads + h] = 0;
    }
    return;
  }
  // Outlier mask per chunk of 32 channels (ballot bits).
  uint32_t mask[kLutMaxChunks];
  const bool key = p.format == KvFormat::kLutChannel;
#pragma unroll
  for (int k = 0; k < kLutMaxChunks; ++k) {
    const int i = k * 32 + lane;
    bool out = false;
    if (key && p.outliers && i < hd) {
      const int64_t c = slot * p.range_stride + h * hd + i;
      out = x[k] < p.lo[c] || x[k] > p.hi[c];
    }
    mask[k] = __ballot_sync(0xffffffffu, out);
  }
  if (!key && p.outliers) {
    // Top-k of |x| in the order of a stable descending sort (ties: lower channel first):
    // k rounds of a warp arg-max over the entries not yet taken.
    for (int round = 0; round < p.topk; ++round) {
      float best = -1.f;
      int bi = 1 << 30;
#pragma unroll
      for (int k = 0; k < kLutMaxChunks; ++k) {
        const int i = k * 32 + lane;
        const float a = fabsf(x[k]);
        if (i < hd && !((mask[k] >> lane) & 1u) && (a > best || (a == best && i < bi))) {
          best = a;
          bi = i;
        }
      }
      bi = warp_argmax_first({best, bi}).i;
#pragma unroll
      for (int k = 0; k < kLutMaxChunks; ++k)  // same on every lane; constant indices
        if (bi < hd && (bi >> 5) == k) mask[k] |= 1u << (bi & 31);
    }
  }
  uint32_t total = 0;
#pragma unroll
  for (int k = 0; k < kLutMaxChunks; ++k) total += __popc(mask[k]);
  if (mode == 0) {
    if (lane == 0 && p.outliers) cnt[t * p.kv_heads + h] = total;
    return;
  }
  const int L = 1 << p.bits;
  uint32_t* w = p.codes + (sh * p.max_tokens + j) * p.wpr;
  float mid = 0.f, inv_half = 0.f;
  if (!key) {
    // The CPU scans channels 0..hd-1 with std::min/max: the first of equal values wins
    // (signed zeros). Each lane scans its channels in increasing order, then the tree
    // keeps, among equal values, the one of the lower channel index.
    float mn = INFINITY, mx = -INFINITY;
    int mn_i = 1 << 30, mx_i = 1 << 30;
#pragma unroll
    for (int k = 0; k < kLutMaxChunks; ++k)
      if (k * 32 + lane < hd && !((mask[k] >> lane) & 1u)) {
        if (x[k] < mn || mn_i == (1 << 30)) { mn = x[k]; mn_i = k * 32 + lane; }
        if (mx < x[k] || mx_i == (1 << 30)) { mx = x[k]; mx_i = k * 32 + lane; }
      }
    const MinMaxAt m = warp_minmax_first({{mn, mn_i}, {mx, mx_i}});
    mn = m.mn.v;
    mx = m.mx.v;
    if (mn > mx) mn = mx = 0.f;  // every entry an outlier
    const uint16_t mh = f2h(0.5f * (mx + mn)), hh = f2h(0.5f * (mx - mn));
    if (lane == 0) {
      uint16_t* meta = p.meta + (sh * p.max_tokens + j) * p.mpr;
      meta[0] = mh;
      meta[1] = hh;
    }
    mid = h2f(mh);
    inv_half = kvlayout::safe_inverse(h2f(hh));
  }
  uint32_t base = 0;
  if (p.outliers) base = p.off[sh * (static_cast<int64_t>(p.max_tokens) + 1) + j];
  uint32_t before = 0;  // outliers in earlier chunks
#pragma unroll
  for (int k = 0; k < kLutMaxChunks; ++k) {
    const int i = k * 32 + lane;
    if (i < hd) {
      float u;
      if (key) {
        const int64_t c = slot * p.range_stride + h * hd + i;
        u = kvlayout::clampf((x[k] - p.kmid[c]) * kvlayout::safe_inverse(p.khalf[c]), -1.f, 1.f);
      } else {
        u = kvlayout::clampf((x[k] - mid) * inv_half, -1.f, 1.f);
      }
      const uint32_t code = kvlayout::quantize_lut(u, p.lut, L);
      atomic_put_code(w, i * p.bits, p.bits, code);
      if ((mask[k] >> lane) & 1u) {
        const uint32_t r = base + before + __popc(mask[k] & ((1u << lane) - 1u));
        if (r < p.out_cap) {
          p.rec[sh * p.out_cap + r] = Outlier{static_cast<uint16_t>(h * hd + i), f2h(x[k])};
        } else {
          *p.overflow = 1;
        }
      }
    }
    before += __popc(mask[k]);
  }
}

// Exclusive scan of cnt[t * H + h] over t for each head into off[j0 + t + 1] (block per head).
constexpr int kScanThreads = 1024;
__global__ void __launch_bounds__(kScanThreads)
scan_kernel(PackedSide p, int slot, int n, int64_t j0, const uint32_t* cnt) {
  __shared__ uint32_t part[kScanThreads];
  const int h = blockIdx.x;
  const int64_t sh = static_cast<int64_t>(slot) * p.kv_heads + h;
  uint32_t* off = p.off + sh * (static_cast<int64_t>(p.max_tokens) + 1);
  const int per = (n + kScanThreads - 1) / kScanThreads;
  const int a = threadIdx.x * per, b = min(n, a + per);
  uint32_t s = 0;
  for (int t = a; t < b; ++t) s += cnt[t * p.kv_heads + h];
  part[threadIdx.x] = s;
  __syncthreads();
  for (int d = 1; d < kScanThreads; d <<= 1) {  // inclusive Hillis-Steele
    const uint32_t v = threadIdx.x >= d ? part[threadIdx.x - d] : 0u;
    __syncthreads();
    part[threadIdx.x] += v;
    __syncthreads();
  }
  uint32_t run = off[j0] + (threadIdx.x > 0 ? part[threadIdx.x - 1] : 0u);
  for (int t = a; t < b; ++t) {
    run += cnt[t * p.kv_heads + h];
    off[j0 + t + 1] = run;
  }
  if (threadIdx.x == kScanThreads - 1 && run > p.out_cap) *p.overflow = 1;
}

__global__ void fill_kernel(float* dst, int64_t count, int cols, uint64_t seed, float scale,
                            int period, float outlier) {
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < count;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    uint64_t z = seed * 0x9e3779b97f4a7c15ull + static_cast<uint64_t>(i) + 1;
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    z ^= z >> 31;
    const float u = static_cast<float>(z >> 40) * (1.0f / 8388608.0f) - 1.0f;  // [-1, 1)
    const int c = static_cast<int>(i % cols);
    dst[i] = u * scale * ((period > 0 && c % period == 0) ? outlier : 1.0f);
  }
}

// Reads n 16-byte words (default caching: every line is allocated in L2, clean) and folds
// them into one XOR that is stored only if it equals a constant no scrub buffer holds (the
// buffer is zeroed once), so the loads stay and nothing but one word is ever written.
__global__ void l2_scrub_kernel(const uint4* buf, int64_t n, unsigned* sink) {
  unsigned x = 0;
  for (int64_t i = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x; i < n;
       i += static_cast<int64_t>(gridDim.x) * blockDim.x) {
    const uint4 w = buf[i];
    x ^= w.x ^ w.y ^ w.z ^ w.w;
  }
  if (x == 0x9e3779b9u) *sink = x;
}

unsigned grid_for(int64_t threads, int block) {
  return static_cast<unsigned>((threads + block - 1) / block);
}

}  // namespace

cudaError_t kv_append(const PackedSide& p, int slot, const float* rows, int n, int64_t ld,
                      int64_t old_len, void* scratch, cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (p.head_dim > kMaxHeadDim || old_len + n > p.max_tokens || slot < 0 || slot >= p.slots)
    return cudaErrorInvalidValue;
  const int64_t new_len = old_len + n;
  constexpr int kBlock = 256;
  switch (p.format) {
    case KvFormat::kTokenAsym:
    case KvFormat::kTokenSym: {
      const bool window = p.resid_cap > 0;
      Source src{rows, ld, old_len, window};
      int64_t j0 = old_len, j1 = new_len;
      if (window) {
        j0 = old_len > p.resid_cap ? old_len - p.resid_cap : 0;
        j1 = new_len > p.resid_cap ? new_len - p.resid_cap : 0;
      }
      if (j1 > j0) {
        token_groups_kernel<<<grid_for((j1 - j0) * p.kv_heads, kBlock), kBlock, 0, stream>>>(p, slot, src, j0, j1);
        if (cudaError_t e = launch_status(); e != cudaSuccess) return e;
      }
      if (window) {
        const int64_t r0 = std::max(old_len, new_len - p.resid_cap);
        if (new_len > r0) {
          ring_kernel<<<grid_for((new_len - r0) * p.kv_heads * p.head_dim, kBlock), kBlock, 0, stream>>>(
              p, slot, rows, ld, old_len, r0, new_len);
          return launch_status();
        }
      }
      return cudaSuccess;
    }
    case KvFormat::kChannelAsym: {
      if (p.resid_cap <= 0 || p.resid_cap % p.group != 0) return cudaErrorInvalidValue;
      Source src{rows, ld, old_len, true};
      const int64_t j0 = old_len / p.resid_cap * p.resid_cap, j1 = new_len / p.resid_cap * p.resid_cap;
      if (j1 > j0) {
        const int64_t threads = (j1 - j0) / p.group * p.kv_heads * p.head_dim;
        channel_groups_kernel<<<grid_for(threads, kBlock), kBlock, 0, stream>>>(p, slot, src, j0, j1);
        if (cudaError_t e = launch_status(); e != cudaSuccess) return e;
      }
      const int64_t r0 = std::max(old_len, j1);
      if (new_len > r0) {
        ring_kernel<<<grid_for((new_len - r0) * p.kv_heads * p.head_dim, kBlock), kBlock, 0, stream>>>(
            p, slot, rows, ld, old_len, r0, new_len);
        return launch_status();
      }
      return cudaSuccess;
    }
    case KvFormat::kLutChannel:
    case KvFormat::kLutToken: {
      uint32_t* cnt = static_cast<uint32_t*>(scratch);
      const unsigned blocks = grid_for(static_cast<int64_t>(n) * p.kv_heads * 32, kBlock);
      kvquant_kernel<<<blocks, kBlock, 0, stream>>>(p, slot, rows, ld, old_len, n, 0, cnt);
      if (cudaError_t e = launch_status(); e != cudaSuccess) return e;
      if (p.outliers) {
        scan_kernel<<<p.kv_heads, kScanThreads, 0, stream>>>(p, slot, n, old_len, cnt);
        if (cudaError_t e = launch_status(); e != cudaSuccess) return e;
      }
      kvquant_kernel<<<blocks, kBlock, 0, stream>>>(p, slot, rows, ld, old_len, n, 1, cnt);
      return launch_status();
    }
  }
  return cudaErrorInvalidValue;
}

cudaError_t kv_fill_random(float* dst, int64_t rows, int cols, uint64_t seed, float scale,
                           int period, float outlier, cudaStream_t stream) {
  const int64_t count = rows * cols;
  if (count <= 0) return cudaSuccess;
  fill_kernel<<<blocks_for(static_cast<size_t>(count), 256), 256, 0, stream>>>(
      dst, count, cols, seed, scale, period, outlier);
  return launch_status();
}

cudaError_t kv_l2_scrub(const void* buf, size_t bytes, unsigned* sink, cudaStream_t stream) {
  const int64_t n = static_cast<int64_t>(bytes / sizeof(uint4));
  if (n <= 0) return cudaSuccess;
  l2_scrub_kernel<<<blocks_for(static_cast<size_t>(n), 256), 256, 0, stream>>>(
      static_cast<const uint4*>(buf), n, sink);
  return launch_status();
}

}  // namespace kvq::kern
