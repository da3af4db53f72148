// Error handling of the CUDA backend: the one check macro every CUDA runtime and cuBLAS
// call goes through (it names the call, the device, the file and the line), and device
// memory that reports out-of-memory as a ResourceError with the bytes asked and free.
// Kernels themselves never throw (kernels/ops.cuh): their launchers return a status that
// is checked here.
#pragma once

#include <cuda_runtime.h>

#include <cstddef>
#include <string>
#include <utility>

namespace kvq::cuda {

// Throws kvq::Error("cuda:DEV", "CALL failed: NAME (description) at FILE:LINE").
[[noreturn]] void throw_cuda_error(int status, const char* call, const char* file, int line);
[[noreturn]] void throw_cublas_error(int status, const char* call, const char* file, int line);

#define KVQ_CUDA_CHECK(call)                                                    \
  do {                                                                          \
    const cudaError_t kvq_status_ = (call);                                     \
    if (kvq_status_ != cudaSuccess)                                             \
      ::kvq::cuda::throw_cuda_error(static_cast<int>(kvq_status_), #call, __FILE__, __LINE__); \
  } while (0)

#define KVQ_CUBLAS_CHECK(call)                                                  \
  do {                                                                          \
    const int kvq_status_ = static_cast<int>(call);                             \
    if (kvq_status_ != 0)                                                       \
      ::kvq::cuda::throw_cublas_error(kvq_status_, #call, __FILE__, __LINE__);  \
  } while (0)

// Owns `bytes` of device memory on the current device. Allocation failure throws
// ResourceError("cuda:DEV", "out of GPU memory: asked N bytes (X GiB) for WHAT, F free of T").
class DeviceBuffer {
 public:
  DeviceBuffer() = default;
  DeviceBuffer(size_t bytes, const char* what);
  ~DeviceBuffer();
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
  DeviceBuffer(DeviceBuffer&& o) noexcept : ptr_(std::exchange(o.ptr_, nullptr)), bytes_(std::exchange(o.bytes_, 0)) {}
  DeviceBuffer& operator=(DeviceBuffer&& o) noexcept;

  void* get() const { return ptr_; }
  template <typename T> T* as() const { return static_cast<T*>(ptr_); }
  size_t bytes() const { return bytes_; }
  // Makes sure at least `bytes` are held (contents are lost when it grows).
  void reserve(size_t bytes, const char* what);

 private:
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

struct DeviceInfo {
  int device = 0;
  std::string name;
  int cc_major = 0, cc_minor = 0;
  int sm_count = 0;
  size_t total_bytes = 0, free_bytes = 0;
  int l2_bytes = 0;
  double memory_clock_khz = 0;  // for the datasheet bandwidth
  int bus_width_bits = 0;
};

// Selects `device` for this thread and checks it: no device or a GPU older than compute
// capability 8.0 (the kernels use bf16 tensor-core instructions) throws UnsupportedError.
DeviceInfo select_device(int device);

}  // namespace kvq::cuda
