#include "host/cpu_backend.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <new>
#include <stdexcept>
#include <string>
#include <unordered_map>

#include <sys/mman.h>
#include <unistd.h>

#include "host/cpu_attention_bf16.h"
#include "host/cpu_fast_ops.h"
#include "host/cpu_gemm_bf16.h"
#include "host/cpu_ops.h"

namespace l2v {
namespace {

// Zeroed memory, 64-byte aligned. Large blocks (weights, activations) come straight from mmap with their
// pages populated at once: zero already (no memset pass) and faulted in by one call instead of a trap per
// 4 KiB page (loading SmolLM2 touches 0.5 GB of them).
constexpr size_t kMappedBytes = 1u << 20;
void* zeroed_pages(size_t bytes) {
  if (bytes >= kMappedBytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_POPULATE, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    return p;
  }
  void* p = std::aligned_alloc(64, bytes);
  if (!p) throw std::bad_alloc();
  return std::memset(p, 0, bytes);
}
void free_pages(void* p, size_t bytes) {
  if (bytes >= kMappedBytes)
    munmap(p, bytes);
  else
    std::free(p);
}

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(CpuPrecision precision) : bf16_(precision == CpuPrecision::kBf16) {}
  const char* name() const override { return bf16_ ? "cpu (bf16 GEMMs)" : "cpu"; }
  bool is_host_memory() const override { return true; }
  bool lora_dropout_needs_scratch() const override { return true; }

  void* alloc(size_t bytes) override {
    // 64-byte alignment keeps OpenBLAS and the vectorised loops on aligned rows.
    const size_t rounded = bytes == 0 ? 64 : (bytes + 63) / 64 * 64;
    void* p = zeroed_pages(rounded);
    std::lock_guard<std::mutex> lock(mutex_);
    sizes_[p] = rounded;
    account((long)rounded);
    return p;
  }
  void release(void* ptr) override {
    if (!ptr) return;
    size_t bytes = 0;
    {
      std::lock_guard<std::mutex> lock(mutex_);
      auto it = sizes_.find(ptr);
      if (it != sizes_.end()) {
        auto d = released_.find(ptr);
        size_t given_back = 0;
        if (d != released_.end()) {  // its tiles go with it
          given_back = d->second;
          released_.erase(d);
          auto t = packed_.find(ptr);
          if (t != packed_.end()) {
            account(-(long)t->second.bytes());
            packed_.erase(t);
          }
        } else {
          forget_packed_locked(ptr, it->second);
        }
        account(-(long)(it->second - given_back));
        bytes = it->second;
        sizes_.erase(it);
      }
    }
    free_pages(ptr, bytes);
  }
  BackendMemory memory() const {
    std::lock_guard<std::mutex> lock(mutex_);
    return memory_;
  }
  void upload(void* dst, const void* src, size_t bytes) override {
    forget_packed(dst, bytes);
    std::memcpy(dst, src, bytes);
  }
  void download(void* dst, const void* src, size_t bytes) override {
    check_not_released(src, bytes, "download");
    std::memcpy(dst, src, bytes);
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    check_not_released(src, bytes, "copy");
    forget_packed(dst, bytes);
    std::memmove(dst, src, bytes);
  }
  void zero(void* dst, size_t bytes) override {
    forget_packed(dst, bytes);
    std::memset(dst, 0, bytes);
  }
  size_t tensor_element_bytes() const override { return sizeof(float); }
  bool packs_bf16_weights() const override { return bf16_; }
  void upload_tensor(Tensor dst, const float* host, size_t n) override {
    forget_packed(dst, n * sizeof(float));
    std::memcpy(f(dst), host, n * sizeof(float));
  }
  void download_tensor(float* host, ConstTensor src, size_t n) override {
    check_not_released(src, n * sizeof(float), "download_tensor");
    std::memcpy(host, f(src), n * sizeof(float));
  }
  // bf16: the forward tiles are made, then the fp32 pages inside the allocation go back to the system
  // (madvise MADV_DONTNEED: the address range stays this allocation's, so no other buffer takes it).
  void keep_only_forward_form(ConstTensor weight, int IC, int OC) override {
    if (!bf16_) return;
    packed(weight, IC, OC);
    std::lock_guard<std::mutex> lock(mutex_);
    void* p = const_cast<TensorElements*>(weight);
    auto it = sizes_.find(p);
    if (it == sizes_.end() || it->second < (size_t)IC * OC * sizeof(float))
      throw std::logic_error("keep_only_forward_form: the weight is not one whole allocation of this backend");
    if (released_.count(p)) return;
    const uintptr_t page = (uintptr_t)sysconf(_SC_PAGESIZE), lo = ((uintptr_t)p + page - 1) / page * page,
                    hi = ((uintptr_t)p + it->second) / page * page;
    const size_t bytes = hi > lo ? hi - lo : 0;
    if (bytes > 0 && madvise(reinterpret_cast<void*>(lo), bytes, MADV_DONTNEED) != 0)
      throw std::runtime_error("keep_only_forward_form: madvise failed");
    released_[p] = bytes;
    account(-(long)bytes);
  }

  void embedding_forward(Tensor out, const int* ids, ConstTensor table, int N, int C) override {
    cpu::embedding_forward(f(out), ids, f(table), N, C);
  }
  void rmsnorm_forward(Tensor out, float* rstd, ConstTensor inp, const float* weight, int N, int C,
                       float eps) override {
    if (bf16_) return cpu::rmsnorm_forward_fast(f(out), rstd, f(inp), weight, N, C, eps);  // host/cpu_fast_ops.h
    cpu::rmsnorm_forward(f(out), rstd, f(inp), weight, N, C, eps);
  }
  void rmsnorm_backward(Tensor dinp, ConstTensor dout, ConstTensor inp, const float* weight, const float* rstd,
                        int N, int C) override {
    if (bf16_) return cpu::rmsnorm_backward_fast(f(dinp), f(dout), f(inp), weight, rstd, N, C);
    cpu::rmsnorm_backward(f(dinp), f(dout), f(inp), weight, rstd, N, C);
  }
  void rope_forward(Tensor out, ConstTensor x, int ld, const float* cos, const float* sin, int N, int T, int nh,
                    int D) override {
    cpu::rope_forward(f(out), f(x), ld, cos, sin, N, T, nh, D);
  }
  void rope_backward(Tensor dx, ConstTensor dout, int ld, const float* cos, const float* sin, int N, int T, int nh,
                     int D) override {
    cpu::rope_backward(f(dx), f(dout), ld, cos, sin, N, T, nh, D);
  }
  void attention_forward(Tensor out, float* lse, ConstTensor q, ConstTensor k, ConstTensor v, QkvStrides ld,
                         const int* key_mask, int B, int T, int H, int KV, int D, bool causal, float dropout_p,
                         DropoutKey key, uint32_t site) override {
    if (bf16_)
      return cpu::attention_forward_bf16(f(out), lse, f(q), f(k), f(v), ld, key_mask, B, T, H, KV, D, causal,
                                         dropout_p, key, site);
    cpu::attention_forward(f(out), lse, f(q), f(k), f(v), ld, key_mask, B, T, H, KV, D, causal, dropout_p, key, site);
  }
  void attention_backward(Tensor dq, Tensor dk, Tensor dv, ConstTensor dout, ConstTensor out, const float* lse,
                          ConstTensor q, ConstTensor k, ConstTensor v, QkvStrides ld, const int* key_mask, int B,
                          int T, int H, int KV, int D, bool causal, float dropout_p, DropoutKey key,
                          uint32_t site) override {
    if (bf16_)
      return cpu::attention_backward_bf16(f(dq), f(dk), f(dv), f(dout), f(out), lse, f(q), f(k), f(v), ld, key_mask,
                                          B, T, H, KV, D, causal, dropout_p, key, site);
    cpu::attention_backward(f(dq), f(dk), f(dv), f(dout), f(out), lse, f(q), f(k), f(v), ld, key_mask, B, T, H, KV, D,
                            causal, dropout_p, key, site);
  }
  void swiglu_forward(Tensor out, ConstTensor gate_up, long N, int F) override {
    if (bf16_) return cpu::swiglu_forward_fast(f(out), f(gate_up), N, F);  // host/cpu_fast_ops.h
    cpu::swiglu_forward(f(out), f(gate_up), N, F);
  }
  void swiglu_backward(Tensor d_gate_up, ConstTensor dout, ConstTensor gate_up, long N, int F) override {
    if (bf16_) return cpu::swiglu_backward_fast(f(d_gate_up), f(dout), f(gate_up), N, F);
    cpu::swiglu_backward(f(d_gate_up), f(dout), f(gate_up), N, F);
  }
  // bf16: out preset to residual + bias (then accumulated onto), the product on the weight's bf16 tiles.
  void matmul_forward(Tensor out, ConstTensor inp, ConstTensor weight, ConstTensor bias, int N, int IC, int OC,
                      ConstTensor residual) override {
    if (!bf16_) return cpu::matmul_forward(f(out), f(inp), f(weight), f(bias), N, IC, OC, f(residual));
    const bool preset = cpu::linear_preset(f(out), f(bias), f(residual), N, OC);
    const cpu::Bf16Product product{f(out), OC, &packed(weight, IC, OC).forward, OC, preset};
    cpu::gemm_bf16_shared(f(inp), IC, N, IC, &product, 1);
  }
  void matmul_backward_input(Tensor dinp, ConstTensor dout, ConstTensor weight, int N, int IC, int OC,
                             bool accumulate) override {
    if (!bf16_) return cpu::matmul_backward_input(f(dinp), f(dout), f(weight), N, IC, OC, accumulate);
    cpu::gemm_bf16(f(dinp), IC, f(dout), OC, N, packed(weight, IC, OC, /*backward=*/true).backward, accumulate);
  }
  void lora_forward(const LoraInput& in, const LoraForwardBranch* branches, int count) override {
    for (int i = 0; i < count; ++i) {
      const LoraForwardBranch& b = branches[i];
      cpu::lora_forward(f(b.out), b.ld, f(b.xa), f(in.inp), b.A, b.B, in.scale, in.dropout_p, in.key, b.site,
                        f(in.scratch), in.N, in.IC, b.OC, in.R);
    }
  }
  void lora_backward(Tensor dinp, const LoraInput& in, const LoraBackwardBranch* branches, int count) override {
    for (int i = 0; i < count; ++i) {
      const LoraBackwardBranch& b = branches[i];
      cpu::lora_backward(f(dinp), b.dA, b.dB, f(b.dout), b.ld, f(in.inp), f(b.xa), b.A, b.B, in.scale, in.dropout_p,
                         in.key, b.site, f(in.scratch), in.N, in.IC, b.OC, in.R);
    }
  }
  void lora_merge(Tensor weight, const float* A, const float* B, float scale, float sign, int IC, int OC,
                  int R) override {
    forget_packed(weight, (size_t)IC * OC * sizeof(float));
    cpu::lora_merge(f(weight), A, B, scale, sign, IC, OC, R);
  }
  void residual_rmsnorm_forward(Tensor resid_out, Tensor norm_out, float* rstd, ConstTensor a, ConstTensor b,
                                const float* weight, int N, int C, float eps) override {
    if (bf16_)  // host/cpu_fast_ops.h
      return cpu::residual_rmsnorm_forward_fast(f(resid_out), f(norm_out), rstd, f(a), f(b), weight, N, C, eps);
    cpu::residual_rmsnorm_forward(f(resid_out), f(norm_out), rstd, f(a), f(b), weight, N, C, eps);
  }
  void lm_head_crossentropy(float* losses, Tensor d_hidden, ConstTensor hidden, ConstTensor lm_head,
                            const int* rows, const int* targets, int M, int N, int C, int V, float dloss) override {
    if (!bf16_)
      return cpu::lm_head_crossentropy(losses, f(d_hidden), f(hidden), f(lm_head), rows, targets, M, N, C, V, dloss);
    // The LM head is a frozen base weight [V, C]: bf16 GEMMs as every linear layer's.
    const cpu::LinearGemms bf16{
        [&](float* out, const float* x, int m) { cpu::gemm_bf16(out, V, x, C, m, packed(lm_head, C, V).forward, false); },
        [&](float* dx, const float* dy, int m) {
          cpu::gemm_bf16(dx, C, dy, V, m, packed(lm_head, C, V, /*backward=*/true).backward, false);
        },
        cpu::crossentropy_fast};
    cpu::lm_head_crossentropy(bf16, losses, f(d_hidden), f(hidden), rows, targets, M, N, C, V, dloss);
  }
  void pool_forward(float* pooled, ConstTensor hidden, const float* weights, int B, int T, int C) override {
    cpu::pool_forward(pooled, f(hidden), weights, B, T, C);
  }
  void pool_backward(Tensor d_hidden, const float* d_pooled, const float* weights, int B, int T, int C) override {
    cpu::pool_backward(f(d_hidden), d_pooled, weights, B, T, C);
  }
  void latent_pool_forward(float* pooled, float* cache, ConstTensor hidden, const LatentRows& rows,
                           const float* weights, const float* params, const LatentAttentionConfig& cfg,
                           int C) override {
    l2v::latent_pool_forward(pooled, cache, f(hidden), rows, weights, params, cfg, C);
  }
  void latent_pool_backward(Tensor d_hidden, float* dparams, const float* d_pooled, const LatentRows& rows,
                            const float* weights, const float* cache, const float* params,
                            const LatentAttentionConfig& cfg, int C) override {
    l2v::latent_pool_backward(f(d_hidden), dparams, d_pooled, rows, weights, cache, params, cfg, C);
  }
  void mean_loss(double* loss, const float* losses, int n, double normalizer) override {
    cpu::mean_loss(loss, losses, n, normalizer);
  }
  void contrastive_loss(double* loss, float* d_queries, float* d_positives, float* d_negatives, const float* queries,
                        const float* positives, const float* negatives, int n, int C, int ld, float scale,
                        bool in_batch_negatives) override {
    cpu::contrastive_loss(loss, d_queries, d_positives, d_negatives, queries, positives, negatives, n, C, ld, scale,
                          in_batch_negatives);
  }
  void range_push(const char*) override {}
  void range_pop() override {}
  void adamw_step(const cpu::OptimizerTensor* tensors, int count, const cpu::AdamWStepArgs& args,
                  float* norm) override {
    *norm = cpu::adamw_step(tensors, count, args);
  }
 private:
  // This backend's tensors are fp32 host arrays.
  static float* f(Tensor t) { return reinterpret_cast<float*>(t); }
  static const float* f(ConstTensor t) { return reinterpret_cast<const float*>(t); }

  // The bf16 tiles of a weight [OC, IC]: forward (B = W^T) at its first GEMM, backward (B = W) at its first
  // backward GEMM.
  struct PackedWeight {
    int IC = 0, OC = 0;
    cpu::PackedBf16 forward, backward;
    size_t bytes() const { return forward.bytes() + backward.bytes(); }
  };

  const PackedWeight& packed(ConstTensor weight, int IC, int OC, bool backward = false) {
    std::lock_guard<std::mutex> lock(mutex_);
    const void* key = weight;
    if (released_.count(const_cast<TensorElements*>(weight))) {
      const auto it = packed_.find(key);
      if (backward || it == packed_.end() || it->second.IC != IC || it->second.OC != OC)
        throw std::logic_error("a weight kept only in its forward form (keep_only_forward_form) was used otherwise");
      return it->second;
    }
    auto it = packed_.find(key);
    if (it != packed_.end() && (it->second.IC != IC || it->second.OC != OC)) {
      account(-(long)it->second.bytes());
      packed_.erase(it);
      it = packed_.end();
    }
    if (it == packed_.end()) {
      it = packed_.emplace(key, PackedWeight{}).first;
      it->second.IC = IC;
      it->second.OC = OC;
    }
    PackedWeight& p = it->second;
    const size_t before = p.bytes();
    if (!p.forward.tiles) p.forward = cpu::pack_bf16_transposed(f(weight), OC, IC);
    if (backward && !p.backward.tiles) p.backward = cpu::pack_bf16(f(weight), OC, IC);
    account((long)(p.bytes() - before));
    return p;
  }
  void forget_packed(const void* dst, size_t bytes) {
    if (!bf16_) return;
    std::lock_guard<std::mutex> lock(mutex_);
    forget_packed_locked(dst, bytes);
  }
  // Throws when [p, p + bytes) overlaps a weight whose fp32 values were given back.
  void check_not_released(const void* p, size_t bytes, const char* what) const {
    std::lock_guard<std::mutex> lock(mutex_);
    check_not_released_locked(p, bytes, what);
  }
  void check_not_released_locked(const void* p, size_t bytes, const char* what) const {
    if (released_.empty()) return;
    char* lo = static_cast<char*>(const_cast<void*>(p));
    // Allocations do not overlap: the released one starting last at or before lo, and any starting inside.
    auto it = released_.upper_bound(lo);
    bool overlaps = it != released_.end() && static_cast<char*>(it->first) < lo + bytes;
    if (it != released_.begin()) {
      --it;
      overlaps |= static_cast<char*>(it->first) + sizes_.at(it->first) > lo;
    }
    if (overlaps)
      throw std::logic_error(std::string(what) +
                             ": the weight's fp32 values were given back (keep_only_forward_form: inference)");
  }
  // Drops every packed weight overlapping [dst, dst + bytes) (about to be written).
  void forget_packed_locked(const void* dst, size_t bytes) {
    check_not_released_locked(dst, bytes, "a write");
    if (packed_.empty()) return;
    const char* lo = static_cast<const char*>(dst);
    auto it = packed_.lower_bound(lo);
    if (it != packed_.begin()) --it;  // a weight that starts below dst may reach into it
    while (it != packed_.end() && static_cast<const char*>(it->first) < lo + bytes) {
      const char* w = static_cast<const char*>(it->first);
      if (w + (size_t)it->second.IC * it->second.OC * sizeof(float) > lo) {
        account(-(long)it->second.bytes());
        it = packed_.erase(it);
      } else {
        ++it;
      }
    }
  }
  void account(long delta) {  // under mutex_
    memory_.current = (size_t)((long)memory_.current + delta);
    memory_.peak = std::max(memory_.peak, memory_.current);
  }

  const bool bf16_;
  mutable std::mutex mutex_;
  std::unordered_map<void*, size_t> sizes_;
  std::map<const void*, PackedWeight> packed_;  // by the weight's address
  std::map<void*, size_t> released_;  // keep_only_forward_form: allocation -> bytes given back
  BackendMemory memory_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(CpuPrecision precision) { return std::make_unique<CpuBackend>(precision); }

BackendMemory cpu_backend_memory(const Backend& backend) {
  const auto* cpu = dynamic_cast<const CpuBackend*>(&backend);
  if (!cpu) throw std::runtime_error(std::string("cpu_backend_memory: the ") + backend.name() + " backend is not the cpu backend");
  return cpu->memory();
}

}  // namespace l2v
