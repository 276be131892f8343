// The LoRA branch on the GPU (host/cpu_ops.h: lora_forward, lora_backward, lora_merge; PEFT semantics):
//   out += scale * dropout(inp) A^T B^T,   A [R, IC], B [OC, R], out's rows ld >= OC apart,
// with cuBLAS for the products that do not touch the dropped input, and three kernels that apply the
// input dropout in registers where it does: no dropped copy of the input is ever written. The launchers
// take up to kMaxLoraBranches adapters that read one input (q, k and v; gate and up; model/backend.h), each
// with its own A, B and dropout mask, so that the dropout kernels read the input, and update its gradient,
// once for all of them.
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
// Dropout: element i = n*IC + c of branch b is kept when dropout_keep_elementwise(key.seed, site_b,
// key.offset + i, p) (host/philox.h) and scaled by 1/(1-p): the CPU reference's mask bit for bit. With p > 0
//   forward:  xa_b = dropout_b(inp) A_b^T                 (lora_xa_dropout: tiles of 32 rows x 16 ranks of
//                                                           every branch)
//   backward: dinp += sum_b mask_b * keep_scale * (dxa_b A_b)  (lora_dinp_dropout: 16 rows x 64 columns; the
//                                                           branches summed in fp32, one rounding to T)
//             dA_b += dxa_b^T dropout_b(inp)               (lora_da_dropout_partials over at most 16 slices
//                                                           of rows, then lora_da_sum adds them in order)
// each regenerating the masks where they are used; fp32 accumulation in a fixed order (results do not
// depend on the device or the schedule; xa_b, dA_b and dB_b have the bits of branch b alone). With p = 0
// every product is a cuBLAS GEMM on inp itself, per branch.
//
// Memory is the caller's: `workspace` holds, per branch, the bf16 weight copies, the backward's dxa and dA's
// partial sums (workspace_sizes.h: lora_branches_workspace_bytes). Kernels run on the handle's stream.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

#include "cuda/matmul.cuh"
#include "cuda/workspace_sizes.h"
#include "host/philox.h"
#include "model/backend.h"

namespace l2v::cuda {

// The input the branches of one call share (model/backend.h: LoraInput), and the branches.
template <typename T>
struct LoraInput {
  const T* inp;  // [N, IC]
  int N, IC, R;
  float scale, dropout_p;
  DropoutKey key;
};
template <typename T>
struct LoraForwardBranch {
  T* out;  // [N, OC], rows ld apart
  T* xa;   // [N, R]
  const float* A;
  const float* B;
  uint32_t site;
  int OC, ld;
};
template <typename T>
struct LoraBackwardBranch {
  const T* dout;  // [N, OC], rows ld apart
  const T* xa;
  const float* A;
  const float* B;
  float* dA;
  float* dB;
  uint32_t site;
  int OC, ld;
};

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
// lora_dinp_dropout's occupancy floor for kB branches (blocks of 256 threads per SM). With none, ptxas held
// the three branches' kernel to 64 registers on sm_90 and spilled, and gave one branch 86-96 registers (2
// blocks per SM); floors of 3 (at most 80 registers) and 5 (48) fit without spilling.
constexpr int dinp_min_blocks(int kB) { return kB == 1 ? 5 : 3; }
static_assert(kXaRows * kXaCols == 4 * kThreads && kRowTile * kColTile == 4 * kThreads &&
                  kRowTile * kRanks == kThreads && kRanks * kXaCols == 2 * kThreads,
              "each thread loads 4 inputs and computes the outputs the tiles below give it");

// The branches' operands of the dropout kernels, passed by value; entries past the launch's count unused.
template <typename T>
struct DropoutBranches {
  const float* A[kMaxLoraBranches];
  T* xa[kMaxLoraBranches];              // forward: xa, written; backward: dxa, read
  float* partials[kMaxLoraBranches];    // backward: dA's per-slice sums
  float* dA[kMaxLoraBranches];
  uint32_t site[kMaxLoraBranches];
};

// Calls f(std::integral_constant<int, count>{}) for count = 1 .. kMaxLoraBranches: the kernels below are
// instantiated per branch count, so that their per-branch tiles and accumulators have static sizes.
template <typename F>
void with_branch_count(int count, F&& f) {
  static_assert(kMaxLoraBranches == 3, "one case per branch count");
  switch (count) {
    case 1: f(std::integral_constant<int, 1>{}); break;
    case 2: f(std::integral_constant<int, 2>{}); break;
    default: f(std::integral_constant<int, 3>{}); break;
  }
}

// The input at row n, columns c0 .. c0+3 in fp32 (0 past IC).
template <typename T>
__device__ __forceinline__ void load_input4(float x[4], const T* __restrict__ inp, int n, int c0, int IC) {
  for (int j = 0; j < 4; ++j) x[j] = c0 + j < IC ? gemm_detail::to_float(inp[(long)n * IC + c0 + j]) : 0.0f;
}

// One branch's dropped input from x (load_input4 of row n, column c0): x * keep_scale where its mask keeps
// the element, else 0. One Philox call for the four when c0 is a multiple of 4.
__device__ __forceinline__ void drop4(float* v, const float x[4], int n, int c0, int IC, float p, float keep_scale,
                                      DropoutKey key, uint32_t site) {
  bool keep[4];
  dropout_keep4_elementwise(key.seed, site, key.offset + (uint64_t)n * IC + c0, p, keep);
  for (int j = 0; j < 4; ++j) v[j] = keep[j] ? x[j] * keep_scale : 0.0f;
}

// Row n's input at columns c0 .. c0+3, read once and dropped by each of the kB branches' masks into
// xs[b][lr][lc .. lc+3] (zeros where `valid` is false: a row past the end).
template <int kB, int kRows, int kLd, typename T>
__device__ __forceinline__ void store_dropped4(float (&xs)[kB][kRows][kLd], int lr, int lc, const T* __restrict__ inp,
                                               bool valid, int n, int c0, int IC, float p, float keep_scale,
                                               DropoutKey key, const DropoutBranches<T>& br) {
  float x[4] = {0.0f, 0.0f, 0.0f, 0.0f};
  if (valid) load_input4(x, inp, n, c0, IC);
  L2V_UNROLL
  for (int b = 0; b < kB; ++b) {
    float v[4] = {0.0f, 0.0f, 0.0f, 0.0f};
    if (valid) drop4(v, x, n, c0, IC, p, keep_scale, key, br.site[b]);
    for (int j = 0; j < 4; ++j) xs[b][lr][lc + j] = v[j];
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

// xa_b [N, R] = dropout_b(inp) A_b^T for kB branches, reading each input element once. Block: rows
// n0 .. n0+31, ranks r0 .. r0+15 of every branch; thread t computes ranks r0 + t % 16 of rows t / 16 and
// t / 16 + 16, summing over IC in order (each branch's bits as it would have alone).
template <typename T, int kB>
__global__ void __launch_bounds__(kThreads)
    lora_xa_dropout_kernel(DropoutBranches<T> br, const T* __restrict__ inp, int N, int IC, int R, float p,
                           float keep_scale, DropoutKey key) {
  L2V_SHARED(float, xs, [kB][kXaRows][kXaCols + 1]);
  L2V_SHARED(float, as, [kB][kRanks][kXaCols + 1]);
  const int t = threadIdx.x, n0 = blockIdx.x * kXaRows, r0 = blockIdx.y * kRanks;
  const int r = t % kRanks, row = t / kRanks;
  const int lr = t / (kXaCols / 4), lc = 4 * (t % (kXaCols / 4));
  float acc0[kB], acc1[kB];
  L2V_UNROLL
  for (int b = 0; b < kB; ++b) acc0[b] = acc1[b] = 0.0f;
  for (int c0 = 0; c0 < IC; c0 += kXaCols) {
    store_dropped4(xs, lr, lc, inp, n0 + lr < N, n0 + lr, c0 + lc, IC, p, keep_scale, key, br);
    L2V_UNROLL
    for (int b = 0; b < kB; ++b) load_a_tile<kXaCols>(as[b], br.A[b], r0, c0, R, IC);
    __syncthreads();
    const int cols = IC - c0 < kXaCols ? IC - c0 : kXaCols;
    for (int c = 0; c < cols; ++c) {
      L2V_UNROLL
      for (int b = 0; b < kB; ++b) {
        const float a = as[b][r][c];
        acc0[b] = fmaf(xs[b][row][c], a, acc0[b]);
        acc1[b] = fmaf(xs[b][row + kXaRows / 2][c], a, acc1[b]);
      }
    }
    __syncthreads();
  }
  if (r0 + r >= R) return;
  L2V_UNROLL
  for (int b = 0; b < kB; ++b) {
    if (n0 + row < N) br.xa[b][(long)(n0 + row) * R + r0 + r] = gemm_detail::from_float<T>(acc0[b]);
    if (n0 + row + kXaRows / 2 < N)
      br.xa[b][(long)(n0 + row + kXaRows / 2) * R + r0 + r] = gemm_detail::from_float<T>(acc1[b]);
  }
}

// dinp [N, IC] += sum over the kB branches of keep_scale * (dxa_b A_b) where branch b's mask keeps the
// element: one read and one rounded write of dinp for all of them, the branches added in order in fp32.
// Elements no branch keeps are neither read nor written. Block: rows n0 .. n0+15, columns c0 .. c0+63;
// thread t computes columns c0 + 4 (t % 16) .. +3 of row t / 16, summing over R in order.
template <typename T, int kB>
__global__ void __launch_bounds__(kThreads, dinp_min_blocks(kB))
    lora_dinp_dropout_kernel(T* __restrict__ dinp, DropoutBranches<T> br, int N, int IC, int R, float p,
                             float keep_scale, DropoutKey key) {
  L2V_SHARED(float, ds, [kB][kRowTile][kRanks + 1]);
  L2V_SHARED(float, as, [kB][kRanks][kColTile]);
  const int t = threadIdx.x, n0 = blockIdx.y * kRowTile, c0 = blockIdx.x * kColTile;
  const int row = t / (kColTile / 4), c4 = 4 * (t % (kColTile / 4)), n = n0 + row;
  float acc[kB][4];
  L2V_UNROLL
  for (int b = 0; b < kB; ++b)
    for (int j = 0; j < 4; ++j) acc[b][j] = 0.0f;
  for (int r0 = 0; r0 < R; r0 += kRanks) {
    const int dr = t / kRanks, dk = t % kRanks;
    L2V_UNROLL
    for (int b = 0; b < kB; ++b) {
      ds[b][dr][dk] =
          n0 + dr < N && r0 + dk < R ? gemm_detail::to_float(br.xa[b][(long)(n0 + dr) * R + r0 + dk]) : 0.0f;
      load_a_tile<kColTile>(as[b], br.A[b], r0, c0, R, IC);
    }
    __syncthreads();
    const int ranks = R - r0 < kRanks ? R - r0 : kRanks;
    for (int k = 0; k < ranks; ++k) {
      L2V_UNROLL
      for (int b = 0; b < kB; ++b) {
        const float d = ds[b][row][k];
        for (int j = 0; j < 4; ++j) acc[b][j] = fmaf(d, as[b][k][c4 + j], acc[b][j]);
      }
    }
    __syncthreads();
  }
  if (n >= N) return;
  // Bit 4 b + j: branch b keeps column c0 + c4 + j (a mask word rather than a bool array: fewer registers).
  unsigned keep = 0;
  L2V_UNROLL
  for (int b = 0; b < kB; ++b) {
    bool k4[4];
    dropout_keep4_elementwise(key.seed, br.site[b], key.offset + (uint64_t)n * IC + c0 + c4, p, k4);
    L2V_UNROLL
    for (int j = 0; j < 4; ++j) keep |= (unsigned)k4[j] << (4 * b + j);
  }
  L2V_UNROLL
  for (int j = 0; j < 4; ++j) {
    const int c = c0 + c4 + j;
    if (c >= IC || (keep & (0x111u << j)) == 0) continue;
    const long i = (long)n * IC + c;
    float v = gemm_detail::to_float(dinp[i]);
    L2V_UNROLL
    for (int b = 0; b < kB; ++b)
      if (keep & (1u << (4 * b + j))) v = v + acc[b][j] * keep_scale;
    dinp[i] = gemm_detail::from_float<T>(v);
  }
}

// partials_b [slice, R, IC] = dxa_b^T dropout_b(inp) over the rows of one slice (blockIdx.z; lora_slice_rows
// each), in order, for kB branches reading each input element once. Block: columns c0 .. c0+63, ranks
// r0 .. r0+15 of every branch; thread t computes columns c0 + 4 (t % 16) .. +3 of rank r0 + t / 16.
template <typename T, int kB>
__global__ void __launch_bounds__(kThreads)
    lora_da_dropout_partials_kernel(DropoutBranches<T> br, const T* __restrict__ inp, int N, int IC, int R,
                                    int slice_rows, float p, float keep_scale, DropoutKey key) {
  L2V_SHARED(float, xs, [kB][kRowTile][kColTile]);
  L2V_SHARED(float, ds, [kB][kRowTile][kRanks + 1]);
  const int t = threadIdx.x, c0 = blockIdx.x * kColTile, r0 = blockIdx.y * kRanks;
  const int r = t / (kColTile / 4), c4 = 4 * (t % (kColTile / 4));
  const int first = blockIdx.z * slice_rows, last = first + slice_rows < N ? first + slice_rows : N;
  float acc[kB][4];
  L2V_UNROLL
  for (int b = 0; b < kB; ++b)
    for (int j = 0; j < 4; ++j) acc[b][j] = 0.0f;
  for (int n0 = first; n0 < last; n0 += kRowTile) {
    const int lr = t / (kColTile / 4), lc = 4 * (t % (kColTile / 4));
    const int dr = t / kRanks, dk = t % kRanks;
    store_dropped4(xs, lr, lc, inp, n0 + lr < last, n0 + lr, c0 + lc, IC, p, keep_scale, key, br);
    L2V_UNROLL
    for (int b = 0; b < kB; ++b)
      ds[b][dr][dk] =
          n0 + dr < last && r0 + dk < R ? gemm_detail::to_float(br.xa[b][(long)(n0 + dr) * R + r0 + dk]) : 0.0f;
    __syncthreads();
    const int rows = last - n0 < kRowTile ? last - n0 : kRowTile;
    for (int k = 0; k < rows; ++k) {
      L2V_UNROLL
      for (int b = 0; b < kB; ++b) {
        const float d = ds[b][k][r];
        for (int j = 0; j < 4; ++j) acc[b][j] = fmaf(d, xs[b][k][c4 + j], acc[b][j]);
      }
    }
    __syncthreads();
  }
  if (r0 + r >= R) return;
  L2V_UNROLL
  for (int b = 0; b < kB; ++b) {
    float* out = br.partials[b] + ((long)blockIdx.z * R + r0 + r) * IC;
    for (int j = 0; j < 4; ++j)
      if (c0 + c4 + j < IC) out[c0 + c4 + j] = acc[b][j];
  }
}

// dA_b [R*IC] += branch b's slices' partial sums, added in slice order, for kB branches.
template <typename T, int kB, int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    lora_da_sum_kernel(DropoutBranches<T> br, int slices, long n) {
  for (long i = blockIdx.x * (long)blockDim.x + threadIdx.x; i < n; i += (long)gridDim.x * blockDim.x) {
    L2V_UNROLL
    for (int b = 0; b < kB; ++b) {
      float sum = br.partials[b][i];
      for (int s = 1; s < slices; ++s) sum += br.partials[b][(long)s * n + i];
      br.dA[b][i] += sum;
    }
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

// Checks every branch and gives its operands (each from its own region of the workspace); returns the
// branch count, within [1, kMaxLoraBranches] for the compiler too (the callers' loops index arrays by it).
template <typename T, typename Branch>
int prepare_branches(const char* fn, cudaStream_t stream, const LoraInput<T>& in, const Branch* br, int count,
                     void* workspace, Operands<T>* ops) {
  gemm_detail::require(count >= 1 && count <= kMaxLoraBranches, fn, "1 to 3 branches per call");
  count = count < 1 ? 1 : (count > kMaxLoraBranches ? kMaxLoraBranches : count);
  int OC[kMaxLoraBranches];
  for (int b = 0; b < count; ++b) OC[b] = br[b].OC;
  const size_t bytes = lora_branches_workspace_bytes(sizeof(T), in.N, in.IC, OC, count, in.R);
  unsigned char* ws = static_cast<unsigned char*>(workspace);
  for (int b = 0; b < count; ++b) {
    check_args(fn, in.dropout_p, workspace, bytes, in.N, in.IC, br[b].OC, in.R);
    gemm_detail::require(br[b].ld >= br[b].OC, fn, "a branch's row stride (ld) must be at least its OC");
    if (in.N > 0) ops[b] = prepare<T>(stream, ws, br[b].A, br[b].B, in.N, in.IC, br[b].OC, in.R);
    if (ws) ws += lora_branch_region_bytes(sizeof(T), in.N, in.IC, br[b].OC, in.R);
  }
  return count;
}

}  // namespace lora_detail

// Bytes of the `workspace` of lora_merge_cuda (N = 0) and of one branch of lora_forward_cuda /
// lora_backward_cuda (several: lora_branches_workspace_bytes).
template <typename T>
size_t lora_workspace_bytes(int N, int IC, int OC, int R) {
  return lora_workspace_bytes(sizeof(T), N, IC, OC, R);
}

// For each branch: out_b [N, OC_b] (rows ld_b apart) += scale * dropout_b(inp) A_b^T B_b^T, saving xa_b [N, R] =
// dropout_b(inp) A_b^T for the backward. With dropout one kernel computes every branch's xa from one read
// of the input; without, one cuBLAS GEMM per branch. The second product is one GEMM per branch with
// alpha = scale and beta = 1 straight into out_b: no extra pass. workspace: lora_branches_workspace_bytes.
template <typename T>
void lora_forward_cuda(cublasHandle_t handle, const LoraInput<T>& in, const LoraForwardBranch<T>* br, int count,
                       void* workspace) {
  using namespace lora_detail;
  const cudaStream_t stream = gemm_detail::stream_of(handle);
  Operands<T> w[kMaxLoraBranches] = {};
  count = prepare_branches("lora_forward_cuda", stream, in, br, count, workspace, w);
  if (in.N == 0) return;
  if (in.dropout_p > 0.0f) {
    DropoutBranches<T> d{};
    for (int b = 0; b < count; ++b) {
      d.A[b] = br[b].A;
      d.xa[b] = br[b].xa;
      d.site[b] = br[b].site;
    }
    const dim3 grid((unsigned)((in.N + kXaRows - 1) / kXaRows), (unsigned)((in.R + kRanks - 1) / kRanks));
    with_branch_count(count, [&](auto kB) {
      l2v::launch("lora_xa_dropout", lora_xa_dropout_kernel<T, decltype(kB)::value>, grid, dim3(kThreads), 0, stream,
                  d, in.inp, in.N, in.IC, in.R, in.dropout_p, 1.0f / (1.0f - in.dropout_p), in.key);
    });
  } else {
    for (int b = 0; b < count; ++b)
      gemm_rowmajor(handle, false, true, in.N, in.R, in.IC, 1.0f, in.inp, in.IC, w[b].A, in.IC, 0.0f, br[b].xa, in.R);
  }
  for (int b = 0; b < count; ++b)
    gemm_rowmajor(handle, false, true, in.N, br[b].OC, in.R, in.scale, br[b].xa, in.R, w[b].B, in.R, 1.0f, br[b].out,
                  br[b].ld);
}

// Accumulates (+=) dinp [N, IC] and each branch's dA_b [R, IC] and dB_b [OC_b, R] from its dout_b [N, OC_b]
// (rows ld_b apart),
// the forward's inp and xa_b:
//   dB_b += scale dout_b^T xa_b,  dxa_b = scale dout_b B_b,  dA_b += dxa_b^T dropout_b(inp),
//   dinp += sum_b dropout_b'(dxa_b A_b).
// Without dropout the dA and dinp GEMMs read inp and accumulate into dinp directly (beta = 1), per branch;
// with it, one kernel updates dinp for every branch (one rounding of the sum) and one computes every
// branch's dA partial sums from one read of the input, regenerating the masks in registers.
template <typename T>
void lora_backward_cuda(cublasHandle_t handle, T* dinp, const LoraInput<T>& in, const LoraBackwardBranch<T>* br,
                        int count, void* workspace) {
  using namespace lora_detail;
  const cudaStream_t stream = gemm_detail::stream_of(handle);
  Operands<T> w[kMaxLoraBranches] = {};
  count = prepare_branches("lora_backward_cuda", stream, in, br, count, workspace, w);
  const int N = in.N, IC = in.IC, R = in.R;
  if (N == 0) return;
  for (int b = 0; b < count; ++b) {
    gemm_rowmajor(handle, true, false, br[b].OC, R, N, in.scale, br[b].dout, br[b].ld, br[b].xa, R, 1.0f, br[b].dB, R);
    gemm_rowmajor(handle, false, false, N, R, br[b].OC, in.scale, br[b].dout, br[b].ld, w[b].B, R, 0.0f, w[b].dxa, R);
  }
  if (in.dropout_p == 0.0f) {
    for (int b = 0; b < count; ++b) {
      gemm_rowmajor(handle, true, false, R, IC, N, 1.0f, w[b].dxa, R, in.inp, IC, 1.0f, br[b].dA, IC);
      gemm_rowmajor(handle, false, false, N, IC, R, 1.0f, w[b].dxa, R, w[b].A, IC, 1.0f, dinp, IC);
    }
    return;
  }
  DropoutBranches<T> d{};
  for (int b = 0; b < count; ++b) {
    d.A[b] = br[b].A;
    d.xa[b] = w[b].dxa;
    d.partials[b] = w[b].partials;
    d.dA[b] = br[b].dA;
    d.site[b] = br[b].site;
  }
  const float keep_scale = 1.0f / (1.0f - in.dropout_p);
  const unsigned col_blocks = (unsigned)((IC + kColTile - 1) / kColTile);
  const int slices = lora_slices(N);
  with_branch_count(count, [&](auto kB) {
    constexpr int kBranches = decltype(kB)::value;
    l2v::launch("lora_dinp_dropout", lora_dinp_dropout_kernel<T, kBranches>,
                dim3(col_blocks, (unsigned)((N + kRowTile - 1) / kRowTile)), dim3(kThreads), 0, stream, dinp, d, N, IC,
                R, in.dropout_p, keep_scale, in.key);
    l2v::launch("lora_da_dropout_partials", lora_da_dropout_partials_kernel<T, kBranches>,
                dim3(col_blocks, (unsigned)((R + kRanks - 1) / kRanks), (unsigned)slices), dim3(kThreads), 0, stream,
                d, in.inp, N, IC, R, lora_slice_rows(N), in.dropout_p, keep_scale, in.key);
    const long n = (long)R * IC;
    l2v::launch("lora_da_sum", lora_da_sum_kernel<T, kBranches, kThreads>, dim3(gemm_detail::elementwise_grid(n)),
                dim3(kThreads), 0, stream, d, slices, n);
  });
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
