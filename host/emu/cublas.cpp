// The cuBLAS subset the project uses, emulated on the CPU with the real declarations of cublas_v2.h:
// GEMM with cuBLAS semantics (column-major, op(A) m x k, op(B) k x n, leading dimensions, strided
// batches, alpha/beta with C not read when beta == 0) computed by OpenBLAS in fp32.
//
// Supported cublasGemmEx type combinations (others return CUBLAS_STATUS_NOT_SUPPORTED):
//   A/B CUDA_R_32F  -> C CUDA_R_32F
//   A/B CUDA_R_16BF -> C CUDA_R_16BF or CUDA_R_32F
//   A/B CUDA_R_16F  -> C CUDA_R_16F  or CUDA_R_32F
// with compute type CUBLAS_COMPUTE_32F (and its _PEDANTIC and _FAST_16F / _FAST_16BF / _FAST_TF32
// variants, all computed in full fp32 here: a GPU may round the inputs of the _FAST_ ones, so compare its
// results with a tolerance) and float alpha/beta. 16-bit inputs are widened to fp32 exactly; a 16-bit C
// is read and written with round-to-nearest-even. The math mode and the pointer mode are recorded and
// do not change results (host and "device" scalars are the same memory here).
#include <cblas.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cstddef>
#include <vector>

#include "host/emu/cuda_emu.h"
#include "host/emu/internal.h"

struct cublasContext {
  cudaStream_t stream = nullptr;
  cublasMath_t math = CUBLAS_DEFAULT_MATH;
  cublasPointerMode_t pointer_mode = CUBLAS_POINTER_MODE_HOST;
};

namespace {

float load(const void* p, cudaDataType type, size_t i) {
  switch (type) {
    case CUDA_R_16BF: return __bfloat162float(static_cast<const __nv_bfloat16*>(p)[i]);
    case CUDA_R_16F: return __half2float(static_cast<const __half*>(p)[i]);
    default: return static_cast<const float*>(p)[i];
  }
}

void store(void* p, cudaDataType type, size_t i, float v) {
  switch (type) {
    case CUDA_R_16BF: static_cast<__nv_bfloat16*>(p)[i] = __float2bfloat16_rn(v); break;
    case CUDA_R_16F: static_cast<__half*>(p)[i] = __float2half_rn(v); break;
    default: static_cast<float*>(p)[i] = v; break;
  }
}

size_t type_size(cudaDataType type) { return type == CUDA_R_32F ? 4 : 2; }

// A rows x cols column-major matrix with leading dimension ld, widened to a dense fp32 one.
std::vector<float> widen(const void* p, cudaDataType type, int rows, int cols, int ld) {
  std::vector<float> out(static_cast<size_t>(rows) * cols);
  for (int c = 0; c < cols; ++c) {
    for (int r = 0; r < rows; ++r) out[static_cast<size_t>(c) * rows + r] = load(p, type, static_cast<size_t>(c) * ld + r);
  }
  return out;
}

bool supported(cudaDataType ab, cudaDataType c) {
  switch (ab) {
    case CUDA_R_32F: return c == CUDA_R_32F;
    case CUDA_R_16BF: return c == CUDA_R_16BF || c == CUDA_R_32F;
    case CUDA_R_16F: return c == CUDA_R_16F || c == CUDA_R_32F;
    default: return false;
  }
}

bool fp32_compute(cublasComputeType_t compute) {
  switch (compute) {
    case CUBLAS_COMPUTE_32F:
    case CUBLAS_COMPUTE_32F_PEDANTIC:
    case CUBLAS_COMPUTE_32F_FAST_16F:
    case CUBLAS_COMPUTE_32F_FAST_16BF:
    case CUBLAS_COMPUTE_32F_FAST_TF32: return true;
    default: return false;
  }
}

CBLAS_TRANSPOSE to_cblas(cublasOperation_t op) { return op == CUBLAS_OP_N ? CblasNoTrans : CblasTrans; }

bool valid_op(cublasOperation_t op) { return op == CUBLAS_OP_N || op == CUBLAS_OP_T || op == CUBLAS_OP_C; }

void run_gemm(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k, float al, const void* A,
             cudaDataType a_type, int lda, long long stride_a, const void* B, cudaDataType b_type, int ldb,
             long long stride_b, float be, void* C, cudaDataType c_type, int ldc, long long stride_c, int batch);

// Every GEMM entry point ends here (strides in elements; batch 1 for the plain calls).
cublasStatus_t gemm(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k,
                    const void* alpha, const void* A, cudaDataType a_type, int lda, long long stride_a, const void* B,
                    cudaDataType b_type, int ldb, long long stride_b, const void* beta, void* C, cudaDataType c_type,
                    int ldc, long long stride_c, int batch, cublasComputeType_t compute) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (!valid_op(transa) || !valid_op(transb) || m < 0 || n < 0 || k < 0 || batch < 0) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  // Rows of A and B as stored (column-major): op(A) is m x k, op(B) is k x n.
  const int a_rows = transa == CUBLAS_OP_N ? m : k, b_rows = transb == CUBLAS_OP_N ? k : n;
  if (lda < std::max(1, a_rows) || ldb < std::max(1, b_rows) || ldc < std::max(1, m)) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (a_type != b_type || !supported(a_type, c_type) || !fp32_compute(compute)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (alpha == nullptr || beta == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  if (!l2v::emu::stream_is_valid(handle->stream)) return CUBLAS_STATUS_EXECUTION_FAILED;
  if (m == 0 || n == 0 || batch == 0) return CUBLAS_STATUS_SUCCESS;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  auto run = [=] {
    run_gemm(transa, transb, m, n, k, al, A, a_type, lda, stride_a, B, b_type, ldb, stride_b, be, C, c_type, ldc,
            stride_c, batch);
  };
  cudaError_t err = cudaSuccess;
  switch (l2v::emu::stream_mode(handle->stream, &err)) {
    case l2v::emu::StreamMode::kError: return CUBLAS_STATUS_EXECUTION_FAILED;
    case l2v::emu::StreamMode::kRun: run(); break;
    case l2v::emu::StreamMode::kCapture:  // alpha and beta as they are now, as with the host pointer mode
      l2v::emu::capture_node(handle->stream,
                             {l2v::emu::GraphNode::Kind::kLibrary, reinterpret_cast<const void*>(&run_gemm), run});
      break;
  }
  return CUBLAS_STATUS_SUCCESS;
}

// The GEMMs of a validated call (or of a graph node replaying one).
void run_gemm(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k, float al, const void* A,
             cudaDataType a_type, int lda, long long stride_a, const void* B, cudaDataType b_type, int ldb,
             long long stride_b, float be, void* C, cudaDataType c_type, int ldc, long long stride_c, int batch) {
  const int a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
  const int b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
  const size_t a_elem = type_size(a_type), c_elem = type_size(c_type);
  for (int i = 0; i < batch; ++i) {
    const char* a = static_cast<const char*>(A) + i * stride_a * static_cast<long long>(a_elem);
    const char* b = static_cast<const char*>(B) + i * stride_b * static_cast<long long>(a_elem);
    char* c = static_cast<char*>(C) + i * stride_c * static_cast<long long>(c_elem);
    if (a_type == CUDA_R_32F && c_type == CUDA_R_32F) {
      cblas_sgemm(CblasColMajor, to_cblas(transa), to_cblas(transb), m, n, k, al, reinterpret_cast<const float*>(a),
                  lda, reinterpret_cast<const float*>(b), ldb, be, reinterpret_cast<float*>(c), ldc);
      continue;
    }
    const std::vector<float> a32 = widen(a, a_type, a_rows, a_cols, lda);
    const std::vector<float> b32 = widen(b, b_type, b_rows, b_cols, ldb);
    // beta == 0: C is output only (it may hold NaN), as in BLAS.
    std::vector<float> c32 = be == 0.0f ? std::vector<float>(static_cast<size_t>(m) * n) : widen(c, c_type, m, n, ldc);
    cblas_sgemm(CblasColMajor, to_cblas(transa), to_cblas(transb), m, n, k, al, a32.data(), std::max(1, a_rows),
                b32.data(), std::max(1, b_rows), be, c32.data(), m);
    for (int col = 0; col < n; ++col) {
      for (int r = 0; r < m; ++r) {
        store(c, c_type, static_cast<size_t>(col) * ldc + r, c32[static_cast<size_t>(col) * m + r]);
      }
    }
  }
}

}  // namespace

cublasStatus_t cublasCreate_v2(cublasHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasDestroy_v2(cublasHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetStream_v2(cublasHandle_t handle, cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->stream = stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetStream_v2(cublasHandle_t handle, cudaStream_t* stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (stream == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *stream = handle->stream;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetMathMode(cublasHandle_t handle, cublasMath_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->math = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasGetMathMode(cublasHandle_t handle, cublasMath_t* mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (mode == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *mode = handle->math;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetPointerMode_v2(cublasHandle_t handle, cublasPointerMode_t mode) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  handle->pointer_mode = mode;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasSetWorkspace_v2(cublasHandle_t handle, void*, size_t) {
  return handle == nullptr ? CUBLAS_STATUS_NOT_INITIALIZED : CUBLAS_STATUS_SUCCESS;
}

const char* cublasGetStatusName(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "CUBLAS_STATUS_SUCCESS";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "CUBLAS_STATUS_NOT_INITIALIZED";
    case CUBLAS_STATUS_ALLOC_FAILED: return "CUBLAS_STATUS_ALLOC_FAILED";
    case CUBLAS_STATUS_INVALID_VALUE: return "CUBLAS_STATUS_INVALID_VALUE";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "CUBLAS_STATUS_EXECUTION_FAILED";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "CUBLAS_STATUS_NOT_SUPPORTED";
    default: return "CUBLAS_STATUS_UNKNOWN";
  }
}

const char* cublasGetStatusString(cublasStatus_t status) {
  switch (status) {
    case CUBLAS_STATUS_SUCCESS: return "success";
    case CUBLAS_STATUS_NOT_INITIALIZED: return "the library was not initialized";
    case CUBLAS_STATUS_ALLOC_FAILED: return "the resource allocation failed";
    case CUBLAS_STATUS_INVALID_VALUE: return "an invalid numeric value was used as an argument";
    case CUBLAS_STATUS_EXECUTION_FAILED: return "the GPU program failed to execute";
    case CUBLAS_STATUS_NOT_SUPPORTED: return "the functionality requested is not supported";
    default: return "unknown error";
  }
}

cublasStatus_t cublasSgemm_v2(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                              int k, const float* alpha, const float* A, int lda, const float* B, int ldb,
                              const float* beta, float* C, int ldc) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, CUDA_R_32F, lda, 0, B, CUDA_R_32F, ldb, 0, beta, C,
              CUDA_R_32F, ldc, 0, 1, CUBLAS_COMPUTE_32F);
}

cublasStatus_t cublasSgemmStridedBatched(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                         int m, int n, int k, const float* alpha, const float* A, int lda,
                                         long long int strideA, const float* B, int ldb, long long int strideB,
                                         const float* beta, float* C, int ldc, long long int strideC,
                                         int batchCount) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, CUDA_R_32F, lda, strideA, B, CUDA_R_32F, ldb, strideB, beta,
              C, CUDA_R_32F, ldc, strideC, batchCount, CUBLAS_COMPUTE_32F);
}

cublasStatus_t cublasGemmEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb, int m, int n,
                            int k, const void* alpha, const void* A, cudaDataType Atype, int lda, const void* B,
                            cudaDataType Btype, int ldb, const void* beta, void* C, cudaDataType Ctype, int ldc,
                            cublasComputeType_t computeType, cublasGemmAlgo_t) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, Atype, lda, 0, B, Btype, ldb, 0, beta, C, Ctype, ldc, 0, 1,
              computeType);
}

cublasStatus_t cublasGemmStridedBatchedEx(cublasHandle_t handle, cublasOperation_t transa, cublasOperation_t transb,
                                          int m, int n, int k, const void* alpha, const void* A, cudaDataType Atype,
                                          int lda, long long int strideA, const void* B, cudaDataType Btype, int ldb,
                                          long long int strideB, const void* beta, void* C, cudaDataType Ctype,
                                          int ldc, long long int strideC, int batchCount,
                                          cublasComputeType_t computeType, cublasGemmAlgo_t) {
  return gemm(handle, transa, transb, m, n, k, alpha, A, Atype, lda, strideA, B, Btype, ldb, strideB, beta, C, Ctype,
              ldc, strideC, batchCount, computeType);
}
