// The seam between the model schedule (model/model.cpp, written once) and the hardware. A backend
// owns memory and implements every op of host/cpu_ops.h with the same signature and semantics; the
// CPU backend (host/cpu_backend.h) forwards to those reference functions, the CUDA backend launches
// kernels on device pointers. All pointers passed to ops are backend memory.
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "host/cpu_ops.h"
#include "host/philox.h"
#include "model/latent_attention.h"

namespace l2v {

// A tensor in backend memory: its elements are in the backend's tensor precision (fp32 on the CPU, fp32
// or bf16 on CUDA), so a float* to them would invite `p + n`, which is wrong for bf16. The handle is a
// pointer to an incomplete type: it can be stored, passed and compared, never dereferenced or offset
// (`t + n` does not compile); tensor_offset(backend, t, n) is the one way to address element n.
struct TensorElements;
using Tensor = TensorElements*;
using ConstTensor = const TensorElements*;

// The LoRA adapters of linear layers that read one input (q, k and v of x1; gate and up of x2; or one layer
// alone) go to Backend::lora_forward / lora_backward together, so that a backend can read the input, and
// write its gradient, once for all of them. What they share:
struct LoraInput {
  ConstTensor inp;  // [N, IC]
  int N, IC, R;
  float scale;      // PEFT's alpha / r (or alpha / sqrt(r))
  float dropout_p;  // on the adapter's input; each branch draws its own mask (its site)
  DropoutKey key;
  Tensor scratch;   // [N, IC] for the dropped input where lora_dropout_needs_scratch(), else unused
};
// At most this many branches per call (q, k, v).
constexpr int kMaxLoraBranches = 3;
// One adapter of Backend::lora_forward: out [N, OC] += scale dropout(inp) A^T B^T, xa [N, R] = dropout(inp) A^T
// saved for the backward. A [R, IC], B [OC, R] are fp32. out's rows are ld >= OC elements apart: the layer's
// output may be a column block of a fused product (gate and up in gate|up's [N, 2F]).
struct LoraForwardBranch {
  Tensor out;
  Tensor xa;
  const float* A;
  const float* B;
  uint32_t site;  // the dropout mask's RNG site
  int OC;
  int ld;         // out's row stride
};
// One adapter of Backend::lora_backward, from its output's gradient dout [N, OC] (rows ld >= OC apart) and the
// forward's xa: dA [R, IC] and dB [OC, R] are accumulated (+=).
struct LoraBackwardBranch {
  ConstTensor dout;
  ConstTensor xa;
  const float* A;
  const float* B;
  float* dA;
  float* dB;
  uint32_t site;
  int OC;
  int ld;  // dout's row stride
};

// What Backend::run_as_graph has done since the backend was made.
struct GraphStats {
  long launches = 0;        // works launched as graphs
  long instantiations = 0;  // of which through a newly instantiated executable graph
  long updates = 0;         // of which through a kept one updated in place (cudaGraphExecUpdate)
  long broken = 0;          // captures abandoned (run_as_graph returned false)
  std::string last_break;   // why the last one was
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual const char* name() const = 0;
  // True when backend memory is ordinary host memory (lets loaders convert straight into it).
  virtual bool is_host_memory() const = 0;
  // True when lora_forward / lora_backward with dropout need their `scratch` [N, IC] tensor for the
  // dropped input (the CPU reference); the CUDA kernels apply the mask in registers and take none.
  virtual bool lora_dropout_needs_scratch() const = 0;

  // Two classes of buffers. "Tensors" — activations, their gradients and the frozen base weights of the
  // linear layers and embeddings — are stored in the backend's precision: fp32 on the CPU, fp32 or bf16 on
  // CUDA; their Tensor handles are only ever read through ops and upload_tensor/download_tensor.
  // Everything else is always fp32: norm weights, RoPE tables, rstd, lse, losses, the LoRA master weights,
  // their gradients and the optimizer moments.
  virtual size_t tensor_element_bytes() const = 0;
  // True when the backend keeps bf16 copies of the base weights beside them (the CPU backend in bf16,
  // host/cpu_backend.h): the memory plan counts them.
  virtual bool packs_bf16_weights() const { return false; }
  // The device's peak FLOP/s in this backend's precision (dense bf16 tensor cores, or fp32), 0 when not
  // known (the CPU, an unlisted GPU): the trainer's progress line shows MFU against it.
  virtual double peak_flops() const { return 0.0; }
  // Inference: the weight [OC, IC] (one whole allocation) is from now on only read by matmul_forward. A
  // backend that multiplies another form of it (the CPU backend's bf16 tiles) makes that form now and gives
  // the original's memory back; any other read or write of the weight then throws std::logic_error. Others
  // do nothing.
  virtual void keep_only_forward_form(ConstTensor weight, int IC, int OC) {
    (void)weight;
    (void)IC;
    (void)OC;
  }
  virtual void upload_tensor(Tensor dst, const float* host, size_t n) = 0;     // converts from fp32
  virtual void download_tensor(float* host, ConstTensor src, size_t n) = 0;   // converts to fp32

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

  // CUDA graphs. run_as_graph queues `work` as one graph: every op it queues is captured on the backend's
  // stream instead of launched, then the graph is launched — through the executable graph kept for
  // `slot` with the same number of nodes, updated in place with the new parameters (kernel arguments,
  // shapes, pointers), or a newly instantiated one. Launching thousands of kernels becomes one launch,
  // and the host's cost per op becomes the capture's. `work` may upload what fits the backend's pinned
  // arena, and must not wait for the device or allocate: a download, an allocation, a scratch buffer
  // that has to grow, a large upload (or any exception) abandons the capture, and run_as_graph returns
  // false having queued nothing — the caller then runs `work` directly, which grows the buffers for the
  // next capture. So `work` must be safe to run twice on the host (it is, when it only computes its
  // inputs and queues ops). Backends without graphs (the CPU) return false at once.
  virtual bool run_as_graph(int slot, const std::function<void()>& work) {
    (void)slot;
    (void)work;
    return false;
  }
  virtual GraphStats graph_stats() const { return {}; }

  // Ops: see host/cpu_ops.h for the contract of each. Tensor / ConstTensor arguments are tensors (in the
  // backend's precision), float* ones fp32 buffers.
  virtual void embedding_forward(Tensor out, const int* ids, ConstTensor table, int N, int C) = 0;
  virtual void rmsnorm_forward(Tensor out, float* rstd, ConstTensor inp, const float* weight, int N, int C,
                               float eps) = 0;
  virtual void rmsnorm_backward(Tensor dinp, ConstTensor dout, ConstTensor inp, const float* weight,
                                const float* rstd, int N, int C) = 0;
  // RoPE on rows ld apart (x and out); attention with q, k, v (dq, dk, dv) rows `ld` apart and out, dout packed
  // (host/qkv_strides.h: the model passes the column blocks of its fused q|k|v product).
  virtual void rope_forward(Tensor out, ConstTensor x, int ld, const float* cos, const float* sin, int N, int T,
                            int nh, int D) = 0;
  virtual void rope_backward(Tensor dx, ConstTensor dout, int ld, const float* cos, const float* sin, int N, int T,
                             int nh, int D) = 0;
  virtual void attention_forward(Tensor out, float* lse, ConstTensor q, ConstTensor k, ConstTensor v, QkvStrides ld,
                                 const int* key_mask, int B, int T, int H, int KV, int D, bool causal,
                                 float dropout_p, DropoutKey key, uint32_t site) = 0;
  virtual void attention_backward(Tensor dq, Tensor dk, Tensor dv, ConstTensor dout, ConstTensor out,
                                  const float* lse, ConstTensor q, ConstTensor k, ConstTensor v, QkvStrides ld,
                                  const int* key_mask, int B, int T, int H, int KV, int D, bool causal,
                                  float dropout_p, DropoutKey key, uint32_t site) = 0;
  virtual void swiglu_forward(Tensor out, ConstTensor gate_up, long N, int F) = 0;
  virtual void swiglu_backward(Tensor d_gate_up, ConstTensor dout, ConstTensor gate_up, long N, int F) = 0;
  // cpu::matmul_forward with its residual: out [N, OC] = residual + inp W^T + bias (residual and bias may be
  // null; residual may be out itself). The CUDA backend adds bias and residual in the GEMM's epilogue
  // (cuBLASLt).
  virtual void matmul_forward(Tensor out, ConstTensor inp, ConstTensor weight, ConstTensor bias, int N, int IC,
                              int OC, ConstTensor residual) = 0;
  virtual void matmul_backward_input(Tensor dinp, ConstTensor dout, ConstTensor weight, int N, int IC, int OC,
                                     bool accumulate) = 0;
  // cpu::lora_forward of each branch on the shared input, and cpu::lora_backward of each accumulating into the
  // one dinp [N, IC] (branches in order); 1 <= count <= kMaxLoraBranches.
  virtual void lora_forward(const LoraInput& in, const LoraForwardBranch* branches, int count) = 0;
  virtual void lora_backward(Tensor dinp, const LoraInput& in, const LoraBackwardBranch* branches, int count) = 0;
  virtual void lora_merge(Tensor weight, const float* A, const float* B, float scale, float sign, int IC, int OC,
                          int R) = 0;
  virtual void residual_rmsnorm_forward(Tensor resid_out, Tensor norm_out, float* rstd, ConstTensor a,
                                        ConstTensor b, const float* weight, int N, int C, float eps) = 0;
  virtual void lm_head_crossentropy(float* losses, Tensor d_hidden, ConstTensor hidden, ConstTensor lm_head,
                                    const int* rows, const int* targets, int M, int N, int C, int V, float dloss) = 0;
  // loss (one double) and losses (fp32 [n]) in backend memory.
  virtual void mean_loss(double* loss, const float* losses, int n, double normalizer) = 0;
  // NVTX-style ranges around layers and major ops, for profilers (nsys); nothing on the CPU.
  virtual void range_push(const char* name) = 0;
  virtual void range_pop() = 0;
  // pooled and d_pooled are fp32 [B, C], weights fp32 [B*T]; hidden and d_hidden are tensors.
  virtual void pool_forward(float* pooled, ConstTensor hidden, const float* weights, int B, int T, int C) = 0;
  virtual void pool_backward(Tensor d_hidden, const float* d_pooled, const float* weights, int B, int T, int C) = 0;
  // NV-Embed's latent-attention pooling (model/latent_attention.h: the host latent_pool_forward /
  // latent_pool_backward are the reference) of hidden [B*T, C] at the rows' positions; weights fp32 [B*T];
  // params / dparams the block's flat fp32 parameters and their (accumulated) gradients; cache holds
  // latent_attention_cache_floats(M) fp32 values, or is nullptr (inference). rows and weights in backend memory.
  virtual void latent_pool_forward(float* pooled, float* cache, ConstTensor hidden, const LatentRows& rows,
                                   const float* weights, const float* params, const LatentAttentionConfig& cfg,
                                   int C) = 0;
  virtual void latent_pool_backward(Tensor d_hidden, float* dparams, const float* d_pooled, const LatentRows& rows,
                                    const float* weights, const float* cache, const float* params,
                                    const LatentAttentionConfig& cfg, int C) = 0;
  // cpu::contrastive_loss on fp32 rows in backend memory: *loss is one double in backend memory, written
  // without waiting (read it when needed); d_queries == nullptr asks for the loss only.
  virtual void contrastive_loss(double* loss, float* d_queries, float* d_positives, float* d_negatives,
                                const float* queries, const float* positives, const float* negatives, int n, int C,
                                int ld, float scale, bool in_batch_negatives) = 0;
  // cpu::adamw_step over a list of fp32 tensors in backend memory (scaling, global norm, clipping, AdamW),
  // writing the norm to *norm (one fp32 value in backend memory) without waiting for it: the caller reads
  // it when it needs it. The list's host array may change between calls; the CUDA backend runs the whole
  // step in two launches.
  virtual void adamw_step(const cpu::OptimizerTensor* tensors, int count, const cpu::AdamWStepArgs& args,
                          float* norm) = 0;
};

// The tensor `elements` elements past `base`, in `backend`'s tensor precision.
inline Tensor tensor_offset(const Backend& backend, Tensor base, size_t elements) {
  return reinterpret_cast<Tensor>(reinterpret_cast<char*>(base) + elements * backend.tensor_element_bytes());
}
inline ConstTensor tensor_offset(const Backend& backend, ConstTensor base, size_t elements) {
  return tensor_offset(backend, const_cast<Tensor>(base), elements);
}

}  // namespace l2v
