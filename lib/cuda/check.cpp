// The CUDA backend's error reporting and device memory (see check.h).
#include "lib/cuda/check.h"

#include <cstdio>
#include <string>

#include "formats/error.h"

namespace kvq::cuda {
namespace {

std::string device_label() {
  int dev = -1;
  if (cudaGetDevice(&dev) != cudaSuccess) return "cuda";
  return "cuda:" + std::to_string(dev);
}

std::string gib(size_t bytes) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "%.2f GiB", static_cast<double>(bytes) / (1024.0 * 1024.0 * 1024.0));
  return buf;
}

const char* cublas_name(int s) {
  switch (s) {
    case 1: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case 3: return "CUBLAS_STATUS_ALLOC_FAILED";
    case 7: return "CUBLAS_STATUS_INVALID_VALUE";
    case 8: return "CUBLAS_STATUS_ARCH_MISMATCH";
    case 11: return "CUBLAS_STATUS_MAPPING_ERROR";
    case 13: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case 14: return "CUBLAS_STATUS_INTERNAL_ERROR";
    case 15: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_?";
  }
}

}  // namespace

void throw_cuda_error(int status, const char* call, const char* file, int line) {
  const auto e = static_cast<cudaError_t>(status);
  std::string msg = std::string(call) + " failed: " + cudaGetErrorName(e) + " (" +
                    cudaGetErrorString(e) + ") at " + file + ":" + std::to_string(line);
  if (e == cudaErrorMemoryAllocation) {
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw ResourceError(device_label(), msg + "; " + gib(free_b) + " free of " + gib(total_b),
                        "use a smaller batch or --max-tokens");
  }
  throw Error(device_label(), msg);
}

void throw_cublas_error(int status, const char* call, const char* file, int line) {
  throw Error(device_label(), std::string(call) + " failed: " + cublas_name(status) + " (" +
                                  std::to_string(status) + ") at " + file + ":" +
                                  std::to_string(line));
}

DeviceBuffer::DeviceBuffer(size_t bytes, const char* what) { reserve(bytes, what); }

DeviceBuffer::~DeviceBuffer() {
  if (ptr_ != nullptr) cudaFree(ptr_);
}

DeviceBuffer& DeviceBuffer::operator=(DeviceBuffer&& o) noexcept {
  if (this != &o) {
    if (ptr_ != nullptr) cudaFree(ptr_);
    ptr_ = std::exchange(o.ptr_, nullptr);
    bytes_ = std::exchange(o.bytes_, 0);
  }
  return *this;
}

void DeviceBuffer::reserve(size_t bytes, const char* what) {
  if (bytes <= bytes_) return;
  if (ptr_ != nullptr) {
    cudaFree(ptr_);
    ptr_ = nullptr;
    bytes_ = 0;
  }
  if (bytes == 0) return;
  const cudaError_t e = cudaMalloc(&ptr_, bytes);
  if (e != cudaSuccess) {
    ptr_ = nullptr;
    cudaGetLastError();  // clear the sticky-free allocation error
    size_t free_b = 0, total_b = 0;
    cudaMemGetInfo(&free_b, &total_b);
    throw ResourceError(device_label(),
                        "out of GPU memory: asked " + std::to_string(bytes) + " bytes (" +
                            gib(bytes) + ") for " + what + ", " + gib(free_b) + " free of " +
                            gib(total_b),
                        "use a smaller batch, a shorter --max-tokens or a smaller model");
  }
  bytes_ = bytes;
}

DeviceInfo select_device(int device) {
  int count = 0;
  const cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess || count == 0)
    throw UnsupportedError("cuda", std::string("no CUDA device: ") +
                                       (e != cudaSuccess ? cudaGetErrorString(e) : "0 devices"),
                           "use --backend cpu");
  if (device < 0 || device >= count)
    throw InvalidArgument("cuda", "device " + std::to_string(device) + " does not exist (" +
                                      std::to_string(count) + " found)");
  KVQ_CUDA_CHECK(cudaSetDevice(device));
  cudaDeviceProp p{};
  KVQ_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  DeviceInfo info;
  info.device = device;
  info.name = p.name;
  info.cc_major = p.major;
  info.cc_minor = p.minor;
  info.sm_count = p.multiProcessorCount;
  info.l2_bytes = p.l2CacheSize;
  int clock = 0;
  cudaDeviceGetAttribute(&clock, cudaDevAttrMemoryClockRate, device);
  info.memory_clock_khz = clock;
  info.bus_width_bits = p.memoryBusWidth;
  KVQ_CUDA_CHECK(cudaMemGetInfo(&info.free_bytes, &info.total_bytes));
  if (p.major < 8)
    throw UnsupportedError("cuda:" + std::to_string(device),
                           std::string(p.name) + " has compute capability " +
                               std::to_string(p.major) + "." + std::to_string(p.minor) +
                               "; kvq's kernels need 8.0 or newer (Ampere, Ada, Hopper)",
                           "use --backend cpu");
  return info;
}

}  // namespace kvq::cuda
