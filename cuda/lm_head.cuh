// The fused MNTP head on the GPU (host/cpu_ops.h: lm_head_crossentropy): cross-entropy of the LM head's
// logits on the M labelled rows only, without ever materialising [N, V] logits. The rows go through in
// chunks of `chunk`:
//   gather   x [cnt, C] = hidden[rows[k0 .. k0+cnt)]
//   GEMM     logits [cnt, V] = x lm_head^T                  (fp32 logits, also for bf16 storage)
//   kernel   one block per row: max-shifted log-sum-exp -> losses[k]; with a gradient, the row becomes
//            dlogits = dloss * (softmax - onehot(target))
//   GEMM     dx [cnt, C] = dlogits lm_head                  (into the x buffer, dead by then)
//   scatter  d_hidden[rows[k]] = dx[k]                       (d_hidden zeroed first: unlabelled rows are 0)
//
// Types: hidden, lm_head and d_hidden are T (float or bf16). The logits are always fp32 (cuBLAS writes
// bf16 x bf16 products to fp32 directly), so the losses of bf16 inputs are as accurate as fp32's. For
// T = float dlogits overwrite the logits in place; for bf16 they are a separate bf16 [chunk, V] buffer,
// since the backward GEMM needs both operands in bf16 and an in-place narrowing would race within a row.
//
// rows, targets, losses are device arrays. rows must be distinct and in [0, N), targets in [0, V) (the
// caller checks them on the host, as for the CPU reference); a device cannot throw, so a row outside
// [0, N) gathers NaN and is not scattered, and a target outside [0, V) gives a NaN loss: visible, and no
// memory outside the arrays is touched. Everything runs on the handle's stream.
#pragma once

#include <cmath>
#include <cstddef>
#include <type_traits>

#include "cuda/matmul.cuh"
#include "cuda/workspace_sizes.h"

namespace l2v::cuda {

namespace lm_head_detail {

inline size_t align_up(size_t bytes) { return workspace_align_up(bytes); }

constexpr int kRowBlock = 256;   // gather / scatter: threads over C
constexpr int kXentBlock = 512;  // softmax rows: V is tens of thousands, each thread strides over it
constexpr int kMaxRowBlocks = 4096;

template <typename T>
constexpr bool kSeparateDlogits = !std::is_same<T, float>::value;

// x [count, C] = hidden[rows[k]] for k < count.
template <typename T>
__global__ void __launch_bounds__(kRowBlock)
    lm_head_gather_kernel(T* __restrict__ x, const T* __restrict__ hidden, const int* __restrict__ rows, int count,
                          int N, int C) {
  for (int k = blockIdx.x; k < count; k += gridDim.x) {
    const int r = rows[k];
    const bool valid = r >= 0 && r < N;
    T* dst = x + (long)k * C;
    const T* src = hidden + (long)(valid ? r : 0) * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = valid ? src[c] : gemm_detail::from_float<T>(NAN);
  }
}

// d_hidden[rows[k]] = dx[k] for k < count (rows outside [0, N) are skipped).
template <typename T>
__global__ void __launch_bounds__(kRowBlock)
    lm_head_scatter_kernel(T* __restrict__ d_hidden, const T* __restrict__ dx, const int* __restrict__ rows, int count,
                           int N, int C) {
  for (int k = blockIdx.x; k < count; k += gridDim.x) {
    const int r = rows[k];
    if (r < 0 || r >= N) continue;
    T* dst = d_hidden + (long)r * C;
    const T* src = dx + (long)k * C;
    for (int c = threadIdx.x; c < C; c += blockDim.x) dst[c] = src[c];
  }
}

// Merges the running (max, sum of exp(x - max)) pair (m2, s2) into (m, s). A side that has seen no value
// has m = -inf and is skipped, so -inf - -inf never produces a NaN; a NaN logit makes s NaN and stays.
__device__ __forceinline__ void softmax_merge(float& m, float& s, float m2, float s2) {
  if (m2 == -INFINITY) return;
  if (m == -INFINITY) {
    m = m2;
    s = s2;
    return;
  }
  const float mx = fmaxf(m, m2);
  s = s * expf(m - mx) + s2 * expf(m2 - mx);
  m = mx;
}

// One block per row of logits [count, V]: losses[row] = logsumexp(row) - row[target], in fp32 with a
// max shift, the max and the sum gathered in one online pass (each thread keeps a running pair, then
// warps and the block merge them). With dlogits != nullptr a second pass writes
// dlogits = dloss * (softmax - onehot(target)); dlogits may be the logits themselves (each element is
// read and then written by the same thread), hence no __restrict__ on them.
template <typename T>
__global__ void __launch_bounds__(kXentBlock)
    lm_head_xent_kernel(float* __restrict__ losses, const float* logits, T* dlogits, const int* __restrict__ targets,
                        int V, float dloss) {
  constexpr int kWarps = kXentBlock / 32;
  L2V_SHARED(float, warp_max, [kWarps]);
  L2V_SHARED(float, warp_sum, [kWarps]);
  L2V_SHARED(float, row_stats, [2]);
  const int row = blockIdx.x, lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  const float* l = logits + (long)row * V;

  float m = -INFINITY, s = 0.0f;
  for (int i = threadIdx.x; i < V; i += kXentBlock) {
    const float v = l[i];
    if (v > m) {
      s = s * expf(m - v) + 1.0f;
      m = v;
    } else {
      s += expf(v - m);
    }
  }
  for (int off = 16; off > 0; off /= 2) {
    const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
    const float s2 = __shfl_xor_sync(0xffffffffu, s, off);
    softmax_merge(m, s, m2, s2);
  }
  if (lane == 0) {
    warp_max[warp] = m;
    warp_sum[warp] = s;
  }
  __syncthreads();
  if (warp == 0) {
    m = lane < kWarps ? warp_max[lane] : -INFINITY;
    s = lane < kWarps ? warp_sum[lane] : 0.0f;
    for (int off = 16; off > 0; off /= 2) {
      const float m2 = __shfl_xor_sync(0xffffffffu, m, off);
      const float s2 = __shfl_xor_sync(0xffffffffu, s, off);
      softmax_merge(m, s, m2, s2);
    }
    if (lane == 0) {
      row_stats[0] = m;
      row_stats[1] = s;
      const int t = targets[row];
      losses[row] = t >= 0 && t < V ? logf(s) + m - l[t] : NAN;
    }
  }
  if (dlogits == nullptr) return;  // uniform over the block: no thread is left waiting at the barrier
  __syncthreads();
  const float mx = row_stats[0], inv_sum = 1.0f / row_stats[1];
  const int t = targets[row];
  T* d = dlogits + (long)row * V;
  for (int i = threadIdx.x; i < V; i += kXentBlock) {
    const float p = expf(l[i] - mx) * inv_sum;
    d[i] = gemm_detail::from_float<T>(dloss * (p - (i == t ? 1.0f : 0.0f)));
  }
}

}  // namespace lm_head_detail

// Bytes of the scratch of lm_head_crossentropy_cuda<T> for chunks of `chunk` rows:
// x / dx [chunk, C] of T, logits [chunk, V] fp32, and for bf16 dlogits [chunk, V] bf16.
template <typename T>
size_t lm_head_crossentropy_scratch_bytes(int chunk, int C, int V) {
  static_assert(lm_head_detail::kSeparateDlogits<T> == (sizeof(T) != 4), "16-bit storage has separate dlogits");
  return lm_head_scratch_bytes(sizeof(T), chunk, C, V);
}

// For k < M, row n = rows[k] of hidden [N, C]: losses[k] = cross-entropy(hidden[n] lm_head^T, targets[k])
// (lm_head [V, C]); when d_hidden != nullptr, d_hidden [N, C] is overwritten: row rows[k] gets
// dloss * (softmax - onehot(targets[k])) lm_head, every other row 0. `scratch` holds
// lm_head_crossentropy_scratch_bytes<T>(chunk, C, V) bytes; a larger chunk means fewer, larger GEMMs.
template <typename T>
void lm_head_crossentropy_cuda(cublasHandle_t handle, float* losses, T* d_hidden, const T* hidden, const T* lm_head,
                               const int* rows, const int* targets, int M, int N, int C, int V, float dloss,
                               void* scratch, int chunk) {
  using namespace lm_head_detail;
  const char* fn = "lm_head_crossentropy_cuda";
  gemm_detail::require(M >= 0 && M <= N && C > 0 && V > 0, fn, "need 0 <= M <= N (distinct rows), C > 0 and V > 0");
  gemm_detail::require(chunk > 0 && scratch != nullptr, fn, "need chunk > 0 and a scratch buffer");
  const cudaStream_t stream = gemm_detail::stream_of(handle);
  if (d_hidden) CUDA_CHECK(cudaMemsetAsync(d_hidden, 0, sizeof(T) * (size_t)N * C, stream));

  unsigned char* base = static_cast<unsigned char*>(scratch);
  T* x = reinterpret_cast<T*>(base);
  float* logits = reinterpret_cast<float*>(base + align_up(sizeof(T) * (size_t)chunk * C));
  T* dlogits = nullptr;
  if (d_hidden) {
    if constexpr (kSeparateDlogits<T>) {
      const size_t logits_bytes = align_up(sizeof(float) * (size_t)chunk * V);
      dlogits = reinterpret_cast<T*>(reinterpret_cast<unsigned char*>(logits) + logits_bytes);
    } else {
      dlogits = logits;
    }
  }

  for (int k0 = 0; k0 < M; k0 += chunk) {
    const int cnt = M - k0 < chunk ? M - k0 : chunk;
    const dim3 row_grid(cnt < kMaxRowBlocks ? cnt : kMaxRowBlocks);
    l2v::launch("lm_head_gather", lm_head_gather_kernel<T>, row_grid, dim3(kRowBlock), 0, stream, x, hidden,
                rows + k0, cnt, N, C);
    gemm_rowmajor(handle, false, true, cnt, V, C, 1.0f, x, C, lm_head, C, 0.0f, logits, V);
    l2v::launch("lm_head_xent", lm_head_xent_kernel<T>, dim3(cnt), dim3(kXentBlock), 0, stream, losses + k0, logits,
                dlogits, targets + k0, V, dloss);
    if (!d_hidden) continue;
    gemm_rowmajor(handle, false, false, cnt, C, V, 1.0f, dlogits, V, lm_head, C, 0.0f, x, C);
    l2v::launch("lm_head_scatter", lm_head_scatter_kernel<T>, row_grid, dim3(kRowBlock), 0, stream, d_hidden, x,
                rows + k0, cnt, N, C);
  }
}

// One thread adds the n losses in double in order, as cpu::mean_loss: the host then reads one double
// instead of n floats. n is the labelled rows of a micro-batch (thousands): microseconds, once per step.
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    mean_loss_kernel(double* __restrict__ loss, const float* __restrict__ losses, int n, double normalizer) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += losses[i];
  *loss = sum / normalizer;
}

inline void mean_loss_cuda(double* loss, const float* losses, int n, double normalizer, cudaStream_t stream) {
  gemm_detail::require(n >= 0 && normalizer > 0, "mean_loss_cuda", "needs n >= 0 and normalizer > 0");
  l2v::launch("mean_loss", mean_loss_kernel<1>, dim3(1), dim3(1), 0, stream, loss, losses, n, normalizer);
}

}  // namespace l2v::cuda
