// The optimizer step (cpu::adamw_step, host/cpu_ops.h): gradient scaling, the global gradient L2 norm,
// torch.nn.utils.clip_grad_norm_'s clipping and AdamW on fp32 master weights, over the model's whole list
// of trainable tensors in two launches and without a host synchronisation:
//   1. adamw_norm_partials: partials[block] = sum of squares of (grad * grad_scale) over the block's share;
//   2. adamw_step: every block sums the partials in the same fixed order (so every block has the same
//      norm; block 0 stores it), derives the clipping coefficient, and updates its share of every tensor:
//      gradient scaled and clipped (written back), moments and value. A norm that is not finite stops
//      every block before it writes anything, so the caller can report it with the parameters intact.
// The list lives in device memory (DeviceOptimizerList): hundreds of tensors, more than kernel arguments
// hold. One pair of launches replaces the per-tensor scale, clip and update launches (3 x 448 for a
// 7-projection LoRA on 32 layers).
//
// Bit-identical to the reference: AdamW's element-wise ops are IEEE-rounded intrinsics (__fmul_rn,
// __fadd_rn, __fdiv_rn, __fsqrt_rn, fmaf) in cpu::adamw_update's (torch.optim.AdamW's) order, which nvcc
// never contracts into FMAs and which ignore --use_fast_math, and the step's scalars are computed on the
// host exactly as the reference computes them (the Makefile builds the reference without FP contraction).
// The norm accumulates squares in double (each square of an fp32 value is exact in double, so FMA
// contraction cannot change it) and rounds once: only the order of the double additions differs from the
// CPU's, far below the final fp32 rounding. No float atomics: the reduction tree depends only on the
// list's total size, so runs on the same list give the same bits.
#pragma once

#include <algorithm>
#include <cmath>
#include <vector>

#include "cuda/elementwise.cuh"
#include "cuda/workspace_sizes.h"
#include "host/cpu_ops.h"

namespace l2v::cuda {

static_assert(sizeof(cpu::OptimizerTensor) == 4 * sizeof(float*) + sizeof(long),
              "optimizer_list_bytes (cuda/workspace_sizes.h) counts an entry as four pointers and a long");

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

inline AdamWScalars adamw_scalars(const cpu::AdamWStepArgs& a) {
  ew::require(a.step >= 1, "adamw_step_cuda", "step counts from 1, got " + std::to_string(a.step));
  AdamWScalars s;
  s.decay = (float)(1.0 - (double)a.lr * a.weight_decay);
  s.beta2 = a.beta2;
  s.w2 = (float)(1.0 - (double)a.beta2);
  const float w1 = (float)(1.0 - (double)a.beta1);
  s.small_w1 = std::fabs(w1) < 0.5f;
  s.lerp_coef = s.small_w1 ? w1 : w1 - 1.0f;
  s.neg_step_size = (float)(-((double)a.lr / (1.0 - std::pow((double)a.beta1, a.step))));
  s.bias_correction2_sqrt = (float)std::sqrt(1.0 - std::pow((double)a.beta2, a.step));
  s.eps = a.eps;
  return s;
}

// The optimizer's list in device memory, built once from the host list (the tensors' addresses must not
// change after); matches() tells whether a host list is the one it holds.
class DeviceOptimizerList {
 public:
  DeviceOptimizerList(const cpu::OptimizerTensor* tensors, int count) : host_(tensors, tensors + count) {
    for (const cpu::OptimizerTensor& t : host_) {
      ew::require(t.n >= 0, "DeviceOptimizerList", "sizes must be non-negative");
      total_ += t.n;
    }
    if (host_.empty()) return;
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&device_), optimizer_list_bytes(host_.size())));
    CUDA_CHECK(cudaMemcpy(device_, host_.data(), optimizer_list_bytes(host_.size()), cudaMemcpyHostToDevice));
  }
  ~DeviceOptimizerList() { cudaFree(device_); }
  DeviceOptimizerList(const DeviceOptimizerList&) = delete;
  DeviceOptimizerList& operator=(const DeviceOptimizerList&) = delete;

  bool matches(const cpu::OptimizerTensor* tensors, int count) const {
    if ((size_t)count != host_.size()) return false;
    for (int i = 0; i < count; ++i) {
      const cpu::OptimizerTensor &a = tensors[i], &b = host_[i];
      if (a.value != b.value || a.grad != b.grad || a.m != b.m || a.v != b.v || a.n != b.n) return false;
    }
    return true;
  }
  const cpu::OptimizerTensor* data() const { return device_; }
  int count() const { return (int)host_.size(); }
  long total() const { return total_; }  // elements over all tensors

 private:
  std::vector<cpu::OptimizerTensor> host_;
  cpu::OptimizerTensor* device_ = nullptr;
  long total_ = 0;
};

constexpr int kNormBlock = 256;
// Upper bound of launch 1's grid, and so the size (in doubles) of the `partials` scratch buffer:
// kNormMaxBlocks, cuda/workspace_sizes.h.

namespace ew {
// Launch 1's grid: about one element per thread up to kNormMaxBlocks blocks. A function of the list's
// total size only (never of the device), so a list's reduction tree is always the same.
inline int norm_blocks(long total) {
  const long blocks = (total + kNormBlock - 1) / kNormBlock;
  return (int)(blocks < 1 ? 1 : blocks > kNormMaxBlocks ? kNormMaxBlocks : blocks);
}
}  // namespace ew

// partials[block] = sum of squares of grad * grad_scale over this block's share: element i of every tensor
// belongs to thread i % (grid threads), which adds its elements tensor after tensor in index order.
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    adamw_norm_partials_kernel(double* partials, const cpu::OptimizerTensor* list, int count, float grad_scale) {
  L2V_SHARED(double, warp_sums, [kBlockSize / 32]);
  const long stride = (long)gridDim.x * kBlockSize;
  const long first = blockIdx.x * (long)kBlockSize + threadIdx.x;
  double acc = 0.0;
  for (int t = 0; t < count; ++t) {
    const float* g = list[t].grad;
    const long n = list[t].n;
    for (long i = first; i < n; i += stride) {
      const double x = __fmul_rn(g[i], grad_scale);
      acc += x * x;
    }
  }
  acc = ew::block_sum<kBlockSize>(acc, warp_sums);
  if (threadIdx.x == 0) partials[blockIdx.x] = acc;
}

template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    adamw_step_kernel(float* norm_out, const double* partials, int num_partials, const cpu::OptimizerTensor* list,
                      int count, float grad_scale, float max_grad_norm, AdamWScalars s) {
  L2V_SHARED(double, warp_sums, [kBlockSize / 32]);
  L2V_SHARED(float, block_norm, [1]);
  double acc = 0.0;
  for (int i = threadIdx.x; i < num_partials; i += kBlockSize) acc += partials[i];
  acc = ew::block_sum<kBlockSize>(acc, warp_sums);
  if (threadIdx.x == 0) {
    block_norm[0] = (float)sqrt(acc);
    if (blockIdx.x == 0) *norm_out = block_norm[0];
  }
  __syncthreads();
  const float norm = block_norm[0];
  // Not finite (NaN or inf: x - x is NaN for both): every block sees the same norm, nothing is written.
  if (!(norm - norm == 0.0f)) return;
  // clip_grad_norm_'s coefficient as torch evaluates it (see cpu::adamw_step); >= 1 means no clipping.
  const float coef = max_grad_norm > 0.0f ? __fmul_rn(__fdiv_rn(1.0f, __fadd_rn(norm, 1e-6f)), max_grad_norm) : 1.0f;
  const bool clip = coef < 1.0f;
  const long stride = (long)gridDim.x * kBlockSize;
  const long first = blockIdx.x * (long)kBlockSize + threadIdx.x;
  for (int t = 0; t < count; ++t) {
    const cpu::OptimizerTensor x = list[t];
    for (long i = first; i < x.n; i += stride) {
      float g = __fmul_rn(x.grad[i], grad_scale);
      if (clip) g = __fmul_rn(g, coef);
      x.grad[i] = g;
      const float mi_old = x.m[i];
      const float p = __fmul_rn(x.value[i], s.decay);                                          // param.mul_(1 - lr*wd)
      const float mi = fmaf(s.lerp_coef, g - mi_old, s.small_w1 ? mi_old : g);                 // exp_avg.lerp_(g, w1)
      const float vi = __fadd_rn(__fmul_rn(x.v[i], s.beta2), __fmul_rn(__fmul_rn(s.w2, g), g));  // addcmul_
      const float denom = __fadd_rn(__fdiv_rn(__fsqrt_rn(vi), s.bias_correction2_sqrt), s.eps);
      x.m[i] = mi;
      x.v[i] = vi;
      x.value[i] = __fadd_rn(p, __fdiv_rn(__fmul_rn(s.neg_step_size, mi), denom));  // addcdiv_
    }
  }
}

// cpu::adamw_step over `list` on `stream`: *norm (device fp32) receives the norm; `partials` is device
// scratch of kNormMaxBlocks doubles (norm_scratch_bytes). Nothing waits for the device.
inline void adamw_step_cuda(float* norm, double* partials, const DeviceOptimizerList& list,
                            const cpu::AdamWStepArgs& args, cudaStream_t stream) {
  const AdamWScalars s = adamw_scalars(args);
  const int blocks = ew::norm_blocks(list.total());
  l2v::launch("adamw_norm_partials", adamw_norm_partials_kernel<kNormBlock>, dim3(blocks), dim3(kNormBlock), 0,
              stream, partials, list.data(), list.count(), args.grad_scale);
  // At least one block: block 0 stores the norm even for an empty list.
  const unsigned step_blocks = std::max(1u, ew::grid_for(list.total()));
  l2v::launch("adamw_step", adamw_step_kernel<kNormBlock>, dim3(step_blocks), dim3(kNormBlock), 0,
              stream, norm, partials, blocks, list.data(), list.count(), args.grad_scale, args.max_grad_norm, s);
}

}  // namespace l2v::cuda
