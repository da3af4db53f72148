// Append / quantize kernels of the packed caches of kernels/kv_more.cuh (fp16, q8_0, q4_0,
// fp8, intB axis=channel, Hadamard, MiKV). Every stored byte follows the rule its CPU
// reference (lib/codecs/*.cpp) follows, with the helpers of kernels/kv_layout.h: fp32
// min/max/amax (order-free), IEEE fp32 divisions (nvcc's default -prec-div=true, never
// --use_fast_math), __float2half_rn for binary16 (round half to even, like
// kvq::float_to_half), llama.cpp's own rounding for q8_0 / q4_0. The Walsh-Hadamard
// transform combines the same pairs in the same stage order as hadamard.cpp's fwht, so
// every intermediate is the same fp32 sum. tests/gpu/kv_more_test.cpp compares bytes.
//
// Work split: element-wise formats (fp16, fp8), one thread per value; q8_0 / q4_0, one warp
// per 32-value block (lane = element); intB axis=channel, one thread per (group, head,
// channel), codes ORed atomically into words zeroed first; Hadamard and MiKV, one warp per
// (token, head), lane holding channels lane, lane + 32, ... (the transform's strides < 32
// by shuffles, >= 32 inside the lane).
#include <cuda_fp16.h>

#include <algorithm>

#include "kernels/common.cuh"
#include "kernels/kv_codes.cuh"
#include "kernels/kv_more.cuh"

namespace kvq::kern {
namespace {

constexpr int kChunks = kMaxHeadDim / 32;  // channels per lane in warp-per-row kernels

__device__ __forceinline__ int64_t rec_index(const MoreSide& p, int slot, int h, int64_t j) {
  return (static_cast<int64_t>(slot) * p.kv_heads + h) * p.max_tokens + j;
}

unsigned grid_for(int64_t threads, int block) {
  return static_cast<unsigned>((threads + block - 1) / block);
}

// fp16 / fp8: one thread per value of the new rows.
__global__ void elementwise_kernel(MoreSide p, int slot, const float* rows, int n, int64_t ld,
                                   int64_t old_len) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int dim = p.kv_heads * p.head_dim;
  if (idx >= static_cast<int64_t>(n) * dim) return;
  const int64_t t = idx / dim;
  const int c = static_cast<int>(idx % dim), h = c / p.head_dim, i = c % p.head_dim;
  const float x = rows[t * ld + c];
  const int64_t rec = rec_index(p, slot, h, old_len + t);
  if (p.format == MoreFormat::kF16) {
    reinterpret_cast<uint16_t*>(p.data + rec * p.row_bytes)[i] = f2h(x);
  } else {
    const float y = x * p.inv_scale[slot * p.kv_heads + h];  // fp8.cpp: rows[i] * inv[h]
    p.data[rec * p.row_bytes + i] = p.e5m2 ? kvlayout::float_to_e5m2(y) : kvlayout::float_to_e4m3(y);
  }
}

// q8_0 / q4_0: one warp per block of 32 values (token, head, block).
__global__ void ggml_kernel(MoreSide p, int slot, const float* rows, int n, int64_t ld,
                            int64_t old_len) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  const int per_head = p.head_dim / 32;
  if (warp >= static_cast<int64_t>(n) * p.kv_heads * per_head) return;
  const int b = static_cast<int>(warp % per_head);
  const int h = static_cast<int>((warp / per_head) % p.kv_heads);
  const int64_t t = warp / (static_cast<int64_t>(per_head) * p.kv_heads);
  const float x = rows[t * ld + h * p.head_dim + b * 32 + lane];
  const int64_t rec = rec_index(p, slot, h, old_len + t);
  if (p.format == MoreFormat::kQ8_0) {
    const float amax = warp_max(fabsf(x));
    const float d = amax / 127.0f;
    const float id = d != 0.0f ? 1.0f / d : 0.0f;
    reinterpret_cast<int8_t*>(p.data + rec * p.row_bytes)[b * 32 + lane] = kvlayout::q8_0_code(x, id);
    if (lane == 0) p.meta[rec * p.mpr + b] = f2h(d);
    return;
  }
  // q4_0: the value of largest magnitude, the first one on ties (ggml's strict '<' scan).
  const ValueAt a = warp_argmax_first({fabsf(x), lane});
  // All zero: ggml's max stays +0.0 (never taken from a -0.0 element), so d = -0.0.
  const float mx = a.v > 0.f ? __shfl_sync(0xffffffffu, x, a.i) : 0.0f;
  const float d = mx / -8.0f;
  const float id = d != 0.0f ? 1.0f / d : 0.0f;
  const uint32_t q = kvlayout::q4_0_code(x, id);
  const uint32_t hiq = __shfl_down_sync(0xffffffffu, q, 16);
  if (lane < 16) p.data[rec * p.row_bytes + b * 16 + lane] = static_cast<uint8_t>(q | (hiq << 4));
  if (lane == 0) p.meta[rec * p.mpr + b] = f2h(d);
}

// fp8 scales: one block per head, amax over the append's rows.
__global__ void fp8_scale_kernel(MoreSide p, int slot, const float* rows, int n, int64_t ld) {
  __shared__ float red[32];
  const int h = blockIdx.x, hd = p.head_dim;
  float m = 0.f;
  for (int64_t i = threadIdx.x; i < static_cast<int64_t>(n) * hd; i += blockDim.x)
    m = fmaxf(m, fabsf(rows[(i / hd) * ld + h * hd + i % hd]));
  m = warp_max(m);
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = m;
  __syncthreads();
  if (threadIdx.x < 32) {
    m = threadIdx.x < (blockDim.x >> 5) ? red[threadIdx.x] : 0.f;
    m = warp_max(m);
    if (threadIdx.x == 0) {
      const float fmax = p.e5m2 ? kvlayout::kE5M2Max : kvlayout::kE4M3Max;
      const float s = m > 0.f ? m / fmax : 1.0f;
      p.scale[slot * p.kv_heads + h] = s;
      p.inv_scale[slot * p.kv_heads + h] = 1.0f / s;
    }
  }
}

// Value of channel i of token j as the windowed encoders see it: the fp16 ring for tokens
// appended earlier, else the new row rounded to fp16 (the CPU window holds fp16).
__device__ __forceinline__ float windowed(const MoreSide& p, int slot, int h, int64_t j, int i,
                                          const float* rows, int64_t ld, int64_t old_len) {
  if (j < old_len) {
    const int64_t sh = static_cast<int64_t>(slot) * p.kv_heads + h;
    const int cap = p.format == MoreFormat::kChannel ? p.group : p.ring_cap;
    return h2f(p.ring[(sh * cap + j % cap) * p.head_dim + i]);
  }
  return h2f(f2h(rows[(j - old_len) * ld + h * p.head_dim + i]));
}

// Zeroes the code words of tokens [j0, j1) of every head (records re-encoded by atomicOr).
__global__ void zero_rows_kernel(MoreSide p, int slot, int64_t j0, int64_t j1) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int wpr = p.row_bytes / 4;
  const int64_t per_head = (j1 - j0) * wpr;
  if (idx >= per_head * p.kv_heads) return;
  const int h = static_cast<int>(idx / per_head);
  const int64_t r = idx % per_head;
  reinterpret_cast<uint32_t*>(p.data + rec_index(p, slot, h, j0) * p.row_bytes)[r] = 0u;
}

// intB axis=channel: thread per (group, head, channel) over groups starting at g0 tokens;
// each group holds min(group, new_len - start) tokens (the last one may be incomplete).
__global__ void channel_kernel(MoreSide p, int slot, const float* rows, int64_t ld,
                               int64_t old_len, int64_t new_len, int64_t g0, int64_t groups) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  if (idx >= groups * p.kv_heads * p.head_dim) return;
  const int i = static_cast<int>(idx % p.head_dim);
  const int h = static_cast<int>((idx / p.head_dim) % p.kv_heads);
  const int64_t t0 = g0 + (idx / (static_cast<int64_t>(p.head_dim) * p.kv_heads)) * p.group;
  const int64_t t1 = min(t0 + p.group, new_len);
  const int64_t sh = static_cast<int64_t>(slot) * p.kv_heads + h;
  const int per = p.sym ? 1 : 2;
  uint16_t* cm = p.cmeta + ((sh * (p.max_tokens / p.group) + t0 / p.group) * p.head_dim + i) * per;
  auto value = [&](int64_t t) { return windowed(p, slot, h, t, i, rows, ld, old_len); };
  float inv, zf = 0.f;
  if (p.sym) {  // chunked.cpp quantize_group_sym
    const SymParams q = sym_params_of(t0, t1, p.bits, value);
    cm[0] = q.sh;
    inv = q.inv;
  } else {  // quantize_group_asym (std::min / std::max, in the CPU's order)
    const AsymParams q = asym_params_of(t0, t1, p.bits, value);
    cm[0] = q.sh;
    cm[1] = q.zh;
    inv = q.inv;
    zf = q.zf;
  }
  const int bit = i * p.bits;
  for (int64_t t = t0; t < t1; ++t) {
    const float x = value(t);
    const uint32_t q = p.sym ? kvlayout::quantize_sym(x, inv, p.bits)
                             : kvlayout::quantize_asym(x, zf, inv, p.bits);
    atomic_put_code(reinterpret_cast<uint32_t*>(p.data + rec_index(p, slot, h, t) * p.row_bytes), bit,
                    p.bits, q);
  }
}

// New tokens [j0, j1) (from rows) into the fp16 ring of `cap` entries: thread per value.
__global__ void ring_kernel(MoreSide p, int slot, const float* rows, int64_t ld, int64_t old_len,
                            int64_t j0, int64_t j1, int cap) {
  const int64_t idx = blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x;
  const int dim = p.kv_heads * p.head_dim;
  if (idx >= (j1 - j0) * dim) return;
  const int64_t j = j0 + idx / dim;
  const int c = static_cast<int>(idx % dim), h = c / p.head_dim, i = c % p.head_dim;
  const int64_t sh = static_cast<int64_t>(slot) * p.kv_heads + h;
  p.ring[(sh * cap + j % cap) * p.head_dim + i] = f2h(rows[(j - old_len) * ld + c]);
}

// Uniform asymmetric quantization of the warp's head row x (lane holds channels k*32+lane)
// into packed codes (words zeroed beforehand) and (scale, zero) at meta. The min and max are
// the CPU's sequential std::min / std::max: among equal values (+0.0 and -0.0 compare equal
// but store as different fp16 zeros) the first channel's, so the tree carries indices.
__device__ void warp_quantize_asym(const float (&x)[kChunks], int hd, int bits, uint32_t* w,
                                   uint16_t* meta, int lane) {
  // Lane < hd starts from its channel `lane`; idle lanes (hd < 32) are neutral (finite
  // inputs always beat the infinities).
  const bool idle = lane >= hd;
  float mn = idle ? INFINITY : x[0], mx = idle ? -INFINITY : x[0];
  int ni = idle ? 1 << 30 : lane, xi = ni;
#pragma unroll
  for (int k = 1; k < kChunks; ++k)
    if (k * 32 + lane < hd) {
      if (x[k] < mn) { mn = x[k]; ni = k * 32 + lane; }
      if (mx < x[k]) { mx = x[k]; xi = k * 32 + lane; }
    }
  const MinMaxAt m = warp_minmax_first({{mn, ni}, {mx, xi}});
  const AsymParams a = asym_params(m.mn.v, m.mx.v, bits);
  if (lane == 0) {
    meta[0] = a.sh;
    meta[1] = a.zh;
  }
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int i = k * 32 + lane;
    if (i < hd) atomic_put_code(w, i * bits, bits, kvlayout::quantize_asym(x[k], a.zf, a.inv, bits));
  }
}

// Hadamard: warp per new (token, head).
__global__ void hadamard_kernel(MoreSide p, int slot, const float* rows, int n, int64_t ld,
                                int64_t old_len) {
  const int warp = (blockIdx.x * blockDim.x + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= n * p.kv_heads) return;
  const int t = warp / p.kv_heads, h = warp % p.kv_heads, hd = p.head_dim;
  float x[kChunks];
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int i = k * 32 + lane;
    x[k] = i < hd ? rows[static_cast<int64_t>(t) * ld + h * hd + i] * p.signs[i] : 0.f;
  }
  // fwht: stage `len` pairs (j, j + len) for j with bit len clear: a + b and a - b.
  for (int len = 1; len < hd && len < 32; len <<= 1) {
    const bool upper = lane & len;
#pragma unroll
    for (int k = 0; k < kChunks; ++k) {
      const float o = __shfl_xor_sync(0xffffffffu, x[k], len);
      x[k] = upper ? o - x[k] : x[k] + o;
    }
  }
#pragma unroll
  for (int kl = 1; kl < kChunks; kl <<= 1) {  // len = 32 * kl, within the lane
    if (32 * kl >= hd) break;
#pragma unroll
    for (int k = 0; k < kChunks; ++k)
      if (!(k & kl)) {
        const float a = x[k], b = x[k + kl];
        x[k] = a + b;
        x[k + kl] = a - b;
      }
  }
#pragma unroll
  for (int k = 0; k < kChunks; ++k) x[k] *= p.norm;
  const int64_t rec = rec_index(p, slot, h, old_len + t);
  warp_quantize_asym(x, hd, p.bits, reinterpret_cast<uint32_t*>(p.data + rec * p.row_bytes),
                     p.meta + rec * p.mpr, lane);
}

// MiKV: warp per (token leaving the window, head), tokens [enc0, enc1).
__global__ void mikv_kernel(MoreSide p, int slot, const float* rows, int64_t ld, int64_t old_len,
                            const uint8_t* flags, int64_t enc0, int64_t enc1) {
  const int64_t warp = (blockIdx.x * static_cast<int64_t>(blockDim.x) + threadIdx.x) >> 5;
  const int lane = threadIdx.x & 31;
  if (warp >= (enc1 - enc0) * p.kv_heads) return;
  const int64_t j = enc0 + warp / p.kv_heads;
  const int h = static_cast<int>(warp % p.kv_heads), hd = p.head_dim;
  const int dim = p.kv_heads * hd;
  float x[kChunks];
#pragma unroll
  for (int k = 0; k < kChunks; ++k) {
    const int i = k * 32 + lane;
    x[k] = 0.f;
    if (i < hd) {
      x[k] = windowed(p, slot, h, j, i, rows, ld, old_len);
      if (p.b) x[k] *= p.b[static_cast<int64_t>(slot) * dim + h * hd + i];
    }
  }
  const int64_t rec = rec_index(p, slot, h, j);
  const bool hi = flags[warp] != 0;
  if (lane == 0) p.flag[rec] = hi ? 1 : 0;
  if (hi && p.hi_bits == 16) {
    uint16_t* d = reinterpret_cast<uint16_t*>(p.data + rec * p.row_bytes);
#pragma unroll
    for (int k = 0; k < kChunks; ++k)
      if (k * 32 + lane < hd) d[k * 32 + lane] = f2h(x[k]);
    return;
  }
  warp_quantize_asym(x, hd, hi ? p.hi_bits : p.bits,
                     reinterpret_cast<uint32_t*>(p.data + rec * p.row_bytes), p.meta + rec * p.mpr,
                     lane);
}

}  // namespace

cudaError_t more_fp8_scales(const MoreSide& p, int slot, const float* rows, int n, int64_t ld,
                            cudaStream_t stream) {
  if (p.format != MoreFormat::kFp8 || n <= 0 || slot < 0 || slot >= p.slots) return cudaErrorInvalidValue;
  fp8_scale_kernel<<<p.kv_heads, 256, 0, stream>>>(p, slot, rows, n, ld);
  return launch_status();
}

cudaError_t more_append(const MoreSide& p, int slot, const float* rows, int n, int64_t ld,
                        int64_t old_len, const uint8_t* flags, int64_t enc0, int64_t enc1,
                        cudaStream_t stream) {
  if (n <= 0) return cudaSuccess;
  if (p.head_dim > kMaxHeadDim || old_len + n > p.max_tokens || slot < 0 || slot >= p.slots)
    return cudaErrorInvalidValue;
  constexpr int kBlock = 256;
  const int64_t new_len = old_len + n;
  const int dim = p.kv_heads * p.head_dim;
  switch (p.format) {
    case MoreFormat::kF16:
    case MoreFormat::kFp8:
      elementwise_kernel<<<grid_for(static_cast<int64_t>(n) * dim, kBlock), kBlock, 0, stream>>>(
          p, slot, rows, n, ld, old_len);
      return launch_status();
    case MoreFormat::kQ8_0:
    case MoreFormat::kQ4_0:
      if (p.head_dim % 32 != 0) return cudaErrorInvalidValue;
      ggml_kernel<<<grid_for(static_cast<int64_t>(n) * dim, kBlock), kBlock, 0, stream>>>(
          p, slot, rows, n, ld, old_len);
      return launch_status();
    case MoreFormat::kHadamard:
      hadamard_kernel<<<grid_for(static_cast<int64_t>(n) * p.kv_heads * 32, kBlock), kBlock, 0,
                        stream>>>(p, slot, rows, n, ld, old_len);
      return launch_status();
    case MoreFormat::kChannel: {
      const int64_t G = p.group;
      const int64_t g0 = old_len / G * G;               // the group old_len falls in
      const int64_t groups = (new_len - g0 + G - 1) / G;  // it and every later one touched
      zero_rows_kernel<<<grid_for((new_len - g0) * p.kv_heads * (p.row_bytes / 4), kBlock), kBlock, 0,
                         stream>>>(p, slot, g0, new_len);
      if (cudaError_t e = launch_status(); e != cudaSuccess) return e;
      channel_kernel<<<grid_for(groups * p.kv_heads * p.head_dim, kBlock), kBlock, 0, stream>>>(
          p, slot, rows, ld, old_len, new_len, g0, groups);
      if (cudaError_t e = launch_status(); e != cudaSuccess) return e;
      const int64_t r0 = std::max(old_len, new_len / G * G);  // the incomplete group's new tokens
      if (new_len > r0) {
        ring_kernel<<<grid_for((new_len - r0) * dim, kBlock), kBlock, 0, stream>>>(
            p, slot, rows, ld, old_len, r0, new_len, p.group);
        return launch_status();
      }
      return cudaSuccess;
    }
    case MoreFormat::kMikv: {
      if (enc1 > enc0) {
        if (!flags) return cudaErrorInvalidValue;
        mikv_kernel<<<grid_for((enc1 - enc0) * p.kv_heads * 32, kBlock), kBlock, 0, stream>>>(
            p, slot, rows, ld, old_len, flags, enc0, enc1);
        if (cudaError_t e = launch_status(); e != cudaSuccess) return e;
      }
      if (p.ring_cap > 0) {
        const int64_t r0 = std::max<int64_t>(old_len, new_len - p.ring_cap);
        if (new_len > r0) {
          ring_kernel<<<grid_for((new_len - r0) * dim, kBlock), kBlock, 0, stream>>>(
              p, slot, rows, ld, old_len, r0, new_len, p.ring_cap);
          return launch_status();
        }
      }
      return cudaSuccess;
    }
  }
  return cudaErrorInvalidValue;
}

}  // namespace kvq::kern
