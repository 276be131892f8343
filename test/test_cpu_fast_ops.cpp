// Tests of the vectorised exp of the CPU backend's bf16 mode (host/cpu_fast_ops.h) against double exp,
// and of the SwiGLU ops built on it against the fp32 reference ops (host/cpu_ops.h).
//
// Bounds. exp: the header's 2 units in the last place (ulp = 2^(e-23) for a result in [2^e, 2^(e+1)))
// for normal results; results below the normal range (x < -87.3) within 2 of the smallest subnormals
// (2^-149) absolutely; exactly 0 below -104 and for -inf, inf above 88.73. SwiGLU: the reference computes
// g / (1 + e) u with e within 0.5 ulp (the C library's expf; 1 ulp counted) and three roundings; the fast
// op the same with e within 2 ulp. 1 + e carries e's relative error times e / (1 + e) < 1, so each side is
// within (2 + 3 x 0.5) ulp = 3.5 ulp of exact, and they differ by at most 7 ulp of the result (2^-24
// relative per ulp of rounding, 2^-23 spacing: |a - b| <= 7 * 2^-23 |r|). The backward's dgate has six
// roundings after e on each side: 2 + 6 x 0.5 = 5 ulp each, 10 between them, plus the cancellation in
// 1 - sig, which the bound covers by measuring against the terms' magnitude (|d u sig| (1 + |g| (1 - sig))).
// A wrong polynomial coefficient, range reduction or tail mask is off by far more.
#include <gtest/gtest.h>

#include <cmath>
#include <limits>
#include <random>
#include <vector>

#include "host/cpu_fast_ops.h"
#include "host/cpu_ops.h"

namespace cpu = l2v::cpu;

namespace {

double ulp_of(double r) {  // fp32's spacing at |r| (normal range)
  int e = 0;
  std::frexp(r, &e);  // r = f 2^e, f in [0.5, 1)
  return std::ldexp(1.0, e - 24);
}

TEST(CpuFastOps, WithinTwoUlpOfDoubleExpOverTheRange) {
  std::vector<float> x;
  for (double v = -104.0; v <= 88.72; v += 0.0013) x.push_back((float)v);
  std::mt19937 rng(5);
  std::uniform_real_distribution<float> small(-0.4f, 0.4f);  // around 0: the polynomial alone
  for (int i = 0; i < 20000; ++i) x.push_back(small(rng));
  x.push_back(0.0f);
  x.push_back(-0.0f);
  std::vector<float> y = x;
  cpu::exp_inplace(y.data(), (long)y.size());
  double worst = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double exact = std::exp((double)x[i]);
    if (exact < std::ldexp(1.0, -126)) {
      ASSERT_LE(std::fabs(y[i] - exact), 2 * std::ldexp(1.0, -149)) << "x = " << x[i];
      continue;
    }
    const double err = std::fabs(y[i] - exact) / ulp_of(exact);
    worst = std::max(worst, err);
    ASSERT_LE(err, 2.0) << "x = " << x[i] << ": " << y[i] << " vs " << exact;
  }
  std::printf("exp: worst error %.3f ulp over %zu inputs\n", worst, x.size());
}

TEST(CpuFastOps, EdgesAndTails) {
  const float inf = std::numeric_limits<float>::infinity();
  std::vector<float> x = {inf, -inf, 89.0f, 88.8f, -104.5f, -200.0f, std::nanf(""), 0.0f, 1.0f};
  std::vector<float> y = x;
  cpu::exp_inplace(y.data(), (long)y.size());  // 9 elements: a masked tail only
  EXPECT_EQ(y[0], inf);
  EXPECT_EQ(y[1], 0.0f);
  EXPECT_EQ(y[2], inf);
  EXPECT_EQ(y[3], inf);
  EXPECT_EQ(y[4], 0.0f);
  EXPECT_EQ(y[5], 0.0f);
  EXPECT_TRUE(std::isnan(y[6]));
  EXPECT_EQ(y[7], 1.0f);
  EXPECT_NEAR(y[8], std::exp(1.0), 2 * ulp_of(std::exp(1.0)));
  // Every length up to 40 (whole vectors and tails) touches exactly its n elements.
  for (int n = 0; n <= 40; ++n) {
    std::vector<float> v(48, 0.5f);
    cpu::exp_inplace(v.data(), n);
    for (int i = 0; i < 48; ++i) ASSERT_EQ(v[i], i < n ? (float)std::exp(0.5f) : 0.5f) << "n " << n << " i " << i;
  }
}

// exp_shifted_sum: each element exp_inplace's exp of the fp32 difference (the same bits as subtracting, then
// exp_inplace), masked keys (-inf) exactly 0, exactly n elements written, and the sum within the bound of
// fp32 summation of n positive terms (gamma_n times the sum; n - 1 roundings, any order).
TEST(CpuFastOps, ExpShiftedSumIsExpOfTheDifferenceAndItsSum) {
  std::mt19937 rng(9);
  std::uniform_real_distribution<float> score(-30.0f, 5.0f);
  for (int n : {0, 1, 15, 16, 17, 100, 129}) {
    std::vector<float> x(n + 8, 7.0f);
    for (int i = 0; i < n; ++i) x[i] = i % 7 == 3 ? -std::numeric_limits<float>::infinity() : score(rng);
    const float shift = 4.75f;
    std::vector<float> want(x.begin(), x.begin() + n);
    for (float& v : want) v -= shift;
    cpu::exp_inplace(want.data(), n);
    const float sum = cpu::exp_shifted_sum(x.data(), n, shift);
    double exact = 0;
    for (int i = 0; i < n; ++i) {
      ASSERT_EQ(x[i], want[i]) << "n " << n << " i " << i;
      exact += x[i];
    }
    for (int i = n; i < n + 8; ++i) ASSERT_EQ(x[i], 7.0f) << "n " << n << ": element " << i << " written";
    const double u = std::ldexp(1.0, -24), gamma = n * u / (1 - n * u);
    EXPECT_LE(std::fabs(sum - exact), gamma * exact) << "n " << n;
  }
}

TEST(CpuFastOps, SwigluForwardAndBackwardFollowTheReference) {
  const long N = 100;
  const int F = 1003;  // rows of 62 whole lanes of 16 and a ragged tail; 100 rows over the threads
  std::mt19937 rng(9);
  std::normal_distribution<float> d(0.0f, 3.0f);
  std::vector<float> gu(N * 2 * F), dout(N * F);
  for (float& x : gu) x = d(rng);
  for (float& x : dout) x = d(rng);
  gu[0] = -95.0f;  // silu underflows to -0 * ... and the sigmoid to 0
  gu[1] = 95.0f;
  std::vector<float> ref(N * F), fast(N * F), dref(N * 2 * F), dfast(N * 2 * F);
  cpu::swiglu_forward(ref.data(), gu.data(), N, F);
  cpu::swiglu_forward_fast(fast.data(), gu.data(), N, F);
  cpu::swiglu_backward(dref.data(), dout.data(), gu.data(), N, F);
  cpu::swiglu_backward_fast(dfast.data(), dout.data(), gu.data(), N, F);
  const double spacing = std::ldexp(1.0, -23);
  for (long i = 0; i < N * F; ++i) {
    const long g_at = i / F * 2 * F + i % F, u_at = g_at + F;
    const float g = gu[g_at], u = gu[u_at];
    ASSERT_LE(std::fabs(fast[i] - ref[i]), 7 * spacing * std::fabs(ref[i]) + 1e-38) << "forward at " << i;
    ASSERT_LE(std::fabs(dfast[u_at] - dref[u_at]), 7 * spacing * std::fabs(dref[u_at]) + 1e-38) << "dup at " << i;
    const double sig = 1.0 / (1.0 + std::exp(-(double)g));
    const double magnitude = std::fabs((double)dout[i] * u * sig) * (1.0 + std::fabs(g) * (1.0 - sig));
    ASSERT_LE(std::fabs(dfast[g_at] - dref[g_at]), 10 * spacing * magnitude + 1e-38) << "dgate at " << i;
  }
}

// RMSNorm: both sum the row in double (another order: the double sums differ by far less than an fp32 ulp),
// then round once to fp32 and apply the same fp32 operations: rstd and every output within 1 ulp of the
// reference's (a dropped weight, a wrong mean or a lost tail lane is off by far more). The backward adds to
// dinp: checked from a non-zero start. C = 576 (whole vectors) and 45 (a tail).
TEST(CpuFastOps, RmsnormForwardAndBackwardFollowTheReference) {
  for (int C : {576, 45}) {
    const int N = 37;
    std::mt19937 rng(C);
    std::normal_distribution<float> d(0.0f, 2.0f);
    std::vector<float> x((size_t)N * C), w(C), dy((size_t)N * C), start((size_t)N * C);
    for (float& v : x) v = d(rng);
    for (float& v : w) v = 1.0f + 0.1f * d(rng);
    for (float& v : dy) v = d(rng);
    for (float& v : start) v = d(rng);
    std::vector<float> out_ref((size_t)N * C), out((size_t)N * C), r_ref(N), r(N), dx_ref = start, dx = start;
    cpu::rmsnorm_forward(out_ref.data(), r_ref.data(), x.data(), w.data(), N, C, 1e-5f);
    cpu::rmsnorm_forward_fast(out.data(), r.data(), x.data(), w.data(), N, C, 1e-5f);
    cpu::rmsnorm_backward(dx_ref.data(), dy.data(), x.data(), w.data(), r_ref.data(), N, C);
    cpu::rmsnorm_backward_fast(dx.data(), dy.data(), x.data(), w.data(), r_ref.data(), N, C);
    const double spacing = std::ldexp(1.0, -23);
    for (int n = 0; n < N; ++n) ASSERT_LE(std::fabs(r[n] - r_ref[n]), spacing * r_ref[n]) << "rstd " << n;
    for (size_t i = 0; i < out.size(); ++i) {
      ASSERT_LE(std::fabs(out[i] - out_ref[i]), 2 * spacing * std::fabs(out_ref[i]) + 1e-37) << "out " << i;
      // dx = start + r (w dy) - x coef: coef within 1 ulp, three roundings; bounded by its terms' sizes.
      const size_t c = i % C;
      const double terms = std::fabs(start[i]) + std::fabs((double)r_ref[i / C] * w[c] * dy[i]) +
                           std::fabs((double)x[i]) * std::fabs(dx_ref[i] - start[i] - (double)r_ref[i / C] * w[c] * dy[i]) +
                           std::fabs(dx_ref[i]);
      ASSERT_LE(std::fabs(dx[i] - dx_ref[i]), 2 * spacing * terms) << "dinp " << i;
    }
  }
}

// Cross-entropy (forward and gradient in one pass) against cpu::crossentropy_forward / softmax_backward.
// Loss: both sum exp(l - max) in double, the fast exps within 2 ulp and the reference's within 1 (the C
// library's): log(sum) differs by at most 3 * 2^-23, and each side rounds the loss once (2^-24 |loss|).
// Gradient: dloss * (e / sum - onehot): e within 3 ulp of each other, the quotient's and the subtraction's
// roundings on each side: 5 ulp (2^-23) of |e / sum| + |onehot|, times dloss. V = 1000 (a tail of 8 lanes),
// The fused residual + RMSNorm: the sum exactly the reference's (one rounding per element, every element
// including a tail's), the norm and rstd those of rmsnorm_forward_fast on that sum, to the bit.
TEST(CpuFastOps, ResidualRmsnormIsTheSumThenTheNorm) {
  for (int C : {576, 45}) {
    const int N = 37;
    std::mt19937 rng(C + 1);
    std::normal_distribution<float> d(0.0f, 2.0f);
    std::vector<float> a((size_t)N * C), b((size_t)N * C), w(C);
    for (float& v : a) v = d(rng);
    for (float& v : b) v = d(rng);
    for (float& v : w) v = 1.0f + 0.1f * d(rng);
    std::vector<float> sum_ref((size_t)N * C), norm_ref((size_t)N * C), r_ref(N);
    cpu::residual_forward(sum_ref.data(), a.data(), b.data(), (long)N * C);
    cpu::rmsnorm_forward_fast(norm_ref.data(), r_ref.data(), sum_ref.data(), w.data(), N, C, 1e-5f);
    std::vector<float> sum((size_t)N * C), norm((size_t)N * C), r(N);
    cpu::residual_rmsnorm_forward_fast(sum.data(), norm.data(), r.data(), a.data(), b.data(), w.data(), N, C, 1e-5f);
    for (size_t i = 0; i < sum.size(); ++i) {
      ASSERT_EQ(sum[i], sum_ref[i]) << "C " << C << " sum at " << i;
      ASSERT_EQ(norm[i], norm_ref[i]) << "C " << C << " norm at " << i;
    }
    for (int n = 0; n < N; ++n) ASSERT_EQ(r[n], r_ref[n]) << "C " << C << " rstd of row " << n;
  }
}

// targets in the first lane, the tail and the middle; logits spread to +-20 so the exps span many binades.
TEST(CpuFastOps, CrossEntropyFollowsTheReference) {
  const int M = 4, V = 1000;
  const int targets[M] = {0, 999, 512, 37};
  const float dloss = 0.25f;
  std::mt19937 rng(17);
  std::uniform_real_distribution<float> d(-20.0f, 20.0f);
  std::vector<float> logits((size_t)M * V);
  for (float& v : logits) v = d(rng);
  std::vector<float> ref_loss(M), loss(M), ref_grad = logits, grad = logits;
  cpu::crossentropy_forward(ref_loss.data(), logits.data(), targets, M, V, -1);
  cpu::crossentropy_softmax_backward(ref_grad.data(), logits.data(), targets, dloss, M, V, -1);
  cpu::crossentropy_fast(loss.data(), grad.data(), targets, dloss, M, V, true);
  const double spacing = std::ldexp(1.0, -23);
  for (int n = 0; n < M; ++n) {
    ASSERT_LE(std::fabs(loss[n] - ref_loss[n]), 3 * spacing + spacing * std::fabs(ref_loss[n])) << "loss " << n;
    for (int c = 0; c < V; ++c) {
      const size_t i = (size_t)n * V + c;
      const double hot = c == targets[n] ? 1.0 : 0.0;
      const double p = ref_grad[i] / dloss + hot;  // the reference's softmax value
      ASSERT_LE(std::fabs(grad[i] - ref_grad[i]), 5 * spacing * dloss * (std::fabs(p) + hot) + 1e-45)
          << "row " << n << " column " << c;
    }
  }
  // Without the backward the logits stay the exponentials' row, and the losses are the same.
  std::vector<float> again = logits, loss2(M);
  cpu::crossentropy_fast(loss2.data(), again.data(), targets, dloss, M, V, false);
  EXPECT_EQ(loss2, loss);
}

}  // namespace
