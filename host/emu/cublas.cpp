// The cuBLAS subset the project uses, emulated on the CPU with the real declarations of cublas_v2.h and
// cublasLt.h: GEMM with cuBLAS semantics (column-major, op(A) m x k, op(B) k x n, leading dimensions,
// strided batches, alpha/beta with C not read when beta == 0) computed by OpenBLAS in fp32; and
// cublasLtMatmul's D = alpha op(A) op(B) + beta C (+ bias per row of D: CUBLASLT_EPILOGUE_BIAS; the bias in
// D's type, the default, or fp32), C and D
// of one layout, in place or not, the sum rounded once to D's type (algo NULL: the implicit heuristic;
// the workspace is not used). Other descriptor attributes and epilogues return CUBLAS_STATUS_NOT_SUPPORTED.
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
#include <cublasLt.h>
#include <cublas_v2.h>

#include <algorithm>
#include <cstddef>
#include <cstring>
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

// D = alpha op(A) op(B) + beta C (+ bias[row] of bias_type when bias != nullptr) in fp32 from operands widened,
// rounded once to D's type; C has D's type and layout (C == D: in place). beta == 0 never reads C.
void gemm_widened(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k, float al, const void* A,
                  cudaDataType ab_type, int lda, const void* B, int ldb, float be, const void* C, void* D,
                  cudaDataType d_type, int ld, const void* bias, cudaDataType bias_type) {
  const int a_rows = transa == CUBLAS_OP_N ? m : k, a_cols = transa == CUBLAS_OP_N ? k : m;
  const int b_rows = transb == CUBLAS_OP_N ? k : n, b_cols = transb == CUBLAS_OP_N ? n : k;
  const std::vector<float> a32 = widen(A, ab_type, a_rows, a_cols, lda);
  const std::vector<float> b32 = widen(B, ab_type, b_rows, b_cols, ldb);
  std::vector<float> d32 = be == 0.0f ? std::vector<float>(static_cast<size_t>(m) * n) : widen(C, d_type, m, n, ld);
  cblas_sgemm(CblasColMajor, to_cblas(transa), to_cblas(transb), m, n, k, al, a32.data(), std::max(1, a_rows),
              b32.data(), std::max(1, b_rows), be, d32.data(), m);
  for (int col = 0; col < n; ++col) {
    for (int r = 0; r < m; ++r) {
      float v = d32[static_cast<size_t>(col) * m + r];
      if (bias) v += load(bias, bias_type, r);
      store(D, d_type, static_cast<size_t>(col) * ld + r, v);
    }
  }
}

// The GEMMs of a validated call (or of a graph node replaying one).
void run_gemm(cublasOperation_t transa, cublasOperation_t transb, int m, int n, int k, float al, const void* A,
             cudaDataType a_type, int lda, long long stride_a, const void* B, cudaDataType b_type, int ldb,
             long long stride_b, float be, void* C, cudaDataType c_type, int ldc, long long stride_c, int batch) {
  (void)b_type;  // == a_type (validated)
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
    gemm_widened(transa, transb, m, n, k, al, a, a_type, lda, b, ldb, be, c, c, c_type, ldc, nullptr, c_type);
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

// ---- cuBLASLt ----

struct cublasLtContext {};

namespace {

// What the semi-opaque descriptors hold here (in their data words).
struct LtMatmulDesc {
  cublasComputeType_t compute;
  cudaDataType_t scale;
  cublasOperation_t transa, transb;
  cublasLtEpilogue_t epilogue;
  const void* bias;
  int32_t bias_type;  // a cudaDataType, or -1: D's
};
struct LtLayout {
  cudaDataType type;
  uint64_t rows, cols;
  int64_t ld;
};
static_assert(sizeof(LtMatmulDesc) <= sizeof(cublasLtMatmulDescOpaque_t) &&
                  sizeof(LtLayout) <= sizeof(cublasLtMatrixLayoutOpaque_t),
              "the descriptors fit their opaque words");
LtMatmulDesc* desc_of(cublasLtMatmulDesc_t d) { return reinterpret_cast<LtMatmulDesc*>(d->data); }
const LtLayout* layout_of(cublasLtMatrixLayout_t l) { return reinterpret_cast<const LtLayout*>(l->data); }


}  // namespace

cublasStatus_t cublasLtCreate(cublasLtHandle_t* handle) {
  if (handle == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *handle = new cublasLtContext;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtDestroy(cublasLtHandle_t handle) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  delete handle;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescCreate(cublasLtMatmulDesc_t* desc, cublasComputeType_t compute,
                                        cudaDataType_t scale) {
  if (desc == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *desc = new cublasLtMatmulDescOpaque_t{};
  *desc_of(*desc) = {compute, scale, CUBLAS_OP_N, CUBLAS_OP_N, CUBLASLT_EPILOGUE_DEFAULT, nullptr, -1};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescDestroy(cublasLtMatmulDesc_t desc) {
  delete desc;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmulDescSetAttribute(cublasLtMatmulDesc_t desc, cublasLtMatmulDescAttributes_t attr,
                                              const void* buf, size_t bytes) {
  if (desc == nullptr || buf == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  LtMatmulDesc& d = *desc_of(desc);
  auto set = [&](auto& field) {
    if (bytes != sizeof(field)) return CUBLAS_STATUS_INVALID_VALUE;
    std::memcpy(&field, buf, bytes);
    return CUBLAS_STATUS_SUCCESS;
  };
  switch (attr) {
    case CUBLASLT_MATMUL_DESC_TRANSA: return set(d.transa);
    case CUBLASLT_MATMUL_DESC_TRANSB: return set(d.transb);
    case CUBLASLT_MATMUL_DESC_EPILOGUE: return set(d.epilogue);
    case CUBLASLT_MATMUL_DESC_BIAS_POINTER: return set(d.bias);
    case CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE: return set(d.bias_type);
    default: return CUBLAS_STATUS_NOT_SUPPORTED;
  }
}

cublasStatus_t cublasLtMatrixLayoutCreate(cublasLtMatrixLayout_t* layout, cudaDataType type, uint64_t rows,
                                          uint64_t cols, int64_t ld) {
  if (layout == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  *layout = new cublasLtMatrixLayoutOpaque_t{};
  *reinterpret_cast<LtLayout*>((*layout)->data) = {type, rows, cols, ld};
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatrixLayoutDestroy(cublasLtMatrixLayout_t layout) {
  delete layout;
  return CUBLAS_STATUS_SUCCESS;
}

cublasStatus_t cublasLtMatmul(cublasLtHandle_t handle, cublasLtMatmulDesc_t desc, const void* alpha, const void* A,
                              cublasLtMatrixLayout_t a_desc, const void* B, cublasLtMatrixLayout_t b_desc,
                              const void* beta, const void* C, cublasLtMatrixLayout_t c_desc, void* D,
                              cublasLtMatrixLayout_t d_desc, const cublasLtMatmulAlgo_t*, void*, size_t,
                              cudaStream_t stream) {
  if (handle == nullptr) return CUBLAS_STATUS_NOT_INITIALIZED;
  if (desc == nullptr || a_desc == nullptr || b_desc == nullptr || c_desc == nullptr || d_desc == nullptr ||
      alpha == nullptr || beta == nullptr) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  const LtMatmulDesc d = *desc_of(desc);
  const LtLayout a = *layout_of(a_desc), b = *layout_of(b_desc), c = *layout_of(c_desc), dl = *layout_of(d_desc);
  if (!valid_op(d.transa) || !valid_op(d.transb)) return CUBLAS_STATUS_INVALID_VALUE;
  if (d.scale != CUDA_R_32F || !fp32_compute(d.compute)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (d.epilogue != CUBLASLT_EPILOGUE_DEFAULT && d.epilogue != CUBLASLT_EPILOGUE_BIAS) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (d.epilogue == CUBLASLT_EPILOGUE_BIAS && d.bias == nullptr) return CUBLAS_STATUS_INVALID_VALUE;
  // op(A) m x k, op(B) k x n, C and D m x n with one layout.
  const uint64_t m = dl.rows, n = dl.cols, k = d.transa == CUBLAS_OP_N ? a.cols : a.rows;
  if ((d.transa == CUBLAS_OP_N ? a.rows : a.cols) != m || (d.transb == CUBLAS_OP_N ? b.rows : b.cols) != k ||
      (d.transb == CUBLAS_OP_N ? b.cols : b.rows) != n || c.rows != m || c.cols != n || c.ld != dl.ld ||
      a.ld < (int64_t)std::max<uint64_t>(1, a.rows) || b.ld < (int64_t)std::max<uint64_t>(1, b.rows) ||
      dl.ld < (int64_t)std::max<uint64_t>(1, m) || m > INT32_MAX || n > INT32_MAX || k > INT32_MAX) {
    return CUBLAS_STATUS_INVALID_VALUE;
  }
  if (a.type != b.type || c.type != dl.type || !supported(a.type, dl.type)) return CUBLAS_STATUS_NOT_SUPPORTED;
  if (!l2v::emu::stream_is_valid(stream)) return CUBLAS_STATUS_EXECUTION_FAILED;
  if (m == 0 || n == 0) return CUBLAS_STATUS_SUCCESS;
  const float al = *static_cast<const float*>(alpha), be = *static_cast<const float*>(beta);
  const void* bias = d.epilogue == CUBLASLT_EPILOGUE_BIAS ? d.bias : nullptr;
  const cudaDataType bias_type = d.bias_type == -1 ? dl.type : static_cast<cudaDataType>(d.bias_type);
  if (bias && bias_type != dl.type && bias_type != CUDA_R_32F) return CUBLAS_STATUS_NOT_SUPPORTED;
  auto run = [=] {
    gemm_widened(d.transa, d.transb, (int)m, (int)n, (int)k, al, A, a.type, (int)a.ld, B, (int)b.ld, be, C, D,
                  dl.type, (int)dl.ld, bias, bias_type);
  };
  cudaError_t err = cudaSuccess;
  switch (l2v::emu::stream_mode(stream, &err)) {
    case l2v::emu::StreamMode::kError: return CUBLAS_STATUS_EXECUTION_FAILED;
    case l2v::emu::StreamMode::kRun: run(); break;
    case l2v::emu::StreamMode::kCapture:  // alpha, beta and the descriptors as they are now
      l2v::emu::capture_node(stream,
                             {l2v::emu::GraphNode::Kind::kLibrary, reinterpret_cast<const void*>(&gemm_widened), run});
      break;
  }
  return CUBLAS_STATUS_SUCCESS;
}
