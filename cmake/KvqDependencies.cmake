# Third-party dependencies, all from Debian 12 / Ubuntu 24.04 packages.
find_package(Eigen3 3.3 REQUIRED NO_MODULE)
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(nlohmann_json 3 REQUIRED)
find_package(CLI11 REQUIRED)
find_package(ZLIB REQUIRED)
find_package(Threads REQUIRED)

# libsentencepiece ships a pkg-config file but no CMake config.
find_package(PkgConfig REQUIRED)
pkg_check_modules(SENTENCEPIECE REQUIRED IMPORTED_TARGET sentencepiece)

# CUDA: AUTO enables it when a CUDA compiler is found.
set(KVQ_HAVE_CUDA OFF)
if(NOT KVQ_CUDA STREQUAL "OFF")
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  include(CheckLanguage)
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    # sm_90 for Hopper (H100/H200) plus compute_80 PTX as the portable target.
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90-real 80-virtual)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    # C++17 for .cu files: CMake 3.25 (Debian 12) does not know nvcc's C++20 flag, and the
    # kernels need nothing newer. Host code (lib/cuda/*.cpp) is C++20 through g++.
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    set(KVQ_HAVE_CUDA ON)
  elseif(KVQ_CUDA STREQUAL "ON")
    message(FATAL_ERROR "KVQ_CUDA=ON but no CUDA compiler was found (set CMAKE_CUDA_COMPILER)")
  endif()
endif()
message(STATUS "kvq: CUDA backend ${KVQ_HAVE_CUDA}")

if(KVQ_TESTS)
  # Catch2 v3 (Ubuntu 24.04) or v2 (Debian 12); tests/catch.h hides the difference.
  find_package(Catch2 3 QUIET)
  if(Catch2_FOUND)
    set(KVQ_CATCH2_MAJOR 3)
  else()
    find_package(Catch2 2 REQUIRED)
    set(KVQ_CATCH2_MAJOR 2)
  endif()
  message(STATUS "kvq: Catch2 v${KVQ_CATCH2_MAJOR}")
endif()
