#include "host/cpu_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include "host/cpu_ops.h"

namespace l2v {
namespace {

class CpuBackend final : public Backend {
 public:
  const char* name() const override { return "cpu"; }
  bool is_host_memory() const override { return true; }

  void* alloc(size_t bytes) override {
    // 64-byte alignment keeps OpenBLAS and the vectorised loops on aligned rows.
    const size_t rounded = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
    void* p = std::aligned_alloc(64, rounded);
    if (!p) throw std::bad_alloc();
    std::memset(p, 0, rounded);
    std::lock_guard<std::mutex> lock(mutex_);
    sizes_[p] = rounded;
    memory_.current += rounded;
    memory_.peak = std::max(memory_.peak, memory_.current);
    return p;
  }
  void release(void* ptr) override {
    if (!ptr) return;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = sizes_.find(ptr);
      if (it != sizes_.end()) {
        memory_.current -= it->second;
        sizes_.erase(it);
      }
    }
    std::free(ptr);
  }
  BackendMemory memory() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return memory_;
  }
  void upload(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void download(void* dst, const void* src, size_t bytes) override { std::memcpy(dst, src, bytes); }
  void copy(void* dst, const void* src, size_t bytes) override { std::memmove(dst, src, bytes); }
  void zero(void* dst, size_t bytes) override { std::memset(dst, 0, bytes); }
  size_t tensor_element_bytes() const override { return sizeof(float); }
  void upload_tensor(float* dst, const float* host, size_t n) override { std::memcpy(dst, host, n * sizeof(float)); }
  void download_tensor(float* host, const float* src, size_t n) override {
    std::memcpy(host, src, n * sizeof(float));
  }

  void embedding_forward(float* out, const int* ids, const float* table, int N, int C) override {
    cpu::embedding_forward(out, ids, table, N, C);
  }
  void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N, int C,
                       float eps) override {
    cpu::rmsnorm_forward(out, rstd, inp, weight, N, C, eps);
  }
  void rmsnorm_backward(float* dinp, const float* dout, const float* inp, const float* weight, const float* rstd,
                        int N, int C) override {
    cpu::rmsnorm_backward(dinp, dout, inp, weight, rstd, N, C);
  }
  void rope_forward(float* out, const float* x, const float* cos, const float* sin, int N, int T, int nh,
                    int D) override {
    cpu::rope_forward(out, x, cos, sin, N, T, nh, D);
  }
  void rope_backward(float* dx, const float* dout, const float* cos, const float* sin, int N, int T, int nh,
                     int D) override {
    cpu::rope_backward(dx, dout, cos, sin, N, T, nh, D);
  }
  void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                         const int* key_mask, int B, int T, int H, int KV, int D, bool causal, float dropout_p,
                         DropoutKey key, uint32_t site) override {
    cpu::attention_forward(out, lse, q, k, v, key_mask, B, T, H, KV, D, causal, dropout_p, key, site);
  }
  void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                          const float* q, const float* k, const float* v, const int* key_mask, int B, int T,
                          int H, int KV, int D, bool causal, float dropout_p, DropoutKey key,
                          uint32_t site) override {
    cpu::attention_backward(dq, dk, dv, dout, out, lse, q, k, v, key_mask, B, T, H, KV, D, causal, dropout_p,
                            key, site);
  }
  void swiglu_forward(float* out, const float* gate, const float* up, long n) override {
    cpu::swiglu_forward(out, gate, up, n);
  }
  void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                       long n) override {
    cpu::swiglu_backward(dgate, dup, dout, gate, up, n);
  }
  void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IC,
                      int OC) override {
    cpu::matmul_forward(out, inp, weight, bias, N, IC, OC);
  }
  void matmul_backward_input(float* dinp, const float* dout, const float* weight, int N, int IC, int OC,
                             bool accumulate) override {
    cpu::matmul_backward_input(dinp, dout, weight, N, IC, OC, accumulate);
  }
  void lora_forward(float* out, float* xa, const float* inp, const float* A, const float* B, float scale,
                    float dropout_p, DropoutKey key, uint32_t site, float* scratch, int N, int IC, int OC,
                    int R) override {
    cpu::lora_forward(out, xa, inp, A, B, scale, dropout_p, key, site, scratch, N, IC, OC, R);
  }
  void lora_backward(float* dinp, float* dA, float* dB, const float* dout, const float* inp, const float* xa,
                     const float* A, const float* B, float scale, float dropout_p, DropoutKey key, uint32_t site,
                     float* scratch, int N, int IC, int OC, int R) override {
    cpu::lora_backward(dinp, dA, dB, dout, inp, xa, A, B, scale, dropout_p, key, site, scratch, N, IC, OC, R);
  }
  void lora_merge(float* weight, const float* A, const float* B, float scale, float sign, int IC, int OC,
                  int R) override {
    cpu::lora_merge(weight, A, B, scale, sign, IC, OC, R);
  }
  void residual_forward(float* out, const float* a, const float* b, long n) override {
    cpu::residual_forward(out, a, b, n);
  }
  void residual_rmsnorm_forward(float* resid_out, float* norm_out, float* rstd, const float* a, const float* b,
                                const float* weight, int N, int C, float eps) override {
    cpu::residual_rmsnorm_forward(resid_out, norm_out, rstd, a, b, weight, N, C, eps);
  }
  void lm_head_crossentropy(float* losses, float* d_hidden, const float* hidden, const float* lm_head,
                            const int* rows, const int* targets, int M, int N, int C, int V, float dloss) override {
    cpu::lm_head_crossentropy(losses, d_hidden, hidden, lm_head, rows, targets, M, N, C, V, dloss);
  }
  void pool_forward(float* pooled, const float* hidden, const float* weights, int B, int T, int C) override {
    cpu::pool_forward(pooled, hidden, weights, B, T, C);
  }
  void pool_backward(float* d_hidden, const float* d_pooled, const float* weights, int B, int T, int C) override {
    cpu::pool_backward(d_hidden, d_pooled, weights, B, T, C);
  }
  void range_push(const char*) override {}
  void range_pop() override {}
  void adamw_step(const cpu::OptimizerTensor* tensors, int count, const cpu::AdamWStepArgs& args,
                  float* norm) override {
    *norm = cpu::adamw_step(tensors, count, args);
  }
 private:
  mutable std::mutex mutex_;
  std::unordered_map<void*, size_t> sizes_;
  BackendMemory memory_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend() { return std::make_unique<CpuBackend>(); }

BackendMemory cpu_backend_memory(const Backend& backend) {
  const auto* cpu = dynamic_cast<const CpuBackend*>(&backend);
  if (!cpu) throw std::runtime_error(std::string("cpu_backend_memory: the ") + backend.name() + " backend is not the cpu backend");
  return cpu->memory();
}

}  // namespace l2v
