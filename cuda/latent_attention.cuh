// NV-Embed's latent-attention pooling head on the device: the host functions latent_pool_forward /
// latent_pool_backward (model/latent_attention.h) are the reference, and this file runs the same
// schedule — the same operations on the same cache layout (LatentAttentionCacheView) — with cuBLAS for
// the products (fp32 in and out, fp32 accumulation) and the kernels below for the rest, so a contrastive
// step with the latent head moves only the pooled positions' indices (M + B + 1 ints) to the device.
//
// Numerics, against the reference:
//  - the gather, the pooled sum (double, in row order, rounded once), the pooled gradient (one IEEE fp32
//    multiply per value) and the scatter are the reference's operations in its order: bit for bit;
//  - the column sums of the bias and LayerNorm-parameter gradients run one thread per column over the
//    rows in order in double, as the reference's column loops do: bit for bit given equal inputs;
//  - the row reductions (LayerNorm statistics, softmax sums, the softmax backward's dot products) are in
//    double as in the reference, over one warp per row instead of one sequential loop: a different
//    summation order in double, so a rounding to fp32 can land one ulp apart;
//  - the products are cuBLAS's (another summation order than OpenBLAS's: differences of order K u |x||y|
//    per dot product of length K); expf / erf / exp are CUDA's (within 2 ulp of the host's).
// So the device follows the reference to fp32 summation-order differences, not bit for bit.
//
// Workspace: cuda/workspace_sizes.h's latent_forward_scratch_layout / latent_backward_scratch_layout.
#pragma once

#include <string>
#include <vector>

#include "cuda/elementwise.cuh"
#include "cuda/matmul.cuh"
#include "cuda/workspace_sizes.h"
#include "host/gelu.h"
#include "model/latent_attention.h"

namespace l2v::cuda {

namespace latent {

constexpr int kBlock = 256;                 // threads per block
constexpr int kRowsPerBlock = kBlock / 32;  // the row kernels: one warp per row
constexpr float kLayerNormEps = 1e-5f;      // torch.nn.LayerNorm's default, as the reference

inline unsigned row_grid(long rows) {
  const long blocks = (rows + kRowsPerBlock - 1) / kRowsPerBlock;
  return (unsigned)(blocks < 1 ? 1 : (blocks > ew::kMaxBlocks ? ew::kMaxBlocks : blocks));
}

__device__ __forceinline__ float warp_max(float v) {
  for (int offset = 16; offset > 0; offset /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, offset));
  return v;
}

// x [M, C] (fp32) = hidden [rows[i], :] (T).
template <typename T>
__global__ void __launch_bounds__(kBlock)
    gather_kernel(float* __restrict__ x, const T* __restrict__ hidden, const int* __restrict__ rows, long n, int C) {
  for (long i = blockIdx.x * (long)kBlock + threadIdx.x; i < n; i += (long)gridDim.x * kBlock)
    x[i] = ew::to_float(hidden[(long)rows[i / C] * C + i % C]);
}

// pooled [b, c] = sum over text b's rows r of weights[rows[r]] * z[r, c], in double in row order.
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    pool_kernel(float* __restrict__ pooled, const float* __restrict__ z, const int* __restrict__ rows,
                const int* __restrict__ text_start, const float* __restrict__ weights, int C) {
  const int b = blockIdx.y;
  const int c = blockIdx.x * kBlockSize + threadIdx.x;
  if (c >= C) return;
  double acc = 0.0;
  for (int r = text_start[b]; r < text_start[b + 1]; ++r)
    acc += (double)weights[rows[r]] * (double)z[(long)r * C + c];
  pooled[(long)b * C + c] = (float)acc;
}

// dz [r, c] = weights[rows[r]] * d_pooled[rows[r] / T, c].
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    pooled_grad_kernel(float* __restrict__ dz, const float* __restrict__ d_pooled, const int* __restrict__ rows,
                       const float* __restrict__ weights, int T_, long n, int C) {
  for (long i = blockIdx.x * (long)kBlockSize + threadIdx.x; i < n; i += (long)gridDim.x * kBlockSize) {
    const int row = rows[i / C];
    dz[i] = __fmul_rn(weights[row], d_pooled[(long)(row / T_) * C + i % C]);
  }
}

// d_hidden [rows[i], :] = dx [i, :] (rounded to T); the other rows were zeroed before.
template <typename T>
__global__ void __launch_bounds__(kBlock)
    scatter_kernel(T* __restrict__ d_hidden, const float* __restrict__ dx, const int* __restrict__ rows, long n,
                   int C) {
  for (long i = blockIdx.x * (long)kBlock + threadIdx.x; i < n; i += (long)gridDim.x * kBlock)
    d_hidden[(long)rows[i / C] * C + i % C] = ew::from_float<T>(dx[i]);
}

// LayerNorm over rows of C: xhat = (x - mean) * rstd (biased variance; statistics in double),
// out = xhat * w + b; rstd kept per row.
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    layernorm_forward_kernel(float* __restrict__ out, float* __restrict__ xhat, float* __restrict__ rstd,
                             const float* __restrict__ x, const float* __restrict__ w, const float* __restrict__ b,
                             long N, int C) {
  const int lane = threadIdx.x % 32;
  for (long row = blockIdx.x * (long)kRowsPerBlock + threadIdx.x / 32; row < N;
       row += (long)gridDim.x * kRowsPerBlock) {
    const float* xr = x + row * C;
    double sum = 0.0;
    for (int c = lane; c < C; c += 32) sum += xr[c];
    const double mean = ew::warp_sum(sum) / (double)C;
    double var = 0.0;
    for (int c = lane; c < C; c += 32) {
      const double dev = xr[c] - mean;
      var += dev * dev;
    }
    var = ew::warp_sum(var) / (double)C;
    const float rs = (float)(1.0 / sqrt(var + (double)kLayerNormEps));
    const float m = (float)mean;
    if (lane == 0) rstd[row] = rs;
    for (int c = lane; c < C; c += 32) {
      const float h = __fmul_rn(__fsub_rn(xr[c], m), rs);
      xhat[row * C + c] = h;
      out[row * C + c] = __fadd_rn(__fmul_rn(h, w[c]), b[c]);
    }
  }
}

// out = xhat * w + b (a LayerNorm's output again, from its cached normalised input).
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    layernorm_affine_kernel(float* __restrict__ out, const float* __restrict__ xhat, const float* __restrict__ w,
                            const float* __restrict__ b, long n, int C) {
  for (long i = blockIdx.x * (long)kBlockSize + threadIdx.x; i < n; i += (long)gridDim.x * kBlockSize)
    out[i] = __fadd_rn(__fmul_rn(xhat[i], w[i % C]), b[i % C]);
}

// dx += LayerNorm backward of dout (the parameter gradients are column_sums_kernel's).
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    layernorm_backward_kernel(float* __restrict__ dx, const float* __restrict__ dout, const float* __restrict__ xhat,
                              const float* __restrict__ rstd, const float* __restrict__ w, long N, int C) {
  const int lane = threadIdx.x % 32;
  for (long row = blockIdx.x * (long)kRowsPerBlock + threadIdx.x / 32; row < N;
       row += (long)gridDim.x * kRowsPerBlock) {
    const float* dr = dout + row * C;
    const float* hr = xhat + row * C;
    double mean_g = 0.0, mean_gh = 0.0;
    for (int c = lane; c < C; c += 32) {
      const double g = (double)dr[c] * w[c];  // exact: a product of two floats
      mean_g += g;
      mean_gh += g * hr[c];
    }
    const float mg = (float)(ew::warp_sum(mean_g) / (double)C), mgh = (float)(ew::warp_sum(mean_gh) / (double)C);
    const float rs = rstd[row];
    for (int c = lane; c < C; c += 32) {
      const float t = __fsub_rn(__fsub_rn(__fmul_rn(dr[c], w[c]), mg), __fmul_rn(hr[c], mgh));
      dx[row * C + c] = __fadd_rn(dx[row * C + c], __fmul_rn(rs, t));
    }
  }
}

// acc[j] += sum_i a[i, j] (* b[i, j] when b != nullptr), in double in row order, one thread per column.
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    column_sums_kernel(float* __restrict__ acc, const float* __restrict__ a, const float* __restrict__ b, long M,
                       int N) {
  const int j = blockIdx.x * kBlockSize + threadIdx.x;
  if (j >= N) return;
  double s = 0.0;
  for (long i = 0; i < M; ++i) s += b ? (double)a[i * N + j] * b[i * N + j] : (double)a[i * N + j];
  acc[j] = __fadd_rn(acc[j], (float)s);
}

// Each row of p [N, r] (scores) becomes its softmax: exp(s - max) / sum, the sum in double.
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize) softmax_kernel(float* __restrict__ p, long N, int r) {
  const int lane = threadIdx.x % 32;
  for (long row = blockIdx.x * (long)kRowsPerBlock + threadIdx.x / 32; row < N;
       row += (long)gridDim.x * kRowsPerBlock) {
    float* pr = p + row * r;
    float mx = -INFINITY;
    for (int j = lane; j < r; j += 32) mx = fmaxf(mx, pr[j]);
    mx = warp_max(mx);
    double sum = 0.0;
    for (int j = lane; j < r; j += 32) {
      const float e = expf(__fsub_rn(pr[j], mx));
      pr[j] = e;
      sum += e;
    }
    const float inv = (float)(1.0 / ew::warp_sum(sum));
    for (int j = lane; j < r; j += 32) pr[j] = __fmul_rn(pr[j], inv);
  }
}

// ds = p * (dp - sum_j p dp) per row (ds holds dp on entry).
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    softmax_backward_kernel(float* __restrict__ ds, const float* __restrict__ p, long N, int r) {
  const int lane = threadIdx.x % 32;
  for (long row = blockIdx.x * (long)kRowsPerBlock + threadIdx.x / 32; row < N;
       row += (long)gridDim.x * kRowsPerBlock) {
    const float* pr = p + row * r;
    float* dr = ds + row * r;
    double dot = 0.0;
    for (int j = lane; j < r; j += 32) dot += (double)pr[j] * dr[j];
    const float dt = (float)ew::warp_sum(dot);
    for (int j = lane; j < r; j += 32) dr[j] = __fmul_rn(pr[j], __fsub_rn(dr[j], dt));
  }
}

// h [M, F] = u[:, :F] * gelu(u[:, F:]) for u [M, 2F].
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    geglu_forward_kernel(float* __restrict__ h, const float* __restrict__ u, long n, int F) {
  for (long i = blockIdx.x * (long)kBlockSize + threadIdx.x; i < n; i += (long)gridDim.x * kBlockSize) {
    const float* ur = u + (i / F) * 2 * F;
    const int j = (int)(i % F);
    h[i] = __fmul_rn(ur[j], gelu_erf(ur[F + j]));
  }
}

// du [M, 2F] from dh [M, F].
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    geglu_backward_kernel(float* __restrict__ du, const float* __restrict__ dh, const float* __restrict__ u, long n,
                          int F) {
  for (long i = blockIdx.x * (long)kBlockSize + threadIdx.x; i < n; i += (long)gridDim.x * kBlockSize) {
    const long base = (i / F) * 2 * F;
    const int j = (int)(i % F);
    const float a = u[base + j], g = u[base + F + j];
    du[base + j] = __fmul_rn(dh[i], gelu_erf(g));
    du[base + F + j] = __fmul_rn(__fmul_rn(dh[i], a), gelu_erf_grad(g));
  }
}

// z [M, C] += bias [C] per row.
template <int kBlockSize>
__global__ void __launch_bounds__(kBlockSize)
    add_bias_kernel(float* __restrict__ z, const float* __restrict__ bias, long n, int C) {
  for (long i = blockIdx.x * (long)kBlockSize + threadIdx.x; i < n; i += (long)gridDim.x * kBlockSize)
    z[i] = __fadd_rn(z[i], bias[i % C]);
}

// The launches and products of one call, on the cuBLAS handle's stream.
struct Ops {
  cublasHandle_t handle;
  cudaStream_t stream;

  // Row-major C [M, N] = alpha op(A) op(B) + beta C (gemm_rowmajor in fp32).
  void gemm(bool ta, bool tb, long M, long N, long K, float alpha, const float* A, long lda, const float* B, long ldb,
            float beta, float* C, long ldc) const {
    if (M == 0 || N == 0) return;
    gemm_rowmajor<float, float>(handle, ta, tb, (int)M, (int)N, (int)K, alpha, A, (int)lda, B, (int)ldb, beta, C,
                                (int)ldc);
  }
  // y [M, OUT] = x [M, IN] W^T (+ beta y), W nn.Linear's [OUT, IN].
  void linear(float* y, const float* x, const float* W, long M, long IN, long OUT, float beta = 0.0f) const {
    gemm(false, true, M, OUT, IN, 1.0f, x, IN, W, IN, beta, y, OUT);
  }
  // dW [OUT, IN] += dy^T x.
  void linear_dweight(float* dW, const float* dy, const float* x, long M, long IN, long OUT) const {
    gemm(true, false, OUT, IN, M, 1.0f, dy, OUT, x, IN, 1.0f, dW, IN);
  }
  // dx [M, IN] = dy W.
  void linear_dinput(float* dx, const float* dy, const float* W, long M, long IN, long OUT) const {
    gemm(false, false, M, IN, OUT, 1.0f, dy, OUT, W, IN, 0.0f, dx, IN);
  }
  template <typename Kernel, typename... Args>
  void elementwise(const char* name, Kernel kernel, long n, Args... args) const {
    if (n > 0) l2v::launch(name, kernel, dim3(ew::grid_for(n)), dim3(kBlock), 0, stream, args...);
  }
  template <typename Kernel, typename... Args>
  void rows(const char* name, Kernel kernel, long n, Args... args) const {
    if (n > 0) l2v::launch(name, kernel, dim3(row_grid(n)), dim3(kBlock), 0, stream, args...);
  }
  void layernorm_forward(float* out, float* xhat, float* rstd, const float* x, const float* w, const float* b, long N,
                         long C) const {
    rows("latent_layernorm_forward", layernorm_forward_kernel<kBlock>, N, out, xhat, rstd, x, w, b, N, (int)C);
  }
  void layernorm_affine(float* out, const float* xhat, const float* w, const float* b, long N, long C) const {
    elementwise("latent_layernorm_affine", layernorm_affine_kernel<kBlock>, N * C, out, xhat, w, b, N * C, (int)C);
  }
  void column_sums(float* acc, const float* a, const float* b, long M, long N) const {
    l2v::launch("latent_column_sums", column_sums_kernel<kBlock>, dim3((unsigned)((N + kBlock - 1) / kBlock)),
                dim3(kBlock), 0, stream, acc, a, b, M, (int)N);
  }
  // dx += the LayerNorm backward of dout; dw, db accumulated.
  void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* xhat, const float* rstd,
                          const float* w, long N, long C) const {
    column_sums(dw, dout, xhat, N, C);
    column_sums(db, dout, nullptr, N, C);
    rows("latent_layernorm_backward", layernorm_backward_kernel<kBlock>, N, dx, dout, xhat, rstd, w, N, (int)C);
  }
};

}  // namespace latent

// The parameters' addresses in the flat array (latent_attention_tensors' offsets).
struct LatentParams {
  const float* p[kNumLatentParams];
  float* g[kNumLatentParams];
};
inline LatentParams latent_params(const float* params, float* grads, const LatentAttentionConfig& cfg, int C) {
  const std::vector<LatentAttentionTensor> t = latent_attention_tensors(cfg, C);
  LatentParams v;
  for (int i = 0; i < kNumLatentParams; ++i) {
    v.p[i] = params + t[i].offset;
    v.g[i] = grads ? grads + t[i].offset : nullptr;
  }
  return v;
}

// The latents' part of the cache: LN_ctx(latents) and their keys and values.
inline void latent_forward_latents(const latent::Ops& ops, const LatentAttentionCacheView& c, const LatentParams& P,
                                   const LatentAttentionDims& d) {
  ops.layernorm_forward(c.lc, c.lhat, c.lrstd, P.p[kLatents], P.p[kCtxW], P.p[kCtxB], d.r, d.C);
  ops.linear(c.kv, c.lc, P.p[kToKV], d.r, d.C, 2 * d.I);
}

// z [M, C] for rows x [M, C], the latents' part of `c` filled; tmp holds M * max(C, F) floats.
inline void latent_forward_rows(const latent::Ops& ops, float* z, const float* x, const LatentAttentionCacheView& c,
                                const LatentParams& P, const LatentAttentionDims& d, long M, float* tmp) {
  using namespace latent;
  if (M == 0) return;
  const float scale = (float)(1.0 / std::sqrt((double)d.D));
  ops.layernorm_forward(tmp, c.xhat, c.xrstd, x, P.p[kNormW], P.p[kNormB], M, d.C);
  ops.linear(c.q, tmp, P.p[kToQ], M, d.C, d.I);
  for (long h = 0; h < d.H; ++h) {
    float* ph = c.p + h * M * d.r;
    ops.gemm(false, true, M, d.r, d.D, scale, c.q + h * d.D, d.I, c.kv + h * d.D, 2 * d.I, 0.0f, ph, d.r);
    ops.rows("latent_softmax", softmax_kernel<kBlock>, M, ph, M, (int)d.r);
    ops.gemm(false, false, M, d.D, d.r, 1.0f, ph, d.r, c.kv + d.I + h * d.D, 2 * d.I, 0.0f, c.o + h * d.D, d.I);
  }
  CUDA_CHECK(cudaMemcpyAsync(z, x, sizeof(float) * M * d.C, cudaMemcpyDeviceToDevice, ops.stream));
  ops.linear(z, c.o, P.p[kToOut], M, d.I, d.C, 1.0f);  // z holds y now
  ops.layernorm_forward(tmp, c.yhat, c.yrstd, z, P.p[kFfNormW], P.p[kFfNormB], M, d.C);
  const dim3 bias_grid((unsigned)((2 * d.F + gemm_detail::kElementwiseBlock - 1) / gemm_detail::kElementwiseBlock),
                       (unsigned)(M < 1024 ? M : 1024));
  l2v::launch("broadcast_bias", broadcast_bias_kernel<float>, bias_grid, dim3(gemm_detail::kElementwiseBlock), 0,
              ops.stream, c.u, P.p[kNet0B], (int)M, (int)(2 * d.F));
  ops.linear(c.u, tmp, P.p[kNet0W], M, d.C, 2 * d.F, 1.0f);
  ops.elementwise("latent_geglu_forward", geglu_forward_kernel<kBlock>, M * d.F, tmp, (const float*)c.u, M * d.F,
                  (int)d.F);
  ops.elementwise("latent_add_bias", add_bias_kernel<kBlock>, M * d.C, z, P.p[kNet2B], M * d.C, (int)d.C);
  ops.linear(z, tmp, P.p[kNet2W], M, d.F, d.C, 1.0f);
}

inline void latent_check(const char* fn, const LatentRows& rows, int C) {
  ew::require(rows.B >= 0 && rows.T > 0 && rows.M >= 0 && (long)rows.M <= (long)rows.B * rows.T && C > 0, fn,
              "needs B >= 0, T > 0, 0 <= M <= B*T and C > 0");
  ew::require(rows.B <= 65535, fn, "at most 65535 texts per call (the grid's y dimension)");
}

// pooled [B, C] (fp32) from hidden [B*T, C] (T): the device twin of latent_pool_forward. cache: the
// cache of rows.M rows, or nullptr (inference: the rows run in chunks of kLatentInferenceChunk);
// workspace: at least latent_forward_scratch_layout(d, M, cache != nullptr).bytes.
template <typename T>
void latent_pool_forward_cuda(cublasHandle_t handle, float* pooled, float* cache, const T* hidden,
                              const LatentRows& rows, const float* weights, const float* params,
                              const LatentAttentionConfig& cfg, int C, void* workspace) {
  latent_check("latent_pool_forward_cuda", rows, C);
  const LatentAttentionDims d = latent_attention_dims(cfg, C);
  const latent::Ops ops{handle, gemm_detail::stream_of(handle)};
  const long M = rows.M;
  if (rows.B == 0) return;
  const LatentParams P = latent_params(params, nullptr, cfg, C);
  const LatentForwardScratch s = latent_forward_scratch_layout(d, M, cache != nullptr);
  char* ws = static_cast<char*>(workspace);
  float *x = reinterpret_cast<float*>(ws + s.x), *z = reinterpret_cast<float*>(ws + s.z),
        *tmp = reinterpret_cast<float*>(ws + s.tmp);
  ops.elementwise("latent_gather", latent::gather_kernel<T>, M * C, x, hidden, rows.rows, M * C, C);
  if (cache) {
    const LatentAttentionCacheView c = latent_attention_cache_view(cache, d, M);
    latent_forward_latents(ops, c, P, d);
    latent_forward_rows(ops, z, x, c, P, d, M, tmp);
  } else {
    const long chunk = std::min<long>(M, kLatentInferenceChunk);
    float* work = reinterpret_cast<float*>(ws + s.cache);
    latent_forward_latents(ops, latent_attention_cache_view(work, d, chunk), P, d);
    for (long m0 = 0; m0 < M; m0 += chunk) {
      const long m = std::min(chunk, M - m0);
      latent_forward_rows(ops, z + m0 * C, x + m0 * C, latent_attention_cache_view(work, d, m), P, d, m, tmp);
    }
  }
  l2v::launch("latent_pool", latent::pool_kernel<latent::kBlock>,
              dim3((unsigned)((C + latent::kBlock - 1) / latent::kBlock), (unsigned)rows.B), dim3(latent::kBlock), 0,
              ops.stream, pooled, (const float*)z, rows.rows, rows.text_start, weights, C);
}

// d_hidden [B*T, C] (T, overwritten; 0 outside the pooled rows) and dparams (fp32, accumulated) from
// d_pooled [B, C]: the device twin of latent_pool_backward. workspace: at least
// latent_backward_scratch_layout(d, M).bytes.
template <typename T>
void latent_pool_backward_cuda(cublasHandle_t handle, T* d_hidden, float* dparams, const float* d_pooled,
                               const LatentRows& rows, const float* weights, const float* cache, const float* params,
                               const LatentAttentionConfig& cfg, int C, void* workspace) {
  using namespace latent;
  latent_check("latent_pool_backward_cuda", rows, C);
  const LatentAttentionDims d = latent_attention_dims(cfg, C);
  const Ops ops{handle, gemm_detail::stream_of(handle)};
  const long M = rows.M;
  if (rows.B == 0) return;
  CUDA_CHECK(cudaMemsetAsync(d_hidden, 0, sizeof(T) * (size_t)rows.B * rows.T * C, ops.stream));
  if (M == 0) return;  // nothing pooled: every gradient is zero
  const LatentParams P = latent_params(params, dparams, cfg, C);
  const LatentAttentionCacheView c = latent_attention_cache_view(const_cast<float*>(cache), d, M);  // read only
  const LatentBackwardScratch s = latent_backward_scratch_layout(d, M);
  char* ws = static_cast<char*>(workspace);
  auto at = [ws](size_t offset) { return reinterpret_cast<float*>(ws + offset); };
  float *dz = at(s.dz), *dx = at(s.dx), *rowc = at(s.rowc), *drowc = at(s.drowc), *big = at(s.big), *du = at(s.du);
  ops.elementwise("latent_pooled_grad", pooled_grad_kernel<kBlock>, M * C, dz, d_pooled, rows.rows, weights, rows.T,
                  M * C, C);

  // Feed-forward block. dx accumulates dy (the gradient w.r.t. the attention block's output y).
  ops.column_sums(P.g[kNet2B], dz, nullptr, M, d.C);
  ops.elementwise("latent_geglu_forward", geglu_forward_kernel<kBlock>, M * d.F, big, (const float*)c.u, M * d.F,
                  (int)d.F);
  ops.linear_dweight(P.g[kNet2W], dz, big, M, d.F, d.C);
  ops.linear_dinput(big, dz, P.p[kNet2W], M, d.F, d.C);  // big = the GEGLU output's gradient
  ops.elementwise("latent_geglu_backward", geglu_backward_kernel<kBlock>, M * d.F, du, (const float*)big,
                  (const float*)c.u, M * d.F, (int)d.F);
  ops.column_sums(P.g[kNet0B], du, nullptr, M, 2 * d.F);
  ops.layernorm_affine(rowc, c.yhat, P.p[kFfNormW], P.p[kFfNormB], M, d.C);  // LN_ff(y)
  ops.linear_dweight(P.g[kNet0W], du, rowc, M, d.C, 2 * d.F);
  ops.linear_dinput(drowc, du, P.p[kNet0W], M, d.C, 2 * d.F);
  CUDA_CHECK(cudaMemcpyAsync(dx, dz, sizeof(float) * M * d.C, cudaMemcpyDeviceToDevice, ops.stream));
  ops.layernorm_backward(dx, P.g[kFfNormW], P.g[kFfNormB], drowc, c.yhat, c.yrstd, P.p[kFfNormW], M, d.C);

  // Attention block (its buffers reuse the feed-forward block's space).
  float *dout_att = at(s.dout_att), *dq = at(s.dq), *ds = at(s.ds), *dkv = at(s.dkv), *dlc = at(s.dlc);
  CUDA_CHECK(cudaMemsetAsync(dkv, 0, sizeof(float) * d.r * 2 * d.I, ops.stream));
  ops.linear_dweight(P.g[kToOut], dx, c.o, M, d.I, d.C);
  ops.linear_dinput(dout_att, dx, P.p[kToOut], M, d.I, d.C);
  const float scale = (float)(1.0 / std::sqrt((double)d.D));
  for (long h = 0; h < d.H; ++h) {
    const float* ph = c.p + h * M * d.r;
    const float* doh = dout_att + h * d.D;
    const float* kh = c.kv + h * d.D;
    const float* vh = c.kv + d.I + h * d.D;
    ops.gemm(false, true, M, d.r, d.D, 1.0f, doh, d.I, vh, 2 * d.I, 0.0f, ds, d.r);                    // dp
    ops.gemm(true, false, d.r, d.D, M, 1.0f, ph, d.r, doh, d.I, 1.0f, dkv + d.I + h * d.D, 2 * d.I);  // dv
    ops.rows("latent_softmax_backward", softmax_backward_kernel<kBlock>, M, ds, ph, M, (int)d.r);
    ops.gemm(false, false, M, d.D, d.r, scale, ds, d.r, kh, 2 * d.I, 0.0f, dq + h * d.D, d.I);
    ops.gemm(true, false, d.r, d.D, M, scale, ds, d.r, c.q + h * d.D, d.I, 1.0f, dkv + h * d.D, 2 * d.I);
  }
  ops.layernorm_affine(rowc, c.xhat, P.p[kNormW], P.p[kNormB], M, d.C);  // LN_x(x)
  ops.linear_dweight(P.g[kToQ], dq, rowc, M, d.C, d.I);
  ops.linear_dinput(drowc, dq, P.p[kToQ], M, d.C, d.I);
  ops.layernorm_backward(dx, P.g[kNormW], P.g[kNormB], drowc, c.xhat, c.xrstd, P.p[kNormW], M, d.C);

  // The latents: to_kv and LN_ctx.
  ops.linear_dweight(P.g[kToKV], dkv, c.lc, d.r, d.C, 2 * d.I);
  ops.linear_dinput(dlc, dkv, P.p[kToKV], d.r, d.C, 2 * d.I);
  ops.layernorm_backward(P.g[kLatents], P.g[kCtxW], P.g[kCtxB], dlc, c.lhat, c.lrstd, P.p[kCtxW], d.r, d.C);

  ops.elementwise("latent_scatter", scatter_kernel<T>, M * C, d_hidden, (const float*)dx, rows.rows, M * C, C);
}

}  // namespace l2v::cuda
