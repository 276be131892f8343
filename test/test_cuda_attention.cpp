// Tests of the flash-attention kernels (cuda/attention.cuh), run on the CUDA-on-CPU emulator and compared
// with the fp32 CPU reference l2v::cpu::attention_forward / attention_backward on the same inputs: ragged
// lengths (T = 1, 5, 33, 37, 40, 70 against 32- and 64-row tiles), right-, left- and all-padding rows and
// padding holes, GQA ratios 1, 2, 4 and 8, batch 1, causal and bidirectional, every compiled head dim,
// and attention dropout, whose mask must be the CPU's exactly for the outputs to agree to fp32 precision.
//
// Tolerances are derived per element from the arithmetic, as in test/test_cuda_gemm.cpp. Both sides compute
// the same function of the same values: bf16 runs round q, k, v and dout to bf16 first and give the
// reference those, and the reference backward reads the out (as stored in T) and lse of the kernel
// forward, which the kernel backward reads. The kernels widen T exactly on load and compute in fp32 like
// the reference; they round to T only where they store out, dq, dk and dv (Chunk<T>::store; lse and the
// D_i scratch are fp32). Hence, per element (CloseStored, test/cuda_test_util.h):
//   |got - ref| <= f32 + u_T (|ref| + f32),   u_T = 2^-8 for bf16 (round to nearest), 0 for fp32,
// with f32 the bound on the difference of the two fp32 computations, from u = 2^-24 and
// gamma_n = n u / (1 - n u) (n roundings; a sum of n products, in any order, is within gamma_n of the
// sum of |terms|). For a query row i (batch b, head h) and its visible keys j (not padding; j <= i if
// causal), with scale = 1/sqrt(D) and G = H/KV query heads per kv head:
//   A_ij = scale |q_i|.|k_j| >= |score_ij|,  M_i = max_j A_ij,  P_ij the exact softmax,
//   kappa_ij = 1/(1-p) where dropout keeps P_ij, 0 where it drops it (1 without dropout).
// Forward. Either side's exponent of P_ij (natural units) is off by at most
//   delta_i = gamma_{D+5} M_i + 2u M_i + 4u:
// the fp32 dot product (gamma_D A_ij), the scale (rounded 1/sqrt(D) and log2(e), and the product:
// gamma_5), subtracting the running max (u |s - m| <= 2u M_i) and exp2f (2 ulp: 4u). The softmax
// normalises, so P_ij is then off by expm1(2 delta_i) relative; the fp32 sum of the denominator, the
// online softmax's rescales (at most one per key tile, so per key), 1/l and the products add gamma_{4T+8}.
//   f32(out_id) = 2 (expm1(2 delta_i) + gamma_{4T+8}) sum_j kappa_ij P_ij |v_jd|        (2: both sides)
//   f32(lse_i)  = 2 (delta_i + gamma_{2T+6} + u (7 |lse_i| + 4 M_i))
// (lse = m + log l: the exponents and the sum as above, log2f's 2 ulp of |log2 l| with
// |log l| <= |lse| + M_i, the addition and the product by ln 2.)
// Backward, reading lse L_i: P_ij = exp(score_ij - L_i) is not normalised, so it is off by
//   delta'_i = gamma_{D+6} M_i + 3u |L_i| + 4u
// relative (the same chain, L_i * log2(e) and its subtraction in place of the running max). dP_ij =
// kappa_ij dout_i.v_j is off by gamma_{D+1} kappa_ij G_ij, G_ij = |dout_i|.|v_j|, and D_i = dout_i.out_i by
// gamma_D E_i, E_i = |dout_i|.|out_i|. With Z_ij = kappa_ij G_ij + E_i >= |dP_ij - D_i|, dS_ij =
// P_ij (dP_ij - D_i) is off by omega_i P_ij Z_ij, omega_i = delta'_i + gamma_{D+3} (the subtraction and
// the product), and
//   f32(dq_id) = 2 sum_j     (omega_i + gamma_{T+4})  scale P_ij Z_ij |k_jd|
//   f32(dk_jd) = 2 sum_{h,i} (omega_i + gamma_{GT+4}) scale P_ij Z_ij |q_id|
//   f32(dv_jd) = 2 sum_{h,i} (delta'_i + gamma_{GT+2}) kappa_ij P_ij |dout_id|
// (the fp32 sums over the T keys or the G*T query rows, the scale and dropout products). The bounds are
// first order in u: the neglected products of two roundoffs are below 1e-3 of them. The same sums
// without the factors, sum |terms|, are the `mag` that the recorded relative error divides by.
// lse must be -inf exactly where the reference's is; rows without a visible key are compared exactly
// (out 0, lse -inf, no gradient). The worst errors seen, as |got - ref| / mag and as a fraction of the
// tolerance, are printed at the end.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

#include "cuda/attention.cuh"
#include "cuda/launch.h"
#include "host/cpu_ops.h"
#include "host/philox.h"
#include "test/attention_test_util.h"
#include "test/cuda_test_util.h"
#include "test/test_util.h"

namespace {

#if defined(L2V_EMULATE)
namespace emu = l2v::emu;
#endif

using l2v::test::CloseStored, l2v::test::Dev, l2v::test::gamma32, l2v::test::kU32, l2v::test::Prec,
    l2v::test::Raw, l2v::test::rounded;

enum class Padding {
  kNone,
  // Batch row b % 4: 0 right-padded (the last third), 1 left-padded (the first third), 2 all padding,
  // 3 random holes (a quarter of the tokens).
  kMixed,
};

struct Shape {
  int B, T, H, KV, D;
  bool causal;
  float dropout_p;
  Padding padding;
};

std::string describe(const Shape& s) {
  char buf[160];
  std::snprintf(buf, sizeof buf, "B=%d T=%d H=%d KV=%d D=%d %s p=%.2f %s", s.B, s.T, s.H, s.KV, s.D,
                s.causal ? "causal" : "bidirectional", s.dropout_p,
                s.padding == Padding::kNone ? "no padding" : "mixed padding");
  return buf;
}

std::vector<int> make_mask(const Shape& s) {
  std::vector<int> mask((size_t)s.B * s.T, 1);
  if (s.padding == Padding::kNone) return mask;
  std::mt19937 rng(99);
  for (int b = 0; b < s.B; ++b) {
    int* m = mask.data() + (size_t)b * s.T;
    const int third = s.T / 3;
    switch (b % 4) {
      case 0: std::fill(m + s.T - third, m + s.T, 0); break;
      case 1: std::fill(m, m + third, 0); break;
      case 2: std::fill(m, m + s.T, 0); break;
      default:
        for (int t = 0; t < s.T; ++t) m[t] = rng() % 4 != 0;
        break;
    }
  }
  return mask;
}

using Inputs = l2v::test::AttentionInputs;
using Results = l2v::test::AttentionResults;

// A non-zero offset (DropoutKey: these rows as rows 5/H.. of a larger batch, as a data-parallel rank
// sees them): a kernel that ignored it would draw other masks than the reference.
const l2v::DropoutKey kSeed{0x5EEDull, 5};
constexpr uint32_t kSite = 7;

l2v::test::AttentionDims dims(const Shape& s) { return {s.B, s.T, s.H, s.KV, s.D, s.causal, s.dropout_p}; }

template <typename T>
Inputs make_inputs(const Shape& s, uint32_t seed) {
  return l2v::test::random_attention_inputs<T>(dims(s), make_mask(s), seed);
}

Results run_cpu(const Shape& s, const Inputs& in, const std::vector<float>& out, const std::vector<float>& lse) {
  return l2v::test::cpu_attention(dims(s), in, out, lse, kSeed, kSite);
}

// The SIMT forward, then the SIMT backward on the forward's own out and lse (as in training).
template <typename T>
Results run_cuda(const Shape& s, const Inputs& in, l2v::test::QkvLayout layout = l2v::test::QkvLayout::kPacked) {
  return l2v::test::run_attention_kernels<T>(dims(s), in, l2v::cuda::attention_forward_cuda<T>,
                                             l2v::cuda::attention_backward_cuda<T>, kSeed, kSite, layout);
}

// Per element of a result: the sum of |terms| behind it (mag) and the bound on |kernel - reference| of the
// fp32 arithmetic of both (f32), before the kernel rounds the result to T.
struct Bound {
  std::vector<double> mag, f32;
  explicit Bound(size_t n) : mag(n, 0.0), f32(n, 0.0) {}
  void add(size_t e, double term, double factor) {
    mag[e] += term;
    f32[e] += factor * term;
  }
};

struct Bounds {
  Bound out, lse, dq, dk, dv;
};

// The bounds derived at the top of the file, for one shape and its inputs; out and lse are those the
// backward reads. Double precision, from the definitions (exact scores and softmax, the dropout mask).
Bounds derive_bounds(const Shape& s, const Inputs& in, const std::vector<float>& out, const std::vector<float>& lse) {
  const double u = kU32;
  const int T = s.T, D = s.D, G = s.H / s.KV;
  const size_t q_stride = (size_t)s.H * D, kv_stride = (size_t)s.KV * D, N = (size_t)s.B * T;
  const double scale = 1.0 / std::sqrt((double)D);
  const double keep_scale = s.dropout_p > 0.0f ? 1.0 / (1.0 - s.dropout_p) : 1.0;
  Bounds bd{Bound(N * q_stride), Bound((size_t)s.B * s.H * T), Bound(N * q_stride), Bound(N * kv_stride),
            Bound(N * kv_stride)};
  std::vector<size_t> key_off;  // the visible keys of a row: offset in k / v, score, A, kappa
  std::vector<double> score, A, kappa;
  for (int b = 0; b < s.B; ++b) {
    for (int h = 0; h < s.H; ++h) {
      const uint32_t bh = (uint32_t)(b * s.H + h);
      for (int i = 0; i < T; ++i) {
        const size_t row = (size_t)bh * T + i, qo = ((size_t)b * T + i) * q_stride + (size_t)h * D;
        key_off.clear(), score.clear(), A.clear(), kappa.clear();
        double M = 0.0, smax = -INFINITY;
        for (int j = 0; j < T; ++j) {
          if (in.mask[(size_t)b * T + j] == 0 || (s.causal && j > i)) continue;
          const size_t ko = ((size_t)b * T + j) * kv_stride + (size_t)(h / G) * D;
          double dot = 0.0, abs_dot = 0.0;
          for (int d = 0; d < D; ++d) {
            const double x = (double)in.q[qo + d] * in.k[ko + d];
            dot += x;
            abs_dot += std::fabs(x);
          }
          key_off.push_back(ko);
          score.push_back(scale * dot);
          A.push_back(scale * abs_dot);
          const bool kept = s.dropout_p == 0.0f ||
                            l2v::dropout_keep_attention(kSeed.seed, kSite, (uint32_t)kSeed.offset + bh, (uint32_t)i, (uint32_t)j, s.dropout_p);
          kappa.push_back(kept ? keep_scale : 0.0);
          M = std::max(M, A.back());
          smax = std::max(smax, score.back());
        }
        if (key_off.empty()) continue;  // no visible key: exact on both sides
        const size_t n_keys = key_off.size();

        // Forward.
        double l = 0.0;
        for (double sc : score) l += std::exp(sc - smax);
        const double lse_exact = smax + std::log(l);
        const double delta = gamma32(D + 5) * M + 2 * u * M + 4 * u;
        const double f_out = 2 * (std::expm1(2 * delta) + gamma32(4.0 * T + 8));
        for (size_t n = 0; n < n_keys; ++n) {
          const double P = kappa[n] * std::exp(score[n] - lse_exact);
          for (int d = 0; d < D; ++d) bd.out.add(qo + d, P * std::fabs(in.v[key_off[n] + d]), f_out);
        }
        bd.lse.mag[row] = std::fabs(lse_exact);
        bd.lse.f32[row] = 2 * (delta + gamma32(2.0 * T + 6) + u * (7 * std::fabs(lse_exact) + 4 * M));

        // Backward. An infinite lse here fails the lse comparison already.
        const double L = lse[row];
        if (std::isinf(L)) continue;
        const double delta_b = gamma32(D + 6) * M + 3 * u * std::fabs(L) + 4 * u;
        const double omega = delta_b + gamma32(D + 3);
        const double f_dq = 2 * (omega + gamma32(T + 4)), f_dk = 2 * (omega + gamma32((double)G * T + 4)),
                     f_dv = 2 * (delta_b + gamma32((double)G * T + 2));
        double E = 0.0;
        for (int d = 0; d < D; ++d) E += std::fabs((double)in.dout[qo + d] * out[qo + d]);
        for (size_t n = 0; n < n_keys; ++n) {
          const size_t ko = key_off[n];
          const double P = std::exp(score[n] - L);
          double G_ij = 0.0;
          for (int d = 0; d < D; ++d) G_ij += std::fabs((double)in.dout[qo + d] * in.v[ko + d]);
          const double PZ = P * (kappa[n] * G_ij + E);
          for (int d = 0; d < D; ++d) {
            bd.dq.add(qo + d, scale * PZ * std::fabs(in.k[ko + d]), f_dq);
            bd.dk.add(ko + d, scale * PZ * std::fabs(in.q[qo + d]), f_dk);
            bd.dv.add(ko + d, kappa[n] * P * std::fabs(in.dout[qo + d]), f_dv);
          }
        }
      }
    }
  }
  return bd;
}

// The worst errors per family ("attention dq bf16"), printed when the tests end.
const auto* const kWorstReport = ::testing::AddGlobalTestEnvironment(
    new l2v::test::WorstReport("|got - ref| / mag, fraction of the tolerance, |got - ref|",
                               [](const std::string& family, const l2v::test::Worst& w) {
                                 std::printf("  %-24s %10.3e  %6.3f  %10.3e\n", family.c_str(), w.rel, w.of_tol,
                                             w.abs);
                               }));

template <typename T>
void check_against_cpu(const Shape& s) {
  const Inputs in = make_inputs<T>(s, 1234u + s.T * 31u + s.D);
  const Results got = run_cuda<T>(s, in);
  const Results want = run_cpu(s, in, got.out, got.lse);
  const Bounds bd = derive_bounds(s, in, got.out, got.lse);
  auto family = [](const char* tensor) { return std::string("attention ") + tensor + " " + Prec<T>::name; };
  // lse is fp32. Where both are -inf (no visible key, bound 0) they compare as 0; -inf on one side only fails.
  std::vector<float> got_lse = got.lse, want_lse = want.lse;
  for (size_t r = 0; r < want_lse.size(); ++r) {
    if (want_lse[r] == -INFINITY && got_lse[r] == -INFINITY) got_lse[r] = want_lse[r] = 0.0f;
  }
  EXPECT_TRUE(CloseStored<float>(family("lse"), got_lse, want_lse, bd.lse.mag, bd.lse.f32)) << describe(s);
  EXPECT_TRUE(CloseStored<T>(family("out"), got.out, want.out, bd.out.mag, bd.out.f32)) << describe(s);
  EXPECT_TRUE(CloseStored<T>(family("dq"), got.dq, want.dq, bd.dq.mag, bd.dq.f32)) << describe(s);
  EXPECT_TRUE(CloseStored<T>(family("dk"), got.dk, want.dk, bd.dk.mag, bd.dk.f32)) << describe(s);
  EXPECT_TRUE(CloseStored<T>(family("dv"), got.dv, want.dv, bd.dv.mag, bd.dv.f32)) << describe(s);
}

// Every edge the kernels have: tiles of 32 and 64 rows cut at T = 1, 5, 33, 37, 40, 70.
std::vector<Shape> fp32_shapes() {
  return {
      {1, 1, 1, 1, 8, false, 0.0f, Padding::kNone},
      {1, 1, 4, 1, 8, true, 0.3f, Padding::kNone},
      {1, 5, 8, 1, 8, true, 0.0f, Padding::kNone},
      {4, 70, 4, 2, 8, true, 0.3f, Padding::kMixed},
      {4, 33, 4, 4, 16, false, 0.0f, Padding::kMixed},
      {4, 33, 4, 1, 16, true, 0.0f, Padding::kMixed},
      {4, 70, 8, 1, 16, false, 0.3f, Padding::kMixed},
      {1, 70, 2, 2, 16, true, 0.3f, Padding::kNone},
      {3, 37, 4, 1, 64, true, 0.0f, Padding::kMixed},
      {2, 70, 2, 2, 64, false, 0.3f, Padding::kMixed},
      {3, 40, 2, 2, 128, false, 0.0f, Padding::kMixed},
      {1, 33, 8, 1, 128, true, 0.3f, Padding::kNone},
  };
}

std::vector<Shape> bf16_shapes() {
  return {
      {4, 70, 4, 2, 8, true, 0.3f, Padding::kMixed},
      {4, 33, 4, 1, 16, false, 0.0f, Padding::kMixed},
      {3, 40, 4, 1, 64, true, 0.3f, Padding::kMixed},
      {2, 33, 2, 2, 128, false, 0.0f, Padding::kMixed},
  };
}

TEST(CudaAttention, Keep4IsDropoutKeepAttention) {
  std::mt19937_64 rng(5);
  for (int n = 0; n < 20000; ++n) {
    const uint64_t seed = rng();
    const uint32_t site = (uint32_t)rng(), bh = (uint32_t)rng() % 4096, i = (uint32_t)rng() % 100000,
                   j4 = (uint32_t)rng() % 100000;
    const float p = (float)(rng() % 1000) / 1000.0f;
    const unsigned bits = l2v::cuda::attention_keep4(seed, site, bh, i, j4, p);
    for (uint32_t e = 0; e < 4; ++e) {
      ASSERT_EQ((bits >> e & 1u) != 0, l2v::dropout_keep_attention(seed, site, bh, i, 4 * j4 + e, p))
          << "n=" << n << " e=" << e;
    }
  }
}

TEST(CudaAttention, Fp32MatchesCpuReference) {
  for (const Shape& s : fp32_shapes()) check_against_cpu<float>(s);
}

TEST(CudaAttention, Bf16MatchesCpuReferenceOnRoundedInputs) {
  for (const Shape& s : bf16_shapes()) check_against_cpu<__nv_bfloat16>(s);
}

#if defined(L2V_EMULATE)  // the emulator's scheduling orders
// A missing __syncthreads() or __syncwarp() shows as results that depend on the order in which the
// emulator runs a block's threads; without atomics the results must not change at all.
TEST(CudaAttention, BitwiseIdenticalInEveryScheduleOrder) {
  const Shape s{4, 40, 4, 2, 16, true, 0.3f, Padding::kMixed};
  const Inputs in = make_inputs<float>(s, 77);
  const emu::Schedule saved = emu::current_schedule();
  std::vector<Results> runs;
  for (const emu::Schedule order : {emu::Schedule{emu::Order::kForward, 0}, emu::Schedule{emu::Order::kReverse, 0},
                                    emu::Schedule{emu::Order::kShuffle, 1}, emu::Schedule{emu::Order::kShuffle, 2}}) {
    emu::set_schedule(order);
    runs.push_back(run_cuda<float>(s, in));
  }
  emu::set_schedule(saved);
  auto same_bits = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  for (size_t r = 1; r < runs.size(); ++r) {
    EXPECT_TRUE(same_bits(runs[r].out, runs[0].out)) << "order " << r;
    EXPECT_TRUE(same_bits(runs[r].lse, runs[0].lse)) << "order " << r;
    EXPECT_TRUE(same_bits(runs[r].dq, runs[0].dq)) << "order " << r;
    EXPECT_TRUE(same_bits(runs[r].dk, runs[0].dk)) << "order " << r;
    EXPECT_TRUE(same_bits(runs[r].dv, runs[0].dv)) << "order " << r;
  }
}
#endif

// q, k, v and their gradients as column blocks of the fused q|k|v product's rows (the model's layout): the
// packed layout's bits, and the spare columns beside the blocks neither read nor written
// (test/attention_test_util.h). A kernel that took H*D for q's stride, or q's for out's, fails it.
template <typename T>
void check_fused_layout(const Shape& s) {
  const Inputs in = make_inputs<T>(s, 21);
  const Results packed = run_cuda<T>(s, in), fused = run_cuda<T>(s, in, l2v::test::QkvLayout::kFused);
  EXPECT_EQ(fused.out, packed.out) << describe(s);
  EXPECT_EQ(fused.lse, packed.lse) << describe(s);
  EXPECT_EQ(fused.dq, packed.dq) << describe(s);
  EXPECT_EQ(fused.dk, packed.dk) << describe(s);
  EXPECT_EQ(fused.dv, packed.dv) << describe(s);
}

TEST(CudaAttention, FusedQkvRowsGiveThePackedBits) {
  check_fused_layout<float>({3, 37, 4, 2, 16, true, 0.3f, Padding::kMixed});
  check_fused_layout<__nv_bfloat16>({2, 33, 2, 1, 64, false, 0.0f, Padding::kMixed});
}

// Rows with no visible key: out 0, lse -inf, and zero gradients for them and for padding keys.
TEST(CudaAttention, AllPaddingRowsGiveZeroOutputAndGradients) {
  const Shape s{3, 33, 2, 1, 16, false, 0.0f, Padding::kMixed};  // batch row 2 is all padding
  const Inputs in = make_inputs<float>(s, 3);
  const Results r = run_cuda<float>(s, in);
  const size_t row = (size_t)s.T * s.H * s.D;  // one batch row of out / dq
  for (size_t i = 2 * row; i < 3 * row; ++i) {
    ASSERT_EQ(r.out[i], 0.0f);
    ASSERT_EQ(r.dq[i], 0.0f);
  }
  for (size_t i = (size_t)2 * s.T * s.KV * s.D; i < r.dk.size(); ++i) {
    ASSERT_EQ(r.dk[i], 0.0f);
    ASSERT_EQ(r.dv[i], 0.0f);
  }
  for (size_t i = (size_t)2 * s.H * s.T; i < r.lse.size(); ++i) ASSERT_EQ(r.lse[i], -INFINITY);
}

TEST(CudaAttention, RejectsUnsupportedArguments) {
  Dev<float> x(4 * 32 * 128), lse(4 * 32), scratch(4 * 32);
  auto forward = [&](int H, int KV, int D, float p) {
    l2v::cuda::attention_forward_cuda<float>(x.ptr, lse.ptr, x.ptr, x.ptr, x.ptr, l2v::packed_qkv(H, KV, D), nullptr,
                                             1, 4, H, KV, D, false, p, 0, 0, nullptr);
  };
  using l2v::test::error_of;
  const std::string d32 = error_of([&] { forward(1, 1, 32, 0.0f); });
  EXPECT_NE(d32.find("head dim D=32 is not supported"), std::string::npos) << d32;
  EXPECT_NE(error_of([&] { forward(3, 2, 16, 0.0f); }).find("multiple of KV"), std::string::npos);
  EXPECT_NE(error_of([&] { forward(1, 1, 16, 1.0f); }).find("dropout probability"), std::string::npos);
  // Row strides below the heads' width, or that misalign rows for the 16-byte vectors.
  auto strided = [&](l2v::QkvStrides ld) {
    l2v::cuda::attention_forward_cuda<float>(x.ptr, lse.ptr, x.ptr, x.ptr, x.ptr, ld, nullptr, 1, 4, 2, 1, 16, false,
                                             0.0f, 0, 0, nullptr);
  };
  EXPECT_NE(error_of([&] { strided({31, 16}); }).find("row strides"), std::string::npos);
  EXPECT_NE(error_of([&] { strided({32, 15}); }).find("row strides"), std::string::npos);
  EXPECT_NE(error_of([&] { strided({34, 16}); }).find("multiples of 16 bytes"), std::string::npos);
  const std::string bwd = error_of([&] {
    l2v::cuda::attention_backward_cuda<float>(x.ptr, x.ptr, x.ptr, x.ptr, x.ptr, lse.ptr, x.ptr, x.ptr, x.ptr,
                                              l2v::packed_qkv(1, 1, 96), nullptr, 1, 4, 1, 1, 96, false, 0.0f, 0, 0,
                                              scratch.ptr, nullptr);
  });
  EXPECT_NE(bwd.find("attention_backward_cuda: head dim D=96"), std::string::npos) << bwd;
  EXPECT_NE(error_of([&] {
              l2v::cuda::attention_backward_cuda<float>(x.ptr, x.ptr, x.ptr, x.ptr, x.ptr, lse.ptr, x.ptr, x.ptr,
                                                        x.ptr, l2v::packed_qkv(1, 1, 16), nullptr, 1, 4, 1, 1, 16,
                                                        false, 0.0f, 0, 0, nullptr, nullptr);
            }).find("scratch"),
            std::string::npos);
}

}  // namespace
