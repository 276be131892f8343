// GELU in its exact erf form (torch.nn.functional.gelu's default, NV-Embed's GEGLU) and its derivative,
// evaluated in double and rounded once to fp32: one definition for the host reference
// (model/latent_attention.cpp) and the CUDA kernels (cuda/latent_attention.cuh), so both round the same
// function (up to the platforms' erf / exp, each within 2 ulp of double).
#pragma once
#include <cmath>

#include "host/hd.h"

namespace l2v {

L2V_HD float gelu_erf(float x) {
  constexpr double kInvSqrt2 = 0.70710678118654752440;
  return (float)(0.5 * x * (1.0 + ::erf(x * kInvSqrt2)));
}

L2V_HD float gelu_erf_grad(float x) {
  constexpr double kInvSqrt2 = 0.70710678118654752440, kInvSqrt2Pi = 0.39894228040143267794;
  return (float)(0.5 * (1.0 + ::erf(x * kInvSqrt2)) + x * kInvSqrt2Pi * ::exp(-0.5 * (double)x * x));
}

}  // namespace l2v
