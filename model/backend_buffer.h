// Backend memory that grows on demand and is reused across calls (its contents are lost when it grows),
// keeping a quarter spare as the memory plan counts it (grown_bytes): the trainer's per-step buffers and
// the pooler's. Bound to a backend at construction or on its first get(backend, bytes).
#pragma once
#include <cstddef>
#include <stdexcept>

#include "model/backend.h"
#include "model/memory_plan.h"

namespace l2v {

class BackendBuffer {
 public:
  BackendBuffer() = default;
  explicit BackendBuffer(Backend& backend) : backend_(&backend) {}
  BackendBuffer(const BackendBuffer&) = delete;
  BackendBuffer& operator=(const BackendBuffer&) = delete;
  ~BackendBuffer() {
    if (ptr_) backend_->release(ptr_);
  }
  void* get(size_t bytes) {
    if (!backend_) throw std::logic_error("BackendBuffer::get: no backend bound");
    if (bytes > bytes_) {
      // Old buffer first (the memory plan counts no overlap); the size only once the new one exists, so a
      // failed allocation (out of memory, or refused inside a CUDA graph capture) leaves an empty buffer.
      if (ptr_) backend_->release(ptr_);
      ptr_ = nullptr;
      bytes_ = 0;
      const size_t grown = grown_bytes(bytes);
      ptr_ = backend_->alloc(grown);
      bytes_ = grown;
    }
    return ptr_;
  }
  void* get(Backend& backend, size_t bytes) {
    if (backend_ && backend_ != &backend) throw std::logic_error("BackendBuffer::get: another backend's buffer");
    backend_ = &backend;
    return get(bytes);
  }
  float* floats(size_t n) { return static_cast<float*>(get(n * sizeof(float))); }
  float* floats(Backend& backend, size_t n) { return static_cast<float*>(get(backend, n * sizeof(float))); }

 private:
  Backend* backend_ = nullptr;
  void* ptr_ = nullptr;
  size_t bytes_ = 0;
};

}  // namespace l2v
