// NV-Embed's latent-attention block on the host (see latent_attention.h). GEMMs go through OpenBLAS;
// row-wise work (LayerNorm, softmax, GEGLU) is an OpenMP loop over rows and column reductions (bias and
// LayerNorm parameter gradients) an OpenMP loop over column blocks, so every output element is produced
// by one iteration in a fixed order and the result does not depend on the number of threads.
//
// Notation: M rows, C hidden size, H heads, D = dim_head, I = H*D, r latents, F = mult*C.
// The latents' keys and values do not depend on the rows: they are computed once per forward call.
#include "model/latent_attention.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>

#include "host/gelu.h"
#include "host/philox.h"

namespace l2v {

namespace {

constexpr float kLayerNormEps = 1e-5f;  // torch.nn.LayerNorm's default
constexpr char kPrefix[] = "latent_attention_model.";

void require(bool ok, const char* fn, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("l2v::") + fn + ": " + what);
}

using Dims = LatentAttentionDims;

Dims dims_of(const LatentAttentionConfig& cfg, int C, const char* fn) {
  require(C >= 1, fn, "hidden size must be >= 1, got " + std::to_string(C));
  require(cfg.num_latents >= 1, fn, "num_latents must be >= 1, got " + std::to_string(cfg.num_latents));
  require(cfg.heads >= 1, fn, "heads must be >= 1, got " + std::to_string(cfg.heads));
  require(cfg.dim_head >= 0, fn, "dim_head must be >= 0 (0: the hidden size), got " + std::to_string(cfg.dim_head));
  require(cfg.mult >= 1, fn, "mult must be >= 1, got " + std::to_string(cfg.mult));
  Dims d;
  d.C = C;
  d.H = cfg.heads;
  d.D = cfg.dim_head > 0 ? cfg.dim_head : C;
  d.I = d.H * d.D;
  d.r = cfg.num_latents;
  d.F = (long)cfg.mult * C;
  return d;
}

struct Params {
  const float* p[kNumLatentParams];
};

Params params_view(const float* base, const std::vector<LatentAttentionTensor>& t) {
  Params v;
  for (int i = 0; i < kNumLatentParams; ++i) v.p[i] = base + t[i].offset;
  return v;
}

// Row-major C [M, N] = alpha * op(A) [M, K] * op(B) [K, N] + beta * C (empty shapes allowed).
void gemm(bool ta, bool tb, long M, long N, long K, float alpha, const float* A, long lda, const float* B, long ldb,
          float beta, float* C, long ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (long i = 0; i < M; ++i)
      for (long j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  cblas_sgemm(CblasRowMajor, ta ? CblasTrans : CblasNoTrans, tb ? CblasTrans : CblasNoTrans, (int)M, (int)N, (int)K,
              alpha, A, (int)lda, B, (int)ldb, beta, C, (int)ldc);
}

// y [M, OUT] = x [M, IN] W^T (+ beta * y). W is nn.Linear's [OUT, IN].
void linear(float* y, const float* x, const float* W, long M, long IN, long OUT, float beta = 0.0f) {
  gemm(false, true, M, OUT, IN, 1.0f, x, IN, W, IN, beta, y, OUT);
}
// dW [OUT, IN] += dy^T x.
void linear_dweight(float* dW, const float* dy, const float* x, long M, long IN, long OUT) {
  gemm(true, false, OUT, IN, M, 1.0f, dy, OUT, x, IN, 1.0f, dW, IN);
}
// dx [M, IN] = dy W (+ beta * dx).
void linear_dinput(float* dx, const float* dy, const float* W, long M, long IN, long OUT, float beta) {
  gemm(false, false, M, IN, OUT, 1.0f, dy, OUT, W, IN, beta, dx, IN);
}

// acc[j] += sum_i a[i, j] (* b[i, j] when b != nullptr), summed in double in row order.
void column_sums(float* acc, const float* a, const float* b, long M, long N) {
  constexpr long kBlock = 64;
#pragma omp parallel for schedule(static)
  for (long j0 = 0; j0 < N; j0 += kBlock) {
    const long j1 = std::min(N, j0 + kBlock);
    double s[kBlock] = {};
    for (long i = 0; i < M; ++i) {
      const float* ar = a + i * N;
      const float* br = b ? b + i * N : nullptr;
      for (long j = j0; j < j1; ++j) s[j - j0] += br ? (double)ar[j] * br[j] : (double)ar[j];
    }
    for (long j = j0; j < j1; ++j) acc[j] += (float)s[j - j0];
  }
}

// LayerNorm over the last dimension: xhat = (x - mean) * rstd (biased variance, statistics in double),
// out = xhat * w + b.
void layernorm_forward(float* out, float* xhat, float* rstd, const float* x, const float* w, const float* b, long N,
                       long C) {
#pragma omp parallel for schedule(static)
  for (long i = 0; i < N; ++i) {
    const float* xr = x + i * C;
    double mean = 0.0;
    for (long j = 0; j < C; ++j) mean += xr[j];
    mean /= (double)C;
    double var = 0.0;
    for (long j = 0; j < C; ++j) {
      const double dev = xr[j] - mean;
      var += dev * dev;
    }
    var /= (double)C;
    const float rs = (float)(1.0 / std::sqrt(var + (double)kLayerNormEps));
    const float m = (float)mean;
    rstd[i] = rs;
    float* hr = xhat + i * C;
    float* orow = out + i * C;
    for (long j = 0; j < C; ++j) {
      hr[j] = (xr[j] - m) * rs;
      orow[j] = hr[j] * w[j] + b[j];
    }
  }
}

// out = xhat * w + b (the LayerNorm output again, from the cached normalised input).
void layernorm_affine(float* out, const float* xhat, const float* w, const float* b, long N, long C) {
#pragma omp parallel for schedule(static)
  for (long i = 0; i < N; ++i)
    for (long j = 0; j < C; ++j) out[i * C + j] = xhat[i * C + j] * w[j] + b[j];
}

// dx += LayerNorm backward of dout (the gradient w.r.t. the LayerNorm output); dw, db accumulated.
void layernorm_backward(float* dx, float* dw, float* db, const float* dout, const float* xhat, const float* rstd,
                        const float* w, long N, long C) {
  column_sums(dw, dout, xhat, N, C);
  column_sums(db, dout, nullptr, N, C);
#pragma omp parallel for schedule(static)
  for (long i = 0; i < N; ++i) {
    const float* dr = dout + i * C;
    const float* hr = xhat + i * C;
    double mean_g = 0.0, mean_gh = 0.0;
    for (long j = 0; j < C; ++j) {
      const double g = (double)dr[j] * w[j];
      mean_g += g;
      mean_gh += g * hr[j];
    }
    mean_g /= (double)C;
    mean_gh /= (double)C;
    const float mg = (float)mean_g, mgh = (float)mean_gh;
    float* dxr = dx + i * C;
    for (long j = 0; j < C; ++j) dxr[j] += rstd[i] * (dr[j] * w[j] - mg - hr[j] * mgh);
  }
}

// h [M, F] = u[:, :F] * gelu(u[:, F:]) for u [M, 2F].
void geglu_forward(float* h, const float* u, long M, long F) {
#pragma omp parallel for schedule(static)
  for (long i = 0; i < M; ++i) {
    const float* a = u + i * 2 * F;
    const float* g = a + F;
    for (long j = 0; j < F; ++j) h[i * F + j] = a[j] * gelu_erf(g[j]);
  }
}

// du [M, 2F] from dh [M, F].
void geglu_backward(float* du, const float* dh, const float* u, long M, long F) {
#pragma omp parallel for schedule(static)
  for (long i = 0; i < M; ++i) {
    const float* a = u + i * 2 * F;
    const float* g = a + F;
    const float* d = dh + i * F;
    float* da = du + i * 2 * F;
    float* dg = da + F;
    for (long j = 0; j < F; ++j) {
      da[j] = d[j] * gelu_erf(g[j]);
      dg[j] = d[j] * a[j] * gelu_erf_grad(g[j]);
    }
  }
}

size_t latent_floats(const Dims& d) { return (size_t)(d.r * d.C * 2 + d.r + d.r * 2 * d.I); }
size_t row_floats(const Dims& d, long M) {
  return (size_t)M * (size_t)(2 * d.C + 2 + 2 * d.I + d.H * d.r + 2 * d.F);
}

using CacheView = LatentAttentionCacheView;
CacheView cache_view(float* base, const Dims& d, long M) { return latent_attention_cache_view(base, d, M); }

void forward_latents(const CacheView& c, const Params& P, const Dims& d) {
  layernorm_forward(c.lc, c.lhat, c.lrstd, P.p[kLatents], P.p[kCtxW], P.p[kCtxB], d.r, d.C);
  linear(c.kv, c.lc, P.p[kToKV], d.r, d.C, 2 * d.I);
}

// z [M, C] for rows x [M, C], with the latent part of `c` already filled. `tmp` holds M*max(C, F) floats.
void forward_rows(float* z, const float* x, const CacheView& c, const Params& P, const Dims& d, long M, float* tmp) {
  if (M == 0) return;
  const float scale = (float)(1.0 / std::sqrt((double)d.D));
  // Attention block: y = x + to_out(attn(to_q(LN_x(x)), k, v)).
  layernorm_forward(tmp, c.xhat, c.xrstd, x, P.p[kNormW], P.p[kNormB], M, d.C);
  linear(c.q, tmp, P.p[kToQ], M, d.C, d.I);
  for (long h = 0; h < d.H; ++h) {
    float* ph = c.p + h * M * d.r;
    gemm(false, true, M, d.r, d.D, scale, c.q + h * d.D, d.I, c.kv + h * d.D, 2 * d.I, 0.0f, ph, d.r);
#pragma omp parallel for schedule(static)
    for (long i = 0; i < M; ++i) {
      float* row = ph + i * d.r;
      float mx = row[0];
      for (long j = 1; j < d.r; ++j) mx = std::max(mx, row[j]);
      double sum = 0.0;
      for (long j = 0; j < d.r; ++j) {
        row[j] = std::exp(row[j] - mx);
        sum += row[j];
      }
      const float inv = (float)(1.0 / sum);
      for (long j = 0; j < d.r; ++j) row[j] *= inv;
    }
    gemm(false, false, M, d.D, d.r, 1.0f, ph, d.r, c.kv + d.I + h * d.D, 2 * d.I, 0.0f, c.o + h * d.D, d.I);
  }
  std::memcpy(z, x, sizeof(float) * M * d.C);
  linear(z, c.o, P.p[kToOut], M, d.I, d.C, 1.0f);  // z holds y now
  // Feed-forward block: z = y + net2(GEGLU(net0(LN_ff(y)))).
  layernorm_forward(tmp, c.yhat, c.yrstd, z, P.p[kFfNormW], P.p[kFfNormB], M, d.C);
#pragma omp parallel for schedule(static)
  for (long i = 0; i < M; ++i) std::memcpy(c.u + i * 2 * d.F, P.p[kNet0B], sizeof(float) * 2 * d.F);
  linear(c.u, tmp, P.p[kNet0W], M, d.C, 2 * d.F, 1.0f);
  geglu_forward(tmp, c.u, M, d.F);
#pragma omp parallel for schedule(static)
  for (long i = 0; i < M; ++i)
    for (long j = 0; j < d.C; ++j) z[i * d.C + j] += P.p[kNet2B][j];
  linear(z, tmp, P.p[kNet2W], M, d.F, d.C, 1.0f);
}

}  // namespace

LatentAttentionDims latent_attention_dims(const LatentAttentionConfig& cfg, int C) {
  return dims_of(cfg, C, "latent_attention_dims");
}

size_t latent_attention_cache_floats(const LatentAttentionDims& d, long M) { return latent_floats(d) + row_floats(d, M); }

LatentAttentionCacheView latent_attention_cache_view(float* base, const LatentAttentionDims& d, long M) {
  LatentAttentionCacheView v;
  float* p = base;
  auto take = [&p](long n) {
    float* q = p;
    p += n;
    return q;
  };
  v.lhat = take(d.r * d.C);
  v.lrstd = take(d.r);
  v.lc = take(d.r * d.C);
  v.kv = take(d.r * 2 * d.I);
  v.xhat = take(M * d.C);
  v.xrstd = take(M);
  v.q = take(M * d.I);
  v.p = take(d.H * M * d.r);
  v.o = take(M * d.I);
  v.yhat = take(M * d.C);
  v.yrstd = take(M);
  v.u = take(M * 2 * d.F);
  return v;
}

std::vector<LatentAttentionTensor> latent_attention_tensors(const LatentAttentionConfig& cfg, int C) {
  const Dims d = dims_of(cfg, C, "latent_attention_tensors");
  const std::string b0 = std::string(kPrefix) + "cross_attend_blocks.0.";
  const std::string b1 = std::string(kPrefix) + "cross_attend_blocks.1.";
  std::vector<LatentAttentionTensor> t = {
      {std::string(kPrefix) + "latents", {d.r, d.C}},
      {b0 + "norm.weight", {d.C}},
      {b0 + "norm.bias", {d.C}},
      {b0 + "norm_context.weight", {d.C}},
      {b0 + "norm_context.bias", {d.C}},
      {b0 + "fn.to_q.weight", {d.I, d.C}},
      {b0 + "fn.to_kv.weight", {2 * d.I, d.C}},
      {b0 + "fn.to_out.weight", {d.C, d.I}},
      {b1 + "norm.weight", {d.C}},
      {b1 + "norm.bias", {d.C}},
      {b1 + "fn.net.0.weight", {2 * d.F, d.C}},
      {b1 + "fn.net.0.bias", {2 * d.F}},
      {b1 + "fn.net.2.weight", {d.C, d.F}},
      {b1 + "fn.net.2.bias", {d.C}},
  };
  size_t offset = 0;
  for (auto& e : t) {
    e.count = 1;
    for (int64_t s : e.shape) e.count *= (size_t)s;
    e.offset = offset;
    offset += e.count;
  }
  return t;
}

size_t latent_attention_param_count(const LatentAttentionConfig& cfg, int C) {
  const auto t = latent_attention_tensors(cfg, C);
  return t.back().offset + t.back().count;
}

void latent_attention_init(float* params, const LatentAttentionConfig& cfg, int C, uint64_t seed) {
  const auto tensors = latent_attention_tensors(cfg, C);
  // Element e of tensor k draws from Philox counter (e, k): independent of the other tensors' sizes.
  auto unit = [seed](uint32_t tensor, size_t e, int which) {
    const Philox4 r = philox4x32_10((uint32_t)e, (uint32_t)((uint64_t)e >> 32), tensor, 0x1A7E47u, seed);
    return ((double)r.v[2 * which] + (double)r.v[2 * which + 1] * 4294967296.0) / 18446744073709551616.0;
  };
  for (uint32_t k = 0; k < (uint32_t)tensors.size(); ++k) {
    const auto& t = tensors[k];
    float* p = params + t.offset;
    if (k == kLatents) {  // N(0, 1), Box-Muller
      for (size_t e = 0; e < t.count; ++e) {
        const double u1 = 1.0 - unit(k, e, 0), u2 = unit(k, e, 1);  // u1 in (0, 1]
        p[e] = (float)(std::sqrt(-2.0 * std::log(u1)) * std::cos(6.283185307179586477 * u2));
      }
    } else if (k == kNormW || k == kCtxW || k == kFfNormW) {
      std::fill(p, p + t.count, 1.0f);
    } else if (k == kNormB || k == kCtxB || k == kFfNormB) {
      std::fill(p, p + t.count, 0.0f);
    } else {  // nn.Linear: U(-1/sqrt(in), 1/sqrt(in)); a bias uses its weight's fan-in
      const int64_t fan_in = t.shape.size() == 2 ? t.shape[1] : tensors[k - 1].shape[1];
      const double bound = 1.0 / std::sqrt((double)fan_in);
      for (size_t e = 0; e < t.count; ++e) p[e] = (float)((2.0 * unit(k, e, 0) - 1.0) * bound);
    }
  }
}

void latent_attention_forward(float* out, float* cache, const float* x, const float* params,
                              const LatentAttentionConfig& cfg, int M, int C) {
  const Dims d = dims_of(cfg, C, "latent_attention_forward");
  require(M >= 0, "latent_attention_forward", "M must be >= 0, got " + std::to_string(M));
  const Params P = params_view(params, latent_attention_tensors(cfg, C));
  if (cache) {
    const CacheView c = cache_view(cache, d, M);
    forward_latents(c, P, d);
    std::vector<float> tmp((size_t)M * std::max(d.C, d.F));
    forward_rows(out, x, c, P, d, M, tmp.data());
    return;
  }
  // Inference: rows are independent, so bound the workspace by running them in chunks.
  const long chunk = std::min<long>(M, kLatentInferenceChunk);
  std::vector<float> work(latent_floats(d) + row_floats(d, chunk));
  std::vector<float> tmp((size_t)chunk * std::max(d.C, d.F));
  forward_latents(cache_view(work.data(), d, chunk), P, d);
  for (long m0 = 0; m0 < M; m0 += chunk) {
    const long m = std::min<long>(chunk, M - m0);
    forward_rows(out + m0 * d.C, x + m0 * d.C, cache_view(work.data(), d, m), P, d, m, tmp.data());
  }
}

void latent_attention_backward(float* dx, float* dparams, const float* dout, const float* cache, const float* params,
                               const LatentAttentionConfig& cfg, int M, int C) {
  const Dims d = dims_of(cfg, C, "latent_attention_backward");
  require(M >= 0, "latent_attention_backward", "M must be >= 0, got " + std::to_string(M));
  if (M == 0) return;  // no rows: every gradient is zero
  const auto tensors = latent_attention_tensors(cfg, C);
  const Params P = params_view(params, tensors);
  float* G[kNumLatentParams];
  for (int i = 0; i < kNumLatentParams; ++i) G[i] = dparams + tensors[i].offset;
  const CacheView c = cache_view(const_cast<float*>(cache), d, M);  // read only below

  // Feed-forward block. dx accumulates dy (the gradient w.r.t. the attention block's output y).
  std::vector<float> big((size_t)M * d.F), du((size_t)M * 2 * d.F), rowc((size_t)M * d.C), drowc((size_t)M * d.C);
  column_sums(G[kNet2B], dout, nullptr, M, d.C);
  geglu_forward(big.data(), c.u, M, d.F);
  linear_dweight(G[kNet2W], dout, big.data(), M, d.F, d.C);
  linear_dinput(big.data(), dout, P.p[kNet2W], M, d.F, d.C, 0.0f);  // big = d GEGLU output
  geglu_backward(du.data(), big.data(), c.u, M, d.F);
  big = std::vector<float>();
  column_sums(G[kNet0B], du.data(), nullptr, M, 2 * d.F);
  layernorm_affine(rowc.data(), c.yhat, P.p[kFfNormW], P.p[kFfNormB], M, d.C);  // LN_ff(y)
  linear_dweight(G[kNet0W], du.data(), rowc.data(), M, d.C, 2 * d.F);
  linear_dinput(drowc.data(), du.data(), P.p[kNet0W], M, d.C, 2 * d.F, 0.0f);
  du = std::vector<float>();
  std::memcpy(dx, dout, sizeof(float) * M * d.C);
  layernorm_backward(dx, G[kFfNormW], G[kFfNormB], drowc.data(), c.yhat, c.yrstd, P.p[kFfNormW], M, d.C);

  // Attention block: dy flows to x directly and through to_out, the attention and to_q.
  std::vector<float> dout_att((size_t)M * d.I), dq((size_t)M * d.I), ds((size_t)M * d.r);
  std::vector<float> dkv((size_t)(d.r * 2 * d.I), 0.0f);
  linear_dweight(G[kToOut], dx, c.o, M, d.I, d.C);
  linear_dinput(dout_att.data(), dx, P.p[kToOut], M, d.I, d.C, 0.0f);
  const float scale = (float)(1.0 / std::sqrt((double)d.D));
  for (long h = 0; h < d.H; ++h) {
    const float* ph = c.p + h * M * d.r;
    const float* doh = dout_att.data() + h * d.D;
    const float* kh = c.kv + h * d.D;
    const float* vh = c.kv + d.I + h * d.D;
    gemm(false, true, M, d.r, d.D, 1.0f, doh, d.I, vh, 2 * d.I, 0.0f, ds.data(), d.r);             // dp
    gemm(true, false, d.r, d.D, M, 1.0f, ph, d.r, doh, d.I, 1.0f, dkv.data() + d.I + h * d.D, 2 * d.I);  // dv
#pragma omp parallel for schedule(static)
    for (long i = 0; i < M; ++i) {  // softmax backward: ds = p * (dp - sum_j p dp)
      const float* pr = ph + i * d.r;
      float* dr = ds.data() + i * d.r;
      double dot = 0.0;
      for (long j = 0; j < d.r; ++j) dot += (double)pr[j] * dr[j];
      const float dt = (float)dot;
      for (long j = 0; j < d.r; ++j) dr[j] = pr[j] * (dr[j] - dt);
    }
    gemm(false, false, M, d.D, d.r, scale, ds.data(), d.r, kh, 2 * d.I, 0.0f, dq.data() + h * d.D, d.I);
    gemm(true, false, d.r, d.D, M, scale, ds.data(), d.r, c.q + h * d.D, d.I, 1.0f, dkv.data() + h * d.D, 2 * d.I);
  }
  layernorm_affine(rowc.data(), c.xhat, P.p[kNormW], P.p[kNormB], M, d.C);  // LN_x(x)
  linear_dweight(G[kToQ], dq.data(), rowc.data(), M, d.C, d.I);
  linear_dinput(drowc.data(), dq.data(), P.p[kToQ], M, d.C, d.I, 0.0f);
  layernorm_backward(dx, G[kNormW], G[kNormB], drowc.data(), c.xhat, c.xrstd, P.p[kNormW], M, d.C);

  // The latents: to_kv and LN_ctx.
  std::vector<float> dlc((size_t)(d.r * d.C));
  linear_dweight(G[kToKV], dkv.data(), c.lc, d.r, d.C, 2 * d.I);
  linear_dinput(dlc.data(), dkv.data(), P.p[kToKV], d.r, d.C, 2 * d.I, 0.0f);
  layernorm_backward(G[kLatents], G[kCtxW], G[kCtxB], dlc.data(), c.lhat, c.lrstd, P.p[kCtxW], d.r, d.C);
}

void latent_pool_forward(float* pooled, float* cache, const float* hidden, const LatentRows& rows,
                         const float* weights, const float* params, const LatentAttentionConfig& cfg, int C) {
  const int M = rows.M;
  std::vector<float> x((size_t)M * C), z((size_t)M * C);
  for (int r = 0; r < M; ++r) std::copy_n(hidden + (size_t)rows.rows[r] * C, C, &x[(size_t)r * C]);
  latent_attention_forward(z.data(), cache, x.data(), params, cfg, M, C);
  for (int b = 0; b < rows.B; ++b)
    for (int c = 0; c < C; ++c) {
      double acc = 0.0;
      for (int r = rows.text_start[b]; r < rows.text_start[b + 1]; ++r)
        acc += (double)weights[rows.rows[r]] * (double)z[(size_t)r * C + c];
      pooled[(size_t)b * C + c] = (float)acc;
    }
}

void latent_pool_backward(float* d_hidden, float* dparams, const float* d_pooled, const LatentRows& rows,
                          const float* weights, const float* cache, const float* params,
                          const LatentAttentionConfig& cfg, int C) {
  const int M = rows.M;
  std::vector<float> dz((size_t)M * C), dx((size_t)M * C);
  for (int b = 0; b < rows.B; ++b)
    for (int r = rows.text_start[b]; r < rows.text_start[b + 1]; ++r)
      for (int c = 0; c < C; ++c) dz[(size_t)r * C + c] = weights[rows.rows[r]] * d_pooled[(size_t)b * C + c];
  latent_attention_backward(dx.data(), dparams, dz.data(), cache, params, cfg, M, C);
  std::fill(d_hidden, d_hidden + (size_t)rows.B * rows.T * C, 0.0f);
  for (int r = 0; r < M; ++r) std::copy_n(&dx[(size_t)r * C], C, d_hidden + (size_t)rows.rows[r] * C);
}

}  // namespace l2v
