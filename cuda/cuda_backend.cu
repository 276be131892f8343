#include "cuda/cuda_backend.h"

#include <cstdio>
#include <cstring>
#include <set>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/adamw.cuh"
#include "cuda/attention.cuh"
#include "cuda/attention_mma.cuh"
#include "cuda/contrastive.cuh"
#if defined(L2V_WITH_CUDNN)
#include "cuda/attention_cudnn.h"
#endif
#include "cuda/device_scratch.h"
#include "cuda/elementwise.cuh"
#include "cuda/embedding.cuh"
#include "cuda/graph_runner.h"
#include "cuda/latent_attention.cuh"
#include "cuda/launch.h"
#include "cuda/lm_head.cuh"
#include "cuda/lora.cuh"
#include "cuda/matmul.cuh"
#include "cuda/pooling.cuh"
#include "cuda/rmsnorm.cuh"
#include "cuda/rope.cuh"
#include "cuda/swiglu.cuh"
#include "cuda/upload_arena.h"

namespace l2v {
namespace {

#if !defined(L2V_WITH_CUDNN)
[[noreturn]] void refuse_cudnn_not_built() {
#if defined(L2V_EMULATE)
  throw std::invalid_argument("attention implementation 'cudnn' is not built: the CPU emulator cannot run cuDNN (use mma "
                              "or simt here; cuDNN SDPA is in the nvcc build where cuDNN is installed)");
#else
  throw std::invalid_argument("attention implementation 'cudnn' is not built: this build found no cuDNN 9 (cudnn.h and "
                              "libcudnn under CUDA_HOME); use mma or simt");
#endif
}
#endif


// T is the tensor storage type (float or __nv_bfloat16); the interface's Tensor handles are reinterpreted
// as T* (t()), fp32 buffers are used as they are.
template <typename T>
class CudaBackend final : public Backend {
 public:
  explicit CudaBackend(AttentionImpl attention) : attention_(attention) {
    if (attention_ == AttentionImpl::kMma && !cuda::attention_mma_storage<T>())
      throw std::invalid_argument(
          "--attention_impl mma: the tensor-core kernels store bf16, this backend fp32 (use --precision bf16, or "
          "--attention_impl simt)");
#if defined(L2V_WITH_CUDNN)
    if (attention_ == AttentionImpl::kCudnn && !std::is_same<T, __nv_bfloat16>::value)
      throw std::invalid_argument(
          "--attention_impl cudnn: cuDNN's SDPA runs on bf16 storage, this backend stores fp32 (use --precision bf16, "
          "or --attention_impl simt)");
#else
    if (attention_ == AttentionImpl::kCudnn) refuse_cudnn_not_built();
#endif
    CUDA_CHECK(cudaStreamCreate(&stream_));
    graphs_ = std::make_unique<cuda::GraphRunner>(stream_);
    int device = 0;
    cudaDeviceProp prop{};
    if (cudaGetDevice(&device) == cudaSuccess && cudaGetDeviceProperties(&prop, device) == cudaSuccess)
      peak_flops_ = gpu_peak_flops(prop.name, !std::is_same<T, float>::value);
    cudaGetLastError();
    CUBLAS_CHECK(cublasCreate(&cublas_));
    CUBLAS_CHECK(cublasSetStream(cublas_, stream_));
    CUBLAS_CHECK(cublasLtCreate(&lt_));
#if defined(L2V_WITH_CUDNN)
    if (attention_ == AttentionImpl::kCudnn) cudnn_ = std::make_unique<cuda::CudnnAttention>(stream_);
#endif
  }
  ~CudaBackend() override {
    cudaStreamSynchronize(stream_);  // queued uploads still read the arena
#if defined(L2V_WITH_CUDNN)
    cudnn_.reset();
#endif
    optimizer_list_.reset();
    graphs_.reset();
    cublasLtDestroy(lt_);
    cublasDestroy(cublas_);
    cudaStreamDestroy(stream_);
  }

  const char* name() const override { return std::is_same<T, float>::value ? "cuda (fp32)" : "cuda (bf16)"; }
  cudaStream_t stream() const { return stream_; }
  double peak_flops() const override { return peak_flops_; }
  bool is_host_memory() const override { return false; }
  bool lora_dropout_needs_scratch() const override { return false; }

  // Inside a graph capture nothing is allocated (run_as_graph then runs the work directly), and a release
  // waits until the capture is over, which it abandons.
  void* alloc(size_t bytes) override {
    if (graphs_->capturing())
      throw std::runtime_error("backend memory allocated inside a CUDA graph capture (" + std::to_string(bytes) +
                               " bytes)");
    void* p = nullptr;
    CUDA_CHECK(cudaMalloc(&p, bytes == 0 ? 1 : bytes));
    CUDA_CHECK(cudaMemsetAsync(p, 0, bytes, stream_));
    return p;
  }
  void release(void* ptr) override {
    if (!graphs_->capturing()) {
      cudaFree(ptr);
      return;
    }
    graphs_->abandon("backend memory released inside a CUDA graph capture");
    released_in_capture_.push_back(ptr);
  }
  bool run_as_graph(int slot, const std::function<void()>& work) override {
    const bool launched = graphs_->run(slot, work);
    for (void* p : released_in_capture_) cudaFree(p);  // the capture was abandoned: nothing uses them
    released_in_capture_.clear();
    return launched;
  }
  GraphStats graph_stats() const override { return graphs_->stats(); }
  // Host buffers are pageable and may be reused right after the call. Small uploads go through the
  // pinned arena and do not wait; larger ones (weights at load time) wait for their copy.
  void upload(void* dst, const void* src, size_t bytes) override {
    if (graphs_->capturing() && !uploads_.fits_without_waiting(bytes))
      throw std::runtime_error("an upload of " + std::to_string(bytes) +
                               " bytes inside a CUDA graph capture does not fit the pinned arena's free part");
    if (uploads_.upload(dst, src, bytes, stream_)) return;
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyHostToDevice, stream_));
    synchronize();
  }
  // A copy to pageable host memory returns once it has completed (CUDA's API synchronization behavior),
  // and so has everything queued on the stream before it: the one wait of a download.
  void download(void* dst, const void* src, size_t bytes) override {
    if (graphs_->capturing()) throw std::runtime_error("a download inside a CUDA graph capture");
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream_));
    uploads_.synchronized();
  }
  void copy(void* dst, const void* src, size_t bytes) override {
    CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice, stream_));
  }
  void zero(void* dst, size_t bytes) override { CUDA_CHECK(cudaMemsetAsync(dst, 0, bytes, stream_)); }

  size_t tensor_element_bytes() const override { return sizeof(T); }
  // Conversions run on the device through an fp32 staging buffer (round to nearest even, as torch).
  // In pieces of at most cuda::kStagingFloats, so the staging buffer stays small (cuda/workspace_sizes.h).
  void upload_tensor(Tensor dst, const float* host, size_t n) override {
    if constexpr (std::is_same<T, float>::value) {
      upload(dst, host, n * sizeof(float));
    } else {
      float* staging = static_cast<float*>(staging_.get(cuda::staging_bytes(n)));
      for (size_t at = 0; at < n; at += cuda::kStagingFloats) {
        const size_t k = std::min(cuda::kStagingFloats, n - at);
        upload(staging, host + at, k * sizeof(float));
        cuda::convert_cuda(t(dst) + at, staging, (long)k, stream_);  // stream order protects `staging`
      }
    }
  }
  void download_tensor(float* host, ConstTensor src, size_t n) override {
    if constexpr (std::is_same<T, float>::value) {
      download(host, src, n * sizeof(float));
    } else {
      float* staging = static_cast<float*>(staging_.get(cuda::staging_bytes(n)));
      for (size_t at = 0; at < n; at += cuda::kStagingFloats) {
        const size_t k = std::min(cuda::kStagingFloats, n - at);
        cuda::convert_cuda(staging, t(src) + at, (long)k, stream_);
        download(host + at, staging, k * sizeof(float));
      }
    }
  }

  void embedding_forward(Tensor out, const int* ids, ConstTensor table, int N, int C) override {
    cuda::embedding_forward_cuda(t(out), ids, t(table), N, C, stream_);
  }
  void rmsnorm_forward(Tensor out, float* rstd, ConstTensor inp, const float* weight, int N, int C,
                       float eps) override {
    cuda::rmsnorm_forward_cuda(t(out), rstd, t(inp), weight, N, C, eps, stream_);
  }
  void rmsnorm_backward(Tensor dinp, ConstTensor dout, ConstTensor inp, const float* weight, const float* rstd, int N,
                        int C) override {
    cuda::rmsnorm_backward_cuda(t(dinp), t(dout), t(inp), weight, rstd, N, C, stream_);
  }
  void rope_forward(Tensor out, ConstTensor x, int ld, const float* cos, const float* sin, int N, int T_, int nh,
                    int D) override {
    cuda::rope_forward_cuda(t(out), t(x), ld, cos, sin, N, T_, nh, D, stream_);
  }
  void rope_backward(Tensor dx, ConstTensor dout, int ld, const float* cos, const float* sin, int N, int T_, int nh,
                     int D) override {
    cuda::rope_backward_cuda(t(dx), t(dout), ld, cos, sin, N, T_, nh, D, stream_);
  }
  void attention_forward(Tensor out, float* lse, ConstTensor q, ConstTensor k, ConstTensor v, QkvStrides ld,
                         const int* key_mask, int B, int T_, int H, int KV, int D, bool causal, float dropout_p,
                         DropoutKey key, uint32_t site) override {
    [[maybe_unused]] const Kernels kernels = attention_kernels(D);
#if defined(L2V_WITH_CUDNN)
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
      if (kernels == Kernels::kCudnn) {
        const CudnnQkv in = cudnn_qkv(q, k, v, ld, (long)B * T_, H, KV, D, 0);
        cudnn_->forward(t(out), lse, in.q, in.k, in.v, key_mask, B, T_, H, KV, D, causal, dropout_p, key, site);
        return;
      }
    }
#endif
    if constexpr (cuda::attention_mma_storage<T>()) {
      if (kernels == Kernels::kMma) {
        cuda::attention_mma_forward_cuda(t(out), lse, t(q), t(k), t(v), ld, key_mask, B, T_, H, KV, D, causal,
                                         dropout_p, key, site, stream_);
        return;
      }
    }
    cuda::attention_forward_cuda(t(out), lse, t(q), t(k), t(v), ld, key_mask, B, T_, H, KV, D, causal, dropout_p, key,
                                 site, stream_);
  }
  void attention_backward(Tensor dq, Tensor dk, Tensor dv, ConstTensor dout, ConstTensor out, const float* lse,
                          ConstTensor q, ConstTensor k, ConstTensor v, QkvStrides ld, const int* key_mask, int B,
                          int T_, int H, int KV, int D, bool causal, float dropout_p, DropoutKey key,
                          uint32_t site) override {
    [[maybe_unused]] const Kernels kernels = attention_kernels(D);
#if defined(L2V_WITH_CUDNN)
    if constexpr (std::is_same<T, __nv_bfloat16>::value) {
      if (kernels == Kernels::kCudnn) {
        const long N = (long)B * T_;
        const CudnnQkv in = cudnn_qkv(q, k, v, ld, N, H, KV, D, 0), grad = cudnn_qkv(dq, dk, dv, ld, N, H, KV, D, 1);
        cudnn_->backward(grad.q, grad.k, grad.v, t(dout), t(out), lse, in.q, in.k, in.v, key_mask, B, T_, H, KV, D,
                         causal, dropout_p, key, site);
        if (grad.staged) {  // the gradients back into their blocks
          copy_rows(dq, ld.q, grad.q, H * D, N, H * D);
          copy_rows(dk, ld.kv, grad.k, KV * D, N, KV * D);
          copy_rows(dv, ld.kv, grad.v, KV * D, N, KV * D);
        }
        return;
      }
    }
#endif
    float* scratch =
        static_cast<float*>(attention_scratch_.get(cuda::attention_backward_scratch_bytes(B, T_, H, KV, D)));
    if constexpr (cuda::attention_mma_storage<T>()) {
      if (kernels == Kernels::kMma) {
        cuda::attention_mma_backward_cuda(t(dq), t(dk), t(dv), t(dout), t(out), lse, t(q), t(k), t(v), ld, key_mask, B,
                                          T_, H, KV, D, causal, dropout_p, key, site, scratch, stream_);
        return;
      }
    }
    cuda::attention_backward_cuda(t(dq), t(dk), t(dv), t(dout), t(out), lse, t(q), t(k), t(v), ld, key_mask, B, T_, H,
                                  KV, D, causal, dropout_p, key, site, scratch, stream_);
  }
  void swiglu_forward(Tensor out, ConstTensor gate_up, long N, int F) override {
    cuda::swiglu_forward_cuda(t(out), t(gate_up), N, F, stream_);
  }
  void swiglu_backward(Tensor d_gate_up, ConstTensor dout, ConstTensor gate_up, long N, int F) override {
    cuda::swiglu_backward_cuda(t(d_gate_up), t(dout), t(gate_up), N, F, stream_);
  }
  void matmul_forward(Tensor out, ConstTensor inp, ConstTensor weight, ConstTensor bias, int N, int IC, int OC,
                      ConstTensor residual) override {
    cuda::matmul_forward_cuda(lt_context(), t(out), t(inp), t(weight), t(bias), N, IC, OC, t(residual));
  }
  void matmul_backward_input(Tensor dinp, ConstTensor dout, ConstTensor weight, int N, int IC, int OC,
                             bool accumulate) override {
    cuda::matmul_backward_input_cuda(cublas_, t(dinp), t(dout), t(weight), N, IC, OC, accumulate);
  }
  void lora_forward(const LoraInput& in, const LoraForwardBranch* branches, int count) override {
    cuda::LoraForwardBranch<T> br[kMaxLoraBranches];
    for (int i = 0; i < count && i < kMaxLoraBranches; ++i) {
      const LoraForwardBranch& b = branches[i];
      br[i] = {t(b.out), t(b.xa), b.A, b.B, b.site, b.OC, b.ld};
    }
    cuda::lora_forward_cuda(cublas_, lora_input(in), br, count, lora_workspace(in, branches, count));
  }
  void lora_backward(Tensor dinp, const LoraInput& in, const LoraBackwardBranch* branches, int count) override {
    cuda::LoraBackwardBranch<T> br[kMaxLoraBranches];
    for (int i = 0; i < count && i < kMaxLoraBranches; ++i) {
      const LoraBackwardBranch& b = branches[i];
      br[i] = {t(b.dout), t(b.xa), b.A, b.B, b.dA, b.dB, b.site, b.OC, b.ld};
    }
    cuda::lora_backward_cuda(cublas_, t(dinp), lora_input(in), br, count, lora_workspace(in, branches, count));
  }
  void lora_merge(Tensor weight, const float* A, const float* B, float scale, float sign, int IC, int OC,
                  int R) override {
    void* ws = lora_workspace_.get(cuda::lora_workspace_bytes<T>(1, IC, OC, R));
    cuda::lora_merge_cuda(cublas_, t(weight), A, B, scale, sign, ws, IC, OC, R);
  }
  void residual_rmsnorm_forward(Tensor resid_out, Tensor norm_out, float* rstd, ConstTensor a, ConstTensor b,
                                const float* weight, int N, int C, float eps) override {
    cuda::residual_rmsnorm_forward_cuda(t(resid_out), t(norm_out), rstd, t(a), t(b), weight, N, C, eps, stream_);
  }
  void lm_head_crossentropy(float* losses, Tensor d_hidden, ConstTensor hidden, ConstTensor lm_head, const int* rows,
                            const int* targets, int M, int N, int C, int V, float dloss) override {
    void* scratch = lm_head_scratch_.get(cuda::lm_head_crossentropy_scratch_bytes<T>(cuda::kLmHeadChunk, C, V));
    cuda::lm_head_crossentropy_cuda(cublas_, losses, t(d_hidden), t(hidden), t(lm_head), rows, targets, M, N, C, V,
                                    dloss, scratch, cuda::kLmHeadChunk);
  }
  void pool_forward(float* pooled, ConstTensor hidden, const float* weights, int B, int T_, int C) override {
    cuda::pool_forward_cuda(pooled, t(hidden), weights, B, T_, C, stream_);
  }
  void pool_backward(Tensor d_hidden, const float* d_pooled, const float* weights, int B, int T_, int C) override {
    cuda::pool_backward_cuda(t(d_hidden), d_pooled, weights, B, T_, C, stream_);
  }
  void latent_pool_forward(float* pooled, float* cache, ConstTensor hidden, const LatentRows& rows,
                           const float* weights, const float* params, const LatentAttentionConfig& cfg,
                           int C) override {
    // Sized for every position of the batch (an upper bound of the pooled ones): memory depends on B and T
    // only, as the memory plan counts it.
    const long positions = (long)rows.B * rows.T;
    const size_t bytes =
        cuda::latent_forward_scratch_layout(latent_attention_dims(cfg, C), positions, cache != nullptr).bytes;
    cuda::latent_pool_forward_cuda(cublas_, pooled, cache, t(hidden), rows, weights, params, cfg, C,
                                   latent_scratch_.get(bytes));
  }
  void latent_pool_backward(Tensor d_hidden, float* dparams, const float* d_pooled, const LatentRows& rows,
                            const float* weights, const float* cache, const float* params,
                            const LatentAttentionConfig& cfg, int C) override {
    const size_t bytes =
        cuda::latent_backward_scratch_layout(latent_attention_dims(cfg, C), (long)rows.B * rows.T).bytes;
    cuda::latent_pool_backward_cuda(cublas_, t(d_hidden), dparams, d_pooled, rows, weights, cache, params, cfg, C,
                                    latent_scratch_.get(bytes));
  }
  void mean_loss(double* loss, const float* losses, int n, double normalizer) override {
    cuda::mean_loss_cuda(loss, losses, n, normalizer, stream_);
  }
  void contrastive_loss(double* loss, float* d_queries, float* d_positives, float* d_negatives, const float* queries,
                        const float* positives, const float* negatives, int n, int C, int ld, float scale,
                        bool in_batch_negatives) override {
    const size_t bytes =
        n >= 1 && C >= 1 ? cuda::contrastive_scratch_bytes(n, C, negatives != nullptr, d_queries != nullptr) : 0;
    cuda::contrastive_loss_cuda(loss, d_queries, d_positives, d_negatives, queries, positives, negatives, n, C, ld,
                                scale, in_batch_negatives, contrastive_scratch_.get(bytes), stream_);
  }
  void range_push(const char* name) override {
#if !defined(L2V_EMULATE)
    nvtxRangePushA(name);
#else
    (void)name;
#endif
  }
  void range_pop() override {
#if !defined(L2V_EMULATE)
    nvtxRangePop();
#endif
  }
  void adamw_step(const cpu::OptimizerTensor* tensors, int count, const cpu::AdamWStepArgs& args,
                  float* norm) override {
    // The optimizer passes the same list every step: its device copy is kept.
    if (!optimizer_list_ || !optimizer_list_->matches(tensors, count))
      optimizer_list_ = std::make_unique<cuda::DeviceOptimizerList>(tensors, count);
    double* partials = static_cast<double*>(norm_scratch_.get(cuda::norm_scratch_bytes()));
    cuda::adamw_step_cuda(norm, partials, *optimizer_list_, args, stream_);
  }

 private:
  enum class Kernels { kSimt, kMma, kCudnn };
  // Which kernels run attention of head dim D; prints the choice for a new D.
  Kernels attention_kernels(int D) {
    Kernels kernels = Kernels::kSimt;
    const char* why = "--attention_impl";
    if (attention_ == AttentionImpl::kCudnn) {
#if defined(L2V_WITH_CUDNN)
      const bool supported = cuda::CudnnAttention::supports_head_dim(D);
#else
      const bool supported = false;  // not reached: the constructor refused kCudnn
#endif
      if (!supported)
        throw std::invalid_argument("--attention_impl cudnn: head dim " + std::to_string(D) +
                                    " is not supported by cuDNN's SDPA (multiples of 8 up to 128); use "
                                    "--attention_impl mma or simt");
      kernels = Kernels::kCudnn;
    } else {
      const bool supported = cuda::attention_mma_supported<T>(D);
      if (attention_ == AttentionImpl::kMma && !supported)
        throw std::invalid_argument("--attention_impl mma: head dim " + std::to_string(D) +
                                    " is not supported by the tensor-core kernels (16, 64, 128); use "
                                    "--attention_impl simt");
      if (attention_ == AttentionImpl::kMma || (attention_ == AttentionImpl::kAuto && supported))
        kernels = Kernels::kMma;
      if (attention_ == AttentionImpl::kAuto)
        why = kernels == Kernels::kMma ? "auto: the fastest for the case"
                                       : "auto: the tensor-core kernels need bf16 and D = 16, 64, 128";
    }
    if (announced_.insert(D).second) {
      const char* name = kernels == Kernels::kCudnn ? "cudnn (cuDNN SDPA)"
                         : kernels == Kernels::kMma ? "mma (tensor cores)"
                                                    : "simt";
      std::printf("attention: %s, head dim %d, %s storage (%s)\n", name, D,
                  std::is_same<T, float>::value ? "fp32" : "bf16", why);
    }
    return kernels;
  }

  // Waits for the stream; the upload arena is free again.
  void synchronize() {
    CUDA_CHECK(cudaStreamSynchronize(stream_));
    uploads_.synchronized();
  }

  // Tensor handles hold T.
  static T* t(Tensor p) { return reinterpret_cast<T*>(p); }
  static const T* t(ConstTensor p) { return reinterpret_cast<const T*>(p); }
  cuda::LtContext lt_context() {
    return {cublas_, lt_, lt_workspace_.get(cuda::kLtWorkspaceBytes), cuda::kLtWorkspaceBytes};
  }
  static cuda::LoraInput<T> lora_input(const LoraInput& in) {
    return {t(in.inp), in.N, in.IC, in.R, in.scale, in.dropout_p, in.key};
  }
  // The LoRA workspace for these branches (grown when needed); the launchers check the count.
#if defined(L2V_WITH_CUDNN)
  // cuDNN's SDPA is given packed q, k and v (its ragged padding layout ties each tensor's offsets to its row
  // stride): when their rows are `ld` apart (the fused q|k|v product's blocks), slot 0 (inputs) or 1
  // (gradients) of cudnn_staging_ receives packed copies — a copy of N x (H + 2 KV) x D each way that the
  // simt and mma kernels, which read the strides, do not make.
  struct CudnnQkv {
    T *q, *k, *v;
    bool staged;
  };
  template <typename P>
  CudnnQkv cudnn_qkv(P q, P k, P v, QkvStrides ld, long N, int H, int KV, int D, int slot) {
    T* q_ = const_cast<T*>(t(q));
    T* k_ = const_cast<T*>(t(k));
    T* v_ = const_cast<T*>(t(v));
    const QkvStrides packed = packed_qkv(H, KV, D);
    if (ld.q == packed.q && ld.kv == packed.kv) return {q_, k_, v_, false};
    T* s = static_cast<T*>(cudnn_staging_[slot].get((size_t)N * (H + 2 * KV) * D * sizeof(T)));
    const CudnnQkv out{s, s + N * H * D, s + N * (H + KV) * D, true};
    if (slot == 0) {
      copy_rows(out.q, packed.q, q_, ld.q, N, packed.q);
      copy_rows(out.k, packed.kv, k_, ld.kv, N, packed.kv);
      copy_rows(out.v, packed.kv, v_, ld.kv, N, packed.kv);
    }
    return out;
  }
  template <typename D, typename S>
  void copy_rows(D* dst, int dst_ld, S* src, int src_ld, long rows, int cols) {
    CUDA_CHECK(cudaMemcpy2DAsync(dst, dst_ld * sizeof(T), src, src_ld * sizeof(T), cols * sizeof(T), rows,
                                 cudaMemcpyDeviceToDevice, stream_));
  }
#endif
  template <typename Branch>
  void* lora_workspace(const LoraInput& in, const Branch* branches, int count) {
    int OC[kMaxLoraBranches];
    for (int i = 0; i < count && i < kMaxLoraBranches; ++i) OC[i] = branches[i].OC;
    return lora_workspace_.get(cuda::lora_branches_workspace_bytes(sizeof(T), in.N, in.IC, OC,
                                                                   std::min(count, kMaxLoraBranches), in.R));
  }

  AttentionImpl attention_;
  std::set<int> announced_;  // head dims whose attention choice was printed
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  cuda::DeviceScratch attention_scratch_, contrastive_scratch_, latent_scratch_, lora_workspace_, lm_head_scratch_,
      norm_scratch_, staging_, lt_workspace_;
  double peak_flops_ = 0.0;  // gpu_peak_flops of this device and precision
  std::unique_ptr<cuda::DeviceOptimizerList> optimizer_list_;
  cuda::UploadArena uploads_;
  std::unique_ptr<cuda::GraphRunner> graphs_;
  std::vector<void*> released_in_capture_;
#if defined(L2V_WITH_CUDNN)
  std::unique_ptr<cuda::CudnnAttention> cudnn_;  // with --attention_impl cudnn
  cuda::DeviceScratch cudnn_staging_[2];          // cudnn_qkv's packed copies
#endif
};

}  // namespace

CudaPrecision parse_cuda_precision(const std::string& name) {
  if (name == "fp32") return CudaPrecision::kFp32;
  if (name == "bf16") return CudaPrecision::kBf16;
  throw std::invalid_argument("unknown CUDA precision '" + name + "' (fp32 or bf16)");
}

AttentionImpl parse_attention_impl(const std::string& name) {
  if (name.empty() || name == "auto") return AttentionImpl::kAuto;
  if (name == "simt") return AttentionImpl::kSimt;
  if (name == "mma") return AttentionImpl::kMma;
  if (name == "cudnn") {
#if defined(L2V_WITH_CUDNN)
    return AttentionImpl::kCudnn;
#else
    refuse_cudnn_not_built();
#endif
  }
  throw std::invalid_argument("unknown attention implementation '" + name + "' (simt, mma or cudnn)");
}

double gpu_peak_flops(const std::string& device_name, bool bf16) {
  struct Peak {
    const char* name;  // a part of cudaDeviceProp::name
    double bf16, fp32;
  };
  // The PCIe H100 first: "H100 PCIe" also contains "H100".
  static const Peak kPeaks[] = {{"H100 PCIe", 756e12, 51e12}, {"H100", 989e12, 67e12}, {"H200", 989e12, 67e12},
                                {"A100", 312e12, 19.5e12},    {"L40S", 362e12, 91.6e12}};
  for (const Peak& p : kPeaks)
    if (device_name.find(p.name) != std::string::npos) return bf16 ? p.bf16 : p.fp32;
  return 0.0;
}

cudaStream_t cuda_stream_of(const Backend& backend) {
  if (auto* b = dynamic_cast<const CudaBackend<float>*>(&backend)) return b->stream();
  if (auto* b = dynamic_cast<const CudaBackend<__nv_bfloat16>*>(&backend)) return b->stream();
  throw std::runtime_error(std::string("cuda_stream_of: the ") + backend.name() + " backend has no CUDA stream");
}

std::unique_ptr<Backend> make_cuda_backend(CudaPrecision precision, AttentionImpl attention) {
  int devices = 0;
  const cudaError_t err = cudaGetDeviceCount(&devices);
  if (err != cudaSuccess || devices == 0) {
    cudaGetLastError();  // clear it
    throw std::runtime_error(std::string("no CUDA GPU is available (cudaGetDeviceCount: ") +
                             (err != cudaSuccess ? cudaGetErrorString(err) : "0 devices") +
                             "). The CUDA backend needs an NVIDIA GPU and driver; use --backend cpu on this machine.");
  }
  if (precision == CudaPrecision::kFp32) return std::make_unique<CudaBackend<float>>(attention);
  return std::make_unique<CudaBackend<__nv_bfloat16>>(attention);
}

}  // namespace l2v
