// Weighted pooling of the final hidden states on the device (cpu::pool_forward / cpu::pool_backward,
// host/cpu_ops.h): every simple pooling mode of model/pooling.h (mean, weighted mean, EOS / last / BOS
// token) is pooled[b] = sum_t w[b,t] hidden[b,t], so one pair of kernels serves them all, and a
// contrastive step moves B x C pooled values and T x B weights between host and device instead of the
// B x T x C hidden states and their gradient.
//
// Numerics: the forward accumulates in double in position order and rounds once, as the reference does;
// each product of an fp32 weight and an fp32 (or bf16) hidden value is exact in double, so FMA
// contraction changes nothing and the result is the reference's bit for bit. Positions of weight 0 are
// skipped (padding never enters, even when it holds NaN). The backward's products are one fp32 multiply
// each (IEEE-rounded __fmul_rn, then one rounding to T), 0 where the weight is 0: the reference's bits
// rounded to T.
#pragma once

#include "cuda/elementwise.cuh"

namespace l2v::cuda {

// One thread per channel c of row b (blockIdx.y), walking the T positions in order.
template <typename T>
__global__ void __launch_bounds__(ew::kBlock)
    pool_forward_kernel(float* __restrict__ pooled, const T* __restrict__ hidden, const float* __restrict__ weights,
                        int T_, int C) {
  const int b = blockIdx.y;
  const int c = blockIdx.x * ew::kBlock + threadIdx.x;
  if (c >= C) return;
  double acc = 0.0;
  for (int t = 0; t < T_; ++t) {
    const long row = (long)b * T_ + t;
    const float w = weights[row];
    if (w == 0.0f) continue;  // the same for every thread of the block: no divergence
    acc += (double)w * (double)ew::to_float(hidden[row * C + c]);
  }
  pooled[(long)b * C + c] = (float)acc;
}

template <typename T>
__global__ void __launch_bounds__(ew::kBlock)
    pool_backward_kernel(T* __restrict__ d_hidden, const float* __restrict__ d_pooled,
                         const float* __restrict__ weights, long n, int T_, int C) {
  for (long i = blockIdx.x * (long)ew::kBlock + threadIdx.x; i < n; i += (long)gridDim.x * ew::kBlock) {
    const long row = i / C;
    const float w = weights[row];
    const float g = w == 0.0f ? 0.0f : __fmul_rn(w, d_pooled[(row / T_) * C + i % C]);
    d_hidden[i] = ew::from_float<T>(g);
  }
}

// pooled [B, C] (fp32) = per-row weighted sums of hidden [B*T, C] (T) with weights [B*T] (fp32).
template <typename T>
void pool_forward_cuda(float* pooled, const T* hidden, const float* weights, int B, int T_, int C,
                       cudaStream_t stream) {
  ew::require(B >= 0 && T_ > 0 && C > 0, "pool_forward_cuda", "B must be >= 0, T and C > 0");
  ew::require(B <= 65535, "pool_forward_cuda", "at most 65535 rows per call (the grid's y dimension)");
  if (B == 0) return;
  l2v::launch("pool_forward", pool_forward_kernel<T>, dim3((C + ew::kBlock - 1) / ew::kBlock, B), dim3(ew::kBlock),
              0, stream, pooled, hidden, weights, T_, C);
}

// d_hidden [B*T, C] (T, overwritten) = weights[b*T+t] * d_pooled[b, :] (fp32), 0 where the weight is 0.
template <typename T>
void pool_backward_cuda(T* d_hidden, const float* d_pooled, const float* weights, int B, int T_, int C,
                        cudaStream_t stream) {
  ew::require(B >= 0 && T_ > 0 && C > 0, "pool_backward_cuda", "B must be >= 0, T and C > 0");
  const long n = (long)B * T_ * C;
  if (n == 0) return;
  l2v::launch("pool_backward", pool_backward_kernel<T>, dim3(ew::grid_for(n)), dim3(ew::kBlock), 0, stream, d_hidden,
              d_pooled, weights, n, T_, C);
}

}  // namespace l2v::cuda
