// Tests of the CPU backend's bf16 GEMMs (host/cpu_gemm_bf16.h), both kernels, against double-precision
// references written here.
//
// Bounds. The kernels round A and B to bf16 (unit roundoff 2^-8), multiply exactly in fp32 and add the K
// products one after another in fp32 (unit roundoff u = 2^-24). So, with a', b' the rounded inputs:
//   |C - sum_k a'_k b'_k| <= gamma_K sum_k |a'_k b'_k|, gamma_K = K u / (1 - K u)   (sequential summation),
// and against the fp32 inputs |a'b' - ab| <= (2 * 2^-8 + 2^-16) |ab| more. Accumulating into C adds one
// rounding of |C_old + s|. A packing or indexing mistake (a swapped k pair, a tile offset, a missed padding
// zero) moves outputs by O(|a||b|), thousands of times these bounds.
#include <gtest/gtest.h>
#include <omp.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <limits>
#include <random>
#include <vector>

#include "host/cpu_gemm_bf16.h"
#include "test/test_util.h"

namespace cpu = l2v::cpu;
using l2v::test::gamma32;
using l2v::test::randn;

namespace {

std::vector<float> rounded(const std::vector<float>& x) {
  std::vector<float> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = cpu::float_from_bf16(cpu::bf16_from_float(x[i]));
  return r;
}

struct Case {
  int M, K, N;
};
// Multiples of the 32 x 32 blocks and every kind of ragged edge (M, K and N each not a multiple of 32 or 2);
// 300 rows are 10 row blocks: two whole chunks of four that sweep B's panels together, and a partial one.
const Case kCases[] = {{1, 1, 1}, {37, 45, 50}, {64, 576, 192}, {3, 101, 33}, {96, 64, 17}, {300, 64, 70}};

// C = A W^T (W [N, K]) through the forward packing; checks it against double sums of the rounded inputs
// (bound gamma_K) and of the fp32 inputs (plus the input roundings).
void check_case(const Case& cs, cpu::Bf16Kernel kernel) {
  std::mt19937 rng(cs.M * 1000 + cs.K * 10 + cs.N);
  const std::vector<float> A = randn((size_t)cs.M * cs.K, rng), W = randn((size_t)cs.N * cs.K, rng);
  const std::vector<float> Ar = rounded(A), Wr = rounded(W);
  const cpu::PackedBf16 B = cpu::pack_bf16_transposed(W.data(), cs.N, cs.K);
  std::vector<float> C((size_t)cs.M * cs.N, std::nanf(""));
  cpu::gemm_bf16(C.data(), cs.N, A.data(), cs.K, cs.M, B, false, kernel);
  const double input_rounding = 2.0 / 256 + 1.0 / 65536;
  for (int m = 0; m < cs.M; ++m)
    for (int n = 0; n < cs.N; ++n) {
      double exact_rounded = 0, exact = 0, magnitude = 0;
      for (int k = 0; k < cs.K; ++k) {
        exact_rounded += (double)Ar[(size_t)m * cs.K + k] * Wr[(size_t)n * cs.K + k];
        exact += (double)A[(size_t)m * cs.K + k] * W[(size_t)n * cs.K + k];
        magnitude += std::fabs((double)A[(size_t)m * cs.K + k] * W[(size_t)n * cs.K + k]);
      }
      const double got = C[(size_t)m * cs.N + n];
      // magnitude is of the fp32 products; the rounded ones are at most (1 + input_rounding) times larger.
      const double sum_bound = gamma32(cs.K) * magnitude * (1 + input_rounding);
      ASSERT_LE(std::fabs(got - exact_rounded), sum_bound)
          << "M K N " << cs.M << " " << cs.K << " " << cs.N << " at (" << m << ", " << n << ")";
      ASSERT_LE(std::fabs(got - exact), sum_bound + input_rounding * magnitude) << "at (" << m << ", " << n << ")";
    }
}

TEST(CpuGemmBf16, RoundsToNearestEven) {
  EXPECT_EQ(cpu::bf16_from_float(1.0f), 0x3f80);
  EXPECT_EQ(cpu::bf16_from_float(-0.0f), 0x8000);
  // bf16 spacing at 1 is 2^-7: 1 + 2^-8 is a tie and goes to the even 1.0, 1 + 3 * 2^-8 to the even 1 + 2^-6.
  EXPECT_EQ(cpu::bf16_from_float(1.0f + 0x1p-8f), 0x3f80);
  EXPECT_EQ(cpu::bf16_from_float(1.0f + 3 * 0x1p-8f), 0x3f82);
  EXPECT_EQ(cpu::bf16_from_float(1.0f + 0x1p-8f + 0x1p-20f), 0x3f81);  // above the tie: up
  EXPECT_EQ(cpu::bf16_from_float(std::numeric_limits<float>::max()), 0x7f80);  // overflows to inf
  EXPECT_EQ(cpu::bf16_from_float(std::numeric_limits<float>::infinity()), 0x7f80);
  EXPECT_TRUE(std::isnan(cpu::float_from_bf16(cpu::bf16_from_float(std::nanf("")))));
  EXPECT_EQ(cpu::float_from_bf16(0x3f82), 1.0f + 0x1p-6f);
}

TEST(CpuGemmBf16, PortableKernelWithinTheSummationBound) {
  for (const Case& cs : kCases) check_case(cs, cpu::Bf16Kernel::portable);
}

TEST(CpuGemmBf16, AmxKernelWithinTheSummationBound) {
  if (!cpu::amx_bf16_available()) GTEST_SKIP() << "no AMX-BF16 on this CPU";
  for (const Case& cs : kCases) check_case(cs, cpu::Bf16Kernel::amx);
}

// The backward packing (B = W) gives the same bits as the forward packing of W^T; strided A and C, and
// accumulation into C, leave the columns past N alone.
TEST(CpuGemmBf16, BothPackingsStridesAndAccumulation) {
  const int M = 45, K = 300, N = 39, lda = 305, ldc = 44;  // K: two of the AMX kernel's K pieces
  std::mt19937 rng(7);
  const std::vector<float> A = randn((size_t)M * lda, rng), W = randn((size_t)K * N, rng);  // W [K, N]
  std::vector<float> Wt((size_t)N * K);
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < N; ++n) Wt[(size_t)n * K + k] = W[(size_t)k * N + n];
  const cpu::PackedBf16 direct = cpu::pack_bf16(W.data(), K, N), via_t = cpu::pack_bf16_transposed(Wt.data(), N, K);
  ASSERT_EQ(direct.bytes(), via_t.bytes());
  EXPECT_EQ(0, std::memcmp(direct.tiles.get(), via_t.tiles.get(), direct.bytes()));

  std::vector<float> C0 = randn((size_t)M * ldc, rng), C = C0;
  cpu::gemm_bf16(C.data(), ldc, A.data(), lda, M, direct, true);
  const std::vector<float> Ar = rounded(A), Wr = rounded(W);
  for (int m = 0; m < M; ++m) {
    for (int n = 0; n < N; ++n) {
      double s = 0, magnitude = 0;
      for (int k = 0; k < K; ++k) {
        s += (double)Ar[(size_t)m * lda + k] * Wr[(size_t)k * N + n];
        magnitude += std::fabs((double)Ar[(size_t)m * lda + k] * Wr[(size_t)k * N + n]);
      }
      const double old = C0[(size_t)m * ldc + n];
      ASSERT_LE(std::fabs(C[(size_t)m * ldc + n] - (old + s)), gamma32(K + 1) * (magnitude + std::fabs(old)))
          << "at (" << m << ", " << n << ")";
    }
    for (int n = N; n < ldc; ++n) ASSERT_EQ(C[(size_t)m * ldc + n], C0[(size_t)m * ldc + n]) << "column " << n;
  }
}

// Both packings put bf16_from_float(W) — ties to even, subnormals kept, NaN quieted — at the documented
// place of every element (tile (n / 16, k / 32), k pair (k % 32) / 2, column n % 16, element k % 2), and
// zeros in the padding, for row strides past the width and sizes that end inside a tile and a pair.
TEST(CpuGemmBf16, PackedTilesHoldTheRoundedWeights) {
  const int K = 71, N = 37;
  std::mt19937 rng(11);
  std::vector<float> kn = randn((size_t)K * (N + 3), rng);  // W [K, N] with row stride N + 3
  const float specials[] = {1.0f + 0x1p-8f, 1.0f + 3 * 0x1p-8f, 0x1p-130f, -0x1p-140f, std::nanf(""),
                            -std::numeric_limits<float>::infinity(), std::numeric_limits<float>::max(), -0.0f};
  for (size_t i = 0; i < sizeof specials / sizeof *specials; ++i) kn[i * 97 % kn.size()] = specials[i];
  const uint32_t low_nan = 0x7f800001u;  // a NaN that rounding alone would turn into infinity
  std::memcpy(&kn[5], &low_nan, sizeof low_nan);
  std::vector<float> nk((size_t)N * (K + 5));  // the same W^T [N, K] with row stride K + 5
  for (int k = 0; k < K; ++k)
    for (int n = 0; n < N; ++n) nk[(size_t)n * (K + 5) + k] = kn[(size_t)k * (N + 3) + n];
  const cpu::PackedBf16 direct = cpu::pack_bf16(kn.data(), K, N, N + 3);
  const cpu::PackedBf16 via_t = cpu::pack_bf16_transposed(nk.data(), N, K, K + 5);
  for (const cpu::PackedBf16* p : {&direct, &via_t}) {
    for (int k = 0; k < p->k_blocks * 32; ++k)
      for (int n = 0; n < p->n_blocks16 * 16; ++n) {
        const size_t at = ((size_t)(n / 16) * p->k_blocks + k / 32) * 512 + (size_t)((k % 32) / 2) * 32 + (n % 16) * 2 + k % 2;
        const uint16_t want = k < K && n < N ? cpu::bf16_from_float(kn[(size_t)k * (N + 3) + n]) : uint16_t(0);
        ASSERT_EQ(p->tiles[at], want) << (p == &direct ? "pack_bf16" : "pack_bf16_transposed") << " k " << k
                                      << " n " << n;
      }
  }
}

// One thread computes each output block over the whole K: the bits do not depend on the thread count.
TEST(CpuGemmBf16, ResultsDoNotDependOnTheThreadCount) {
  const int M = 200, K = 96, N = 160;
  std::mt19937 rng(3);
  const std::vector<float> A = randn((size_t)M * K, rng), W = randn((size_t)N * K, rng);
  const cpu::PackedBf16 B = cpu::pack_bf16_transposed(W.data(), N, K);
  std::vector<float> one((size_t)M * N), many(one.size());
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  cpu::gemm_bf16(one.data(), N, A.data(), K, M, B, false);
  omp_set_num_threads(std::max(threads, 3));
  cpu::gemm_bf16(many.data(), N, A.data(), K, M, B, false);
  omp_set_num_threads(threads);
  EXPECT_EQ(0, std::memcmp(one.data(), many.data(), one.size() * sizeof(float)));
}

// gemm_bf16_part on B's leading k x n part gives the bits of gemm_bf16 on that part packed alone (the rows of
// B's last k-block past k meet A's zeros: exact zero products), reads none of A's columns from k on (NaN
// there would show) and writes none of C's from n on; k and n end inside a block, M spans three chunks.
TEST(CpuGemmBf16, PartEqualsTheLeadingPartPackedAlone) {
  const int M = 300, K = 150, N = 100, k = 77, n = 45;
  std::mt19937 rng(5);
  std::vector<float> A = randn((size_t)M * K, rng);
  const std::vector<float> W = randn((size_t)N * K, rng);  // W [N, K]: B = W^T
  for (int m = 0; m < M; ++m)
    for (int c = k; c < K; ++c) A[(size_t)m * K + c] = std::nanf("");
  const cpu::PackedBf16 whole = cpu::pack_bf16_transposed(W.data(), N, K);
  const cpu::PackedBf16 alone = cpu::pack_bf16_transposed(W.data(), n, k, K);
  for (cpu::Bf16Kernel kernel : {cpu::Bf16Kernel::portable, cpu::Bf16Kernel::amx}) {
    if (kernel == cpu::Bf16Kernel::amx && !cpu::amx_bf16_available()) continue;
    for (bool accumulate : {false, true}) {
      std::vector<float> want = randn((size_t)M * N, rng), got = want;
      const std::vector<float> before = got;
      cpu::gemm_bf16(want.data(), N, A.data(), K, M, alone, accumulate, kernel);
      cpu::gemm_bf16_part(got.data(), N, A.data(), K, M, whole, k, n, accumulate, kernel);
      for (int m = 0; m < M; ++m)
        for (int c = 0; c < N; ++c) {
          const size_t at = (size_t)m * N + c;
          if (c < n)
            ASSERT_EQ(0, std::memcmp(&got[at], &want[at], sizeof(float))) << "at (" << m << ", " << c << ")";
          else
            ASSERT_EQ(0, std::memcmp(&got[at], &before[at], sizeof(float))) << "column " << c << " written";
        }
    }
  }
  std::vector<float> C((size_t)M * N);
  EXPECT_THROW(cpu::gemm_bf16_part(C.data(), N, A.data(), K, M, whole, K + 1, n, false), std::invalid_argument);
  EXPECT_THROW(cpu::gemm_bf16_part(C.data(), N, A.data(), K, M, whole, k, 0, false), std::invalid_argument);
}

// gemm_bf16_shared: each product's bits are gemm_bf16_part's for it alone (the input rounded once, the
// panels of several Bs in one sweep), with parts of different widths, one accumulating, over three chunks.
TEST(CpuGemmBf16, SharedProductsEqualEachAlone) {
  const int M = 300, K = 100, k = 90;
  const int widths[3] = {64, 33, 100}, parts[3] = {64, 20, 97};
  std::mt19937 rng(6);
  const std::vector<float> A = randn((size_t)M * K, rng);
  std::vector<cpu::PackedBf16> Bs;
  for (int n : widths) {
    const std::vector<float> W = randn((size_t)n * K, rng);
    Bs.push_back(cpu::pack_bf16_transposed(W.data(), n, K));
  }
  for (cpu::Bf16Kernel kernel : {cpu::Bf16Kernel::portable, cpu::Bf16Kernel::amx}) {
    if (kernel == cpu::Bf16Kernel::amx && !cpu::amx_bf16_available()) continue;
    std::vector<std::vector<float>> shared, alone;
    std::vector<cpu::Bf16Product> products;
    for (int i = 0; i < 3; ++i) {
      shared.push_back(randn((size_t)M * widths[i], rng));
      alone.push_back(shared.back());
    }
    for (int i = 0; i < 3; ++i) {
      products.push_back({shared[i].data(), widths[i], &Bs[i], parts[i], i == 2});
      cpu::gemm_bf16_part(alone[i].data(), widths[i], A.data(), K, M, Bs[i], k, parts[i], i == 2, kernel);
    }
    cpu::gemm_bf16_shared(A.data(), K, M, k, products.data(), 3, kernel);
    for (int i = 0; i < 3; ++i)
      ASSERT_EQ(0, std::memcmp(shared[i].data(), alone[i].data(), shared[i].size() * sizeof(float))) << "product " << i;
  }
}

TEST(CpuGemmBf16, RejectsBadShapes) {
  std::vector<float> W(6, 1.0f), A(6, 1.0f), C(6);
  EXPECT_THROW(cpu::pack_bf16(W.data(), 0, 3), std::invalid_argument);
  const cpu::PackedBf16 B = cpu::pack_bf16(W.data(), 3, 2);  // K 3, N 2
  EXPECT_THROW(cpu::gemm_bf16(C.data(), 2, A.data(), 2, 2, B, false), std::invalid_argument);  // lda < K
  EXPECT_THROW(cpu::gemm_bf16(C.data(), 1, A.data(), 3, 2, B, false), std::invalid_argument);  // ldc < N
  cpu::PackedBf16 empty;
  EXPECT_THROW(cpu::gemm_bf16(C.data(), 2, A.data(), 3, 2, empty, false), std::invalid_argument);
  const cpu::Bf16Product products[cpu::kMaxSharedProducts + 1] = {};
  EXPECT_THROW(cpu::gemm_bf16_shared(A.data(), 3, 2, 3, products, 0), std::invalid_argument);
  EXPECT_THROW(cpu::gemm_bf16_shared(A.data(), 3, 2, 3, products, cpu::kMaxSharedProducts + 1), std::invalid_argument);
}

}  // namespace
