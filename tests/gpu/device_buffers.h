// Device buffers and 16-bit helpers shared by the kernel tests (kernel_parity_test.cpp,
// fused_ops_test.cpp): every buffer is poisoned with 0xFF bytes (NaN in fp16, bf16 and fp32)
// when allocated, so an element a kernel fails to write shows up as a NaN in the check.
#pragma once

#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "formats/dtype.h"
#include "kernels/ops.cuh"
#include "tests/catch.h"

#define CK(call) REQUIRE((call) == cudaSuccess)

namespace kvq_test {

struct Dev {
  void* p = nullptr;
  size_t bytes = 0;
  explicit Dev(size_t b) : bytes(b) {
    REQUIRE(cudaMalloc(&p, std::max<size_t>(b, 16)) == cudaSuccess);
    REQUIRE(cudaMemset(p, 0xFF, std::max<size_t>(b, 16)) == cudaSuccess);
  }
  Dev(Dev&& o) noexcept : p(o.p), bytes(o.bytes) { o.p = nullptr; }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  Dev& operator=(Dev&&) = delete;
  ~Dev() { cudaFree(p); }
  template <typename T> T* as() const { return static_cast<T*>(p); }
};

template <typename T>
void upload(Dev& d, const std::vector<T>& v) {
  REQUIRE(d.bytes >= v.size() * sizeof(T));
  REQUIRE(cudaMemcpy(d.p, v.data(), v.size() * sizeof(T), cudaMemcpyHostToDevice) == cudaSuccess);
}
// A new buffer holding v.
template <typename T>
Dev to_dev(const std::vector<T>& v) {
  Dev d(v.size() * sizeof(T));
  upload(d, v);
  return d;
}
// The first n elements, after every launch so far has finished.
template <typename T>
std::vector<T> download(const Dev& d, size_t n) {
  std::vector<T> v(n);
  REQUIRE(cudaDeviceSynchronize() == cudaSuccess);
  REQUIRE(cudaMemcpy(v.data(), d.p, n * sizeof(T), cudaMemcpyDeviceToHost) == cudaSuccess);
  return v;
}

inline uint16_t to16(kvq::kern::Act a, float f) {
  return a == kvq::kern::Act::kF16 ? kvq::float_to_half(f) : kvq::float_to_bf16(f);
}
inline float from16(kvq::kern::Act a, uint16_t h) {
  return a == kvq::kern::Act::kF16 ? kvq::half_to_float(h) : kvq::bf16_to_float(h);
}
// Unit roundoff of the 16-bit type: 2^-11 (fp16, 10 explicit mantissa bits), 2^-8 (bf16).
inline double unit(kvq::kern::Act a) {
  return a == kvq::kern::Act::kF16 ? std::ldexp(1.0, -11) : std::ldexp(1.0, -8);
}
inline const char* act_name(kvq::kern::Act a) { return a == kvq::kern::Act::kF16 ? "fp16" : "bf16"; }

}  // namespace kvq_test
