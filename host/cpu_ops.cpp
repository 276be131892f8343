// fp32 CPU reference of the LLM2Vec training ops (see cpu_ops.h for the contract of each function).
// GEMMs go through OpenBLAS; everything else is a plain loop parallelised with OpenMP. Every result is
// independent of the number of threads: each output element is written by exactly one iteration and
// no reduction is split across threads, so the reference is reproducible bit for bit.
#include "host/cpu_ops.h"

#include <cblas.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "host/dropout_bits.h"
#include "host/philox.h"

namespace l2v::cpu {

namespace {

void require(bool ok, const char* fn, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("l2v::cpu::") + fn + ": " + what);
}

void require_dropout_p(float p, const char* fn) {
  // p == 1 would need a 1/(1-p) = inf scale; torch special-cases it, the training step never uses it.
  require(p >= 0.0f && p < 1.0f, fn, "dropout probability must lie in [0, 1), got " + std::to_string(p));
}

// Row-major C [M, N] = alpha * op(A) [M, K] * op(B) [K, N] + beta * C. Empty shapes are handled here
// because OpenBLAS rejects a leading dimension of 0 (and K == 0 must still apply beta to C).
void gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A, int lda, const float* B,
          int ldb, float beta, float* C, int ldc) {
  if (M == 0 || N == 0) return;
  if (K == 0) {
    for (long i = 0; i < M; ++i)
      for (long j = 0; j < N; ++j) C[i * ldc + j] = beta == 0.0f ? 0.0f : beta * C[i * ldc + j];
    return;
  }
  // One threading system: OpenMP runs single-threaded OpenBLAS GEMMs on blocks of rows of C. OpenBLAS's
  // own (pthread) workers keep spinning after a call and fight the OpenMP loops around it — two to three
  // times slower on the bundled model. The blocks have a fixed size, not one per thread: OpenBLAS picks
  // its kernels by matrix size, so the bits of a result depend on how the rows are cut, and a cut that
  // ignores the thread count keeps the results independent of it.
  static const bool single_threaded_blas = [] {
    openblas_set_num_threads(1);
    return true;
  }();
  (void)single_threaded_blas;
  const CBLAS_TRANSPOSE ta = trans_a ? CblasTrans : CblasNoTrans, tb = trans_b ? CblasTrans : CblasNoTrans;
  constexpr int kBlockRows = 128;
  const int blocks = (M + kBlockRows - 1) / kBlockRows;
  if (blocks == 1 || (double)M * N * K < 4e6) {
    cblas_sgemm(CblasRowMajor, ta, tb, M, N, K, alpha, A, lda, B, ldb, beta, C, ldc);
    return;
  }
#pragma omp parallel for schedule(dynamic, 1) if (!omp_in_parallel())
  for (int blk = 0; blk < blocks; ++blk) {
    const int m0 = blk * kBlockRows, m1 = std::min(M, m0 + kBlockRows);
    // Rows m0..m1 of op(A): rows of A, or columns of A when it is transposed.
    const float* a = trans_a ? A + m0 : A + (long)m0 * lda;
    cblas_sgemm(CblasRowMajor, ta, tb, m1 - m0, N, K, alpha, a, lda, B, ldb, beta, C + (long)m0 * ldc, ldc);
  }
}

inline float dot(const float* a, const float* b, int n) {
  float acc = 0.0f;
#pragma omp simd reduction(+ : acc)
  for (int i = 0; i < n; ++i) acc += a[i] * b[i];
  return acc;
}

inline void axpy(float* y, float a, const float* x, int n) {
#pragma omp simd
  for (int i = 0; i < n; ++i) y[i] += a * x[i];
}

// The element-wise dropout of the LoRA input (i = n*IC + c), in parallel: chunk(i0, bits) for the aligned
// chunks of 64 elements, whose decisions come two chunks at a time from elementwise_keep_bits128 (32
// Philox calls, vectorised where the CPU can: host/dropout_bits.h), and one(i, keep) for the unaligned head
// and the tail — the same bits as dropout_keep_elementwise per element.
template <class One, class Chunk>
void for_each_elementwise_keep(long n, float p, DropoutKey key, uint32_t site, One&& one, Chunk&& chunk) {
  const long head = std::min<long>(n, (long)((4 - (key.offset & 3)) & 3));
  for (long i = 0; i < head; ++i) one(i, dropout_keep_elementwise(key.seed, site, key.offset + (uint64_t)i, p));
  const long chunks = (n - head) / 64, pairs = (chunks + 1) / 2;
#pragma omp parallel for
  for (long c = 0; c < pairs; ++c) {
    const long i0 = head + 128 * c;
    uint64_t bits[2];
    elementwise_keep_bits128(key.seed, site, (key.offset + (uint64_t)i0) >> 2, p, bits);
    chunk(i0, bits[0]);
    if (2 * c + 1 < chunks) chunk(i0 + 64, bits[1]);  // an odd last chunk leaves the second word unused
  }
  for (long i = head + 64 * chunks; i < n; ++i)
    one(i, dropout_keep_elementwise(key.seed, site, key.offset + (uint64_t)i, p));
}

// dst[i] = src[i] * keep(i) / (1-p).
void apply_elementwise_dropout(float* dst, const float* src, long n, float p, DropoutKey key, uint32_t site) {
  const float keep_scale = 1.0f / (1.0f - p);
  for_each_elementwise_keep(
      n, p, key, site, [&](long i, bool keep) { dst[i] = keep ? src[i] * keep_scale : 0.0f; },
      [&](long i0, uint64_t bits) { apply_keep_bits64(dst + i0, src + i0, bits, keep_scale); });
}

}  // namespace

void check_attention_shape(const char* fn, int B, int T, int H, int KV, int D, float dropout_p, QkvStrides ld) {
  require(B > 0 && T > 0 && H > 0 && KV > 0 && D > 0, fn, "B, T, H, KV and D must be positive");
  require(H % KV == 0, fn, "H (" + std::to_string(H) + ") must be a multiple of KV (" + std::to_string(KV) + ")");
  require(ld.q >= H * D && ld.kv >= KV * D, fn,
          "row strides q " + std::to_string(ld.q) + ", kv " + std::to_string(ld.kv) + " below H*D, KV*D");
  require_dropout_p(dropout_p, fn);
}

void embedding_forward(float* out, const int* ids, const float* table, int N, int C) {
#pragma omp parallel for
  for (int n = 0; n < N; ++n) std::memcpy(out + (long)n * C, table + (long)ids[n] * C, sizeof(float) * C);
}

void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N, int C, float eps) {
  require(C > 0, "rmsnorm_forward", "C must be positive");
#pragma omp parallel for
  for (int n = 0; n < N; ++n) {
    const float* x = inp + (long)n * C;
    float* o = out + (long)n * C;
    // The mean of squares is accumulated in double so the reference is at least as accurate as
    // torch's pairwise fp32 reduction; it is then rounded to fp32 like torch's `variance`.
    double ss = 0.0;
    for (int c = 0; c < C; ++c) ss += (double)x[c] * x[c];
    const float r = 1.0f / std::sqrt((float)(ss / C) + eps);
    rstd[n] = r;
    // Same order as LlamaRMSNorm: weight * (x * rstd).
    for (int c = 0; c < C; ++c) o[c] = weight[c] * (x[c] * r);
  }
}

void rmsnorm_backward(float* dinp, const float* dout, const float* inp, const float* weight, const float* rstd,
                      int N, int C) {
  require(C > 0, "rmsnorm_backward", "C must be positive");
#pragma omp parallel for
  for (int n = 0; n < N; ++n) {
    const float* x = inp + (long)n * C;
    const float* dy = dout + (long)n * C;
    float* dx = dinp + (long)n * C;
    double acc = 0.0;
    for (int c = 0; c < C; ++c) acc += (double)(weight[c] * dy[c]) * x[c];
    const float r = rstd[n];
    // dx = r * (w dy) - x * r^3 * mean(w dy x): the second term is the gradient through rstd.
    const float coef = r * r * r * (float)(acc / C);
    for (int c = 0; c < C; ++c) dx[c] += r * (weight[c] * dy[c]) - x[c] * coef;
  }
}

namespace {
// Rotates each (x[i], x[i+D/2]) pair of every head by the angle of position n % T; sin_sign = -1
// rotates backwards, which is the transpose of the forward rotation (its Jacobian), i.e. the backward.
void rope_rotate(float* out, const float* x, int ld, const float* cos, const float* sin, int N, int T, int nh, int D,
                 float sin_sign) {
  const int half = D / 2;
#pragma omp parallel for
  for (int n = 0; n < N; ++n) {
    const float* c = cos + (long)(n % T) * half;
    const float* s = sin + (long)(n % T) * half;
    for (int h = 0; h < nh; ++h) {
      const long base = (long)n * ld + (long)h * D;
      // Lanes of i (SSE2's four by default; the same roundings as one at a time, fp contraction being off).
#pragma omp simd
      for (int i = 0; i < half; ++i) {
        // Both halves are read before either is written, which is what makes out == x safe (lane by lane too).
        const float x0 = x[base + i], x1 = x[base + i + half], si = sin_sign * s[i];
        out[base + i] = x0 * c[i] - x1 * si;
        out[base + i + half] = x1 * c[i] + x0 * si;
      }
    }
  }
}
}  // namespace

void rope_forward(float* out, const float* x, int ld, const float* cos, const float* sin, int N, int T, int nh,
                  int D) {
  require(D % 2 == 0 && T > 0 && ld >= nh * D, "rope_forward", "D must be even, T positive and ld at least nh*D");
  rope_rotate(out, x, ld, cos, sin, N, T, nh, D, 1.0f);
}

void rope_backward(float* dx, const float* dout, int ld, const float* cos, const float* sin, int N, int T, int nh,
                   int D) {
  require(D % 2 == 0 && T > 0 && ld >= nh * D, "rope_backward", "D must be even, T positive and ld at least nh*D");
  rope_rotate(dx, dout, ld, cos, sin, N, T, nh, D, -1.0f);
}

void rope_tables(float* cos, float* sin, const float* inv_freq, int T, int D) {
  require(D % 2 == 0, "rope_tables", "D must be even");
  const int half = D / 2;
#pragma omp parallel for
  for (int t = 0; t < T; ++t) {
    for (int i = 0; i < half; ++i) {
      // transformers multiplies fp32 positions by fp32 inv_freq: the angle is rounded to fp32 first.
      // cos/sin of that fp32 angle are then evaluated in double and rounded once, i.e. (almost always)
      // correctly rounded, which is within torch's own 1-ulp error of what torch returns.
      const float angle = (float)t * inv_freq[i];
      cos[(long)t * half + i] = (float)std::cos((double)angle);
      sin[(long)t * half + i] = (float)std::sin((double)angle);
    }
  }
}

void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, QkvStrides ld,
                       const int* key_mask, int B, int T, int H, int KV, int D, bool causal, float dropout_p,
                       DropoutKey key, uint32_t site) {
  check_attention_shape("attention_forward", B, T, H, KV, D, dropout_p, ld);
  const int group = H / KV;
  const long q_stride = ld.q, kv_stride = ld.kv, o_stride = (long)H * D;
  const float sm_scale = 1.0f / std::sqrt((float)D);
  const bool dropout = dropout_p > 0.0f;
  const float keep_scale = dropout ? 1.0f / (1.0f - dropout_p) : 1.0f;
  const long rows = (long)B * H * T;  // row r = (b*H + h)*T + i, which is also the lse index

#pragma omp parallel
  {
    std::vector<float> p(T);  // this thread's scores, then unnormalised probabilities, of one query row
    // Causal rows have unequal lengths: dynamic scheduling keeps both threads busy.
#pragma omp for schedule(dynamic, 8)
    for (long r = 0; r < rows; ++r) {
      const int i = (int)(r % T), bh = (int)(r / T);
      const int h = bh % H, b = bh / H, g = h / group;
      const float* qi = q + ((long)b * T + i) * q_stride + (long)h * D;
      float* oi = out + ((long)b * T + i) * o_stride + (long)h * D;
      const float* kb = k + (long)b * T * kv_stride + (long)g * D;
      const float* vb = v + (long)b * T * kv_stride + (long)g * D;
      const int* km = key_mask ? key_mask + (long)b * T : nullptr;
      const int jend = causal ? i + 1 : T;

      std::fill(oi, oi + D, 0.0f);
      float mx = -INFINITY;
      bool any = false;
      for (int j = 0; j < jend; ++j) {
        if (km && km[j] == 0) {
          p[j] = -INFINITY;  // exp(-inf) = 0 below: hidden keys drop out of the softmax
          continue;
        }
        p[j] = dot(qi, kb + (long)j * kv_stride, D) * sm_scale;
        mx = std::max(mx, p[j]);
        any = true;
      }
      if (!any) {
        lse[r] = -INFINITY;
        continue;
      }
      float sum = 0.0f;
      for (int j = 0; j < jend; ++j) {
        p[j] = std::exp(p[j] - mx);
        sum += p[j];
      }
      lse[r] = mx + std::log(sum);
      const float inv_sum = 1.0f / sum;
      AttentionRowDropout mask(key, site, (uint32_t)(key.offset + bh), (uint32_t)i, dropout_p);
      for (int j = 0; j < jend; ++j) {
        if (p[j] == 0.0f) continue;
        float w = p[j] * inv_sum;
        if (dropout) {
          if (!mask.keep((uint32_t)j)) continue;
          w *= keep_scale;
        }
        axpy(oi, w, vb + (long)j * kv_stride, D);
      }
    }
  }
}

// Two passes so that every output is owned by one iteration (race-free and deterministic under GQA,
// where several query heads feed one kv head), at the price of computing the probabilities twice:
//   pass 1, per query row (b, h, i): Di and dq_i;
//   pass 2, per key row (b, kv head g, j): dk_j and dv_j, summed over the query heads of group g.
// Both passes evaluate ds_ij with the same operations in the same order, so they agree exactly.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, const float* k, const float* v, QkvStrides ld, const int* key_mask, int B,
                        int T, int H, int KV, int D, bool causal, float dropout_p, DropoutKey key, uint32_t site) {
  check_attention_shape("attention_backward", B, T, H, KV, D, dropout_p, ld);
  const int group = H / KV;
  const long q_stride = ld.q, kv_stride = ld.kv, o_stride = (long)H * D;
  const float sm_scale = 1.0f / std::sqrt((float)D);
  const bool dropout = dropout_p > 0.0f;
  const float keep_scale = dropout ? 1.0f / (1.0f - dropout_p) : 1.0f;
  const long rows = (long)B * H * T;
  std::vector<float> Dsum(rows);  // Di = dout_i . out_i = sum_j P_ij dP_ij, per query row

#pragma omp parallel for schedule(dynamic, 8)
  for (long r = 0; r < rows; ++r) {
    const int i = (int)(r % T), bh = (int)(r / T);
    const int h = bh % H, b = bh / H, g = h / group;
    const long qoff = ((long)b * T + i) * q_stride + (long)h * D, ooff = ((long)b * T + i) * o_stride + (long)h * D;
    const float* qi = q + qoff;
    const float* doi = dout + ooff;
    float* dqi = dq + qoff;
    const float* kb = k + (long)b * T * kv_stride + (long)g * D;
    const float* vb = v + (long)b * T * kv_stride + (long)g * D;
    const int* km = key_mask ? key_mask + (long)b * T : nullptr;

    std::fill(dqi, dqi + D, 0.0f);
    const float L = lse[r];
    if (L == -INFINITY) {  // no visible key: the output was a constant 0
      Dsum[r] = 0.0f;
      continue;
    }
    const float Di = dot(doi, out + ooff, D);
    Dsum[r] = Di;
    const int jend = causal ? i + 1 : T;
    AttentionRowDropout mask(key, site, (uint32_t)(key.offset + bh), (uint32_t)i, dropout_p);
    for (int j = 0; j < jend; ++j) {
      if (km && km[j] == 0) continue;
      const float* kj = kb + (long)j * kv_stride;
      const float P = std::exp(dot(qi, kj, D) * sm_scale - L);
      float dP = 0.0f;  // a dropped probability receives no gradient through the output
      if (!dropout || mask.keep((uint32_t)j))
        dP = dot(doi, vb + (long)j * kv_stride, D) * keep_scale;
      const float ds = P * (dP - Di);
      axpy(dqi, ds * sm_scale, kj, D);
    }
  }

  const long key_rows = (long)B * KV * T;  // key row = (b*KV + g)*T + j
#pragma omp parallel for schedule(dynamic, 8)
  for (long r = 0; r < key_rows; ++r) {
    const int j = (int)(r % T), bg = (int)(r / T);
    const int g = bg % KV, b = bg / KV;
    const long kvoff = ((long)b * T + j) * kv_stride + (long)g * D;
    const float* kj = k + kvoff;
    const float* vj = v + kvoff;
    float* dkj = dk + kvoff;
    float* dvj = dv + kvoff;

    std::fill(dkj, dkj + D, 0.0f);
    std::fill(dvj, dvj + D, 0.0f);
    if (key_mask && key_mask[(long)b * T + j] == 0) continue;  // a padding key is never attended to
    // Every query that sees key j has at least one visible key, so its lse is finite.
    for (int h = g * group; h < (g + 1) * group; ++h) {
      const int bh = b * H + h;
      for (int i = causal ? j : 0; i < T; ++i) {
        const float* qi = q + ((long)b * T + i) * q_stride + (long)h * D;
        const float* doi = dout + ((long)b * T + i) * o_stride + (long)h * D;
        const long row = (long)bh * T + i;
        const float P = std::exp(dot(qi, kj, D) * sm_scale - lse[row]);
        float dP = 0.0f;
        if (!dropout || dropout_keep_attention(key.seed, site, (uint32_t)(key.offset + bh), (uint32_t)i, (uint32_t)j, dropout_p)) {
          axpy(dvj, P * keep_scale, doi, D);
          dP = dot(doi, vj, D) * keep_scale;
        }
        const float ds = P * (dP - Dsum[row]);
        axpy(dkj, ds * sm_scale, qi, D);
      }
    }
  }
}

void swiglu_forward(float* out, const float* gate_up, long N, int F) {
#pragma omp parallel for
  for (long i = 0; i < N * F; ++i) {
    const long row = i / F * 2 * F, f = i % F;
    const float g = gate_up[row + f];
    out[i] = g / (1.0f + std::exp(-g)) * gate_up[row + F + f];  // torch's silu: x / (1 + exp(-x))
  }
}

void swiglu_backward(float* d_gate_up, const float* dout, const float* gate_up, long N, int F) {
#pragma omp parallel for
  for (long i = 0; i < N * F; ++i) {
    const long row = i / F * 2 * F, f = i % F;
    const float g = gate_up[row + f], u = gate_up[row + F + f];
    const float one_plus_e = 1.0f + std::exp(-g);
    const float sig = 1.0f / one_plus_e;
    // Order of torch's silu_backward applied to d(silu) = dout * up.
    d_gate_up[row + f] = dout[i] * u * sig * (1.0f + g * (1.0f - sig));
    d_gate_up[row + F + f] = dout[i] * (g / one_plus_e);  // the forward's silu value, as autograd saves it
  }
}

bool linear_preset(float* out, const float* bias, const float* residual, int N, int OC) {
  if (!bias && !residual) return false;
#pragma omp parallel for
  for (int n = 0; n < N; ++n) {
    float* o = out + (long)n * OC;
    const float* r = residual ? residual + (long)n * OC : nullptr;
    if (r && bias) {
      for (int i = 0; i < OC; ++i) o[i] = r[i] + bias[i];
    } else if (r) {
      if (o != r) std::memcpy(o, r, sizeof(float) * OC);
    } else {
      std::memcpy(o, bias, sizeof(float) * OC);
    }
  }
  return true;
}

void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IC, int OC,
                    const float* residual) {
  const bool preset = linear_preset(out, bias, residual, N, OC);
  gemm(false, true, N, OC, IC, 1.0f, inp, IC, weight, IC, preset ? 1.0f : 0.0f, out, OC);
}

void matmul_backward_input(float* dinp, const float* dout, const float* weight, int N, int IC, int OC,
                           bool accumulate) {
  gemm(false, false, N, IC, OC, 1.0f, dout, OC, weight, IC, accumulate ? 1.0f : 0.0f, dinp, IC);
}

void lora_forward(float* out, int ld_out, float* xa, const float* inp, const float* A, const float* B, float scale,
                  float dropout_p, DropoutKey key, uint32_t site, float* scratch, int N, int IC, int OC, int R) {
  require_dropout_p(dropout_p, "lora_forward");
  require(ld_out >= OC, "lora_forward", "out's row stride must be at least OC");
  const float* x = inp;
  if (dropout_p > 0.0f) {
    require(scratch != nullptr, "lora_forward", "dropout_p > 0 needs a scratch buffer [N, IC]");
    apply_elementwise_dropout(scratch, inp, (long)N * IC, dropout_p, key, site);
    x = scratch;
  }
  gemm(false, true, N, R, IC, 1.0f, x, IC, A, IC, 0.0f, xa, R);
  gemm(false, true, N, OC, R, scale, xa, R, B, R, 1.0f, out, ld_out);
}

void lora_backward(float* dinp, float* dA, float* dB, const float* dout, int ld_dout, const float* inp, const float* xa,
                   const float* A, const float* B, float scale, float dropout_p, DropoutKey key, uint32_t site,
                   float* scratch, int N, int IC, int OC, int R) {
  require_dropout_p(dropout_p, "lora_backward");
  require(ld_dout >= OC, "lora_backward", "dout's row stride must be at least OC");
  const bool dropout = dropout_p > 0.0f;
  require(!dropout || scratch != nullptr, "lora_backward", "dropout_p > 0 needs a scratch buffer [N, IC]");

  gemm(true, false, OC, R, N, scale, dout, ld_dout, xa, R, 1.0f, dB, R);
  std::vector<float> dxa((size_t)N * R);
  gemm(false, false, N, R, OC, scale, dout, ld_dout, B, R, 0.0f, dxa.data(), R);

  if (!dropout) {
    gemm(true, false, R, IC, N, 1.0f, dxa.data(), R, inp, IC, 1.0f, dA, IC);
    gemm(false, false, N, IC, R, 1.0f, dxa.data(), R, A, IC, 1.0f, dinp, IC);
    return;
  }
  // scratch first holds dxa A, whose masked value goes into dinp; the same sweep over the mask then
  // replaces it by the dropped input that dA needs, so Philox runs once per element in this backward.
  gemm(false, false, N, IC, R, 1.0f, dxa.data(), R, A, IC, 0.0f, scratch, IC);
  const float keep_scale = 1.0f / (1.0f - dropout_p);
  for_each_elementwise_keep(
      (long)N * IC, dropout_p, key, site,
      [&](long i, bool keep) {
        if (keep) {
          dinp[i] += scratch[i] * keep_scale;
          scratch[i] = inp[i] * keep_scale;
        } else {
          scratch[i] = 0.0f;
        }
      },
      [&](long i0, uint64_t bits) {
        accumulate_keep_bits64(dinp + i0, scratch + i0, bits, keep_scale);
        apply_keep_bits64(scratch + i0, inp + i0, bits, keep_scale);
      });
  gemm(true, false, R, IC, N, 1.0f, dxa.data(), R, scratch, IC, 1.0f, dA, IC);
}

void lora_merge(float* weight, const float* A, const float* B, float scale, float sign, int IC, int OC, int R) {
  gemm(false, false, OC, IC, R, sign * scale, B, R, A, IC, 1.0f, weight, IC);
}

void residual_forward(float* out, const float* a, const float* b, long n) {
#pragma omp parallel for simd
  for (long i = 0; i < n; ++i) out[i] = a[i] + b[i];
}

void crossentropy_forward(float* losses, const float* logits, const int* targets, int N, int V, int ignore_index) {
  for (int n = 0; n < N; ++n)
    require(targets[n] == ignore_index || (targets[n] >= 0 && targets[n] < V), "crossentropy_forward",
            "target " + std::to_string(targets[n]) + " of row " + std::to_string(n) + " is outside [0, " +
                std::to_string(V) + ")");
#pragma omp parallel for
  for (int n = 0; n < N; ++n) {
    if (targets[n] == ignore_index) {
      losses[n] = 0.0f;
      continue;
    }
    const float* l = logits + (long)n * V;
    const float mx = *std::max_element(l, l + V);
    double sum = 0.0;
    for (int c = 0; c < V; ++c) sum += std::exp(l[c] - mx);
    losses[n] = (float)(std::log(sum) + mx - l[targets[n]]);
  }
}

void crossentropy_softmax_backward(float* dlogits, const float* logits, const int* targets, float dloss, int N,
                                   int V, int ignore_index) {
  for (int n = 0; n < N; ++n)
    require(targets[n] == ignore_index || (targets[n] >= 0 && targets[n] < V), "crossentropy_softmax_backward",
            "target " + std::to_string(targets[n]) + " of row " + std::to_string(n) + " is outside [0, " +
                std::to_string(V) + ")");
#pragma omp parallel for
  for (int n = 0; n < N; ++n) {
    float* d = dlogits + (long)n * V;
    if (targets[n] == ignore_index) {
      std::fill(d, d + V, 0.0f);
      continue;
    }
    const float* l = logits + (long)n * V;
    const float mx = *std::max_element(l, l + V);
    double sum = 0.0;
    for (int c = 0; c < V; ++c) {
      d[c] = std::exp(l[c] - mx);  // the exponentials are kept in dlogits, normalised below
      sum += d[c];
    }
    const float inv_sum = (float)(1.0 / sum);
    for (int c = 0; c < V; ++c) d[c] = dloss * (d[c] * inv_sum - (c == targets[n] ? 1.0f : 0.0f));
  }
}

void residual_rmsnorm_forward(float* resid_out, float* norm_out, float* rstd, const float* a, const float* b,
                              const float* weight, int N, int C, float eps) {
  residual_forward(resid_out, a, b, (long)N * C);
  rmsnorm_forward(norm_out, rstd, resid_out, weight, N, C, eps);
}

void lm_head_crossentropy(float* losses, float* d_hidden, const float* hidden, const float* lm_head, const int* rows,
                          const int* targets, int M, int N, int C, int V, float dloss) {
  const LinearGemms fp32{
      [&](float* out, const float* x, int m) { matmul_forward(out, x, lm_head, nullptr, m, C, V); },
      [&](float* dx, const float* dy, int m) { matmul_backward_input(dx, dy, lm_head, m, C, V, false); },
      nullptr};  // the reference's cross-entropy
  lm_head_crossentropy(fp32, losses, d_hidden, hidden, rows, targets, M, N, C, V, dloss);
}

void lm_head_crossentropy(const LinearGemms& lm_head, float* losses, float* d_hidden, const float* hidden,
                          const int* rows, const int* targets, int M, int N, int C, int V, float dloss) {
  for (int k = 0; k < M; ++k)
    require(rows[k] >= 0 && rows[k] < N, "lm_head_crossentropy",
            "row " + std::to_string(rows[k]) + " is outside [0, " + std::to_string(N) + ")");
  // The reference composes the unfused ops on the gathered rows: [M, V] logits, never [N, V].
  std::vector<float> x((size_t)M * C), logits((size_t)M * V);
  for (int k = 0; k < M; ++k) std::copy(hidden + (long)rows[k] * C, hidden + (long)(rows[k] + 1) * C, x.data() + (long)k * C);
  lm_head.forward(logits.data(), x.data(), M);
  if (lm_head.crossentropy) {
    for (int k = 0; k < M; ++k)
      require(targets[k] >= 0 && targets[k] < V, "lm_head_crossentropy",
              "target " + std::to_string(targets[k]) + " of row " + std::to_string(k) + " is outside [0, " +
                  std::to_string(V) + ")");
    lm_head.crossentropy(losses, logits.data(), targets, dloss, M, V, d_hidden != nullptr);
  } else {
    crossentropy_forward(losses, logits.data(), targets, M, V, -1);
    if (d_hidden) crossentropy_softmax_backward(logits.data(), logits.data(), targets, dloss, M, V, -1);
  }
  if (!d_hidden) return;
  lm_head.backward_input(x.data(), logits.data(), M);
  std::fill(d_hidden, d_hidden + (long)N * C, 0.0f);
  for (int k = 0; k < M; ++k) std::copy(x.data() + (long)k * C, x.data() + (long)(k + 1) * C, d_hidden + (long)rows[k] * C);
}

void mean_loss(double* loss, const float* losses, int n, double normalizer) {
  require(n >= 0 && normalizer > 0, "mean_loss", "needs n >= 0 and normalizer > 0");
  double sum = 0.0;
  for (int i = 0; i < n; ++i) sum += losses[i];
  *loss = sum / normalizer;
}

void pool_forward(float* pooled, const float* hidden, const float* weights, int B, int T, int C) {
  require(B >= 0 && T > 0 && C > 0, "pool_forward", "B must be >= 0, T and C > 0");
#pragma omp parallel for
  for (int b = 0; b < B; ++b) {
    std::vector<double> acc(C, 0.0);
    for (int t = 0; t < T; ++t) {
      const long row = (long)b * T + t;
      const float w = weights[row];
      if (w == 0.0f) continue;
      const float* h = hidden + row * C;
      for (int c = 0; c < C; ++c) acc[c] += (double)w * h[c];
    }
    for (int c = 0; c < C; ++c) pooled[(long)b * C + c] = (float)acc[c];
  }
}

void pool_backward(float* d_hidden, const float* d_pooled, const float* weights, int B, int T, int C) {
  require(B >= 0 && T > 0 && C > 0, "pool_backward", "B must be >= 0, T and C > 0");
#pragma omp parallel for
  for (long row = 0; row < (long)B * T; ++row) {
    const float w = weights[row];
    const float* g = d_pooled + (row / T) * C;
    float* out = d_hidden + row * C;
    for (int c = 0; c < C; ++c) out[c] = w == 0.0f ? 0.0f : w * g[c];
  }
}

void contrastive_loss(double* loss, float* d_queries, float* d_positives, float* d_negatives, const float* queries,
                      const float* positives, const float* negatives, int n, int C, int ld, float scale,
                      bool in_batch_negatives) {
  require(n >= 1 && C >= 1 && ld >= C, "contrastive_loss", "needs n >= 1, C >= 1 and ld >= C");
  require(queries && positives, "contrastive_loss", "missing queries or positives");
  require(in_batch_negatives || negatives, "contrastive_loss",
          "without in-batch negatives a hard negative per query is required");
  const bool grads = d_queries != nullptr;
  require(!grads || (d_positives && (!negatives || d_negatives)), "contrastive_loss",
          "gradients need d_positives (and d_negatives with negatives)");
  const int D = negatives ? 2 * n : n;
  // Row r of [queries; documents]: r < n a query, then the D documents.
  auto row = [&](int r) { return r < n ? queries + (long)r * ld : r < 2 * n ? positives + (long)(r - n) * ld
                                                                            : negatives + (long)(r - 2 * n) * ld; };
  auto d_row = [&](int r) { return r < n ? d_queries + (long)r * ld : r < 2 * n ? d_positives + (long)(r - n) * ld
                                                                                : d_negatives + (long)(r - 2 * n) * ld; };
  const int R = n + D;
  std::vector<double> norm(R);
  bool valid = true;
  for (int r = 0; r < R; ++r) {
    double s = 0.0;
    for (int c = 0; c < C; ++c) s += (double)row(r)[c] * row(r)[c];
    norm[r] = std::sqrt(s);
    valid = valid && std::isfinite(s) && s > 0.0;
  }
  if (!valid) {
    *loss = NAN;
    if (grads)
      for (int r = 0; r < R; ++r) std::fill(d_row(r), d_row(r) + C, NAN);
    return;
  }
  auto u = [&](int r, int c) { return (double)row(r)[c] / norm[r]; };
  // The candidates of query i, in order, and the position of its target among them.
  const int K = in_batch_negatives ? D : 2;
  auto candidate = [&](int i, int k) { return in_batch_negatives ? k : (k == 0 ? i : n + i); };
  const int target_k = 0;
  // G[i, j] = dloss / ds[i, j] * scale (0 for documents that are not candidates of i).
  std::vector<double> G((size_t)n * D, 0.0), losses(n);
#pragma omp parallel for
  for (int i = 0; i < n; ++i) {
    std::vector<double> s(K);
    double mx = -INFINITY;
    for (int k = 0; k < K; ++k) {
      const int j = n + candidate(i, k);
      double dot = 0.0;
      for (int c = 0; c < C; ++c) dot += u(i, c) * u(j, c);
      s[k] = dot * scale;
      mx = std::max(mx, s[k]);
    }
    double z = 0.0;
    for (int k = 0; k < K; ++k) z += std::exp(s[k] - mx);
    const double lse = mx + std::log(z);
    const int t = in_batch_negatives ? i : target_k;
    losses[i] = lse - s[t];
    // d(loss_i)/d(s_k) = softmax_k - [k == t], each loss weighted 1/n; ds/dcos = scale.
    for (int k = 0; k < K; ++k) G[(size_t)i * D + candidate(i, k)] = (std::exp(s[k] - lse) - (k == t ? 1.0 : 0.0)) * scale / n;
  }
  double total = 0.0;
  for (int i = 0; i < n; ++i) total += losses[i];
  *loss = total / n;
  if (!grads) return;
  // g = dloss/du per row (queries: sum over documents j; documents: sum over queries i, in order), then
  // through u = x / |x|: dx = (g - (g.u) u) / |x|.
#pragma omp parallel for
  for (int r = 0; r < R; ++r) {
    std::vector<double> g(C, 0.0);
    for (int o = 0; o < (r < n ? D : n); ++o) {
      const double w = r < n ? G[(size_t)r * D + o] : G[(size_t)o * D + (r - n)];
      if (w == 0.0) continue;
      const int other = r < n ? n + o : o;
      for (int c = 0; c < C; ++c) g[c] += w * u(other, c);
    }
    double gu = 0.0;
    for (int c = 0; c < C; ++c) gu += g[c] * u(r, c);
    float* out = d_row(r);
    for (int c = 0; c < C; ++c) out[c] = (float)((g[c] - gu * u(r, c)) / norm[r]);
  }
}

// Mirrors torch.optim.AdamW's single-tensor path operation by operation. The hyper-parameters are Python
// floats (doubles) in torch: scalar expressions are evaluated in double and rounded to fp32 where torch
// hands them to an fp32 kernel.
void adamw_update(float* param, const float* grad, float* m, float* v, long n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, int step) {
  require(step >= 1, "adamw_update", "step counts from 1, got " + std::to_string(step));
  const float decay = (float)(1.0 - (double)lr * weight_decay);  // param.mul_(1 - lr*wd)
  const float w1 = (float)(1.0 - (double)beta1);                  // exp_avg.lerp_(grad, 1 - beta1)
  const float w2 = (float)(1.0 - (double)beta2);                  // exp_avg_sq.mul_(b2).addcmul_(g, g, 1 - b2)
  const double bias_correction1 = 1.0 - std::pow((double)beta1, step);
  const double bias_correction2 = 1.0 - std::pow((double)beta2, step);
  const float neg_step_size = (float)(-((double)lr / bias_correction1));
  const float bias_correction2_sqrt = (float)std::sqrt(bias_correction2);
  // torch's vectorised lerp is fma(w, end - start, start) for |w| < 0.5 and fma(w - 1, end - start, end)
  // otherwise (better accuracy near either end).
  const bool small_w1 = std::fabs(w1) < 0.5f;
  const float lerp_coef = small_w1 ? w1 : w1 - 1.0f;
#pragma omp parallel for
  for (long i = 0; i < n; ++i) {
    const float g = grad[i];
    const float p = param[i] * decay;
    const float mi = std::fma(lerp_coef, g - m[i], small_w1 ? m[i] : g);
    const float vi = v[i] * beta2 + w2 * g * g;
    const float denom = std::sqrt(vi) / bias_correction2_sqrt + eps;
    m[i] = mi;
    v[i] = vi;
    param[i] = p + neg_step_size * mi / denom;  // addcdiv_: self + (value * t1) / t2
  }
}

float adamw_step(const OptimizerTensor* tensors, int count, const AdamWStepArgs& args) {
  require(count >= 0, "adamw_step", "negative tensor count");
  // Sum of squares of the scaled gradients: pieces of kPiece values, each summed in index order, then
  // the pieces in order (the same tree for every thread count).
  constexpr long kPiece = 4096;
  double sum = 0.0;
  std::vector<double> pieces;
  for (int t = 0; t < count; ++t) {
    const OptimizerTensor& x = tensors[t];
    require(x.n >= 0, "adamw_step", "negative tensor size");
    const long np = (x.n + kPiece - 1) / kPiece;
    pieces.assign(np, 0.0);
#pragma omp parallel for
    for (long p = 0; p < np; ++p) {
      double part = 0.0;
      for (long i = p * kPiece; i < std::min(x.n, (p + 1) * kPiece); ++i) {
        const float g = x.grad[i] * args.grad_scale;
        part += (double)g * g;
      }
      pieces[p] = part;
    }
    for (double part : pieces) sum += part;
  }
  const float norm = (float)std::sqrt(sum);
  if (!std::isfinite(norm)) return norm;
  // torch.nn.utils.clip_grad_norm_: `max_norm / (total_norm + 1e-6)` on a tensor is evaluated as
  // reciprocal(total_norm + 1e-6) * max_norm in fp32, and clamp(max=1) makes coefficients >= 1 a no-op.
  const float coef = args.max_grad_norm > 0.0f ? (1.0f / (norm + 1e-6f)) * args.max_grad_norm : 1.0f;
  const bool clip = coef < 1.0f;
  for (int t = 0; t < count; ++t) {
    const OptimizerTensor& x = tensors[t];
#pragma omp parallel for
    for (long i = 0; i < x.n; ++i) {
      const float g = x.grad[i] * args.grad_scale;
      x.grad[i] = clip ? g * coef : g;
    }
    adamw_update(x.value, x.grad, x.m, x.v, x.n, args.lr, args.beta1, args.beta2, args.eps, args.weight_decay,
                 args.step);
  }
  return norm;
}

}  // namespace l2v::cpu
