// RMSNorm (Hugging Face's LlamaRMSNorm) forward and backward, and the fused residual add + RMSNorm
// forward. The fp32 CPU reference is host/cpu_ops.cpp (cpu::rmsnorm_forward / rmsnorm_backward); the
// fused op is cpu::residual_forward followed by cpu::rmsnorm_forward on the stored sum.
//
// T = float or __nv_bfloat16 for the activations and their gradients; the norm weight [C] and the saved
// rstd [N] are fp32 (the weight is frozen and tiny, and fp32 keeps bf16 models' weights exactly).
// Accumulation is fp32. In bf16 the output is weight * (x * rstd) in fp32 rounded once; Hugging Face
// rounds x * rstd to bf16 before the weight multiply, so outputs can differ from it by one bf16 ulp.
//
// One warp per row (kRowsPerBlock rows per block): the sum of squares is a warp-shuffle reduction, and
// the second pass over the row re-reads it from L1/L2 rather than keeping it in registers, so any C
// works. Rows move as 16-byte packs when C is a multiple of the pack width and every pointer is 16-byte
// aligned (see elementwise.cuh), element by element otherwise.
#pragma once

#include <initializer_list>

#include "cuda/elementwise.cuh"

namespace l2v::cuda {

namespace ew {
constexpr int kRowBlock = 256;  // threads per block of the one-warp-per-row kernels
constexpr int kRowsPerBlock = kRowBlock / 32;

// V = the pack width when the row kernels can use it: C a multiple of it (so every row starts aligned)
// and every pointer 16-byte aligned.
template <typename T>
inline bool rows_vectorisable(int C, std::initializer_list<const void*> ptrs) {
  if (C % kVec<T> != 0) return false;
  for (const void* p : ptrs) {
    if (!aligned16(p)) return false;
  }
  return true;
}
}  // namespace ew

// out = weight * (x * rstd), rstd = 1 / sqrt(mean(x^2) + eps) per row.
template <int V, typename T>
__global__ void __launch_bounds__(ew::kRowBlock)
    rmsnorm_forward_kernel(T* out, float* rstd, const T* inp, const float* weight, int N, int C, float eps) {
  const int row = blockIdx.x * ew::kRowsPerBlock + threadIdx.x / 32;
  if (row >= N) return;  // warp-uniform: a warp leaves whole, so no shuffle is left waiting
  const int lane = threadIdx.x % 32;
  const T* x = inp + (long)row * C;
  T* o = out + (long)row * C;

  float ss = 0.0f;
  for (int c = lane * V; c < C; c += 32 * V) {
    float v[V];
    ew::load_floats<V>(v, x + c);
    for (int k = 0; k < V; ++k) ss += v[k] * v[k];
  }
  ss = ew::warp_sum(ss);
  const float r = 1.0f / sqrtf(ss / (float)C + eps);
  if (lane == 0 && rstd != nullptr) rstd[row] = r;

  for (int c = lane * V; c < C; c += 32 * V) {
    float v[V], w[V];
    ew::load_floats<V>(v, x + c);
    ew::load_floats<V>(w, weight + c);
    for (int k = 0; k < V; ++k) v[k] = w[k] * (v[k] * r);  // LlamaRMSNorm's order: weight * (x * rstd)
    ew::store_floats<V>(o + c, v);
  }
}

// resid_out = a + b (rounded to T), then norm_out = rmsnorm(resid_out): the norm sees exactly the stored
// residual, as the unfused pair of kernels would. One read of a and b instead of a, b, then the sum.
template <int V, typename T>
__global__ void __launch_bounds__(ew::kRowBlock)
    residual_rmsnorm_forward_kernel(T* resid_out, T* norm_out, float* rstd, const T* a, const T* b, const float* weight,
                                    int N, int C, float eps) {
  const int row = blockIdx.x * ew::kRowsPerBlock + threadIdx.x / 32;
  if (row >= N) return;
  const int lane = threadIdx.x % 32;
  const long offset = (long)row * C;

  float ss = 0.0f;
  for (int c = lane * V; c < C; c += 32 * V) {
    float x[V], y[V];
    ew::load_floats<V>(x, a + offset + c);
    ew::load_floats<V>(y, b + offset + c);
    for (int k = 0; k < V; ++k) {
      x[k] = ew::to_float(ew::from_float<T>(x[k] + y[k]));  // the value as stored in T
      ss += x[k] * x[k];
    }
    ew::store_floats<V>(resid_out + offset + c, x);
  }
  ss = ew::warp_sum(ss);
  const float r = 1.0f / sqrtf(ss / (float)C + eps);
  if (lane == 0 && rstd != nullptr) rstd[row] = r;

  // This lane reads back only the elements it stored itself: no barrier needed.
  for (int c = lane * V; c < C; c += 32 * V) {
    float x[V], w[V];
    ew::load_floats<V>(x, resid_out + offset + c);
    ew::load_floats<V>(w, weight + c);
    for (int k = 0; k < V; ++k) x[k] = w[k] * (x[k] * r);
    ew::store_floats<V>(norm_out + offset + c, x);
  }
}

// dinp += rstd * (w dy) - x * rstd^3 * mean(w dy x)   (the second term is the gradient through rstd).
template <int V, typename T>
__global__ void __launch_bounds__(ew::kRowBlock)
    rmsnorm_backward_kernel(T* dinp, const T* dout, const T* inp, const float* weight, const float* rstd, int N,
                            int C) {
  const int row = blockIdx.x * ew::kRowsPerBlock + threadIdx.x / 32;
  if (row >= N) return;
  const int lane = threadIdx.x % 32;
  const long offset = (long)row * C;

  float acc = 0.0f;
  for (int c = lane * V; c < C; c += 32 * V) {
    float dy[V], x[V], w[V];
    ew::load_floats<V>(dy, dout + offset + c);
    ew::load_floats<V>(x, inp + offset + c);
    ew::load_floats<V>(w, weight + c);
    for (int k = 0; k < V; ++k) acc += (w[k] * dy[k]) * x[k];
  }
  acc = ew::warp_sum(acc);
  const float r = rstd[row];
  const float coef = r * r * r * (acc / (float)C);

  for (int c = lane * V; c < C; c += 32 * V) {
    float dy[V], x[V], w[V], dx[V];
    ew::load_floats<V>(dy, dout + offset + c);
    ew::load_floats<V>(x, inp + offset + c);
    ew::load_floats<V>(w, weight + c);
    ew::load_floats<V>(dx, dinp + offset + c);
    for (int k = 0; k < V; ++k) dx[k] += r * (w[k] * dy[k]) - x[k] * coef;
    ew::store_floats<V>(dinp + offset + c, dx);
  }
}

// ---- Launchers (T = float or __nv_bfloat16).

// out [N, C] = rmsnorm(inp) * weight, rstd [N] saved for the backward (rstd may be nullptr when no
// backward follows). out may alias inp.
template <typename T>
void rmsnorm_forward_cuda(T* out, float* rstd, const T* inp, const float* weight, int N, int C, float eps,
                          cudaStream_t stream) {
  ew::require(N >= 0 && C > 0, "rmsnorm_forward_cuda", "need N >= 0 and C > 0");
  if (N == 0) return;
  const dim3 grid((N + ew::kRowsPerBlock - 1) / ew::kRowsPerBlock), block(ew::kRowBlock);
  if (ew::rows_vectorisable<T>(C, {out, inp, weight})) {
    l2v::launch("rmsnorm_forward", rmsnorm_forward_kernel<ew::kVec<T>, T>, grid, block, 0, stream, out, rstd, inp,
                weight, N, C, eps);
  } else {
    l2v::launch("rmsnorm_forward", rmsnorm_forward_kernel<1, T>, grid, block, 0, stream, out, rstd, inp, weight, N, C,
                eps);
  }
}

// resid_out = a + b and norm_out = rmsnorm(resid_out) * weight, both [N, C]; rstd [N] as above.
// resid_out may alias a or b (the residual stream updated in place); norm_out must not alias any input.
template <typename T>
void residual_rmsnorm_forward_cuda(T* resid_out, T* norm_out, float* rstd, const T* a, const T* b, const float* weight,
                                   int N, int C, float eps, cudaStream_t stream) {
  ew::require(N >= 0 && C > 0, "residual_rmsnorm_forward_cuda", "need N >= 0 and C > 0");
  if (N == 0) return;
  const dim3 grid((N + ew::kRowsPerBlock - 1) / ew::kRowsPerBlock), block(ew::kRowBlock);
  if (ew::rows_vectorisable<T>(C, {resid_out, norm_out, a, b, weight})) {
    l2v::launch("residual_rmsnorm_forward", residual_rmsnorm_forward_kernel<ew::kVec<T>, T>, grid, block, 0, stream,
                resid_out, norm_out, rstd, a, b, weight, N, C, eps);
  } else {
    l2v::launch("residual_rmsnorm_forward", residual_rmsnorm_forward_kernel<1, T>, grid, block, 0, stream, resid_out,
                norm_out, rstd, a, b, weight, N, C, eps);
  }
}

// dinp [N, C] accumulates (+=) the gradient w.r.t. the norm's input (the residual stream's gradient is a
// sum). `inp` and `rstd` are the forward's input and saved rstd.
template <typename T>
void rmsnorm_backward_cuda(T* dinp, const T* dout, const T* inp, const float* weight, const float* rstd, int N, int C,
                           cudaStream_t stream) {
  ew::require(N >= 0 && C > 0, "rmsnorm_backward_cuda", "need N >= 0 and C > 0");
  if (N == 0) return;
  const dim3 grid((N + ew::kRowsPerBlock - 1) / ew::kRowsPerBlock), block(ew::kRowBlock);
  if (ew::rows_vectorisable<T>(C, {dinp, dout, inp, weight})) {
    l2v::launch("rmsnorm_backward", rmsnorm_backward_kernel<ew::kVec<T>, T>, grid, block, 0, stream, dinp, dout, inp,
                weight, rstd, N, C);
  } else {
    l2v::launch("rmsnorm_backward", rmsnorm_backward_kernel<1, T>, grid, block, 0, stream, dinp, dout, inp, weight,
                rstd, N, C);
  }
}

}  // namespace l2v::cuda
