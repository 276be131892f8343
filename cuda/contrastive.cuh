// LLM2Vec's contrastive loss on the device (cpu::contrastive_loss, host/cpu_ops.h): SimCSE's and the
// supervised stage's loss and its gradient w.r.t. the pooled rows, so a contrastive step never moves the
// pooled embeddings to the host (the trainer reads the one double of the loss, asynchronously).
//
// Six launches on a double scratch buffer (contrastive_scratch_bytes, cuda/workspace_sizes.h):
//   1. norms:    |x_r| for the R = n + D rows [queries; positives; negatives], one thread per row;
//   2. logits:   S [n, D] = scale * U_q . U_d^T (U = rows divided by their norms), 16 x 16 tiles;
//   3. softmax:  per query (one thread): logsumexp over its candidates, its loss, and the row of
//                G = dloss/dS * scale written over S (0 for documents that are not candidates);
//   4. loss:     one thread: the rows' validity (every norm finite and > 0) and the mean loss (NaN when a
//                row is invalid), written to *loss and to the scratch's flag;
//   5. grads:    g_q [n, C] = G . U_d and g_d [D, C] = G^T . U_q, tiles as in 2 (only with gradients);
//   6. unit:     dx = (g - (g.u) u) / |x| per row, one block per row, NaN everywhere when invalid.
// Numerics: the reference's arithmetic in the reference's order — every sum runs in index order in one
// thread (dots over c, logsumexp over candidates, the gradient sums over j and over i with zero terms
// skipped, g.u over c), every operation an IEEE-rounded intrinsic (__dadd_rn, __dmul_rn, __ddiv_rn,
// __dsub_rn) that nvcc never contracts into an FMA. Only exp and log are library functions: CUDA's double
// exp/log are within 1-2 ulp of glibc's (bit-identical under the emulator), a difference of ~1e-16
// relative that the final fp32 rounding of each gradient almost always hides.
// Cost: the three products are (n x D x C) multiply-adds each in double, a few ms on an H100 for a
// gathered batch of 512 at C = 4096 — small beside the model's step, and nothing crosses PCIe.
#pragma once

#include "cuda/elementwise.cuh"
#include "cuda/workspace_sizes.h"

namespace l2v::cuda {
namespace contrastive {

constexpr int kTile = 16;

// The R = n + D rows [queries; positives; negatives (when present)], consecutive rows ld values apart.
template <typename P>
struct RowSet {
  P q, p, neg;
  int n, ld;
  __device__ P row(int r) const {
    return r < n ? q + (long)r * ld : r < 2 * n ? p + (long)(r - n) * ld : neg + (long)(r - 2 * n) * ld;
  }
};

// u(r, c) = x[first + r, c] / |x_{first + r}|.
struct UnitRows {
  RowSet<const float*> rows;
  const double* norm;
  int first;
  __device__ double operator()(int r, int c) const {
    return __ddiv_rn((double)rows.row(first + r)[c], norm[first + r]);
  }
};

struct Dense {
  const double* m;
  int ld;
  __device__ double operator()(int r, int c) const { return m[(long)r * ld + c]; }
};

template <typename A>
struct Transposed {
  A a;
  __device__ double operator()(int r, int c) const { return a(c, r); }
};

}  // namespace contrastive

// Kernels are templates on their block size so that the header can be included by several translation
// units without duplicate kernel symbols.
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    contrastive_norms_kernel(double* norm, contrastive::RowSet<const float*> rows, int R, int C) {
  const int r = blockIdx.x * kBlockSize + threadIdx.x;
  if (r >= R) return;
  const float* x = rows.row(r);
  double s = 0.0;
  for (int c = 0; c < C; ++c) s = __dadd_rn(s, __dmul_rn((double)x[c], (double)x[c]));
  norm[r] = sqrt(s);
}

// out[m, o] = alpha * sum_k a(m, k) b(k, o), k in order, for m < M, o < N (out's rows ldo apart); with
// kSkipZeroA, terms whose a is 0 are skipped (the reference adds only candidates).
template <typename A, typename B, bool kSkipZeroA>
__global__ void __launch_bounds__(contrastive::kTile* contrastive::kTile)
    contrastive_product_kernel(double* out, int ldo, int M, int N, int K, A a, B b, double alpha) {
  using contrastive::kTile;
  L2V_SHARED(double, as, [kTile][kTile + 1]);
  L2V_SHARED(double, bs, [kTile][kTile + 1]);
  const int tx = threadIdx.x, ty = threadIdx.y;
  const int m = blockIdx.y * kTile + ty, o = blockIdx.x * kTile + tx;
  double acc = 0.0;
  for (int k0 = 0; k0 < K; k0 += kTile) {
    const int am = blockIdx.y * kTile + ty, ak = k0 + tx, bk = k0 + ty, bo = blockIdx.x * kTile + tx;
    as[ty][tx] = am < M && ak < K ? a(am, ak) : 0.0;
    bs[ty][tx] = bk < K && bo < N ? b(bk, bo) : 0.0;
    __syncthreads();
    const int kn = K - k0 < kTile ? K - k0 : kTile;
    for (int k = 0; k < kn; ++k) {
      const double x = as[ty][k];
      if (kSkipZeroA && x == 0.0) continue;
      acc = __dadd_rn(acc, __dmul_rn(x, bs[k][tx]));
    }
    __syncthreads();
  }
  if (m < M && o < N) out[(long)m * ldo + o] = __dmul_rn(acc, alpha);
}

// One thread per query i: S's row i (D values) becomes G's row i; losses[i] = lse - S[i, target].
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    contrastive_softmax_kernel(double* SG, double* losses, int n, int D, bool in_batch, double scale) {
  const int i = blockIdx.x * kBlockSize + threadIdx.x;
  if (i >= n) return;
  double* row = SG + (long)i * D;
  const int K = in_batch ? D : 2;
  // The candidates, in order; the target is the query's own positive (column i; candidate 0 without
  // in-batch negatives).
  auto column = [&](int k) { return in_batch ? k : (k == 0 ? i : n + i); };
  const int target = in_batch ? i : 0;
  double mx = -INFINITY;
  for (int k = 0; k < K; ++k) mx = fmax(mx, row[column(k)]);
  double z = 0.0;
  for (int k = 0; k < K; ++k) z = __dadd_rn(z, exp(__dsub_rn(row[column(k)], mx)));
  const double lse = __dadd_rn(mx, log(z));
  losses[i] = __dsub_rn(lse, row[column(target)]);
  auto grad = [&](double s, int k) {
    return __ddiv_rn(__dmul_rn(__dsub_rn(exp(__dsub_rn(s, lse)), k == target ? 1.0 : 0.0), scale), (double)n);
  };
  if (in_batch) {
    for (int k = 0; k < K; ++k) row[k] = grad(row[k], k);
  } else {
    const double s0 = row[i], s1 = row[n + i];
    for (int j = 0; j < D; ++j) row[j] = 0.0;
    row[i] = grad(s0, 0);
    row[n + i] = grad(s1, 1);
  }
}

// One thread: valid = every norm finite and > 0; *loss = mean of the losses in order, NaN when invalid.
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize) contrastive_mean_kernel(double* loss, double* valid, const double* norm, const double* losses, int R,
                                        int n) {
  if (blockIdx.x != 0 || threadIdx.x != 0) return;
  bool ok = true;
  for (int r = 0; r < R; ++r) ok = ok && norm[r] > 0.0 && norm[r] < INFINITY;  // false for NaN
  double total = 0.0;
  for (int i = 0; i < n; ++i) total = __dadd_rn(total, losses[i]);
  *loss = ok ? __ddiv_rn(total, (double)n) : (double)NAN;
  *valid = ok ? 1.0 : 0.0;
}

// One block per row r: thread 0 sums g.u in order; then dx = (g - (g.u) u) / |x| (NaN when invalid).
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    contrastive_unit_backward_kernel(contrastive::RowSet<float*> dx, contrastive::RowSet<const float*> x,
                                     const double* g, const double* norm, const double* valid, int C) {
  L2V_SHARED(double, gu_shared, [1]);
  const int r = blockIdx.x;
  const contrastive::UnitRows u{x, norm, 0};
  const double* gr = g + (long)r * C;
  if (threadIdx.x == 0) {
    double gu = 0.0;
    for (int c = 0; c < C; ++c) gu = __dadd_rn(gu, __dmul_rn(gr[c], u(r, c)));
    gu_shared[0] = gu;
  }
  __syncthreads();
  const double gu = gu_shared[0];
  const bool ok = *valid != 0.0;
  float* out = dx.row(r);
  for (int c = threadIdx.x; c < C; c += kBlockSize)
    out[c] = ok ? (float)__ddiv_rn(__dsub_rn(gr[c], __dmul_rn(gu, u(r, c))), norm[r]) : (float)NAN;
}

// cpu::contrastive_loss on device pointers: *loss is one double in device memory (read it when needed);
// d_queries == nullptr asks for the loss only. scratch holds contrastive_scratch_bytes(n, C, negatives
// != nullptr, d_queries != nullptr) bytes.
inline void contrastive_loss_cuda(double* loss, float* d_queries, float* d_positives, float* d_negatives,
                                  const float* queries, const float* positives, const float* negatives, int n, int C,
                                  int ld, float scale, bool in_batch_negatives, void* scratch, cudaStream_t stream) {
  using namespace contrastive;
  const char* fn = "contrastive_loss_cuda";
  ew::require(n >= 1 && C >= 1 && ld >= C, fn, "needs n >= 1, C >= 1 and ld >= C");
  ew::require(queries && positives, fn, "missing queries or positives");
  ew::require(in_batch_negatives || negatives, fn, "without in-batch negatives a hard negative per query is required");
  const bool grads = d_queries != nullptr;
  ew::require(!grads || (d_positives && (!negatives || d_negatives)), fn,
              "gradients need d_positives (and d_negatives with negatives)");
  const int D = negatives ? 2 * n : n, R = n + D;
  ew::require((long)R <= 65535L * kTile, fn, "too many rows for the grid");
  const ContrastiveScratch at = contrastive_scratch_layout(n, C, negatives != nullptr, grads);
  char* base = static_cast<char*>(scratch);
  double* norm = reinterpret_cast<double*>(base + at.norm);
  double* SG = reinterpret_cast<double*>(base + at.logits);
  double* losses = reinterpret_cast<double*>(base + at.losses);
  double* valid = reinterpret_cast<double*>(base + at.valid);
  const RowSet<const float*> rows{queries, positives, negatives, n, ld};
  auto blocks = [](long count, int per) { return dim3((unsigned)((count + per - 1) / per)); };
  auto tiles = [](int M, int N) { return dim3((unsigned)((N + kTile - 1) / kTile), (unsigned)((M + kTile - 1) / kTile)); };
  const dim3 tile_threads(kTile, kTile);

  l2v::launch("contrastive_norms", contrastive_norms_kernel<ew::kBlock>, blocks(R, ew::kBlock), dim3(ew::kBlock), 0, stream,
              norm, rows, R, C);
  const UnitRows u_q{rows, norm, 0}, u_d{rows, norm, n};
  l2v::launch("contrastive_logits", contrastive_product_kernel<UnitRows, Transposed<UnitRows>, false>, tiles(n, D),
              tile_threads, 0, stream, SG, D, n, D, C, u_q, Transposed<UnitRows>{u_d}, (double)scale);
  l2v::launch("contrastive_softmax", contrastive_softmax_kernel<ew::kBlock>, blocks(n, ew::kBlock), dim3(ew::kBlock), 0, stream,
              SG, losses, n, D, in_batch_negatives, (double)scale);
  l2v::launch("contrastive_mean", contrastive_mean_kernel<1>, dim3(1), dim3(1), 0, stream, loss, valid, norm, losses, R,
              n);
  if (!grads) return;
  double* g = reinterpret_cast<double*>(base + at.grads);
  const Dense G{SG, D};
  l2v::launch("contrastive_query_grads", contrastive_product_kernel<Dense, UnitRows, true>, tiles(n, C), tile_threads,
              0, stream, g, C, n, C, D, G, u_d, 1.0);
  l2v::launch("contrastive_document_grads", contrastive_product_kernel<Transposed<Dense>, UnitRows, true>,
              tiles(D, C), tile_threads, 0, stream, g + (long)n * C, C, D, C, n, Transposed<Dense>{G}, u_q, 1.0);
  const RowSet<float*> d_rows{d_queries, d_positives, d_negatives, n, ld};
  l2v::launch("contrastive_unit_backward", contrastive_unit_backward_kernel<ew::kBlock>, dim3(R), dim3(ew::kBlock), 0, stream,
              d_rows, rows, g, norm, valid, C);
}

}  // namespace l2v::cuda
