// Element types of tensors in files and in memory, with the scalar conversions every
// reader and the CPU reference need. Conversions to narrower types round half to even,
// like the hardware instructions the GPU backend uses, so CPU and GPU agree bit for bit.
#pragma once

#include <cstddef>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string_view>

namespace kvq {

enum class DType : uint8_t {
  kF64, kF32, kF16, kBF16, kF8E4M3, kF8E5M2,
  kI64, kI32, kI16, kI8, kU64, kU32, kU16, kU8, kBool,
};

// Bytes per element.
size_t dtype_size(DType t);
// The safetensors spelling: "F32", "BF16", "F8_E4M3", ...
std::string_view dtype_name(DType t);
// Inverse of dtype_name; nullopt for an unknown name.
std::optional<DType> parse_dtype(std::string_view name);
bool is_float(DType t);

inline uint32_t float_bits(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  return u;
}
inline float bits_float(uint32_t u) {
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}

// IEEE binary16 <-> binary32. float_to_half rounds half to even; overflow gives +-inf,
// NaN stays NaN (quiet).
float half_to_float(uint16_t h);
uint16_t float_to_half(float f);

// bfloat16 <-> binary32; float_to_bf16 rounds half to even, NaN stays NaN.
inline float bf16_to_float(uint16_t h) { return bits_float(static_cast<uint32_t>(h) << 16); }
inline uint16_t float_to_bf16(float f) {
  uint32_t u = float_bits(f);
  if ((u & 0x7fffffffu) > 0x7f800000u) return static_cast<uint16_t>((u >> 16) | 0x0040u);
  u += 0x7fffu + ((u >> 16) & 1u);
  return static_cast<uint16_t>(u >> 16);
}

// Converts n elements of type `src_type` at `src` to float32.
void convert_to_f32(DType src_type, const void* src, float* dst, size_t n);

}  // namespace kvq
