// The LoRA branch on the GPU (host/cpu_ops.h: lora_forward, lora_backward, lora_merge; PEFT semantics):
//   out += scale * dropout(inp) A^T B^T,   A [R, IC], B [OC, R],
// with cuBLAS for the products that do not touch the dropped input, and three kernels that apply the
// input dropout in registers where it does: no dropped copy of the input is ever written.
//
// Types. Activations (inp, out, dout, dinp) and the saved xa [N, R] are stored as T (float or bf16); A, B,
// dA and dB are fp32 master parameters. cuBLAS multiplies only operands of one type, so for T = bf16 the
// launchers round A and B to bf16 copies in the workspace (R*IC + OC*R values: a 1/N fraction of the GEMM
// traffic) and the cuBLAS products take bf16 operands with fp32 accumulation, which is what
// torch.autocast does to fp32 LoRA weights in a bf16 model: xa and the backward's dxa [N, R] are bf16,
// while dA and dB are written in fp32 (bf16 in, fp32 out, beta = 1), so gradient accumulation loses
// nothing beyond the rounding of the operands. For T = float every operand is fp32 and A, B are used in
// place. The dropout kernels read A in fp32 and keep the dropped input in fp32 registers (one rounding
// fewer than a bf16 copy would cost).
//
// Dropout: element i = n*IC + c is kept when dropout_keep_elementwise(key.seed, site, key.offset + i, p)
// (host/philox.h) and scaled by 1/(1-p): the CPU reference's mask bit for bit. With p > 0
//   forward:  xa = dropout(inp) A^T                       (lora_xa_dropout: tiles of 32 rows x 16 ranks)
//   backward: dinp += mask * keep_scale * (dxa A)          (lora_dinp_dropout: 16 rows x 64 columns)
//             dA += dxa^T dropout(inp)                     (lora_da_dropout_partials over at most 16 slices
//                                                           of rows, then lora_da_sum adds them in order)
// each regenerating the mask where it is used; fp32 accumulation in a fixed order (results do not depend
// on the device or the schedule). With p = 0 every product is a cuBLAS GEMM on inp itself.
//
// Memory is the caller's: `workspace` holds the bf16 weight copies, the backward's dxa and dA's partial
// sums (lora_workspace_bytes). Kernels run on the handle's stream.
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
  float* partials;  // dA's per-slice sums (dropout backward)
};

template <typename T>
Operands<T> prepare(cudaStream_t stream, void* workspace, const float* A, const float* B, int N, int IC, int OC,
                    int R) {
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  T* dxa = reinterpret_cast<T*>(ws + weight_copy_bytes<T>(IC, OC, R));
  float* partials = reinterpret_cast<float*>(ws + lora_partials_offset(sizeof(T), N, IC, OC, R));
  if constexpr (kCopiesWeights<T>) {
    T* a16 = reinterpret_cast<T*>(ws);
    T* b16 = reinterpret_cast<T*>(ws + workspace_align_up(sizeof(T) * (size_t)R * IC));
    const long na = (long)R * IC, nb = (long)OC * R;
    l2v::launch("lora_weights_to_bf16", lora_weights_to_bf16_kernel<T>, dim3(gemm_detail::elementwise_grid(na + nb)),
                dim3(gemm_detail::kElementwiseBlock), 0, stream, a16, A, na, b16, B, nb);
    return {a16, b16, dxa, partials};
  } else {
    return {A, B, dxa, partials};
  }
}

constexpr int kThreads = 256;
constexpr int kRanks = 16;     // ranks per block of every dropout kernel (grid.y covers R)
constexpr int kXaRows = 32;    // lora_xa_dropout: rows per block
constexpr int kXaCols = 32;    //   columns per step of its loop over IC
constexpr int kRowTile = 16;   // lora_dinp_dropout and lora_da_dropout_partials: rows per step
constexpr int kColTile = 64;   //   columns per block
static_assert(kXaRows * kXaCols == 4 * kThreads && kRowTile * kColTile == 4 * kThreads &&
                  kRowTile * kRanks == kThreads && kRanks * kXaCols == 2 * kThreads,
              "each thread loads 4 inputs and computes the outputs the tiles below give it");

// The dropped input at row n, columns c0 .. c0+3 in fp32 (0 past IC): inp * keep_scale where the mask
// keeps it. One Philox call for the four when their first index is a multiple of 4.
template <typename T>
__device__ __forceinline__ void load_dropped4(float v[4], const T* __restrict__ inp, int n, int c0, int IC, float p,
                                              float keep_scale, DropoutKey key, uint32_t site) {
  bool keep[4];
  dropout_keep4_elementwise(key.seed, site, key.offset + (uint64_t)n * IC + c0, p, keep);
  for (int j = 0; j < 4; ++j) {
    const int c = c0 + j;
    v[j] = c < IC && keep[j] ? gemm_detail::to_float(inp[(long)n * IC + c]) * keep_scale : 0.0f;
  }
}

// The tile as[ar][ac] = A[r0 + ar, c0 + ac] of kRanks x kCols values (0 outside R x IC), loaded by the
// block's threads in turn.
template <int kCols, int kLd>
__device__ __forceinline__ void load_a_tile(float (&as)[kRanks][kLd], const float* __restrict__ A, int r0, int c0,
                                            int R, int IC) {
  for (int k = threadIdx.x; k < kRanks * kCols; k += kThreads) {
    const int ar = k / kCols, ac = k % kCols;
    as[ar][ac] = r0 + ar < R && c0 + ac < IC ? A[(long)(r0 + ar) * IC + c0 + ac] : 0.0f;
  }
}

// xa [N, R] = dropout(inp) A^T. Block: rows n0 .. n0+31, ranks r0 .. r0+15; thread t computes ranks
// r0 + t % 16 of rows t / 16 and t / 16 + 16, summing over IC in order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    lora_xa_dropout_kernel(T* __restrict__ xa, const T* __restrict__ inp, const float* __restrict__ A, int N, int IC,
                           int R, float p, float keep_scale, DropoutKey key, uint32_t site) {
  L2V_SHARED(float, xs, [kXaRows][kXaCols + 1]);
  L2V_SHARED(float, as, [kRanks][kXaCols + 1]);
  const int t = threadIdx.x, n0 = blockIdx.x * kXaRows, r0 = blockIdx.y * kRanks;
  const int r = t % kRanks, row = t / kRanks;
  float acc0 = 0.0f, acc1 = 0.0f;
  for (int c0 = 0; c0 < IC; c0 += kXaCols) {
    const int lr = t / (kXaCols / 4), lc = 4 * (t % (kXaCols / 4));
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (n0 + lr < N) load_dropped4(v, inp, n0 + lr, c0 + lc, IC, p, keep_scale, key, site);
    for (int j = 0; j < 4; ++j) xs[lr][lc + j] = v[j];
    load_a_tile<kXaCols>(as, A, r0, c0, R, IC);
    __syncthreads();
    const int cols = IC - c0 < kXaCols ? IC - c0 : kXaCols;
    for (int c = 0; c < cols; ++c) {
      const float a = as[r][c];
      acc0 = fmaf(xs[row][c], a, acc0);
      acc1 = fmaf(xs[row + kXaRows / 2][c], a, acc1);
    }
    __syncthreads();
  }
  if (r0 + r >= R) return;
  if (n0 + row < N) xa[(long)(n0 + row) * R + r0 + r] = gemm_detail::from_float<T>(acc0);
  if (n0 + row + kXaRows / 2 < N) xa[(long)(n0 + row + kXaRows / 2) * R + r0 + r] = gemm_detail::from_float<T>(acc1);
}

// dinp [N, IC] += keep_scale * (dxa A) where the mask keeps the element; dropped elements are neither
// read nor written. Block: rows n0 .. n0+15, columns c0 .. c0+63; thread t computes columns
// c0 + 4 (t % 16) .. +3 of row t / 16, summing over R in order.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    lora_dinp_dropout_kernel(T* __restrict__ dinp, const T* __restrict__ dxa, const float* __restrict__ A, int N,
                             int IC, int R, float p, float keep_scale, DropoutKey key, uint32_t site) {
  L2V_SHARED(float, ds, [kRowTile][kRanks + 1]);
  L2V_SHARED(float, as, [kRanks][kColTile]);
  const int t = threadIdx.x, n0 = blockIdx.y * kRowTile, c0 = blockIdx.x * kColTile;
  const int row = t / (kColTile / 4), c4 = 4 * (t % (kColTile / 4));
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int r0 = 0; r0 < R; r0 += kRanks) {
    const int dr = t / kRanks, dk = t % kRanks;
    ds[dr][dk] = n0 + dr < N && r0 + dk < R ? gemm_detail::to_float(dxa[(long)(n0 + dr) * R + r0 + dk]) : 0.0f;
    load_a_tile<kColTile>(as, A, r0, c0, R, IC);
    __syncthreads();
    const int ranks = R - r0 < kRanks ? R - r0 : kRanks;
    for (int k = 0; k < ranks; ++k) {
      const float d = ds[row][k];
      for (int j = 0; j < 4; ++j) acc[j] = fmaf(d, as[k][c4 + j], acc[j]);
    }
    __syncthreads();
  }
  const int n = n0 + row;
  if (n >= N) return;
  bool keep[4];
  dropout_keep4_elementwise(key.seed, site, key.offset + (uint64_t)n * IC + c0 + c4, p, keep);
  for (int j = 0; j < 4; ++j) {
    const int c = c0 + c4 + j;
    if (c >= IC || !keep[j]) continue;
    const long i = (long)n * IC + c;
    dinp[i] = gemm_detail::from_float<T>(gemm_detail::to_float(dinp[i]) + acc[j] * keep_scale);
  }
}

// partials [slice, R, IC] = dxa^T dropout(inp) over the rows of one slice (blockIdx.z; lora_slice_rows
// each), in order. Block: columns c0 .. c0+63, ranks r0 .. r0+15; thread t computes columns
// c0 + 4 (t % 16) .. +3 of rank r0 + t / 16.
template <typename T>
__global__ void __launch_bounds__(kThreads)
    lora_da_dropout_partials_kernel(float* __restrict__ partials, const T* __restrict__ dxa,
                                    const T* __restrict__ inp, int N, int IC, int R, int slice_rows, float p,
                                    float keep_scale, DropoutKey key, uint32_t site) {
  L2V_SHARED(float, xs, [kRowTile][kColTile]);
  L2V_SHARED(float, ds, [kRowTile][kRanks + 1]);
  const int t = threadIdx.x, c0 = blockIdx.x * kColTile, r0 = blockIdx.y * kRanks;
  const int r = t / (kColTile / 4), c4 = 4 * (t % (kColTile / 4));
  const int first = blockIdx.z * slice_rows, last = first + slice_rows < N ? first + slice_rows : N;
  float acc[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  for (int n0 = first; n0 < last; n0 += kRowTile) {
    const int lr = t / (kColTile / 4), lc = 4 * (t % (kColTile / 4));
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (n0 + lr < last) load_dropped4(v, inp, n0 + lr, c0 + lc, IC, p, keep_scale, key, site);
    for (int j = 0; j < 4; ++j) xs[lr][lc + j] = v[j];
    const int dr = t / kRanks, dk = t % kRanks;
    ds[dr][dk] = n0 + dr < last && r0 + dk < R ? gemm_detail::to_float(dxa[(long)(n0 + dr) * R + r0 + dk]) : 0.0f;
    __syncthreads();
    const int rows = last - n0 < kRowTile ? last - n0 : kRowTile;
    for (int k = 0; k < rows; ++k) {
      const float d = ds[k][r];
      for (int j = 0; j < 4; ++j) acc[j] = fmaf(d, xs[k][c4 + j], acc[j]);
    }
    __syncthreads();
  }
  if (r0 + r >= R) return;
  float* out = partials + ((long)blockIdx.z * R + r0 + r) * IC;
  for (int j = 0; j < 4; ++j)
    if (c0 + c4 + j < IC) out[c0 + c4 + j] = acc[j];
}

// dA [R*IC] += the slices' partial sums, added in slice order.
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    lora_da_sum_kernel(float* __restrict__ dA, const float* __restrict__ partials, int slices, long n) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    float sum = partials[i];
    for (int s = 1; s < slices; ++s) sum += partials[(long)s * n + i];
    dA[i] += sum;
  }
}

inline void check_args(const char* fn, float dropout_p, const void* workspace, size_t ws_bytes, int N, int IC, int OC,
                       int R) {
  gemm_detail::require(N >= 0 && IC > 0 && OC > 0 && R > 0, fn, "N must be >= 0, IC, OC and R > 0");
  // p == 1 would need an infinite 1/(1-p) scale; the reference rejects it too.
  gemm_detail::require(dropout_p >= 0.0f && dropout_p < 1.0f, fn, "dropout probability must lie in [0, 1)");
  gemm_detail::require(ws_bytes == 0 || workspace != nullptr, fn, "the workspace (lora_workspace_bytes) is missing");
  gemm_detail::require(N <= 65535 * kRowTile, fn, "too many rows for the dropout kernels' grid");
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
                       float dropout_p, DropoutKey key, uint32_t site, void* workspace, int N, int IC, int OC, int R) {
  using namespace lora_detail;
  check_args("lora_forward_cuda", dropout_p, workspace, lora_workspace_bytes<T>(N, IC, OC, R), N, IC, OC, R);
  if (N == 0) return;
  const cudaStream_t stream = gemm_detail::stream_of(handle);
  const Operands<T> w = prepare<T>(stream, workspace, A, B, N, IC, OC, R);
  if (dropout_p > 0.0f) {
    const dim3 grid((unsigned)((N + kXaRows - 1) / kXaRows), (unsigned)((R + kRanks - 1) / kRanks));
    l2v::launch("lora_xa_dropout", lora_xa_dropout_kernel<T>, grid, dim3(kThreads), 0, stream, xa, inp, A, N, IC, R,
                dropout_p, 1.0f / (1.0f - dropout_p), key, site);
  } else {
    gemm_rowmajor(handle, false, true, N, R, IC, 1.0f, inp, IC, w.A, IC, 0.0f, xa, R);
  }
  gemm_rowmajor(handle, false, true, N, OC, R, scale, xa, R, w.B, R, 1.0f, out, OC);
}

// Accumulates (+=) dinp [N, IC], dA [R, IC] and dB [OC, R] from dout [N, OC], the forward's inp and xa:
//   dB += scale dout^T xa,  dxa = scale dout B,  dA += dxa^T dropout(inp),  dinp += dropout'(dxa A).
// Without dropout the dA and dinp GEMMs read inp and accumulate into dinp directly (beta = 1); with it,
// the dropout kernels regenerate the mask in registers.
template <typename T>
void lora_backward_cuda(cublasHandle_t handle, T* dinp, float* dA, float* dB, const T* dout, const T* inp, const T* xa,
                        const float* A, const float* B, float scale, float dropout_p, DropoutKey key, uint32_t site,
                        void* workspace, int N, int IC, int OC, int R) {
  using namespace lora_detail;
  check_args("lora_backward_cuda", dropout_p, workspace, lora_workspace_bytes<T>(N, IC, OC, R), N, IC, OC, R);
  if (N == 0) return;
  const cudaStream_t stream = gemm_detail::stream_of(handle);
  const Operands<T> w = prepare<T>(stream, workspace, A, B, N, IC, OC, R);
  gemm_rowmajor(handle, true, false, OC, R, N, scale, dout, OC, xa, R, 1.0f, dB, R);
  gemm_rowmajor(handle, false, false, N, R, OC, scale, dout, OC, w.B, R, 0.0f, w.dxa, R);
  if (dropout_p == 0.0f) {
    gemm_rowmajor(handle, true, false, R, IC, N, 1.0f, w.dxa, R, inp, IC, 1.0f, dA, IC);
    gemm_rowmajor(handle, false, false, N, IC, R, 1.0f, w.dxa, R, w.A, IC, 1.0f, dinp, IC);
    return;
  }
  const float keep_scale = 1.0f / (1.0f - dropout_p);
  const unsigned col_blocks = (unsigned)((IC + kColTile - 1) / kColTile);
  l2v::launch("lora_dinp_dropout", lora_dinp_dropout_kernel<T>, dim3(col_blocks, (unsigned)((N + kRowTile - 1) / kRowTile)),
              dim3(kThreads), 0, stream, dinp, w.dxa, A, N, IC, R, dropout_p, keep_scale, key, site);
  const int slices = lora_slices(N);
  l2v::launch("lora_da_dropout_partials", lora_da_dropout_partials_kernel<T>,
              dim3(col_blocks, (unsigned)((R + kRanks - 1) / kRanks), (unsigned)slices), dim3(kThreads), 0, stream,
              w.partials, w.dxa, inp, N, IC, R, lora_slice_rows(N), dropout_p, keep_scale, key, site);
  const long n = (long)R * IC;
  l2v::launch("lora_da_sum", lora_da_sum_kernel<kThreads>, dim3(gemm_detail::elementwise_grid(n)), dim3(kThreads), 0, stream,
              dA, w.partials, slices, n);
}

// weight [OC, IC] += sign * scale * B A (sign +1 merges, -1 unmerges): one GEMM with beta = 1. For bf16 the
// delta is computed from bf16-rounded A and B (fp32 accumulation) and added with one rounding.
// workspace: lora_workspace_bytes<T>(0, IC, OC, R) bytes (none for fp32: nullptr is fine).
template <typename T>
void lora_merge_cuda(cublasHandle_t handle, T* weight, const float* A, const float* B, float scale, float sign,
                     void* workspace, int IC, int OC, int R) {
  lora_detail::check_args("lora_merge_cuda", 0.0f, workspace, lora_workspace_bytes<T>(0, IC, OC, R), 0, IC, OC, R);
  const lora_detail::Operands<T> w =
      lora_detail::prepare<T>(gemm_detail::stream_of(handle), workspace, A, B, 0, IC, OC, R);
  gemm_rowmajor(handle, false, false, OC, IC, R, sign * scale, w.B, R, w.A, IC, 1.0f, weight, IC);
}

}  // namespace l2v::cuda
