// Device helpers that the packed-cache kernels of both families share (nvcc only):
// append kernels/kv_quant.cu (kv_ops.cuh's formats) and kernels/kv_quant_more.cu
// (kv_more.cuh's), decode kernels/kv_decode_packed.cu and kernels/kv_decode_more.cu.
// Each helper is the one spelling of a step those files used to carry a copy of, with the
// same operations in the same order, so the kernels' normalized sm_90 PTX did not change
// when they moved here (checked before/after with nvcc -ptx). The rounding and tie rules
// are kernels/kv_layout.h's (the CPU reference's); what this adds is the warp and
// bit-stream plumbing around them.
#pragma once

#include <cstdint>

#include <cuda_fp16.h>

#include "kernels/kv_layout.h"

namespace kvq::kern {

// binary16 bits <-> fp32; f2h rounds half to even (__float2half_rn, as kvq::float_to_half).
__device__ __forceinline__ uint16_t f2h(float x) { return __half_as_ushort(__float2half_rn(x)); }
__device__ __forceinline__ float h2f(uint16_t h) { return __half2float(__ushort_as_half(h)); }

// 8 binary16 values at p (16-byte aligned) as fp32, one 16-byte load.
__device__ __forceinline__ void load_halves8(const uint16_t* p, float (&x)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(p);
  const __half* e = reinterpret_cast<const __half*>(&raw);
#pragma unroll
  for (int i = 0; i < 8; ++i) x[i] = __half2float(e[i]);
}

// ORs the `bits`-bit code q into the bit stream w at bit `bit` (kv_layout.h's layout: code c
// at bit c * bits, may straddle two words). Atomic: threads that share a word (one per
// channel, or the lanes of a warp) write their codes into words zeroed beforehand.
__device__ __forceinline__ void atomic_put_code(uint32_t* w, int bit, int bits, uint32_t q) {
  const uint64_t v = static_cast<uint64_t>(q) << (bit & 31);
  atomicOr(w + (bit >> 5), static_cast<uint32_t>(v));
  if ((bit & 31) + bits > 32) atomicOr(w + (bit >> 5) + 1, static_cast<uint32_t>(v >> 32));
}

// Uniform asymmetric b-bit parameters of a group with fp32 min mn and max mx, as the CPU
// reference stores and uses them: scale (mx - mn) / (2^b - 1) and zero mn rounded to
// binary16 (sh, zh), then the stored zero as fp32 and the reciprocal of the stored scale.
struct AsymParams {
  uint16_t sh, zh;
  float zf, inv;
};

__device__ __forceinline__ AsymParams asym_params(float mn, float mx, int bits) {
  AsymParams a;
  a.sh = f2h((mx - mn) / static_cast<float>((1u << bits) - 1u));
  a.zh = f2h(mn);
  a.zf = h2f(a.zh);
  a.inv = kvlayout::safe_inverse(h2f(a.sh));
  return a;
}

// asym_params of the group of values get(k), k in [k0, k1) (k1 > k0), min and max taken in that
// order with seq_min / seq_max (the CPU's std::min / std::max). I: the index type of the
// caller's loop (int or int64_t), kept so that its address arithmetic stays what it was.
template <typename I, typename Get>
__device__ __forceinline__ AsymParams asym_params_of(I k0, I k1, int bits, Get&& get) {
  float mn = get(k0), mx = mn;
  for (I k = k0 + 1; k < k1; ++k) {
    const float x = get(k);
    mn = kvlayout::seq_min(mn, x);
    mx = kvlayout::seq_max(mx, x);
  }
  return asym_params(mn, mx, bits);
}

// Uniform symmetric b-bit scale of the group get(k), k in [k0, k1), as the CPU stores and uses
// it: amax / (2^(b-1) - 1) rounded to binary16 (sh), and the reciprocal of the stored scale.
struct SymParams {
  uint16_t sh;
  float inv;
};

template <typename I, typename Get>
__device__ __forceinline__ SymParams sym_params_of(I k0, I k1, int bits, Get&& get) {
  float amax = 0.f;
  for (I k = k0; k < k1; ++k) amax = fmaxf(amax, fabsf(get(k)));
  SymParams s;
  s.sh = f2h(amax / static_cast<float>((1 << (bits - 1)) - 1));
  s.inv = kvlayout::safe_inverse(h2f(s.sh));
  return s;
}

// Warp-wide (value, index) reductions for kernels whose lanes scan channels in another order
// than the CPU's single pass: among equal values the lower index wins, which is the CPU's
// "first in scan order" (kv_layout.h seq_min/seq_max), signed zeros included. Every lane
// gets the result. By value, not through references: with references nvcc (13.0) kept the
// callee's branches after inlining where the copies it replaces compiled to selects.
struct ValueAt {
  float v;
  int i;
};

// Arg-max: the largest v, the lowest i among equal ones.
__device__ __forceinline__ ValueAt warp_argmax_first(ValueAt m) {
  float a = m.v;
  int ai = m.i;
  for (int o = 16; o > 0; o >>= 1) {
    const float oa = __shfl_xor_sync(0xffffffffu, a, o);
    const int oi = __shfl_xor_sync(0xffffffffu, ai, o);
    if (oa > a || (oa == a && oi < ai)) {
      a = oa;
      ai = oi;
    }
  }
  return {a, ai};
}

// Min and max together, each with the lowest index among equal values.
struct MinMaxAt {
  ValueAt mn, mx;
};

__device__ __forceinline__ MinMaxAt warp_minmax_first(MinMaxAt m) {
  float mn = m.mn.v, mx = m.mx.v;
  int ni = m.mn.i, xi = m.mx.i;
  for (int o = 16; o > 0; o >>= 1) {
    const float omn = __shfl_xor_sync(0xffffffffu, mn, o);
    const int oni = __shfl_xor_sync(0xffffffffu, ni, o);
    const float omx = __shfl_xor_sync(0xffffffffu, mx, o);
    const int oxi = __shfl_xor_sync(0xffffffffu, xi, o);
    if (omn < mn || (omn == mn && oni < ni)) { mn = omn; ni = oni; }
    if (omx > mx || (omx == mx && oxi < xi)) { mx = omx; xi = oxi; }
  }
  return {{mn, ni}, {mx, xi}};
}

}  // namespace kvq::kern
