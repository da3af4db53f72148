// The packed KV-cache layouts and the scalar quantization rules, defined once for both
// compilers: the CPU reference (lib/codecs/) and the CUDA kernels include this header, so
// codes, scales and outlier records are bit-identical on both sides (STYLE.md, "CPU
// reference and CUDA kernel in lockstep"; ggml's ggml-common.h is the model).
//
// Goals: plain structs, constexpr sizes and inline functions usable from host and device
// code; every rule that decides a quantized code written here. Non-goals: containers,
// allocation, dispatch (lib/codecs/ owns those), fp16 conversion (host: kvq::float_to_half
// in formats/dtype.h; device: __float2half_rn; both round half to even).
//
// ## The rounding rules (the definition every codec follows)
// Uniform asymmetric, b bits, levels L = 2^b - 1, over a group with fp32 min m and max M
// (scan order, first of equal values: seq_min / seq_max below):
//   s  = (M - m) / L                    fp32 division
//   sh = fp16(s), zh = fp16(m)          stored as IEEE binary16, round half to even
//   sf = float(sh), zf = float(zh)      every later step uses the *stored* values
//   inv = (sf != 0) ? 1.0f / sf : 0     one reciprocal per group, never x / s per element
//   q  = clamp(nearbyint((x - zf) * inv), 0, L)      nearbyint = round half to even
//   x' = fma(q, sf, zf)                 one fused multiply-add (CUDA's default contraction
//                                       and std::fma give the same bits)
// Uniform symmetric: s = amax / (2^(b-1) - 1), sh = fp16(s), inv as above,
//   q = clamp(nearbyint(x * inv), -2^(b-1), 2^(b-1) - 1), stored as q + 2^(b-1),
//   x' = q * sf.
// Non-uniform (KVQuant NUQ) with a LUT of 2^b increasing signposts in [-1, 1] and a range
// (mid, half): u = clamp((x - mid) * inv_half, -1, 1); code = the number of midpoints
// (lut[i] + lut[i+1]) / 2 that are < u (an exact tie goes to the lower signpost);
// x' = fma(lut[code], half, mid).
// No fast-math anywhere in this code: the CMake flags forbid it on the host, and kernels
// built from this header must not pass --use_fast_math.
//
// ## Packed codes (2, 3, 4 and 8 bits)
// Codes are packed in blocks of 32: a block of 32 b-bit codes occupies exactly b 32-bit
// words (2 bits: 2 words, 3 bits: 3 words, 4 bits: 4, 8 bits: 8), so any bit width costs
// exactly b bits per code and a warp lane (32 codes) reads b aligned words. Code i of a
// block sits at bits [b*i, b*i + b) of the little-endian 32*b-bit concatenation of the
// block's words (word 0 holds bits 0..31). For b in {2, 4, 8} a code never straddles a
// word; for b = 3, codes 10 and 21 straddle (a funnel shift on the GPU, a 64-bit shift
// here). A row of n codes takes ceil(n / 32) blocks; padding codes are 0. Each (token,
// head) row of head_dim codes starts on a block boundary, so a kernel can address head h
// of token t without reading other heads.
#pragma once

#include <stdint.h>
#include <string.h>
#include <math.h>

#if defined(__CUDACC__)
#define KVQ_HD __host__ __device__
#else
#define KVQ_HD
#endif

namespace kvq {
namespace kvlayout {

constexpr int kCodeBlock = 32;  // codes per packed block

// Words (uint32) for n codes of `bits` bits.
KVQ_HD constexpr int64_t packed_words(int bits, int64_t n) {
  return (n + kCodeBlock - 1) / kCodeBlock * bits;
}
KVQ_HD constexpr int64_t packed_bytes(int bits, int64_t n) { return 4 * packed_words(bits, n); }

// Reads code i from packed words (the block layout above).
KVQ_HD inline uint32_t get_code(const uint32_t* words, int bits, int64_t i) {
  const uint32_t* block = words + (i / kCodeBlock) * bits;
  const int bit = static_cast<int>(i % kCodeBlock) * bits;
  const int w = bit >> 5;
  const int off = bit & 31;
  uint64_t v = block[w];
  if (off + bits > 32) v |= static_cast<uint64_t>(block[w + 1]) << 32;
  return static_cast<uint32_t>(v >> off) & ((1u << bits) - 1u);
}

// ORs code i into packed words that start zeroed (a packer writes every block once).
KVQ_HD inline void put_code(uint32_t* words, int bits, int64_t i, uint32_t code) {
  uint32_t* block = words + (i / kCodeBlock) * bits;
  const int bit = static_cast<int>(i % kCodeBlock) * bits;
  const int w = bit >> 5;
  const int off = bit & 31;
  const uint64_t v = static_cast<uint64_t>(code & ((1u << bits) - 1u)) << off;
  block[w] |= static_cast<uint32_t>(v);
  if (off + bits > 32) block[w + 1] |= static_cast<uint32_t>(v >> 32);
}

// Round half to even in the default floating-point environment (host: nearbyintf honours
// the current mode, which kvq never changes; device: nearbyintf compiles to cvt.rni).
KVQ_HD inline float round_even(float x) { return nearbyintf(x); }

KVQ_HD inline float clampf(float x, float lo, float hi) {
  return x < lo ? lo : (x > hi ? hi : x);
}

// Running minimum / maximum with std::min / std::max semantics: the accumulator is kept
// unless x is strictly smaller (larger), so among equal values the FIRST in scan order
// wins. That is what the CPU reference computes, and it matters for signed zeros: -0 and
// +0 compare equal, so the stored fp16 zero point of a group whose minimum is a zero takes
// the sign of the first zero (0x0000 vs 0x8000). CUDA's fminf/fmaxf (min.f32) order -0
// below +0 instead, which was the one int8 mismatch of the first device run (a group of
// 8 values holding +0 before -0). Kernels that reduce in another order break ties by the
// lower scan index (kernels/kv_quant.cu, KVQuant values).
KVQ_HD inline float seq_min(float acc, float x) { return x < acc ? x : acc; }
KVQ_HD inline float seq_max(float acc, float x) { return acc < x ? x : acc; }

// The per-group reciprocal: 0 for a zero scale (constant group: every code is 0 and the
// value is the zero point).
KVQ_HD inline float safe_inverse(float s) { return s != 0.0f ? 1.0f / s : 0.0f; }

// Uniform asymmetric code for x, given the stored (fp16-rounded) zero zf and inv = 1/sf.
KVQ_HD inline uint32_t quantize_asym(float x, float zf, float inv, int bits) {
  const float levels = static_cast<float>((1u << bits) - 1u);
  return static_cast<uint32_t>(clampf(round_even((x - zf) * inv), 0.0f, levels));
}
KVQ_HD inline float dequantize_asym(uint32_t q, float sf, float zf) {
  return fmaf(static_cast<float>(q), sf, zf);
}

// Uniform symmetric code (offset by 2^(b-1) so that it is unsigned).
KVQ_HD inline uint32_t quantize_sym(float x, float inv, int bits) {
  const float hi = static_cast<float>((1 << (bits - 1)) - 1);
  const float lo = -static_cast<float>(1 << (bits - 1));
  return static_cast<uint32_t>(static_cast<int>(clampf(round_even(x * inv), lo, hi)) +
                               (1 << (bits - 1)));
}
KVQ_HD inline float dequantize_sym(uint32_t q, float sf, int bits) {
  return static_cast<float>(static_cast<int>(q) - (1 << (bits - 1))) * sf;
}

// NUQ: index of the nearest signpost (ties to the lower one); lut has n = 2^bits entries.
KVQ_HD inline uint32_t quantize_lut(float u, const float* lut, int n) {
  uint32_t code = 0;
  for (int i = 0; i + 1 < n; ++i) {
    const float mid = 0.5f * (lut[i] + lut[i + 1]);
    code += (u > mid) ? 1u : 0u;
  }
  return code;
}

// ## Fixed-size records

// Scale and zero of one asymmetric group, both IEEE binary16 bits.
struct ScaleZero {
  uint16_t scale;
  uint16_t zero;
};
static_assert(sizeof(ScaleZero) == 4, "ScaleZero is two halves");

// One sparse outlier (KVQuant dense-and-sparse): its column within the token's
// [n_kv_heads * head_dim] row and its value as binary16. Rows of outliers are stored CSR:
// a uint32 offset per token into an array of these.
struct Outlier {
  uint16_t index;
  uint16_t value;
};
static_assert(sizeof(Outlier) == 4, "Outlier is index + half");

// llama.cpp's block_q8_0: 32 values, fp16 scale d, int8 codes; x' = q * d.
constexpr int kQ8Block = 32;
struct BlockQ8_0 {
  uint16_t d;
  int8_t qs[kQ8Block];
};
static_assert(sizeof(BlockQ8_0) == 34, "block_q8_0 is 34 bytes as in ggml");

// llama.cpp's block_q4_0: 32 values, fp16 scale d, 4-bit codes; byte j holds element j in
// its low nibble and element j + 16 in its high nibble; x' = (q - 8) * d.
constexpr int kQ4Block = 32;
struct BlockQ4_0 {
  uint16_t d;
  uint8_t qs[kQ4Block / 2];
};
static_assert(sizeof(BlockQ4_0) == 18, "block_q4_0 is 18 bytes as in ggml");

// llama.cpp's reference rounding (quantize_row_q8_0_ref / quantize_row_q4_0_ref), kept
// exactly so that our blocks are llama.cpp's blocks. This is the one place kvq does not
// round half to even: q8_0 uses roundf (half away from zero) and q4_0 truncates x/d + 8.5
// toward zero. The reciprocal is taken of the fp32 d, not of the stored fp16 d, as in
// llama.cpp.
KVQ_HD inline int8_t q8_0_code(float x, float id) { return static_cast<int8_t>(roundf(x * id)); }
KVQ_HD inline uint8_t q4_0_code(float x, float id) {
  const int v = static_cast<int8_t>(x * id + 8.5f);
  return static_cast<uint8_t>(v < 15 ? v : 15);
}

// ## FP8 (OCP E4M3FN and E5M2), own conversion with round half to even.
// Both saturate: a magnitude above the largest finite value (448 for E4M3FN, 57344 for
// E5M2), infinities included, becomes the largest finite value with its sign, like
// CUDA's __nv_cvt_float_to_fp8(..., __NV_SATFINITE, ...); NaN becomes the NaN code 0x7f
// (sign kept). Subnormals are kept (E4M3: multiples of 2^-9, E5M2: of 2^-16).
KVQ_HD inline uint32_t float_bits_hd(float f) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(f);
#else
  uint32_t u;
  memcpy(&u, &f, 4);
  return u;
#endif
}

// mant_bits: 3 (E4M3) or 2 (E5M2); bias: 7 or 15; max_code: 0x7e or 0x7b.
KVQ_HD inline uint8_t float_to_fp8(float x, int mant_bits, int bias, uint32_t max_code) {
  const uint32_t u = float_bits_hd(x);
  const uint8_t sign = static_cast<uint8_t>((u >> 24) & 0x80u);
  const uint32_t a = u & 0x7fffffffu;
  if (a > 0x7f800000u) return static_cast<uint8_t>(sign | 0x7f);  // NaN
  const int min_normal_exp = 1 - bias;                           // -6 or -14
  const uint32_t min_normal_bits = static_cast<uint32_t>(min_normal_exp + 127) << 23;
  uint32_t code;
  if (a < min_normal_bits) {
    // Subnormal range: multiples of 2^(min_normal_exp - mant_bits); scaling by a power
    // of two is exact, so this is a single round-half-to-even.
    float af;
    memcpy(&af, &a, 4);
    code = static_cast<uint32_t>(nearbyintf(ldexpf(af, mant_bits - min_normal_exp)));
  } else {
    const int drop = 23 - mant_bits;
    const uint32_t r = a + ((1u << (drop - 1)) - 1u) + ((a >> drop) & 1u);  // RNE carry
    const int e = static_cast<int>(r >> 23) - 127;
    if (e + bias > (1 << (7 - mant_bits)) - 1) return static_cast<uint8_t>(sign | max_code);
    code = (static_cast<uint32_t>(e + bias) << mant_bits) | ((r >> drop) & ((1u << mant_bits) - 1u));
  }
  if (code > max_code) code = max_code;
  return static_cast<uint8_t>(sign | code);
}

KVQ_HD inline float fp8_to_float(uint8_t c, int mant_bits, int bias, bool has_inf) {
  const float sign = (c & 0x80) ? -1.0f : 1.0f;
  const uint32_t mag = c & 0x7fu;
  const uint32_t e = mag >> mant_bits;
  const uint32_t m = mag & ((1u << mant_bits) - 1u);
  const uint32_t e_max = (1u << (7 - mant_bits)) - 1u;
  if (!has_inf && mag == 0x7fu) return NAN;
  if (has_inf && e == e_max) return m == 0 ? sign * INFINITY : NAN;
  if (e == 0) return sign * ldexpf(static_cast<float>(m), 1 - bias - mant_bits);
  return sign * ldexpf(static_cast<float>(m + (1u << mant_bits)),
                       static_cast<int>(e) - bias - mant_bits);
}

KVQ_HD inline uint8_t float_to_e4m3(float x) { return float_to_fp8(x, 3, 7, 0x7eu); }
KVQ_HD inline uint8_t float_to_e5m2(float x) { return float_to_fp8(x, 2, 15, 0x7bu); }
KVQ_HD inline float e4m3_to_float(uint8_t c) { return fp8_to_float(c, 3, 7, false); }
KVQ_HD inline float e5m2_to_float(uint8_t c) { return fp8_to_float(c, 2, 15, true); }
constexpr float kE4M3Max = 448.0f;
constexpr float kE5M2Max = 57344.0f;

}  // namespace kvlayout
}  // namespace kvq
