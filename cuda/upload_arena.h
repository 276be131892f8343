// Host-to-device copies that do not make the host wait. Backend::upload takes pageable host memory that
// the caller may reuse as soon as the call returns; a cudaMemcpyAsync from pageable memory may wait for
// the stream (the driver stages it), which inside a training step means waiting for the previous
// micro-batch's backward. The arena is pinned host memory: upload() copies the bytes into its next free
// piece on the host and queues the device copy from there, without waiting. Pieces are handed out in
// order and never reused until the stream has been synchronised — by a download (the backend tells the
// arena, synchronized()), or here, once, when the arena is full. Uploads larger than the arena are left to
// the caller. Works in every build of cuda/launch.h (nvcc, the emulator, plain g++ host code).
#pragma once

#include <cstddef>
#include <cstring>

#include "cuda/launch.h"

namespace l2v::cuda {

// Big enough for a step's small uploads (ids, masks, labels, pooling weights, pooled gradients: B x C x 4
// bytes = 1 MiB at 64 x 4096), so that the arena fills only every few steps.
constexpr size_t kUploadArenaBytes = size_t{16} << 20;

class UploadArena {
 public:
  explicit UploadArena(size_t bytes = kUploadArenaBytes) : size_(bytes) {
    CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&base_), size_));
  }
  ~UploadArena() { cudaFreeHost(base_); }
  UploadArena(const UploadArena&) = delete;
  UploadArena& operator=(const UploadArena&) = delete;

  // Queues the copy of `bytes` from host `src` to device `dst` on `stream`; false (nothing done) when
  // they do not fit in the arena at all.
  bool upload(void* dst, const void* src, size_t bytes, cudaStream_t stream) {
    if (bytes > size_) return false;
    if (bytes == 0) return true;
    if (used_ + bytes > size_) {  // every piece may still be read by a queued copy: wait for them once
      CUDA_CHECK(cudaStreamSynchronize(stream));
      used_ = 0;
    }
    char* piece = base_ + used_;
    std::memcpy(piece, src, bytes);
    CUDA_CHECK(cudaMemcpyAsync(dst, piece, bytes, cudaMemcpyHostToDevice, stream));
    used_ += (bytes + kAlign - 1) / kAlign * kAlign;
    return true;
  }
  // Whether upload() of `bytes` would queue its copy without waiting for the stream first.
  bool fits_without_waiting(size_t bytes) const { return bytes <= size_ && used_ + bytes <= size_; }
  // The stream has been synchronised: every queued copy has run, the arena is free again.
  void synchronized() { used_ = 0; }

 private:
  static constexpr size_t kAlign = 256;
  char* base_ = nullptr;
  size_t size_ = 0;
  size_t used_ = 0;
};

}  // namespace l2v::cuda
