// The optimizer step: AdamW on fp32 master weights with fp32 gradients and moments, and the global
// gradient L2 norm with torch.nn.utils.clip_grad_norm_'s clipping. The trainable parameters are the
// small LoRA tensors, so everything here is fp32.
//
// AdamW follows cpu::adamw_update (host/cpu_ops.cpp), i.e. torch.optim.AdamW's operation order, in fp32:
// the step's scalars are computed on the host exactly as the reference computes them, and the kernel's
// element-wise ops are IEEE-rounded intrinsics (__fmul_rn, __fadd_rn, __fdiv_rn, __fsqrt_rn, fmaf), which
// nvcc never contracts into FMAs and which ignore --use_fast_math, so the result is bit-identical to the
// reference (built, as the Makefile does, without FP contraction).
//
// The global norm is deterministic: stage 1 sums squares per block into `partials` (one fixed-order
// block reduction per block, over a grid that depends only on the list's total size), stage 2 sums the
// partials in one block. No float atomics, so the result does not depend on scheduling, and runs on the
// same list give the same bits. Squares are accumulated in double (one DFMA per element is far below the
// memory time even where fp64 is slow), so the norm is the correctly rounded fp32 of the exact one up to
// the final rounding, closer than torch's own fp32 per-tensor norms.
#pragma once

#include <cmath>
#include <vector>

#include "cuda/elementwise.cuh"
#include "cuda/workspace_sizes.h"

namespace l2v::cuda {

// ---- AdamW.

// The per-step scalars, computed on the host in double and rounded once, as cpu::adamw_update does.
struct AdamWScalars {
  float decay;  // 1 - lr * weight_decay
  float beta2;
  float w2;                     // 1 - beta2
  float lerp_coef;              // torch's lerp weight: w1 = 1 - beta1 if |w1| < 0.5, else w1 - 1
  float neg_step_size;          // -lr / (1 - beta1^step)
  float bias_correction2_sqrt;  // sqrt(1 - beta2^step)
  float eps;
  bool small_w1;  // which end torch's lerp starts from
};

// (Kernels here are templates on the block size so that the header can be included by several
// translation units without duplicate kernel symbols.)
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    adamw_kernel(float* param, const float* grad, float* m, float* v, long n, AdamWScalars s) {
  for (long i = blockIdx.x * (long)kBlockSize + threadIdx.x; i < n; i += (long)gridDim.x * kBlockSize) {
    const float g = grad[i];
    const float mi_old = m[i];
    const float p = __fmul_rn(param[i], s.decay);                                            // param.mul_(1 - lr*wd)
    const float mi = fmaf(s.lerp_coef, g - mi_old, s.small_w1 ? mi_old : g);                 // exp_avg.lerp_(g, w1)
    const float vi = __fadd_rn(__fmul_rn(v[i], s.beta2), __fmul_rn(__fmul_rn(s.w2, g), g));  // addcmul_
    const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bias_correction2_sqrt), s.eps);
    m[i] = mi;
    v[i] = vi;
    param[i] = __fadd_rn(p, __fdiv_rn(__fmul_rn(s.neg_step_size, mi), denom));  // addcdiv_
  }
}

// One AdamW step (step counts from 1) over n fp32 values, as cpu::adamw_update:
//   p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2; p -= lr * m/(1-b1^step) / (sqrt(v/(1-b2^step)) + eps)
// The trainable tensors (and their gradients and moments) are expected to live in one buffer each, so
// one launch updates them all.
inline void adamw_update_cuda(float* param, const float* grad, float* m, float* v, long n, float lr, float beta1,
                              float beta2, float eps, float weight_decay, int step, cudaStream_t stream) {
  ew::require(n >= 0, "adamw_update_cuda", "n must be non-negative");
  ew::require(step >= 1, "adamw_update_cuda", "step counts from 1, got " + std::to_string(step));
  if (n == 0) return;
  AdamWScalars s;
  s.decay = (float)(1.0 - (double)lr * weight_decay);
  s.beta2 = beta2;
  s.w2 = (float)(1.0 - (double)beta2);
  const float w1 = (float)(1.0 - (double)beta1);
  s.small_w1 = std::fabs(w1) < 0.5f;
  s.lerp_coef = s.small_w1 ? w1 : w1 - 1.0f;
  s.neg_step_size = (float)(-((double)lr / (1.0 - std::pow((double)beta1, step))));
  s.bias_correction2_sqrt = (float)std::sqrt(1.0 - std::pow((double)beta2, step));
  s.eps = eps;
  l2v::launch("adamw_update", adamw_kernel<ew::kBlock>, dim3(ew::grid_for(n)), dim3(ew::kBlock), 0, stream, param, grad,
              m, v, n, s);
}

// ---- Global gradient norm and clipping.

// A list of fp32 tensors as the kernels walk it: ptrs[i] points to sizes[i] floats, and both arrays live
// in device memory (a model's LoRA gradients are hundreds of tensors: more than kernel arguments hold).
// Built once, from host vectors, when the tensors are allocated; their addresses must not change after.
class DeviceTensorList {
 public:
  DeviceTensorList(const std::vector<float*>& ptrs, const std::vector<long>& sizes) : count_((int)ptrs.size()) {
    ew::require(ptrs.size() == sizes.size(), "DeviceTensorList", "one size per pointer");
    for (long size : sizes) {
      ew::require(size >= 0, "DeviceTensorList", "sizes must be non-negative");
      total_ += size;
    }
    if (count_ == 0) return;
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptrs_), ptrs.size() * sizeof(float*)));
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&sizes_), sizes.size() * sizeof(long)));
    CUDA_CHECK(cudaMemcpy(ptrs_, ptrs.data(), ptrs.size() * sizeof(float*), cudaMemcpyHostToDevice));
    CUDA_CHECK(cudaMemcpy(sizes_, sizes.data(), sizes.size() * sizeof(long), cudaMemcpyHostToDevice));
  }
  ~DeviceTensorList() {
    cudaFree(ptrs_);
    cudaFree(sizes_);
  }
  DeviceTensorList(const DeviceTensorList&) = delete;
  DeviceTensorList& operator=(const DeviceTensorList&) = delete;

  float* const* ptrs() const { return ptrs_; }
  const long* sizes() const { return sizes_; }
  int count() const { return count_; }
  long total() const { return total_; }  // elements over all tensors

 private:
  float** ptrs_ = nullptr;
  long* sizes_ = nullptr;
  int count_ = 0;
  long total_ = 0;
};

constexpr int kNormBlock = 256;
// Upper bound of the stage-1 grid, and so the size (in doubles) of the `partials` scratch buffer.
// kNormMaxBlocks (the partials of the global norm): cuda/workspace_sizes.h.

namespace ew {
// Stage 1's grid: about one element per thread up to kNormMaxBlocks blocks. A function of the list's
// total size only (never of the device), so a list's reduction tree is always the same.
inline int norm_blocks(long total) {
  const long blocks = (total + kNormBlock - 1) / kNormBlock;
  return (int)(blocks < 1 ? 1 : blocks > kNormMaxBlocks ? kNormMaxBlocks : blocks);
}
}  // namespace ew

// partials[block] = sum of squares of this block's share: element i of every tensor belongs to thread
// i % (grid threads), which adds its elements tensor after tensor in index order.
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    global_norm_partials_kernel(double* partials, float* const* ptrs, const long* sizes, int count) {
  L2V_SHARED(double, warp_sums, [kBlockSize / 32]);
  const long stride = (long)gridDim.x * kBlockSize;
  const long first = blockIdx.x * (long)kBlockSize + threadIdx.x;
  double acc = 0.0;
  for (int t = 0; t < count; ++t) {
    const float* p = ptrs[t];
    const long n = sizes[t];
    for (long i = first; i < n; i += stride) {
      const double x = p[i];
      acc += x * x;
    }
  }
  acc = ew::block_sum<kBlockSize>(acc, warp_sums);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

// *norm = sqrt(sum of the partials), rounded to fp32 once.
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    global_norm_final_kernel(float* norm, const double* partials, int num_partials) {
  L2V_SHARED(double, warp_sums, [kBlockSize / 32]);
  double acc = 0.0;
  for (int i = threadIdx.x; i < num_partials; i += kBlockSize) acc += partials[i];
  acc = ew::block_sum<kBlockSize>(acc, warp_sums);
  if (threadIdx.x == 0) *norm = (float)sqrt(acc);
}

// Every gradient *= min(1, max_norm / (norm + 1e-6)), with torch's fp32 operations: its
// `max_norm / (total_norm + 1e-6)` on a tensor is reciprocal(total_norm + 1e-6) * max_norm, and
// clamp(max=1) keeps a NaN (so a NaN norm turns every gradient into NaN, as in torch).
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    clip_by_norm_kernel(float* const* ptrs, const long* sizes, int count, const float* norm, float max_norm) {
  float coef = __fmul_rn(__fdiv_rn(1.0f, __fadd_rn(*norm, 1e-6f)), max_norm);
  if (coef >= 1.0f) return;  // clamped to 1: multiplying by 1 changes nothing, so skip the pass
  const long stride = (long)gridDim.x * kBlockSize;
  const long first = blockIdx.x * (long)kBlockSize + threadIdx.x;
  for (int t = 0; t < count; ++t) {
    float* p = ptrs[t];
    const long n = sizes[t];
    for (long i = first; i < n; i += stride) p[i] = __fmul_rn(p[i], coef);
  }
}

// *norm (device, fp32) = the L2 norm of all the list's tensors viewed as one vector (torch's
// clip_grad_norm_ return value). `partials` is device scratch of kNormMaxBlocks doubles.
inline void global_norm_cuda(float* norm, double* partials, const DeviceTensorList& list, cudaStream_t stream) {
  const int blocks = ew::norm_blocks(list.total());
  l2v::launch("global_norm_partials", global_norm_partials_kernel<kNormBlock>, dim3(blocks), dim3(kNormBlock), 0,
              stream, partials, list.ptrs(), list.sizes(), list.count());
  l2v::launch("global_norm_final", global_norm_final_kernel<kNormBlock>, dim3(1), dim3(kNormBlock), 0, stream, norm,
              partials, blocks);
}

// Scales every tensor of the list by min(1, max_norm / (*norm + 1e-6)), *norm read on the device (no
// host synchronisation).
inline void clip_by_norm_cuda(const DeviceTensorList& list, const float* norm, float max_norm, cudaStream_t stream) {
  if (list.total() == 0) return;
  l2v::launch("clip_by_norm", clip_by_norm_kernel<ew::kBlock>, dim3(ew::grid_for(list.total())), dim3(ew::kBlock), 0,
              stream, list.ptrs(), list.sizes(), list.count(), norm, max_norm);
}

// torch.nn.utils.clip_grad_norm_(grads, max_norm): *norm = the global norm (before clipping), then the
// gradients are clipped in place.
inline void clip_grad_norm_cuda(float* norm, double* partials, const DeviceTensorList& list, float max_norm,
                                cudaStream_t stream) {
  global_norm_cuda(norm, partials, list, stream);
  clip_by_norm_cuda(list, norm, max_norm, stream);
}

}  // namespace l2v::cuda
