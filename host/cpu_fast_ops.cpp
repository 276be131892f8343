#include "host/cpu_fast_ops.h"

#include <immintrin.h>

// GCC 12 warns that the unmasked AVX-512 intrinsics' internal _mm512_undefined_ps() "may be used
// uninitialized" (its own header's pass-through operand, not this file's): a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"  // the same, in _mm512_reduce_add_pd's _mm512_extractf64x4_pd

#include <cmath>
#include <vector>

#include "host/cpu_ops.h"

namespace l2v::cpu {
namespace {

bool avx512_available() {
  static const bool ok = __builtin_cpu_supports("avx512f");
  return ok;
}

// The contract of host/cpu_fast_ops.h on 16 lanes.
__attribute__((target("avx512f"))) inline __m512 exp16(__m512 x) {
  // Clamp first (a NaN passes: max/min return their second operand when either is NaN).
  x = _mm512_max_ps(_mm512_set1_ps(-110.0f), x);
  x = _mm512_min_ps(_mm512_set1_ps(89.0f), x);
  const __m512 n = _mm512_roundscale_ps(_mm512_mul_ps(x, _mm512_set1_ps(1.44269504088896341f)),
                                        _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
  __m512 r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693145751953125f), x);  // ln2's first 16 bits: n * it is exact
  r = _mm512_fnmadd_ps(n, _mm512_set1_ps(1.428606765330187e-06f), r);
  __m512 p = _mm512_set1_ps(1.0f / 5040.0f);
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 720.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 120.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 24.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f / 6.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(0.5f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(1.0f));
  __m512 y = _mm512_scalef_ps(p, n);
  // Below -104 the result is 0 exactly (scalef would round some inputs to the smallest subnormals).
  y = _mm512_mask_mov_ps(y, _mm512_cmp_ps_mask(x, _mm512_set1_ps(-104.0f), _CMP_LT_OQ), _mm512_setzero_ps());
  return y;
}

__attribute__((target("avx512f"))) void exp_avx512(float* x, long n) {
  long i = 0;
  for (; i + 16 <= n; i += 16) _mm512_storeu_ps(x + i, exp16(_mm512_loadu_ps(x + i)));
  if (i < n) {
    const __mmask16 m = lanes_below(n - i);
    _mm512_mask_storeu_ps(x + i, m, exp16(_mm512_maskz_loadu_ps(m, x + i)));
  }
}

__attribute__((target("avx512f"))) float exp_shifted_sum_avx512(float* x, long n, float shift) {
  const __m512 s = _mm512_set1_ps(shift);
  __m512 sum = _mm512_setzero_ps();
  for (long i = 0; i < n; i += 16) {
    const __mmask16 m = lanes_below(n - i);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(m, x + i), s));
    _mm512_mask_storeu_ps(x + i, m, e);
    sum = _mm512_add_ps(sum, _mm512_maskz_mov_ps(m, e));
  }
  return _mm512_reduce_add_ps(sum);
}

// cpu::swiglu_forward, 16 lanes at a time (the tail's lanes masked).
__attribute__((target("avx512f"))) void swiglu_forward_avx512(float* out, const float* gate, const float* up, long n) {
  for (long i = 0; i < n; i += 16) {
    const __mmask16 m = lanes_below(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i);
    const __m512 e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), g));
    const __m512 silu = _mm512_div_ps(g, _mm512_add_ps(_mm512_set1_ps(1.0f), e));
    _mm512_mask_storeu_ps(out + i, m, _mm512_mul_ps(silu, _mm512_maskz_loadu_ps(m, up + i)));
  }
}

__attribute__((target("avx512f"))) void swiglu_backward_avx512(float* dgate, float* dup, const float* dout,
                                                               const float* gate, const float* up, long n) {
  const __m512 one = _mm512_set1_ps(1.0f);
  for (long i = 0; i < n; i += 16) {
    const __mmask16 m = lanes_below(n - i);
    const __m512 g = _mm512_maskz_loadu_ps(m, gate + i), u = _mm512_maskz_loadu_ps(m, up + i);
    const __m512 d = _mm512_maskz_loadu_ps(m, dout + i);
    const __m512 one_plus_e = _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), g)));
    const __m512 sig = _mm512_div_ps(one, one_plus_e);
    // cpu::swiglu_backward's order of operations.
    const __m512 dg = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(d, u), sig),
                                    _mm512_add_ps(one, _mm512_mul_ps(g, _mm512_sub_ps(one, sig))));
    _mm512_mask_storeu_ps(dgate + i, m, dg);
    _mm512_mask_storeu_ps(dup + i, m, _mm512_mul_ps(d, _mm512_div_ps(g, one_plus_e)));
  }
}

// Lanes 0-7 / 8-15 of v widened to double.
__attribute__((target("avx512f"))) inline __m512d low_pd(__m512 v) { return _mm512_cvtps_pd(_mm512_castps512_ps256(v)); }
__attribute__((target("avx512f"))) inline __m512d high_pd(__m512 v) {
  return _mm512_cvtps_pd(_mm512_castps512_ps256(_mm512_shuffle_f32x4(v, v, 0xEE)));
}

// The sum over c of (double)x[c] * y[c] (y == nullptr: x[c] squared), eight doubles per lane group.
__attribute__((target("avx512f"))) double dot_double(const float* x, const float* y, int C) {
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  for (int c = 0; c < C; c += 16) {
    const __mmask16 m = lanes_below(C - c);
    const __m512 xv = _mm512_maskz_loadu_ps(m, x + c), yv = y ? _mm512_maskz_loadu_ps(m, y + c) : xv;
    lo = _mm512_fmadd_pd(low_pd(xv), low_pd(yv), lo);
    hi = _mm512_fmadd_pd(high_pd(xv), high_pd(yv), hi);
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

__attribute__((target("avx512f"))) void rmsnorm_forward_row(float* o, float* rstd, const float* x, const float* w,
                                                            int C, float eps) {
  const float r = 1.0f / std::sqrt((float)(dot_double(x, nullptr, C) / C) + eps);
  *rstd = r;
  const __m512 rv = _mm512_set1_ps(r);
  for (int c = 0; c < C; c += 16) {  // weight * (x * rstd), as LlamaRMSNorm
    const __mmask16 m = lanes_below(C - c);
    _mm512_mask_storeu_ps(o + c, m,
                          _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + c), _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + c), rv)));
  }
}

// out = a + b over one row (the reference's one rounding per element).
__attribute__((target("avx512f"))) void residual_row_avx512(float* out, const float* a, const float* b, int C) {
  for (int c = 0; c < C; c += 16) {
    const __mmask16 m = lanes_below(C - c);
    _mm512_mask_storeu_ps(out + c, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, a + c), _mm512_maskz_loadu_ps(m, b + c)));
  }
}

// wdy: C floats of scratch for the row's w * dy.
__attribute__((target("avx512f"))) void rmsnorm_backward_row(float* dx, const float* dy, const float* x, const float* w,
                                                             float r, int C, float* wdy) {
  for (int c = 0; c < C; c += 16) {
    const __mmask16 m = lanes_below(C - c);
    _mm512_mask_storeu_ps(wdy + c, m, _mm512_mul_ps(_mm512_maskz_loadu_ps(m, w + c), _mm512_maskz_loadu_ps(m, dy + c)));
  }
  // The reference's acc = sum (w dy) x in double, w dy rounded to fp32 first; dx += r (w dy) - x coef.
  const float coef = r * r * r * (float)(dot_double(wdy, x, C) / C);
  const __m512 rv = _mm512_set1_ps(r), cv = _mm512_set1_ps(coef);
  for (int c = 0; c < C; c += 16) {
    const __mmask16 m = lanes_below(C - c);
    const __m512 t = _mm512_sub_ps(_mm512_mul_ps(rv, _mm512_maskz_loadu_ps(m, wdy + c)),
                                   _mm512_mul_ps(_mm512_maskz_loadu_ps(m, x + c), cv));
    _mm512_mask_storeu_ps(dx + c, m, _mm512_add_ps(_mm512_maskz_loadu_ps(m, dx + c), t));
  }
}

__attribute__((target("avx512f"))) float max_row(const float* x, int n) {
  __m512 m = _mm512_set1_ps(-INFINITY);
  for (int c = 0; c < n; c += 16) {
    const __mmask16 k = lanes_below(n - c);
    m = _mm512_max_ps(m, _mm512_mask_loadu_ps(_mm512_set1_ps(-INFINITY), k, x + c));
  }
  return _mm512_reduce_max_ps(m);
}

__attribute__((target("avx512f"))) double sum_double(const float* x, int n) {
  __m512d lo = _mm512_setzero_pd(), hi = _mm512_setzero_pd();
  for (int c = 0; c < n; c += 16) {
    const __mmask16 k = lanes_below(n - c);
    const __m512 v = _mm512_maskz_loadu_ps(k, x + c);
    lo = _mm512_add_pd(lo, low_pd(v));
    hi = _mm512_add_pd(hi, high_pd(v));
  }
  return _mm512_reduce_add_pd(_mm512_add_pd(lo, hi));
}

// d = dloss * (d * inv_sum - onehot(target)) over one row.
__attribute__((target("avx512f"))) void softmax_grad_row(float* d, int V, float inv_sum, float dloss, int target) {
  const __m512 s = _mm512_set1_ps(inv_sum), g = _mm512_set1_ps(dloss);
  for (int c = 0; c < V; c += 16) {
    const __mmask16 k = lanes_below(V - c);
    const __mmask16 hot = target >= c && target < c + 16 ? (__mmask16)(1u << (target - c)) : (__mmask16)0;
    const __m512 p = _mm512_mul_ps(_mm512_maskz_loadu_ps(k, d + c), s);
    _mm512_mask_storeu_ps(d + c, k, _mm512_mul_ps(g, _mm512_mask_sub_ps(p, hot, p, _mm512_set1_ps(1.0f))));
  }
}

}  // namespace

void crossentropy_fast(float* losses, float* logits, const int* targets, float dloss, int M, int V, bool backward) {
  if (!avx512_available()) {
    crossentropy_forward(losses, logits, targets, M, V, -1);
    if (backward) crossentropy_softmax_backward(logits, logits, targets, dloss, M, V, -1);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int n = 0; n < M; ++n) {
    float* l = logits + (long)n * V;
    const float mx = max_row(l, V), target = l[targets[n]];
    // The row now holds the exponentials (normalised below for the gradient); their sum is taken again in
    // double, as the reference's.
    exp_shifted_sum_avx512(l, V, mx);
    const double sum = sum_double(l, V);
    losses[n] = (float)(std::log(sum) + mx - target);
    if (backward) softmax_grad_row(l, V, (float)(1.0 / sum), dloss, targets[n]);
  }
}

void rmsnorm_forward_fast(float* out, float* rstd, const float* inp, const float* weight, int N, int C, float eps) {
  if (!avx512_available() || C <= 0) return rmsnorm_forward(out, rstd, inp, weight, N, C, eps);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) rmsnorm_forward_row(out + (long)n * C, rstd + n, inp + (long)n * C, weight, C, eps);
}

void residual_rmsnorm_forward_fast(float* resid_out, float* norm_out, float* rstd, const float* a, const float* b,
                                   const float* weight, int N, int C, float eps) {
  if (!avx512_available() || C <= 0) return residual_rmsnorm_forward(resid_out, norm_out, rstd, a, b, weight, N, C, eps);
#pragma omp parallel for schedule(static)
  for (int n = 0; n < N; ++n) {
    const long at = (long)n * C;
    residual_row_avx512(resid_out + at, a + at, b + at, C);
    rmsnorm_forward_row(norm_out + at, rstd + n, resid_out + at, weight, C, eps);  // the row still in L1
  }
}

void rmsnorm_backward_fast(float* dinp, const float* dout, const float* inp, const float* weight, const float* rstd,
                           int N, int C) {
  if (!avx512_available() || C <= 0) return rmsnorm_backward(dinp, dout, inp, weight, rstd, N, C);
#pragma omp parallel
  {
    std::vector<float> wdy((size_t)C);
#pragma omp for schedule(static)
    for (int n = 0; n < N; ++n)
      rmsnorm_backward_row(dinp + (long)n * C, dout + (long)n * C, inp + (long)n * C, weight, rstd[n], C, wdy.data());
  }
}

void exp_inplace(float* x, long n) {
  if (avx512_available()) return exp_avx512(x, n);
  for (long i = 0; i < n; ++i) x[i] = std::exp(x[i]);
}

float exp_shifted_sum(float* x, long n, float shift) {
  if (avx512_available()) return exp_shifted_sum_avx512(x, n, shift);
  float sum = 0.0f;
  for (long i = 0; i < n; ++i) sum += x[i] = std::exp(x[i] - shift);
  return sum;
}

// One row per task: gate, up and the outputs are contiguous within a row.
void swiglu_forward_fast(float* out, const float* gate_up, long N, int F) {
  if (!avx512_available()) return swiglu_forward(out, gate_up, N, F);
#pragma omp parallel for schedule(static) if (N * F > 16384)
  for (long n = 0; n < N; ++n) {
    const float* g = gate_up + n * 2 * F;
    swiglu_forward_avx512(out + n * F, g, g + F, F);
  }
}

void swiglu_backward_fast(float* d_gate_up, const float* dout, const float* gate_up, long N, int F) {
  if (!avx512_available()) return swiglu_backward(d_gate_up, dout, gate_up, N, F);
#pragma omp parallel for schedule(static) if (N * F > 16384)
  for (long n = 0; n < N; ++n) {
    const float* g = gate_up + n * 2 * F;
    float* d = d_gate_up + n * 2 * F;
    swiglu_backward_avx512(d, d + F, dout + n * F, g, g + F, F);
  }
}

}  // namespace l2v::cpu
