// A vectorised exp for the CPU backend's --precision bf16, and the element-wise ops of that mode built on
// it (SiLU-gated SwiGLU, forward and backward). The fp32 reference mode keeps the C library's expf
// (host/cpu_ops.h), whose bits the tests and fixtures rely on.
//
// Numerics. exp(x) = 2^n exp(r) with n = round(x log2 e) and r = x - n ln2 (Cody-Waite: ln2 split in two,
// the first part exact in few bits, so r carries no cancellation error beyond one rounding), |r| <= ln2/2;
// exp(r) by its Taylor polynomial of degree 7 (truncation r^8/8! < 5.4e-9, under a tenth of fp32's unit
// roundoff) in Horner form with FMAs; 2^n applied by VSCALEFPS (exact, with IEEE overflow to inf and
// underflow through the subnormals to 0). Measured against double exp over [-104, 88.7] and at the edges
// (test_cpu_fast_exp): at most 2 units in the last place — 2^-23 relative, against bf16's 2^-8. Inputs
// beyond the range: exp(+inf) = inf, exp(x > 88.73) = inf, exp(-inf) = 0, exp(x < -104) = 0 (not the
// smallest subnormals: attention's masked keys must weigh exactly 0), NaN stays NaN. Without AVX-512F
// (checked once) every function falls back to std::exp, element by element.
#pragma once

namespace l2v::cpu {

// x[i] = exp(x[i]) for i in [0, n).
void exp_inplace(float* x, long n);
// out = silu(gate) * up, silu(g) = g / (1 + exp(-g)) (cpu::swiglu_forward with exp_inplace's exp).
void swiglu_forward_fast(float* out, const float* gate, const float* up, long n);
// cpu::swiglu_backward with exp_inplace's exp.
void swiglu_backward_fast(float* dgate, float* dup, const float* dout, const float* gate, const float* up, long n);

}  // namespace l2v::cpu
