// Element-wise and row ops of the CPU backend's --precision bf16 on AVX-512 lanes: a vectorised exp, the
// SiLU-gated SwiGLU (forward and backward) built on it, and RMSNorm (forward and backward). The fp32
// reference mode keeps host/cpu_ops.h's scalar loops (the C library's expf, sums in one order), whose bits
// the tests and fixtures rely on. Every function falls back to those reference ops without AVX-512F.
//
// Numerics. exp(x) = 2^n exp(r) with n = round(x log2 e) and r = x - n ln2 (Cody-Waite: ln2 split in two,
// the first part exact in few bits, so r carries no cancellation error beyond one rounding), |r| <= ln2/2;
// exp(r) by its Taylor polynomial of degree 7 (truncation r^8/8! < 5.4e-9, under a tenth of fp32's unit
// roundoff) in Horner form with FMAs; 2^n applied by VSCALEFPS (exact, with IEEE overflow to inf and
// underflow through the subnormals to 0). Measured against double exp over [-104, 88.7] and at the edges
// (test_cpu_fast_ops): at most 2 units in the last place — 2^-23 relative, against bf16's 2^-8. Inputs
// beyond the range: exp(+inf) = inf, exp(x > 88.73) = inf, exp(-inf) = 0, exp(x < -104) = 0 (not the
// smallest subnormals: attention's masked keys must weigh exactly 0), NaN stays NaN.
//
// Cross-entropy: the reference's formulas (loss = log(sum exp(l - max)) + max - l[target], the gradient
// dloss (softmax - onehot)) with exp_inplace's exp: the loss within 3 2^-23 of the reference's plus its
// rounding, each gradient within 5 ulp of its terms (test_cpu_fast_ops).
//
// RMSNorm: cpu::rmsnorm_forward / rmsnorm_backward's formulas with their row sums in double as there, eight
// lanes at a time (another order of the same double additions: rstd and the outputs within 1 ulp of the
// reference's, test_cpu_fast_ops).
#pragma once
#include <immintrin.h>

namespace l2v::cpu {

// The AVX-512 lane mask of the first n of 16 lanes (all for n >= 16, none for n <= 0): a row's tail.
inline __mmask16 lanes_below(long n) {
  return n >= 16 ? (__mmask16)0xFFFF : n <= 0 ? (__mmask16)0 : (__mmask16)((1u << n) - 1);
}

// x[i] = exp(x[i]) for i in [0, n).
void exp_inplace(float* x, long n);
// x[i] = exp(x[i] - shift) for i in [0, n) (the difference rounded to fp32 first, as a subtraction before
// exp_inplace would); returns their sum (fp32 additions in an unspecified order). Softmax's exponentials and
// their sum in one pass.
float exp_shifted_sum(float* x, long n, float shift);
// out [N, F] = silu(gate) * up, silu(g) = g / (1 + exp(-g)), from gate_up [N, 2F] (cpu::swiglu_forward with
// exp_inplace's exp).
void swiglu_forward_fast(float* out, const float* gate_up, long N, int F);
// cpu::swiglu_backward with exp_inplace's exp.
void swiglu_backward_fast(float* d_gate_up, const float* dout, const float* gate_up, long N, int F);
// cpu::crossentropy_forward into losses [M] and, when backward is true, cpu::crossentropy_softmax_backward
// in place of logits [M, V] (the exponentials computed once, with exp_inplace's exp; the row sums in double
// as there). No ignored rows: every target must be in [0, V) (checked by the caller).
void crossentropy_fast(float* losses, float* logits, const int* targets, float dloss, int M, int V, bool backward);
// cpu::rmsnorm_forward / rmsnorm_backward (dinp +=) on AVX-512 lanes.
void rmsnorm_forward_fast(float* out, float* rstd, const float* inp, const float* weight, int N, int C, float eps);
void rmsnorm_backward_fast(float* dinp, const float* dout, const float* inp, const float* weight, const float* rstd,
                           int N, int C);
// cpu::residual_rmsnorm_forward row by row: each row's sum, then its norm while the row is in L1 (one pass
// over memory instead of two; the same bits as residual_forward followed by rmsnorm_forward_fast).
void residual_rmsnorm_forward_fast(float* resid_out, float* norm_out, float* rstd, const float* a, const float* b,
                                   const float* weight, int N, int C, float eps);

}  // namespace l2v::cpu
