// Device scratch that grows on demand and is reused across calls: get(bytes) returns a buffer of at least
// `bytes` (its old contents are lost when it grows), so nothing is allocated on the hot path once the
// largest size has been seen. Used by the CUDA backend (cuda/cuda_backend.cu) and cuDNN attention
// (cuda/attention_cudnn.cpp); CUDA_CHECK throws on a failed allocation. Works in every build of
// cuda/launch.h (nvcc, the emulator, plain g++ host code).
#pragma once

#include <cstddef>

#include "cuda/launch.h"

namespace l2v::cuda {

class DeviceScratch {
 public:
  DeviceScratch() = default;
  DeviceScratch(const DeviceScratch&) = delete;
  DeviceScratch& operator=(const DeviceScratch&) = delete;
  ~DeviceScratch() { cudaFree(ptr_); }
  void* get(size_t bytes) {
    if (bytes > size_) {
      CUDA_CHECK(cudaFree(ptr_));
      ptr_ = nullptr;
      CUDA_CHECK(cudaMalloc(&ptr_, bytes));
      size_ = bytes;
    }
    return ptr_;
  }

 private:
  void* ptr_ = nullptr;
  size_t size_ = 0;
};

}  // namespace l2v::cuda
