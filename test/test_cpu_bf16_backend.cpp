// The CPU backend with --precision bf16 (host/cpu_backend.h): its base-weight GEMMs against double-precision
// references written here, and the packed-weight cache against every way the backend can change a weight.
//
// Bounds (see host/cpu_gemm_bf16.h). A GEMM rounds its two inputs to bf16 (unit roundoff 2^-8) and sums the
// K exact products in fp32: with a', w' the rounded inputs, |out - sum a'w'| <= gamma_K sum |a'w'|; a bias
// or an accumulated value c adds one fp32 rounding: gamma_{K+1} (sum |a'w'| + |c|). A bias dropped, the
// wrong packing (W instead of W^T), a stale packed weight or a missing accumulation are O(|a||w|) off.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <memory>
#include <random>
#include <vector>

#include "host/cpu_backend.h"
#include "host/cpu_gemm_bf16.h"
#include "model/backend.h"
#include "test/test_util.h"

namespace l2v {
namespace {

using test::gamma32;
using test::randn;

constexpr double kU = 1.0 / 16777216.0;  // fp32 unit roundoff

float bf(float x) { return cpu::float_from_bf16(cpu::bf16_from_float(x)); }

// A backend tensor holding `values`.
Tensor upload(Backend& be, const std::vector<float>& values) {
  Tensor t = static_cast<Tensor>(be.alloc(values.size() * sizeof(float)));
  be.upload_tensor(t, values.data(), values.size());
  return t;
}

std::vector<float> download(Backend& be, ConstTensor t, size_t n) {
  std::vector<float> v(n);
  be.download_tensor(v.data(), t, n);
  return v;
}

TEST(CpuBf16Backend, MatmulForwardWithBiasWithinTheBound) {
  const int N = 37, IC = 70, OC = 45;
  std::mt19937 rng(1);
  const std::vector<float> x = randn((size_t)N * IC, rng), W = randn((size_t)OC * IC, rng), b = randn(OC, rng);
  std::unique_ptr<Backend> be = make_cpu_backend(CpuPrecision::kBf16);
  Tensor tx = upload(*be, x), tw = upload(*be, W), tb = upload(*be, b), out = upload(*be, std::vector<float>(N * OC));
  be->matmul_forward(out, tx, tw, tb, N, IC, OC);
  const std::vector<float> got = download(*be, out, (size_t)N * OC);
  for (int n = 0; n < N; ++n)
    for (int o = 0; o < OC; ++o) {
      double s = b[o], mag = std::fabs(b[o]);
      for (int k = 0; k < IC; ++k) {
        s += (double)bf(x[(size_t)n * IC + k]) * bf(W[(size_t)o * IC + k]);
        mag += std::fabs((double)bf(x[(size_t)n * IC + k]) * bf(W[(size_t)o * IC + k]));
      }
      ASSERT_LE(std::fabs(got[(size_t)n * OC + o] - s), gamma32(IC + 1) * mag) << "(" << n << ", " << o << ")";
    }
  // The fp32 backend's answer differs by the bf16 roundings, not by O(1): the two backends compute one op.
  std::unique_ptr<Backend> fp32 = make_cpu_backend();
  Tensor fx = upload(*fp32, x), fw = upload(*fp32, W), fb = upload(*fp32, b), fo = upload(*fp32, std::vector<float>(N * OC));
  fp32->matmul_forward(fo, fx, fw, fb, N, IC, OC);
  const std::vector<float> ref = download(*fp32, fo, (size_t)N * OC);
  size_t differ = 0;
  for (size_t i = 0; i < ref.size(); ++i) differ += ref[i] != got[i];
  EXPECT_GT(differ, ref.size() / 2) << "bf16 mode computed in fp32";
}

TEST(CpuBf16Backend, MatmulBackwardInputOverwritesAndAccumulates) {
  const int N = 33, IC = 50, OC = 64;
  std::mt19937 rng(2);
  const std::vector<float> dy = randn((size_t)N * OC, rng), W = randn((size_t)OC * IC, rng), c0 = randn((size_t)N * IC, rng);
  std::unique_ptr<Backend> be = make_cpu_backend(CpuPrecision::kBf16);
  Tensor tdy = upload(*be, dy), tw = upload(*be, W), dx = upload(*be, c0);
  for (bool accumulate : {true, false}) {
    be->upload_tensor(dx, c0.data(), c0.size());
    be->matmul_backward_input(dx, tdy, tw, N, IC, OC, accumulate);
    const std::vector<float> got = download(*be, dx, (size_t)N * IC);
    for (int n = 0; n < N; ++n)
      for (int i = 0; i < IC; ++i) {
        const double old = accumulate ? c0[(size_t)n * IC + i] : 0.0;
        double s = old, mag = std::fabs(old);
        for (int o = 0; o < OC; ++o) {
          s += (double)bf(dy[(size_t)n * OC + o]) * bf(W[(size_t)o * IC + i]);
          mag += std::fabs((double)bf(dy[(size_t)n * OC + o]) * bf(W[(size_t)o * IC + i]));
        }
        ASSERT_LE(std::fabs(got[(size_t)n * IC + i] - s), gamma32(OC + 1) * mag)
            << "accumulate " << accumulate << " (" << n << ", " << i << ")";
      }
  }
}

// The MNTP head through bf16 GEMMs. Logit v of row k is within eps_v = gamma_C sum_c |x'w'| of the double
// logit of the rounded inputs; log-sum-exp moves by at most max eps and the target logit by eps_t, so
// |loss - ref| <= 2 max_v eps_v, plus the fp32 cross-entropy's own roundings (a few u of |max logit| and
// |loss|). The gradient row dloss (p - onehot) W' (W' = bf16(W), as the reference uses): p_v moves by at
// most p_v (e^{2 max eps} - 1); the GEMM rounds g = p - onehot to bf16 (2^-8 relative) and sums V products
// in fp32 (gamma_V); fp32 softmax adds a few u of |g_v|; |W'| <= 1.01 |W|.
TEST(CpuBf16Backend, LmHeadCrossEntropyWithinTheBound) {
  const int N = 12, C = 40, V = 96, M = 5;
  const int rows[M] = {0, 3, 4, 9, 11}, targets[M] = {5, 0, 95, 17, 5};
  const float dloss = 0.2f;
  std::mt19937 rng(3);
  const std::vector<float> h = randn((size_t)N * C, rng), W = randn((size_t)V * C, rng, 0.3f);
  std::unique_ptr<Backend> be = make_cpu_backend(CpuPrecision::kBf16);
  Tensor th = upload(*be, h), tw = upload(*be, W), dh = upload(*be, std::vector<float>((size_t)N * C, 7.0f));
  std::vector<float> losses(M);
  be->lm_head_crossentropy(losses.data(), dh, th, tw, rows, targets, M, N, C, V, dloss);
  const std::vector<float> dgot = download(*be, dh, (size_t)N * C);
  for (int k = 0; k < M; ++k) {
    const int r = rows[k];
    std::vector<double> logit(V), eps(V);
    double mx = -1e300, max_eps = 0;
    for (int v = 0; v < V; ++v) {
      double s = 0, mag = 0;
      for (int c = 0; c < C; ++c) {
        s += (double)bf(h[(size_t)r * C + c]) * bf(W[(size_t)v * C + c]);
        mag += std::fabs((double)bf(h[(size_t)r * C + c]) * bf(W[(size_t)v * C + c]));
      }
      logit[v] = s;
      eps[v] = gamma32(C) * mag;
      mx = std::max(mx, s);
      max_eps = std::max(max_eps, eps[v]);
    }
    double z = 0;
    for (int v = 0; v < V; ++v) z += std::exp(logit[v] - mx);
    const double loss = std::log(z) + mx - logit[targets[k]];
    EXPECT_LE(std::fabs(losses[k] - loss), 2 * max_eps + 4 * kU * (std::fabs(mx) + std::fabs(loss))) << "row " << r;
    for (int c = 0; c < C; ++c) {
      double d = 0, tol = 0;
      for (int v = 0; v < V; ++v) {
        const double p = std::exp(logit[v] - mx) / z, g = p - (v == targets[k]);
        const double w = std::fabs((double)W[(size_t)v * C + c]);
        d += g * bf(W[(size_t)v * C + c]);
        tol += (p * std::expm1(2 * max_eps) + (1.0 / 256 + 4 * kU) * std::fabs(g)) * w * 1.01 +
               gamma32(V) * std::fabs(g) * w * 1.01;
      }
      ASSERT_LE(std::fabs(dgot[(size_t)r * C + c] - dloss * d), dloss * tol) << "row " << r << " col " << c;
    }
  }
  for (int r = 0; r < N; ++r) {
    bool labelled = false;
    for (int k = 0; k < M; ++k) labelled |= rows[k] == r;
    if (labelled) continue;
    for (int c = 0; c < C; ++c) ASSERT_EQ(dgot[(size_t)r * C + c], 0.0f) << "unlabelled row " << r;
  }
}

// The packed copy of a weight follows every write the backend makes to it: the GEMM after the write equals
// the GEMM of a fresh backend holding the written values, bit for bit (same values, same packing, same sums).
TEST(CpuBf16Backend, PackedWeightsFollowEveryWrite) {
  const int N = 8, IC = 32, OC = 32, R = 4;
  std::mt19937 rng(4);
  const std::vector<float> x = randn((size_t)N * IC, rng), W1 = randn((size_t)OC * IC, rng),
                           W2 = randn((size_t)OC * IC, rng), A = randn((size_t)R * IC, rng), B = randn((size_t)OC * R, rng);
  auto fresh = [&](const std::vector<float>& W) {
    std::unique_ptr<Backend> be = make_cpu_backend(CpuPrecision::kBf16);
    Tensor tx = upload(*be, x), tw = upload(*be, W), out = upload(*be, std::vector<float>((size_t)N * OC));
    be->matmul_forward(out, tx, tw, nullptr, N, IC, OC);
    return download(*be, out, (size_t)N * OC);
  };
  std::unique_ptr<Backend> be = make_cpu_backend(CpuPrecision::kBf16);
  Tensor tx = upload(*be, x), tw = upload(*be, W1), out = upload(*be, std::vector<float>((size_t)N * OC));
  auto run = [&] {
    be->matmul_forward(out, tx, tw, nullptr, N, IC, OC);
    return download(*be, out, (size_t)N * OC);
  };
  EXPECT_EQ(run(), fresh(W1));
  be->upload_tensor(tw, W2.data(), W2.size());
  EXPECT_EQ(run(), fresh(W2)) << "upload_tensor";
  Tensor other = upload(*be, W1);
  be->copy(tw, other, W1.size() * sizeof(float));
  EXPECT_EQ(run(), fresh(W1)) << "copy";
  be->upload(tw, W2.data(), W2.size() * sizeof(float));
  EXPECT_EQ(run(), fresh(W2)) << "upload";
  // lora_merge: W2 + scale B A.
  std::vector<float> merged = W2;
  be->lora_merge(tw, A.data(), B.data(), 0.5f, 1.0f, IC, OC, R);
  be->download_tensor(merged.data(), tw, merged.size());
  EXPECT_NE(merged, W2);
  EXPECT_EQ(run(), fresh(merged)) << "lora_merge";
  be->zero(tw, W1.size() * sizeof(float));
  EXPECT_EQ(run(), std::vector<float>((size_t)N * OC, 0.0f)) << "zero";
}

// Packed bytes count in the backend's memory while their weight lives, and leave with it.
TEST(CpuBf16Backend, PackedBytesAreAccountedAndReleasedWithTheWeight) {
  const int N = 4, IC = 64, OC = 96;
  std::mt19937 rng(5);
  std::unique_ptr<Backend> be = make_cpu_backend(CpuPrecision::kBf16);
  Tensor tx = upload(*be, randn((size_t)N * IC, rng)), dy = upload(*be, randn((size_t)N * OC, rng)),
         out = upload(*be, std::vector<float>((size_t)N * OC)), dx = upload(*be, std::vector<float>((size_t)N * IC));
  const size_t before = cpu_backend_memory(*be).current;
  Tensor tw = upload(*be, randn((size_t)OC * IC, rng));
  const size_t with_weight = cpu_backend_memory(*be).current;
  be->matmul_forward(out, tx, tw, nullptr, N, IC, OC);
  const size_t tile_bytes = (size_t)IC * OC * 2;  // bf16, IC and OC multiples of 32: no padding
  EXPECT_EQ(cpu_backend_memory(*be).current, with_weight + tile_bytes);
  be->matmul_backward_input(dx, dy, tw, N, IC, OC, false);
  EXPECT_EQ(cpu_backend_memory(*be).current, with_weight + 2 * tile_bytes);
  be->release(tw);
  EXPECT_EQ(cpu_backend_memory(*be).current, before);
  // The fp32 backend packs nothing.
  std::unique_ptr<Backend> fp32 = make_cpu_backend();
  Tensor fx = upload(*fp32, randn((size_t)N * IC, rng)), fo = upload(*fp32, std::vector<float>((size_t)N * OC));
  Tensor fw = upload(*fp32, randn((size_t)OC * IC, rng));
  const size_t fp32_before = cpu_backend_memory(*fp32).current;
  fp32->matmul_forward(fo, fx, fw, nullptr, N, IC, OC);
  EXPECT_EQ(cpu_backend_memory(*fp32).current, fp32_before);
}

}  // namespace
}  // namespace l2v
