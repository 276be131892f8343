// The LoRA branch on the GPU (host/cpu_ops.h: lora_forward, lora_backward, lora_merge; PEFT semantics):
//   out += scale * dropout(inp) A^T B^T,   A [R, IC], B [OC, R],
// with cuBLAS for the four low-rank products and two element-wise kernels for the input dropout.
//
// Types. Activations (inp, out, dout, dinp) and the saved xa [N, R] are stored as T (float or bf16); A, B,
// dA and dB are fp32 master parameters. cuBLAS multiplies only operands of one type, so for T = bf16 the
// launchers round A and B to bf16 copies in the workspace (R*IC + OC*R values: a 1/N fraction of the GEMM
// traffic) and every product takes bf16 operands with fp32 accumulation, which is what torch.autocast does
// to fp32 LoRA weights in a bf16 model: xa and the backward's dxa [N, R] are bf16, while dA and dB are
// written by cuBLAS in fp32 (bf16 in, fp32 out, beta = 1), so gradient accumulation loses nothing beyond
// the rounding of the operands. For T = float every operand is fp32 and A, B are used in place.
//
// Dropout: element i = n*IC + c is kept when dropout_keep_elementwise(key.seed, site, key.offset + i, p) (host/philox.h)
// and scaled by 1/(1-p): the CPU reference's mask bit for bit. The backward regenerates it.
//
// Memory is the caller's: `scratch` [N, IC] of T holds the dropped input when p > 0 (nullptr allowed when
// p == 0; its contents on entry are never read, so one buffer serves every layer), and `workspace` holds
// the bf16 weight copies and the backward's dxa (lora_workspace_bytes). Kernels run on the handle's stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "cuda/matmul.cuh"
#include "cuda/workspace_sizes.h"
#include "host/philox.h"

namespace l2v::cuda {

namespace lora_detail {


template <typename T>
constexpr bool kCopiesWeights = !std::is_same<T, float>::value;

// Bytes of the bf16 copies of A and B at the start of the workspace (none for fp32).
template <typename T>
size_t weight_copy_bytes(int IC, int OC, int R) {
  return lora_weight_copy_bytes(sizeof(T), IC, OC, R);
}

// A and B rounded to T (bf16) in one launch (two arrays, one grid-stride loop over both). A template so
// that the header can be included by several translation units without duplicate kernel symbols.
template <typename T>
__global__ void __launch_bounds__(gemm_detail::kElementwiseBlock)
    lora_weights_to_bf16_kernel(T* __restrict__ a16, const float* __restrict__ A, long na, T* __restrict__ b16,
                                const float* __restrict__ B, long nb) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < na + nb; i += (long)gridDim.x * blockDim.x) {
    if (i < na) {
      a16[i] = __float2bfloat16_rn(A[i]);
    } else {
      b16[i - na] = __float2bfloat16_rn(B[i - na]);
    }
  }
}

// The A and B the GEMMs read, as T, and the dxa [N, R] buffer of the backward.
template <typename T>
struct Operands {
  const T* A;
  const T* B;
  T* dxa;
};

template <typename T>
Operands<T> prepare(cudaStream_t stream, void* workspace, const float* A, const float* B, int IC, int OC, int R) {
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  T* dxa = reinterpret_cast<T*>(ws + weight_copy_bytes<T>(IC, OC, R));
  if constexpr (kCopiesWeights<T>) {
    T* a16 = reinterpret_cast<T*>(ws);
    T* b16 = reinterpret_cast<T*>(ws + workspace_align_up(sizeof(T) * (size_t)R * IC));
    const long na = (long)R * IC, nb = (long)OC * R;
    l2v::launch("lora_weights_to_bf16", lora_weights_to_bf16_kernel<T>, dim3(gemm_detail::elementwise_grid(na + nb)),
                dim3(gemm_detail::kElementwiseBlock), 0, stream, a16, A, na, b16, B, nb);
    return {a16, b16, dxa};
  } else {
    return {A, B, dxa};
  }
}

// Each thread takes the 4 elements 4g .. 4g+3, whose keep bits dropout_keep_elementwise draws from one
// Philox call (index >> 2 == g). The 4 decisions are computed unconditionally and their indices written
// as (g << 2) | j: then nvcc sees the four counters are equal and runs Philox once per thread (with
// 4g + j it did not: three and a half Philox evaluations in the PTX). Constant trip counts: nvcc unrolls
// these loops without a pragma, which g++ would reject in the emulator build.
constexpr int kPerThread = 4;  // the (g << 2) | j indices below rely on it

// The Philox index of element 4g + j of a site whose masks start at `offset` (DropoutKey::offset):
// offset + 4g + j, written as ((offset >> 2) + g) << 2 | j when offset is a multiple of 4 (the model's
// offsets, row0·T·IC, are whenever T·IC is) so that the single Philox call per thread survives.
L2V_HD uint64_t element_index(uint64_t offset, long g, int j) {
  return (offset & 3) == 0 ? ((offset >> 2) + (uint64_t)g) << 2 | (uint64_t)j : offset + ((uint64_t)g << 2) + j;
}

// dropped = dropout(inp), the GEMM input of the forward.
template <typename T>
__global__ void __launch_bounds__(gemm_detail::kElementwiseBlock)
    lora_dropout_forward_kernel(T* __restrict__ dropped, const T* __restrict__ inp, long n, float p,
                                float keep_scale, DropoutKey key, uint32_t site) {
  const long groups = (n + kPerThread - 1) / kPerThread;
  for (long g = blockIdx.x * (long)blockDim.x + threadIdx.x; g < groups; g += (long)gridDim.x * blockDim.x) {
    bool keep[kPerThread];
    for (int j = 0; j < kPerThread; ++j) {
      keep[j] = dropout_keep_elementwise(key.seed, site, element_index(key.offset, g, j), p);
    }
    for (int j = 0; j < kPerThread; ++j) {
      const long i = g * kPerThread + j;
      if (i < n) dropped[i] = gemm_detail::from_float<T>(keep[j] ? gemm_detail::to_float(inp[i]) * keep_scale : 0.0f);
    }
  }
}

// On entry scratch holds dxa A, the gradient of the dropped input. One sweep over the mask adds its kept,
// scaled part into dinp and replaces it with the dropped input that dA needs (as the CPU reference does).
template <typename T>
__global__ void __launch_bounds__(gemm_detail::kElementwiseBlock)
    lora_dropout_backward_kernel(T* __restrict__ dinp, T* __restrict__ scratch, const T* __restrict__ inp, long n,
                                 float p, float keep_scale, DropoutKey key, uint32_t site) {
  const long groups = (n + kPerThread - 1) / kPerThread;
  for (long g = blockIdx.x * (long)blockDim.x + threadIdx.x; g < groups; g += (long)gridDim.x * blockDim.x) {
    bool keep[kPerThread];
    for (int j = 0; j < kPerThread; ++j) {
      keep[j] = dropout_keep_elementwise(key.seed, site, element_index(key.offset, g, j), p);
    }
    for (int j = 0; j < kPerThread; ++j) {
      const long i = g * kPerThread + j;
      if (i >= n) continue;
      if (keep[j]) {
        dinp[i] = gemm_detail::from_float<T>(gemm_detail::to_float(dinp[i]) +
                                             gemm_detail::to_float(scratch[i]) * keep_scale);
        scratch[i] = gemm_detail::from_float<T>(gemm_detail::to_float(inp[i]) * keep_scale);
      } else {  // a dropped element adds 0 to dinp: it is neither read nor written
        scratch[i] = gemm_detail::from_float<T>(0.0f);
      }
    }
  }
}

inline void check_args(const char* fn, float dropout_p, const void* scratch, const void* workspace, size_t ws_bytes,
                       int N, int IC, int OC, int R) {
  gemm_detail::require(N >= 0 && IC > 0 && OC > 0 && R > 0, fn, "N must be >= 0, IC, OC and R > 0");
  // p == 1 would need an infinite 1/(1-p) scale; the reference rejects it too.
  gemm_detail::require(dropout_p >= 0.0f && dropout_p < 1.0f, fn, "dropout probability must lie in [0, 1)");
  gemm_detail::require(dropout_p == 0.0f || scratch != nullptr, fn, "dropout_p > 0 needs a scratch buffer [N, IC]");
  gemm_detail::require(ws_bytes == 0 || workspace != nullptr, fn, "the workspace (lora_workspace_bytes) is missing");
}

}  // namespace lora_detail

// Bytes of the `workspace` of lora_forward_cuda / lora_backward_cuda for N rows (lora_merge_cuda: N = 0).
template <typename T>
size_t lora_workspace_bytes(int N, int IC, int OC, int R) {
  return lora_workspace_bytes(sizeof(T), N, IC, OC, R);
}

// out [N, OC] += scale * dropout(inp) A^T B^T, saving xa [N, R] = dropout(inp) A^T for the backward.
// The second product is one GEMM with alpha = scale and beta = 1 straight into out: no extra pass.
template <typename T>
void lora_forward_cuda(cublasHandle_t handle, T* out, T* xa, const T* inp, const float* A, const float* B, float scale,
                       float dropout_p, DropoutKey key, uint32_t site, T* scratch, void* workspace, int N, int IC,
                       int OC, int R) {
  lora_detail::check_args("lora_forward_cuda", dropout_p, scratch, workspace, lora_workspace_bytes<T>(N, IC, OC, R), N,
                          IC, OC, R);
  if (N == 0) return;
  const cudaStream_t stream = gemm_detail::stream_of(handle);
  const lora_detail::Operands<T> w = lora_detail::prepare<T>(stream, workspace, A, B, IC, OC, R);
  const T* x = inp;
  if (dropout_p > 0.0f) {
    const long n = (long)N * IC;
    l2v::launch("lora_dropout_forward", lora_detail::lora_dropout_forward_kernel<T>,
                dim3(gemm_detail::elementwise_grid(n, lora_detail::kPerThread)), dim3(gemm_detail::kElementwiseBlock),
                0, stream, scratch, inp, n, dropout_p, 1.0f / (1.0f - dropout_p), key, site);
    x = scratch;
  }
  gemm_rowmajor(handle, false, true, N, R, IC, 1.0f, x, IC, w.A, IC, 0.0f, xa, R);
  gemm_rowmajor(handle, false, true, N, OC, R, scale, xa, R, w.B, R, 1.0f, out, OC);
}

// Accumulates (+=) dinp [N, IC], dA [R, IC] and dB [OC, R] from dout [N, OC], the forward's inp and xa:
//   dB += scale dout^T xa,  dxa = scale dout B,  dA += dxa^T dropout(inp),  dinp += dropout'(dxa A).
// Without dropout the dA and dinp GEMMs read inp and accumulate into dinp directly (beta = 1); with it,
// dxa A goes through scratch so that one mask sweep applies the dropout to it and rebuilds the dropped
// input for dA.
template <typename T>
void lora_backward_cuda(cublasHandle_t handle, T* dinp, float* dA, float* dB, const T* dout, const T* inp, const T* xa,
                        const float* A, const float* B, float scale, float dropout_p, DropoutKey key,
                        uint32_t site, T* scratch, void* workspace, int N, int IC, int OC, int R) {
  lora_detail::check_args("lora_backward_cuda", dropout_p, scratch, workspace, lora_workspace_bytes<T>(N, IC, OC, R),
                          N, IC, OC, R);
  if (N == 0) return;
  const cudaStream_t stream = gemm_detail::stream_of(handle);
  const lora_detail::Operands<T> w = lora_detail::prepare<T>(stream, workspace, A, B, IC, OC, R);
  gemm_rowmajor(handle, true, false, OC, R, N, scale, dout, OC, xa, R, 1.0f, dB, R);
  gemm_rowmajor(handle, false, false, N, R, OC, scale, dout, OC, w.B, R, 0.0f, w.dxa, R);
  if (dropout_p == 0.0f) {
    gemm_rowmajor(handle, true, false, R, IC, N, 1.0f, w.dxa, R, inp, IC, 1.0f, dA, IC);
    gemm_rowmajor(handle, false, false, N, IC, R, 1.0f, w.dxa, R, w.A, IC, 1.0f, dinp, IC);
    return;
  }
  gemm_rowmajor(handle, false, false, N, IC, R, 1.0f, w.dxa, R, w.A, IC, 0.0f, scratch, IC);
  const long n = (long)N * IC;
  l2v::launch("lora_dropout_backward", lora_detail::lora_dropout_backward_kernel<T>,
              dim3(gemm_detail::elementwise_grid(n, lora_detail::kPerThread)), dim3(gemm_detail::kElementwiseBlock), 0,
              stream, dinp, scratch, inp, n, dropout_p, 1.0f / (1.0f - dropout_p), key, site);
  gemm_rowmajor(handle, true, false, R, IC, N, 1.0f, w.dxa, R, scratch, IC, 1.0f, dA, IC);
}

// weight [OC, IC] += sign * scale * B A (sign +1 merges, -1 unmerges): one GEMM with beta = 1. For bf16 the
// delta is computed from bf16-rounded A and B (fp32 accumulation) and added with one rounding.
// workspace: lora_workspace_bytes<T>(0, IC, OC, R) bytes (none for fp32: nullptr is fine).
template <typename T>
void lora_merge_cuda(cublasHandle_t handle, T* weight, const float* A, const float* B, float scale, float sign,
                     void* workspace, int IC, int OC, int R) {
  lora_detail::check_args("lora_merge_cuda", 0.0f, nullptr, workspace, lora_workspace_bytes<T>(0, IC, OC, R), 0, IC,
                          OC, R);
  const lora_detail::Operands<T> w =
      lora_detail::prepare<T>(gemm_detail::stream_of(handle), workspace, A, B, IC, OC, R);
  gemm_rowmajor(handle, false, false, OC, IC, R, sign * scale, w.B, R, w.A, IC, 1.0f, weight, IC);
}

}  // namespace l2v::cuda
