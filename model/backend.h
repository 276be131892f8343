// The seam between the model schedule (model/model.cpp, written once) and the hardware. A backend
// owns memory and implements every op of host/cpu_ops.h with the same signature and semantics; the
// CPU backend (host/cpu_backend.h) forwards to those reference functions, the CUDA backend launches
// kernels on device pointers. All pointers passed to ops are backend memory.
#pragma once
#include <cstddef>
#include <cstdint>

#include "host/cpu_ops.h"
#include "host/philox.h"

namespace l2v {

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // True when backend memory is ordinary host memory (lets loaders convert straight into it).
  virtual bool is_host_memory() const = 0;

  // Two classes of buffers. "Tensors" — activations, their gradients and the frozen base weights of the
  // linear layers and embeddings — are stored in the backend's precision: fp32 on the CPU, fp32 or bf16 on
  // CUDA; their float* pointers are handles, only ever read through ops and upload_tensor/download_tensor.
  // Everything else is always fp32: norm weights, RoPE tables, rstd, lse, losses, the LoRA master weights,
  // their gradients and the optimizer moments.
  virtual size_t tensor_element_bytes() const = 0;
  // The device's peak FLOP/s in this backend's precision (dense bf16 tensor cores, or fp32), 0 when not
  // known (the CPU, an unlisted GPU): the trainer's progress line shows MFU against it.
  virtual double peak_flops() const { return 0.0; }
  virtual void upload_tensor(float* dst, const float* host, size_t n) = 0;     // converts from fp32
  virtual void download_tensor(float* host, const float* src, size_t n) = 0;   // converts to fp32

  // Memory. alloc returns zeroed memory or throws std::bad_alloc / std::runtime_error. Copies are ordered
  // with the ops: upload may return before its copy has run (the CUDA backend queues small uploads from a
  // pinned arena without waiting), but the host buffer can be reused at once; download returns with the
  // data, after everything queued before it has run — the only calls that make the host wait.
  virtual void* alloc(size_t bytes) = 0;
  virtual void release(void* ptr) = 0;
  virtual void upload(void* dst, const void* host_src, size_t bytes) = 0;
  virtual void download(void* host_dst, const void* src, size_t bytes) = 0;
  virtual void copy(void* dst, const void* src, size_t bytes) = 0;
  virtual void zero(void* dst, size_t bytes) = 0;

  // Ops: see host/cpu_ops.h for the contract of each.
  virtual void embedding_forward(float* out, const int* ids, const float* table, int N, int C) = 0;
  virtual void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N, int C,
                               float eps) = 0;
  virtual void rmsnorm_backward(float* dinp, const float* dout, const float* inp, const float* weight,
                                const float* rstd, int N, int C) = 0;
  virtual void rope_forward(float* out, const float* x, const float* cos, const float* sin, int N, int T, int nh,
                            int D) = 0;
  virtual void rope_backward(float* dx, const float* dout, const float* cos, const float* sin, int N, int T,
                             int nh, int D) = 0;
  virtual void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v,
                                 const int* key_mask, int B, int T, int H, int KV, int D, bool causal,
                                 float dropout_p, DropoutKey key, uint32_t site) = 0;
  virtual void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out,
                                  const float* lse, const float* q, const float* k, const float* v,
                                  const int* key_mask, int B, int T, int H, int KV, int D, bool causal,
                                  float dropout_p, DropoutKey key, uint32_t site) = 0;
  virtual void swiglu_forward(float* out, const float* gate, const float* up, long n) = 0;
  virtual void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up,
                               long n) = 0;
  virtual void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IC,
                              int OC) = 0;
  virtual void matmul_backward_input(float* dinp, const float* dout, const float* weight, int N, int IC, int OC,
                                     bool accumulate) = 0;
  virtual void lora_forward(float* out, float* xa, const float* inp, const float* A, const float* B, float scale,
                            float dropout_p, DropoutKey key, uint32_t site, float* scratch, int N, int IC, int OC,
                            int R) = 0;
  virtual void lora_backward(float* dinp, float* dA, float* dB, const float* dout, const float* inp,
                             const float* xa, const float* A, const float* B, float scale, float dropout_p,
                             DropoutKey key, uint32_t site, float* scratch, int N, int IC, int OC, int R) = 0;
  virtual void lora_merge(float* weight, const float* A, const float* B, float scale, float sign, int IC, int OC,
                          int R) = 0;
  virtual void residual_forward(float* out, const float* a, const float* b, long n) = 0;
  virtual void residual_rmsnorm_forward(float* resid_out, float* norm_out, float* rstd, const float* a,
                                        const float* b, const float* weight, int N, int C, float eps) = 0;
  virtual void lm_head_crossentropy(float* losses, float* d_hidden, const float* hidden, const float* lm_head,
                                    const int* rows, const int* targets, int M, int N, int C, int V, float dloss) = 0;
  // NVTX-style ranges around layers and major ops, for profilers (nsys); nothing on the CPU.
  virtual void range_push(const char* name) = 0;
  virtual void range_pop() = 0;
  // pooled and d_pooled are fp32 [B, C], weights fp32 [B*T]; hidden and d_hidden are tensors.
  virtual void pool_forward(float* pooled, const float* hidden, const float* weights, int B, int T, int C) = 0;
  virtual void pool_backward(float* d_hidden, const float* d_pooled, const float* weights, int B, int T, int C) = 0;
  // cpu::adamw_step over a list of fp32 tensors in backend memory (scaling, global norm, clipping, AdamW),
  // writing the norm to *norm (one fp32 value in backend memory) without waiting for it: the caller reads
  // it when it needs it. The list's host array may change between calls; the CUDA backend runs the whole
  // step in two launches.
  virtual void adamw_step(const cpu::OptimizerTensor* tensors, int count, const cpu::AdamWStepArgs& args,
                          float* norm) = 0;
};

}  // namespace l2v
