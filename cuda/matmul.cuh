// nn.Linear on the GPU (host/cpu_ops.h: matmul_forward with its bias and residual through cuBLASLt,
// matmul_backward_input) and the cuBLAS plumbing the other GEMM users (cuda/lora.cuh, cuda/lm_head.cuh)
// share: CUBLAS_CHECK, the storage-type traits, and a row-major GEMM on top of column-major cublasGemmEx.
//
// Storage type T is float or __nv_bfloat16 for activations and weights. Every GEMM accumulates in fp32
// (CUBLAS_COMPUTE_32F); a bf16 result is rounded once, when cuBLAS stores it.
//
// Streams: a launcher that calls cuBLAS takes the handle only and launches its own kernels on the
// handle's stream (cublasGetStream), so the GEMMs and the kernels of one op can never end up on
// different streams. The handle must be in the default host pointer mode (alpha/beta live on the host).
#pragma once

#include <cublasLt.h>
#include <cublas_v2.h>

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/launch.h"

namespace l2v::cuda {

inline void cublas_check(cublasStatus_t status, const char* expr, const char* file, int line) {
  if (status == CUBLAS_STATUS_SUCCESS) return;
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: " +
                           cublasGetStatusName(status) + " (" + cublasGetStatusString(status) + ")");
}

#define CUBLAS_CHECK(expr) ::l2v::cuda::cublas_check((expr), #expr, __FILE__, __LINE__)

namespace gemm_detail {

// Argument checks of the launchers (host side, before anything is enqueued).
inline void require(bool ok, const char* fn, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string(fn) + ": " + what);
}

// The storage types the GEMM launchers are instantiated for, and their cuBLAS data types.
template <typename T>
struct Storage;
template <>
struct Storage<float> {
  static constexpr cudaDataType kType = CUDA_R_32F;
};
template <>
struct Storage<__nv_bfloat16> {
  static constexpr cudaDataType kType = CUDA_R_16BF;
};

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) { return x; }
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) { return __float2bfloat16_rn(x); }

// Element-wise kernels use grid-stride loops over this many blocks at most: several waves on any current
// GPU, and far fewer blocks for the emulator to schedule than one thread per element would need.
constexpr int kElementwiseBlock = 256;
inline unsigned elementwise_grid(long n, int per_thread = 1) {
  const long threads = (n + per_thread - 1) / per_thread;
  const long blocks = (threads + kElementwiseBlock - 1) / kElementwiseBlock;
  return (unsigned)(blocks < 1 ? 1 : (blocks > 4096 ? 4096 : blocks));
}

inline cudaStream_t stream_of(cublasHandle_t handle) {
  cudaStream_t stream = nullptr;
  CUBLAS_CHECK(cublasGetStream(handle, &stream));
  return stream;
}

}  // namespace gemm_detail

// Row-major C [M, N] = alpha * op(A) [M, K] * op(B) [K, N] + beta * C (the CPU reference's gemm), with
// fp32 accumulation. A row-major matrix is the transpose of the column-major matrix at the same address,
// so this is the column-major C^T = op(B)^T op(A)^T: operands swapped, transpose flags kept.
// A and B share one storage type TAB; C may be TAB or float (cuBLAS has no fp32-in, bf16-out GEMM).
// beta == 0 never reads C (it may hold garbage, NaN included).
template <typename TAB, typename TC>
void gemm_rowmajor(cublasHandle_t handle, bool trans_a, bool trans_b, int M, int N, int K, float alpha, const TAB* A,
                   int lda, const TAB* B, int ldb, float beta, TC* C, int ldc) {
  static_assert(std::is_same<TC, TAB>::value || std::is_same<TC, float>::value,
                "gemm_rowmajor: C is stored as A and B are, or in fp32");
  CUBLAS_CHECK(cublasGemmEx(handle, trans_b ? CUBLAS_OP_T : CUBLAS_OP_N, trans_a ? CUBLAS_OP_T : CUBLAS_OP_N, N, M, K,
                            &alpha, B, gemm_detail::Storage<TAB>::kType, ldb, A, gemm_detail::Storage<TAB>::kType,
                            lda, &beta, C, gemm_detail::Storage<TC>::kType, ldc, CUBLAS_COMPUTE_32F,
                            CUBLAS_GEMM_DEFAULT));
}

// out [N, OC] = bias broadcast over the rows, for a GEMM that then adds its product with beta = 1 (the
// latent-attention head's fp32 cuBLAS products), so that the result is rounded once. Columns on x, rows on
// a y grid-stride loop: no 64-bit division per element.
template <typename T>
__global__ void __launch_bounds__(gemm_detail::kElementwiseBlock)
    broadcast_bias_kernel(T* __restrict__ out, const T* __restrict__ bias, int N, int OC) {
  const int o = blockIdx.x * blockDim.x + threadIdx.x;
  if (o >= OC) return;
  const T b = bias[o];
  for (int n = blockIdx.y; n < N; n += gridDim.y) out[(long)n * OC + o] = b;
}

// cuBLASLt: its handle and workspace (kLtWorkspaceBytes, cuda/workspace_sizes.h), and the cuBLAS handle
// whose stream its launches share.
struct LtContext {
  cublasHandle_t blas;
  cublasLtHandle_t lt;
  void* workspace;
  size_t workspace_bytes;
};

namespace gemm_detail {

// The descriptors of one cublasLtMatmul call, destroyed with it.
struct LtMatmulDesc {
  cublasLtMatmulDesc_t desc = nullptr;
  LtMatmulDesc(cublasOperation_t transa, cublasOperation_t transb) {
    CUBLAS_CHECK(cublasLtMatmulDescCreate(&desc, CUBLAS_COMPUTE_32F, CUDA_R_32F));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSA, &transa, sizeof(transa)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(desc, CUBLASLT_MATMUL_DESC_TRANSB, &transb, sizeof(transb)));
  }
  ~LtMatmulDesc() { cublasLtMatmulDescDestroy(desc); }
  LtMatmulDesc(const LtMatmulDesc&) = delete;
  LtMatmulDesc& operator=(const LtMatmulDesc&) = delete;
};
struct LtLayout {
  cublasLtMatrixLayout_t layout = nullptr;
  LtLayout(cudaDataType type, int rows, int cols, int ld) {
    CUBLAS_CHECK(cublasLtMatrixLayoutCreate(&layout, type, (uint64_t)rows, (uint64_t)cols, (int64_t)ld));
  }
  ~LtLayout() { cublasLtMatrixLayoutDestroy(layout); }
  LtLayout(const LtLayout&) = delete;
  LtLayout& operator=(const LtLayout&) = delete;
};

}  // namespace gemm_detail

// out [N, OC] = inp [N, IC] weight [OC, IC]^T (+ bias [OC] when bias != nullptr) (+ residual [N, OC] when
// residual != nullptr; it may be out itself): one cublasLtMatmul, D = W inp^T + beta C in column-major
// terms with C = residual (beta = 1), the bias added per row of D in the epilogue, the sum rounded once to T.
// The residual stream's addition and the bias cost no pass of their own over out.
template <typename T>
void matmul_forward_cuda(const LtContext& ctx, T* out, const T* inp, const T* weight, const T* bias, int N, int IC,
                         int OC, const T* residual = nullptr) {
  gemm_detail::require(N >= 0 && IC > 0 && OC > 0, "matmul_forward_cuda", "N must be >= 0, IC and OC > 0");
  if (N == 0) return;
  constexpr cudaDataType type = gemm_detail::Storage<T>::kType;
  gemm_detail::LtMatmulDesc op(CUBLAS_OP_T, CUBLAS_OP_N);
  if (bias) {
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.desc, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)));
    CUBLAS_CHECK(cublasLtMatmulDescSetAttribute(op.desc, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias, sizeof(bias)));
    const int32_t bias_type = type;  // stored as the activations are (said, not left to the default)
    CUBLAS_CHECK(
        cublasLtMatmulDescSetAttribute(op.desc, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)));
  }
  const gemm_detail::LtLayout w(type, IC, OC, IC), x(type, IC, N, IC), d(type, OC, N, OC);
  const float alpha = 1.0f, beta = residual ? 1.0f : 0.0f;
  CUBLAS_CHECK(cublasLtMatmul(ctx.lt, op.desc, &alpha, weight, w.layout, inp, x.layout, &beta,
                              residual ? residual : out, d.layout, out, d.layout, nullptr, ctx.workspace,
                              ctx.workspace_bytes, gemm_detail::stream_of(ctx.blas)));
}

// dinp [N, IC] = dout [N, OC] weight [OC, IC], or += when accumulate (cuBLAS beta = 1: one rounding of the
// sum for bf16). The base weight is frozen: there is no weight gradient.
template <typename T>
void matmul_backward_input_cuda(cublasHandle_t handle, T* dinp, const T* dout, const T* weight, int N, int IC, int OC,
                                bool accumulate) {
  gemm_detail::require(N >= 0 && IC > 0 && OC > 0, "matmul_backward_input_cuda", "N must be >= 0, IC and OC > 0");
  if (N == 0) return;
  gemm_rowmajor(handle, false, false, N, IC, OC, 1.0f, dout, OC, weight, IC, accumulate ? 1.0f : 0.0f, dinp, IC);
}

}  // namespace l2v::cuda
