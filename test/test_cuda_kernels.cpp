// The element-wise and row kernels (cuda/embedding.cuh, rmsnorm.cuh, rope.cuh, swiglu.cuh,
// elementwise.cuh, pooling.cuh, adamw.cuh) run on the CUDA-on-CPU emulator and are compared with the fp32 CPU
// reference (host/cpu_ops.h) on random inputs of awkward shapes, for T = float and T = __nv_bfloat16.
// The references that host/cpu_ops.h lacks are composed here: the fused residual + RMSNorm is
// cpu::residual_forward, the rounding to T, then cpu::rmsnorm_forward. The optimizer step (scaling,
// global norm, clipping, AdamW in two launches) is compared with cpu::adamw_step.
//
// Tolerances are set for a real GPU, not only for the emulator (whose fp32 arithmetic is the CPU's):
// nvcc contracts a*b+c into FMAs, expf is within 2 ulps, and the row reductions add in another order,
// so fp32 results are allowed a few ulps of their operands' scale (stated per test, in units of
// u = 2^-24). bf16 tests round the inputs to bf16 and give the reference those values, so what remains
// is the kernel's single rounding of each stored value: bf16 tolerances add 2^-8 |ref| (bf16's unit
// roundoff, the worst case of one rounding) to the fp32 one. That is tight on purpose: the worst errors
// seen reach ~0.99 of it, and a second rounding on the way (e.g. x * rstd rounded before the weight
// multiply) would exceed it. Copies, adds, conversions and AdamW are one IEEE
// operation chain with the reference's order and are compared bit for bit. The worst errors seen are
// printed at the end (|got - ref|, relative to |ref|, and as a fraction of the tolerance).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <limits>
#include <memory>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "cuda/adamw.cuh"
#include "cuda/contrastive.cuh"
#include "cuda/elementwise.cuh"
#include "cuda/embedding.cuh"
#include "cuda/pooling.cuh"
#include "cuda/rmsnorm.cuh"
#include "cuda/rope.cuh"
#include "cuda/swiglu.cuh"
#include "host/cpu_ops.h"
#include "test/cuda_test_util.h"
#include "test/test_util.h"

namespace {

namespace cpu = l2v::cpu;
namespace lc = l2v::cuda;
#if defined(L2V_EMULATE)
namespace emu = l2v::emu;
using l2v::test::ScheduleScope;
#endif
using bf16 = __nv_bfloat16;
using l2v::test::Dev, l2v::test::kU32, l2v::test::Prec, l2v::test::Raw, l2v::test::randn, l2v::test::rounded;

uint32_t bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

// ---- Comparison and the worst-error table.

using l2v::test::worst_table;

const auto* const kWorstReport = ::testing::AddGlobalTestEnvironment(
    new l2v::test::WorstReport("|got - ref|, relative to |ref|, fraction of the tolerance",
                               [](const std::string& family, const l2v::test::Worst& w) {
                                 std::printf("  %-40s %10.3e  %10.3e  %6.3f\n", family.c_str(), w.abs, w.rel,
                                             w.of_tol);
                               }));

// |got - ref| <= tol element-wise (NaN fails), recording the worst errors under `family`; the relative
// error recorded is |got - ref| / |ref| over the elements with |ref| >= 1e-3.
::testing::AssertionResult Close(const std::string& family, const std::vector<float>& got,
                                 const std::vector<float>& ref, const std::vector<double>& tol) {
  if (got.size() != ref.size() || tol.size() != ref.size()) return ::testing::AssertionFailure() << "size mismatch";
  std::vector<double> rel_scale(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) rel_scale[i] = std::fabs(ref[i]) >= 1e-3 ? std::fabs(ref[i]) : 0.0;
  return l2v::test::CloseRecorded(family, got, ref, tol, rel_scale);
}

// |got - ref| <= atol + rtol |ref|.
::testing::AssertionResult Close(const std::string& family, const std::vector<float>& got,
                                 const std::vector<float>& ref, double atol, double rtol) {
  std::vector<double> tol(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) tol[i] = atol + rtol * std::fabs(ref[i]);
  return Close(family, got, ref, tol);
}

// Bit-for-bit equality (NaN equal to NaN of the same bits only).
::testing::AssertionResult Identical(const std::string& family, const std::vector<float>& got,
                                     const std::vector<float>& want) {
  if (got.size() != want.size()) return ::testing::AssertionFailure() << "size mismatch";
  worst_table()[family];  // listed with zero error
  for (size_t i = 0; i < want.size(); ++i) {
    if (bits(got[i]) != bits(want[i]))
      return ::testing::AssertionFailure() << family << ": element " << i << " got " << got[i] << " want " << want[i];
  }
  return ::testing::AssertionSuccess();
}

// ---- The fixture: each test runs for float and bf16 on a stream of its own (the launchers must use it).

template <typename T>
class Kernels : public ::testing::Test {
 protected:
  void SetUp() override { CUDA_CHECK(cudaStreamCreate(&stream_)); }
  void TearDown() override { cudaStreamDestroy(stream_); }
  void sync() { CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  std::string family(const char* op) const { return std::string(op) + " " + Prec<T>::name; }

  cudaStream_t stream_ = nullptr;
  std::mt19937 rng_{20240612};
};

using StorageTypes = ::testing::Types<float, bf16>;
TYPED_TEST_SUITE(Kernels, StorageTypes);

struct RowShape {
  int N, C;
  size_t offset;  // 1: misaligned pointers (element-wise path)
};
// C = 4096 once (a large row: 128 elements per lane); C not a multiple of 32, of 8 (bf16 packs) or of 4
// (fp32 packs); N = 1; N not a multiple of the 8 rows per block; and a misaligned vectorisable shape.
const RowShape kRowShapes[] = {{1, 4096, 0}, {5, 37, 0}, {17, 36, 0}, {9, 200, 0}, {3, 8, 0}, {4, 64, 1}};

std::vector<float> norm_weight(int C, std::mt19937& rng) {
  std::vector<float> w = randn(C, rng, 0.2f);
  for (float& v : w) v += 1.0f;
  return w;
}

// ================================================================================================ Embedding

TYPED_TEST(Kernels, EmbeddingIsAnExactCopy) {
  using T = TypeParam;
  const int V = 50;
  for (const RowShape& s : kRowShapes) {
    const std::vector<float> table = rounded<T>(randn((size_t)V * s.C, this->rng_));
    std::vector<int> ids(s.N);
    for (int& id : ids) id = (int)(this->rng_() % V);
    ids[0] = V - 1;  // the last row of the table
    Dev<T> dtable(table, s.offset), dout((size_t)s.N * s.C, s.offset);
    Raw<int> dids(ids);
    lc::embedding_forward_cuda(dout.ptr, dids.ptr, dtable.ptr, s.N, s.C, this->stream_);
    this->sync();
    std::vector<float> want((size_t)s.N * s.C);
    cpu::embedding_forward(want.data(), ids.data(), table.data(), s.N, s.C);
    EXPECT_TRUE(Identical(this->family("embedding"), dout.get(), want)) << "N=" << s.N << " C=" << s.C;
  }
}

// ================================================================================================ RMSNorm

// fp32: the kernel sums squares in fp32 over C/32 terms per lane and a 5-step butterfly, the reference in
// double: rstd is within ~(C/32 + 8) u/2 relative and out within that plus 3 u. 1e-5 relative is above
// that bound for C = 4096 (~8e-6 at worst, ~1e-7 typical) and far below a formula error (eps placement,
// mean vs sum).
constexpr double kNormRtol = 1e-5;

TYPED_TEST(Kernels, RmsNormForward) {
  using T = TypeParam;
  for (const RowShape& s : kRowShapes) {
    const size_t NC = (size_t)s.N * s.C;
    const std::vector<float> x = rounded<T>(randn(NC, this->rng_, 2.0f)), w = norm_weight(s.C, this->rng_);
    const float eps = 1e-5f;
    Dev<T> dx(x, s.offset), dout(NC, s.offset);
    Dev<float> dw(w, s.offset), drstd(s.N);
    lc::rmsnorm_forward_cuda(dout.ptr, drstd.ptr, dx.ptr, dw.ptr, s.N, s.C, eps, this->stream_);
    this->sync();
    std::vector<float> want(NC), want_rstd(s.N);
    cpu::rmsnorm_forward(want.data(), want_rstd.data(), x.data(), w.data(), s.N, s.C, eps);
    const std::string at = "N=" + std::to_string(s.N) + " C=" + std::to_string(s.C);
    EXPECT_TRUE(Close(this->family("rmsnorm_forward out"), dout.get(), want, 1e-6, kNormRtol + Prec<T>::u)) << at;
    EXPECT_TRUE(Close(this->family("rmsnorm_forward rstd"), drstd.get(), want_rstd, 0.0, kNormRtol)) << at;

    // rstd may be omitted (inference), and out may overwrite the input.
    lc::rmsnorm_forward_cuda(dx.ptr, static_cast<float*>(nullptr), dx.ptr, dw.ptr, s.N, s.C, eps, this->stream_);
    this->sync();
    EXPECT_TRUE(Identical(this->family("rmsnorm_forward in place"), dx.get(), dout.get())) << at;
  }
}

// The fused op equals the unfused pair: resid_out = a + b exactly as cpu::residual_forward (rounded to T),
// then norm_out as cpu::rmsnorm_forward of that stored sum. Run out of place and with resid_out == a.
TYPED_TEST(Kernels, ResidualRmsNormForwardEqualsResidualThenRmsNorm) {
  using T = TypeParam;
  for (const RowShape& s : kRowShapes) {
    const size_t NC = (size_t)s.N * s.C;
    const std::vector<float> a = rounded<T>(randn(NC, this->rng_)), b = rounded<T>(randn(NC, this->rng_));
    const std::vector<float> w = norm_weight(s.C, this->rng_);
    const float eps = 1e-6f;
    std::vector<float> resid(NC), want(NC), want_rstd(s.N);
    cpu::residual_forward(resid.data(), a.data(), b.data(), (long)NC);
    resid = rounded<T>(resid);
    cpu::rmsnorm_forward(want.data(), want_rstd.data(), resid.data(), w.data(), s.N, s.C, eps);
    const std::string at = "N=" + std::to_string(s.N) + " C=" + std::to_string(s.C);

    Dev<T> da(a, s.offset), db(b, s.offset), dresid(NC, s.offset), dnorm(NC, s.offset);
    Dev<float> dw(w, s.offset), drstd(s.N);
    lc::residual_rmsnorm_forward_cuda(dresid.ptr, dnorm.ptr, drstd.ptr, da.ptr, db.ptr, dw.ptr, s.N, s.C, eps,
                                      this->stream_);
    this->sync();
    EXPECT_TRUE(Identical(this->family("residual_rmsnorm resid"), dresid.get(), resid)) << at;
    EXPECT_TRUE(Close(this->family("residual_rmsnorm norm"), dnorm.get(), want, 1e-6, kNormRtol + Prec<T>::u)) << at;
    EXPECT_TRUE(Close(this->family("residual_rmsnorm rstd"), drstd.get(), want_rstd, 0.0, kNormRtol)) << at;
    const std::vector<float> norm_out = dnorm.get(), rstd_out = drstd.get();

    // The residual stream updated in place.
    lc::residual_rmsnorm_forward_cuda(da.ptr, dnorm.ptr, drstd.ptr, da.ptr, db.ptr, dw.ptr, s.N, s.C, eps,
                                      this->stream_);
    this->sync();
    EXPECT_TRUE(Identical(this->family("residual_rmsnorm in place"), da.get(), resid)) << at;
    EXPECT_TRUE(Identical(this->family("residual_rmsnorm in place"), dnorm.get(), norm_out)) << at;
    EXPECT_TRUE(Identical(this->family("residual_rmsnorm in place"), drstd.get(), rstd_out)) << at;
  }
}

// dinp is pre-filled with P and must come back as P + dx. Per element, the terms are P, rstd*w*dy and
// x*rstd^3*mean(w dy x); the fp32 dot product behind the last is off by ~C/32 u of sum|w dy x|, so the
// tolerance is 2e-5 (> 150 u) of |P| + |r w dy| + |x| r^3 sum|w dy x| / C, plus 2^-8 |ref| for bf16.
TYPED_TEST(Kernels, RmsNormBackwardAccumulates) {
  using T = TypeParam;
  for (const RowShape& s : kRowShapes) {
    const int N = s.N, C = s.C;
    const size_t NC = (size_t)N * C;
    const std::vector<float> x = rounded<T>(randn(NC, this->rng_, 1.5f)), w = norm_weight(C, this->rng_);
    const std::vector<float> dy = rounded<T>(randn(NC, this->rng_)), pre = rounded<T>(randn(NC, this->rng_));
    std::vector<float> fwd(NC), rstd(N);
    cpu::rmsnorm_forward(fwd.data(), rstd.data(), x.data(), w.data(), N, C, 1e-5f);
    std::vector<float> want = pre;
    cpu::rmsnorm_backward(want.data(), dy.data(), x.data(), w.data(), rstd.data(), N, C);

    std::vector<double> tol(NC);
    for (int n = 0; n < N; ++n) {
      double abs_dot = 0.0;
      for (int c = 0; c < C; ++c) abs_dot += std::fabs((double)w[c] * dy[(size_t)n * C + c] * x[(size_t)n * C + c]);
      const double r = rstd[n], coef_mag = r * r * r * abs_dot / C;
      for (int c = 0; c < C; ++c) {
        const size_t i = (size_t)n * C + c;
        const double scale = std::fabs(pre[i]) + r * std::fabs((double)w[c] * dy[i]) + std::fabs(x[i]) * coef_mag;
        tol[i] = 2e-5 * scale + Prec<T>::u * std::fabs(want[i]);
      }
    }
    Dev<T> dx(x, s.offset), ddy(dy, s.offset), ddinp(pre, s.offset);
    Dev<float> dw(w, s.offset), drstd(rstd);
    lc::rmsnorm_backward_cuda(ddinp.ptr, ddy.ptr, dx.ptr, dw.ptr, drstd.ptr, N, C, this->stream_);
    this->sync();
    EXPECT_TRUE(Close(this->family("rmsnorm_backward"), ddinp.get(), want, tol)) << "N=" << N << " C=" << C;

    if (std::is_same<T, float>::value) {
      // From zero, twice: 0 + d, then d + d = 2d exactly in fp32.
      Dev<T> acc(std::vector<float>(NC, 0.0f), s.offset);
      lc::rmsnorm_backward_cuda(acc.ptr, ddy.ptr, dx.ptr, dw.ptr, drstd.ptr, N, C, this->stream_);
      const std::vector<float> once = acc.get();
      lc::rmsnorm_backward_cuda(acc.ptr, ddy.ptr, dx.ptr, dw.ptr, drstd.ptr, N, C, this->stream_);
      std::vector<float> twice = once;
      for (float& v : twice) v *= 2.0f;
      EXPECT_TRUE(Identical("rmsnorm_backward accumulates fp32", acc.get(), twice)) << "N=" << N << " C=" << C;
    }
  }
}

// ================================================================================================ RoPE

struct RopeShape {
  int N, T, nh, D;
  size_t offset;
};
// D/2 = 4 (fp32 packs, bf16 single pairs), 32 and 64 (packs for both), 3 (single pairs); N spanning
// several sequences, N not a multiple of T; and misaligned pointers.
const RopeShape kRopeShapes[] = {
    {6, 3, 2, 8, 0}, {8, 4, 3, 64, 0}, {5, 2, 1, 6, 0}, {7, 4, 2, 128, 0}, {6, 3, 2, 64, 1}};

std::vector<float> inv_freq(int D) {
  std::vector<float> f(D / 2);
  for (int i = 0; i < D / 2; ++i) f[i] = (float)(1.0 / std::pow(10000.0, 2.0 * i / D));
  return f;
}

// Each output is x0 c - x1 s or x1 c + x0 s: with or without an FMA, within 2 u (|x0| + |x1|); the
// tolerance is 4 u of that, plus 2^-8 |ref| for bf16.
template <typename T>
std::vector<double> rope_tol(const std::vector<float>& x, const std::vector<float>& ref, int D) {
  std::vector<double> tol(x.size());
  const int half = D / 2;
  for (size_t head = 0; head < x.size() / D; ++head) {
    for (int i = 0; i < half; ++i) {
      const size_t i0 = head * D + i, i1 = i0 + half;
      const double mag = std::fabs(x[i0]) + std::fabs(x[i1]);
      tol[i0] = 4 * kU32 * mag + Prec<T>::u * std::fabs(ref[i0]);
      tol[i1] = 4 * kU32 * mag + Prec<T>::u * std::fabs(ref[i1]);
    }
  }
  return tol;
}

TYPED_TEST(Kernels, RopeForwardAndBackwardOutOfPlaceAndInPlace) {
  using T = TypeParam;
  for (const RopeShape& s : kRopeShapes) {
    const size_t n = (size_t)s.N * s.nh * s.D, nt = (size_t)s.T * (s.D / 2);
    std::vector<float> cos(nt), sin(nt);
    cpu::rope_tables(cos.data(), sin.data(), inv_freq(s.D).data(), s.T, s.D);
    const std::vector<float> x = rounded<T>(randn(n, this->rng_));
    const std::string at = "N=" + std::to_string(s.N) + " T=" + std::to_string(s.T) + " nh=" + std::to_string(s.nh) +
                           " D=" + std::to_string(s.D);
    Dev<float> dcos(cos, s.offset), dsin(sin, s.offset);
    for (bool backward : {false, true}) {
      std::vector<float> want(n);
      if (backward) {
        cpu::rope_backward(want.data(), x.data(), s.nh * s.D, cos.data(), sin.data(), s.N, s.T, s.nh, s.D);
      } else {
        cpu::rope_forward(want.data(), x.data(), s.nh * s.D, cos.data(), sin.data(), s.N, s.T, s.nh, s.D);
      }
      // Also in place on a column block of wider rows (q or k in the fused q|k|v product): 16 bytes of other
      // columns on each side, which must keep their values.
      const int packed = s.nh * s.D, pad = 16 / (int)sizeof(T), ld = packed + 2 * pad;
      const std::vector<float> wide0 = rounded<T>(randn((size_t)s.N * ld, this->rng_));
      std::vector<float> wide_want = wide0;
      for (int r = 0; r < s.N; ++r) std::copy_n(&x[(size_t)r * packed], packed, &wide_want[(size_t)r * ld + pad]);
      Dev<T> dx(x, s.offset), dout(n, s.offset), dwide(wide_want, s.offset);
      auto rope = backward ? lc::rope_backward_cuda<T> : lc::rope_forward_cuda<T>;
      rope(dout.ptr, dx.ptr, packed, dcos.ptr, dsin.ptr, s.N, s.T, s.nh, s.D, this->stream_);
      rope(dx.ptr, dx.ptr, packed, dcos.ptr, dsin.ptr, s.N, s.T, s.nh, s.D, this->stream_);
      rope(dwide.ptr + pad, dwide.ptr + pad, ld, dcos.ptr, dsin.ptr, s.N, s.T, s.nh, s.D, this->stream_);
      this->sync();
      const char* name = backward ? "rope_backward" : "rope_forward";
      const std::vector<float> got = dout.get();
      EXPECT_TRUE(Close(this->family(name), got, want, rope_tol<T>(x, want, s.D))) << at;
      EXPECT_TRUE(Identical(this->family(name), dx.get(), got)) << "in place, " << at;
      for (int r = 0; r < s.N; ++r) std::copy_n(&got[(size_t)r * packed], packed, &wide_want[(size_t)r * ld + pad]);
      EXPECT_TRUE(Identical(this->family(name), dwide.get(), wide_want)) << "rows " << ld << " apart, " << at;
    }
  }
}

// ================================================================================================ SwiGLU

// Rows [gate | up] of the fused gate|up product: one element; rows of whole packs (F a multiple of both
// types' pack width); F = 1003, not a multiple of a pack (one element per thread: a pack would straddle two
// rows); and misaligned pointers.
struct SwigluShape {
  long N;
  int F;
  size_t offset;
};
const SwigluShape kSwigluShapes[] = {{1, 1, 0}, {2, 8, 0}, {5, 64, 0}, {3, 1003, 0}, {5, 64, 1}};

// fp32 forward: exp within 2 ulps, then three correctly rounded ops: 8 u relative. Backward: dgate is
// dout*up*sig*(1 + g(1 - sig)), where 1 + g(1 - sig) cancels near g = -1.28, so its tolerance is 16 u of
// |dout up| sig (1 + |g| (1 - sig)); dup = dout*silu(g): 8 u relative. Plus 2^-8 |ref| for bf16.
TYPED_TEST(Kernels, SwiGluForwardAndBackward) {
  using T = TypeParam;
  for (const SwigluShape& s : kSwigluShapes) {
    const long N = s.N, F = s.F, n = N * F;
    const std::vector<float> gu = rounded<T>(randn(N * 2 * F, this->rng_, 3.0f));
    const std::vector<float> dout = rounded<T>(randn(n, this->rng_));
    std::vector<float> want(n), want_d(N * 2 * F);
    cpu::swiglu_forward(want.data(), gu.data(), N, s.F);
    cpu::swiglu_backward(want_d.data(), dout.data(), gu.data(), N, s.F);
    std::vector<double> tol_d(N * 2 * F);
    for (long i = 0; i < n; ++i) {
      const long at = i / F * 2 * F + i % F;
      const double g = gu[at], sig = 1.0 / (1.0 + std::exp(-g));
      tol_d[at] = 16 * kU32 * std::fabs((double)dout[i] * gu[at + F]) * sig * (1.0 + std::fabs(g) * (1.0 - sig)) +
                  Prec<T>::u * std::fabs(want_d[at]);
      tol_d[at + F] = (8 * kU32 + Prec<T>::u) * std::fabs(want_d[at + F]);
    }
    const std::string at = "N=" + std::to_string(N) + " F=" + std::to_string(F) + " offset=" + std::to_string(s.offset);

    Dev<T> dgu(gu, s.offset), ddout(dout, s.offset), dact(n, s.offset), dd(N * 2 * F, s.offset);
    lc::swiglu_forward_cuda(dact.ptr, dgu.ptr, N, s.F, this->stream_);
    lc::swiglu_backward_cuda(dd.ptr, ddout.ptr, dgu.ptr, N, s.F, this->stream_);
    this->sync();
    EXPECT_TRUE(Close(this->family("swiglu_forward"), dact.get(), want, 0.0, 8 * kU32 + Prec<T>::u)) << at;
    EXPECT_TRUE(Close(this->family("swiglu_backward"), dd.get(), want_d, tol_d)) << at;

    // The backward may write its gradient over its input.
    const std::vector<float> d = dd.get();
    lc::swiglu_backward_cuda(dgu.ptr, ddout.ptr, dgu.ptr, N, s.F, this->stream_);
    this->sync();
    EXPECT_TRUE(Identical(this->family("swiglu_backward in place"), dgu.get(), d)) << at;
  }
}

// ================================================================================================ Pooling

// pool_forward / pool_backward against cpu::pool_forward / pool_backward, bit for bit (see
// cuda/pooling.cuh: exact double products summed in the reference's order; one fp32 product, then the
// rounding to T). The weights are those of the pooling modes: mean and weighted mean over a suffix of
// the row (left padding), one-hot rows (EOS / last / BOS token), and an all-zero row. Padding positions
// hold NaN, which must never reach a pooled value. C = 300 spans two blocks of channels.
TYPED_TEST(Kernels, PoolForwardAndBackwardEqualTheReference) {
  using T = TypeParam;
  struct Shape {
    int B, T, C;
  };
  for (const Shape& sh : {Shape{4, 5, 37}, Shape{3, 7, 300}, Shape{1, 1, 8}}) {
    const int B = sh.B, T_ = sh.T, C = sh.C;
    const long N = (long)B * T_;
    std::vector<float> weights(N, 0.0f);
    for (int b = 0; b < B; ++b) {
      const int first = b % T_;  // row b's padding: positions 0 .. first-1
      const int n = T_ - first;
      for (int t = first; t < T_; ++t) {
        const int k = t - first + 1;
        float& w = weights[(long)b * T_ + t];
        switch (b % 4) {
          case 0: w = 1.0f / (float)n; break;                            // mean
          case 1: w = (float)(2.0 * k / ((double)n * (n + 1))); break;   // weighted mean
          case 2: w = t == T_ - 1 ? 1.0f : 0.0f; break;                   // last / EOS token
          case 3: w = 0.0f; break;                                        // nothing pooled
        }
      }
    }
    std::vector<float> hidden = rounded<T>(randn(N * C, this->rng_));
    for (long i = 0; i < N; ++i)
      if (weights[i] == 0.0f)
        for (int c = 0; c < C; ++c) hidden[i * C + c] = std::numeric_limits<float>::quiet_NaN();
    std::vector<float> want(B * C), d_pooled = randn((long)B * C, this->rng_), want_dh(N * C);
    cpu::pool_forward(want.data(), hidden.data(), weights.data(), B, T_, C);
    cpu::pool_backward(want_dh.data(), d_pooled.data(), weights.data(), B, T_, C);
    Dev<T> dh(hidden), ddh(N * C);
    Dev<float> dw(weights), dpooled((size_t)B * C), dgrad(d_pooled);
    lc::pool_forward_cuda(dpooled.ptr, dh.ptr, dw.ptr, B, T_, C, this->stream_);
    lc::pool_backward_cuda(ddh.ptr, dgrad.ptr, dw.ptr, B, T_, C, this->stream_);
    this->sync();
    const std::string at = "B=" + std::to_string(B) + " T=" + std::to_string(T_) + " C=" + std::to_string(C);
    EXPECT_TRUE(Identical(this->family("pool_forward"), dpooled.get(), want)) << at;
    EXPECT_TRUE(Identical(this->family("pool_backward"), ddh.get(), rounded<T>(want_dh))) << at;
    for (float x : want) ASSERT_FALSE(std::isnan(x)) << "padding reached the reference's pooled rows";
  }
  // No rows: nothing launched.
  EXPECT_NO_THROW(lc::pool_forward_cuda<T>(nullptr, nullptr, nullptr, 0, 4, 8, this->stream_));
  EXPECT_NO_THROW(lc::pool_backward_cuda<T>(nullptr, nullptr, nullptr, 0, 4, 8, this->stream_));
}

// ============================================================================================ Contrastive

// contrastive_loss_cuda against cpu::contrastive_loss (cuda/contrastive.cuh does the reference's double
// arithmetic in the reference's order): under the emulator (glibc's exp and log on both sides) the loss
// is the same double and every gradient the same float; on a GPU, CUDA's double exp / log may differ
// from glibc's by an ulp or two, ~1e-16 relative, which the fp32 rounding of a gradient shows at most
// as 1 ulp. Layouts: SimCSE's interleaved pairs (ld = 2C), separate roles with hard negatives and
// padded rows (ld = C + 3: the padding must stay untouched), without in-batch negatives; shapes that
// are not multiples of the 16 x 16 tiles; the loss alone; every emulator scheduling order.
TEST(ContrastiveLoss, EqualsTheReference) {
#if defined(L2V_EMULATE)
  const uint32_t max_ulps = 0;
  const std::vector<l2v::emu::Schedule> orders = l2v::test::all_orders();
#else
  const uint32_t max_ulps = 1;
  const std::vector<int> orders = {0};
#endif
  struct Case {
    const char* name;
    int n, C, pad;
    bool negatives, in_batch, simcse;
    float scale;
  };
  std::mt19937 rng(17);
  for (const Case& c : {Case{"simcse", 5, 37, 0, false, true, true, 20.0f},
                        Case{"supervised", 17, 40, 3, true, true, false, 50.0f},
                        Case{"no_in_batch", 6, 20, 0, true, false, false, 50.0f}}) {
    const int n = c.n, C = c.C;
    const int ld = c.simcse ? 2 * C : C + c.pad;
    // The rows: SimCSE one buffer of 2n interleaved rows; otherwise three buffers of n rows.
    const size_t role_floats = c.simcse ? (size_t)2 * n * C : (size_t)n * ld;
    std::vector<std::vector<float>> x(c.simcse ? 1 : 3);
    for (auto& v : x) v = randn((long)role_floats, rng);
    const float* q = x[0].data();
    const float* p = c.simcse ? x[0].data() + C : x[1].data();
    const float* neg = c.negatives ? x[2].data() : nullptr;
    const float kUntouched = 7.0f;
    std::vector<std::vector<float>> want(x.size(), std::vector<float>(role_floats, kUntouched));
    float* wq = want[0].data();
    float* wp = c.simcse ? want[0].data() + C : want[1].data();
    float* wn = c.negatives ? want[2].data() : nullptr;
    double want_loss = 0.0;
    cpu::contrastive_loss(&want_loss, wq, wp, wn, q, p, neg, n, C, ld, c.scale, c.in_batch);
    double want_loss_only = 0.0;
    cpu::contrastive_loss(&want_loss_only, nullptr, nullptr, nullptr, q, p, neg, n, C, ld, c.scale, c.in_batch);
    ASSERT_TRUE(std::isfinite(want_loss)) << c.name;

    std::vector<std::unique_ptr<Raw<float>>> dx, ddx;
    for (size_t r = 0; r < x.size(); ++r) {
      dx.push_back(std::make_unique<Raw<float>>(x[r]));
      ddx.push_back(std::make_unique<Raw<float>>(std::vector<float>(role_floats, kUntouched)));
    }
    const float* dq = dx[0]->ptr;
    const float* dp = c.simcse ? dx[0]->ptr + C : dx[1]->ptr;
    const float* dneg = c.negatives ? dx[2]->ptr : nullptr;
    float* gq = ddx[0]->ptr;
    float* gp = c.simcse ? ddx[0]->ptr + C : ddx[1]->ptr;
    float* gn = c.negatives ? ddx[2]->ptr : nullptr;
    Raw<double> loss(1);
    Raw<char> scratch(lc::contrastive_scratch_bytes(n, C, c.negatives, true));
    for (const auto& order : orders) {
#if defined(L2V_EMULATE)
      ScheduleScope scope(order);
#else
      (void)order;
#endif
      const std::string at = std::string(c.name) + " n=" + std::to_string(n) + " C=" + std::to_string(C);
      lc::contrastive_loss_cuda(loss.ptr, nullptr, nullptr, nullptr, dq, dp, dneg, n, C, ld, c.scale, c.in_batch,
                                scratch.ptr, nullptr);
      const double loss_only = loss.get1();
      lc::contrastive_loss_cuda(loss.ptr, gq, gp, gn, dq, dp, dneg, n, C, ld, c.scale, c.in_batch, scratch.ptr,
                                nullptr);
      const double got_loss = loss.get1();
      EXPECT_LE(std::fabs(got_loss - want_loss), 4 * max_ulps * std::numeric_limits<double>::epsilon() * want_loss)
          << at << ": loss " << got_loss << " want " << want_loss;
      EXPECT_EQ(loss_only, got_loss) << at << ": the loss alone";
      EXPECT_EQ(want_loss_only, want_loss) << at;
      for (size_t r = 0; r < x.size(); ++r) {
        std::vector<float> got(role_floats);
        CUDA_CHECK(cudaMemcpy(got.data(), ddx[r]->ptr, role_floats * sizeof(float), cudaMemcpyDeviceToHost));
        uint32_t worst = 0;
        size_t untouched = 0;
        for (size_t i = 0; i < role_floats; ++i) {
          if (want[r][i] == kUntouched) untouched += got[i] == kUntouched;
          const uint32_t a = bits(got[i]), b = bits(want[r][i]);
          worst = std::max(worst, got[i] == want[r][i] ? 0u : a > b ? a - b : b - a);
        }
        EXPECT_LE(worst, max_ulps) << at << ", role buffer " << r;
        const size_t padding = c.simcse ? 0 : (size_t)n * (ld - C);
        EXPECT_EQ(untouched, padding) << at << ", role buffer " << r << ": the padding between rows was written";
      }
    }
  }
}

// A zero row (cosine undefined) or a non-finite value: the loss and every gradient are NaN, as the
// reference; refusals of misuse come before any launch.
TEST(ContrastiveLoss, InvalidRowsGiveNaNLossAndGradients) {
  const int n = 4, C = 9;
  std::mt19937 rng(3);
  for (const float bad : {0.0f, std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    std::vector<float> q = randn((long)n * C, rng), p = randn((long)n * C, rng);
    if (bad == 0.0f)
      std::fill_n(&q[2 * C], C, 0.0f);
    else
      p[C + 5] = bad;
    Raw<float> dq(q), dp(p), gq(std::vector<float>(q.size(), 7.0f)), gp(std::vector<float>(p.size(), 7.0f));
    Raw<double> loss(1);
    Raw<char> scratch(lc::contrastive_scratch_bytes(n, C, false, true));
    lc::contrastive_loss_cuda(loss.ptr, gq.ptr, gp.ptr, nullptr, dq.ptr, dp.ptr, nullptr, n, C, C, 20.0f, true,
                              scratch.ptr, nullptr);
    EXPECT_TRUE(std::isnan(loss.get1())) << bad;
    std::vector<float> g(q.size());
    for (const Raw<float>* d : {&gq, &gp}) {
      CUDA_CHECK(cudaMemcpy(g.data(), d->ptr, g.size() * sizeof(float), cudaMemcpyDeviceToHost));
      EXPECT_TRUE(std::all_of(g.begin(), g.end(), [](float x) { return std::isnan(x); })) << bad;
    }
  }
  Raw<double> loss(1);
  EXPECT_THROW(lc::contrastive_loss_cuda(loss.ptr, nullptr, nullptr, nullptr, nullptr, nullptr, nullptr, 2, 4, 4, 20.0f,
                                         true, nullptr, nullptr),
               std::invalid_argument);
}

// ============================================================================================ Conversions

// fp32 -> bf16 rounds to nearest even (ties both ways, the largest finite values rounding to infinity,
// subnormals, signed zeros, infinities), NaN stays NaN; bf16 -> fp32 is exact. Every result is compared
// with the host's conversion bit for bit.
TEST(Convert, Fp32ToBf16AndBack) {
  std::mt19937 rng(7);
  const std::vector<float> specials = {
      0.0f,
      -0.0f,
      1.0f,
      -1.0f,
      1.00390625f,                        // 1 + 2^-8: halfway between 1 and 1 + 2^-7, to even (down)
      1.01171875f,                        // 1 + 3 * 2^-8: halfway, to even (up)
      std::nextafter(1.00390625f, 2.0f),  // just above halfway: up
      3.0e38f,                            // finite in bf16 too
      std::numeric_limits<float>::max(),  // beyond bf16's largest finite value after rounding: inf
      -std::numeric_limits<float>::max(),
      1e-40f,  // fp32 subnormals
      -1e-45f,
      std::numeric_limits<float>::infinity(),
      -std::numeric_limits<float>::infinity(),
      std::numeric_limits<float>::quiet_NaN()};
  for (long n : {1L, 8L, 1003L}) {
    for (size_t offset : {0, 1}) {
      std::vector<float> x = randn(n, rng, 100.0f);
      for (size_t i = 0; i < specials.size() && i < (size_t)n; ++i) x[i] = specials[i];
      Dev<float> dx(x, offset), dback(n, offset);
      Dev<bf16> dh(n, offset);
      lc::convert_cuda(dh.ptr, dx.ptr, n, nullptr);
      lc::convert_cuda(dback.ptr, dh.ptr, n, nullptr);
      std::vector<bf16> h(n);
      CUDA_CHECK(cudaMemcpy(h.data(), dh.ptr, n * sizeof(bf16), cudaMemcpyDeviceToHost));
      const std::vector<float> back = dback.get();
      for (long i = 0; i < n; ++i) {
        const float want = __bfloat162float(__float2bfloat16_rn(x[i]));
        if (std::isnan(x[i])) {
          EXPECT_TRUE(std::isnan(__bfloat162float(h[i])) && std::isnan(back[i])) << i;
          continue;
        }
        ASSERT_EQ(bits(__bfloat162float(h[i])), bits(want)) << "fp32 -> bf16 of " << x[i] << " (n=" << n << ")";
        ASSERT_EQ(bits(back[i]), bits(want)) << "bf16 -> fp32 of " << x[i];
      }
    }
  }
}

// ====================================================================================== Optimizer step

// A list of trainable tensors of LoRA-like sizes (including an empty tensor and one of a single element),
// each with gradients of its own magnitude, on the host and on the device.
struct OptimizerSet {
  std::vector<std::vector<float>> value, grad, m, v;  // host copies
  std::vector<std::unique_ptr<Dev<float>>> dvalue, dgrad, dm, dv;
  std::vector<cpu::OptimizerTensor> host_list, dev_list;

  OptimizerSet(const std::vector<long>& sizes, std::mt19937& rng, size_t offset = 0) {
    for (long n : sizes) {
      value.push_back(randn(n, rng));
      m.push_back(std::vector<float>(n, 0.0f));
      v.push_back(std::vector<float>(n, 0.0f));
      grad.push_back(std::vector<float>(n, 0.0f));
      dvalue.push_back(std::make_unique<Dev<float>>(value.back(), offset));
      dgrad.push_back(std::make_unique<Dev<float>>(grad.back(), offset));
      dm.push_back(std::make_unique<Dev<float>>(m.back(), offset));
      dv.push_back(std::make_unique<Dev<float>>(v.back(), offset));
    }
    for (size_t t = 0; t < sizes.size(); ++t) {
      host_list.push_back({value[t].data(), grad[t].data(), m[t].data(), v[t].data(), sizes[t]});
      dev_list.push_back({dvalue[t]->ptr, dgrad[t]->ptr, dm[t]->ptr, dv[t]->ptr, sizes[t]});
    }
  }
  // New gradients on both sides: tensor t at scale 1e-3 * 7^t, with exact zeros and tiny values.
  void new_gradients(std::mt19937& rng) {
    float scale = 1e-3f;
    for (size_t t = 0; t < grad.size(); ++t, scale *= 7.0f) {
      grad[t] = randn((long)grad[t].size(), rng, scale);
      for (size_t i = 0; i < grad[t].size(); i += 7) grad[t][i] *= 1e-4f;
      for (size_t i = 3; i < grad[t].size(); i += 11) grad[t][i] = 0.0f;
      host_list[t].grad = grad[t].data();
      dgrad[t]->upload(grad[t]);
    }
  }
  double double_norm(float grad_scale) const {
    double ss = 0.0;
    for (const std::vector<float>& g : grad)
      for (float x : g) ss += (double)(x * grad_scale) * (x * grad_scale);
    return std::sqrt(ss);
  }
  // Every device tensor equal, bit for bit, to the host's.
  ::testing::AssertionResult identical(const std::string& at) const {
    for (size_t t = 0; t < value.size(); ++t) {
      for (auto [name, dev, host] : {std::tuple{"value", dvalue[t].get(), &value[t]}, std::tuple{"grad", dgrad[t].get(), &grad[t]},
                                     std::tuple{"m", dm[t].get(), &m[t]}, std::tuple{"v", dv[t].get(), &v[t]}}) {
        ::testing::AssertionResult r = Identical(std::string("adamw_step ") + name, dev->get(), *host);
        if (!r) return r << " (tensor " << t << ", " << at << ")";
      }
    }
    return ::testing::AssertionSuccess();
  }
};

const std::vector<long> kOptimizerSizes = {37, 0, 1, 1000, 4097, 30000, 515};

// Six steps of cpu::adamw_step and adamw_step_cuda on the same list and gradients: the norm and every
// value, gradient (scaled and clipped in place) and moment bit for bit, after every step. Both of torch's
// lerp branches (1 - beta1 below and above 0.5), with and without weight decay; gradient scales 1, 1/4
// (exact) and 1/3 (rounds); clipping that acts on some steps and not on others (the threshold sits
// between the steps' norms), and none; misaligned buffers.
TEST(AdamWStep, SeveralStepsBitIdenticalToCpu) {
  struct Config {
    float lr, beta1, beta2, eps, wd, grad_scale, max_norm;
  };
  // The scaled norms are about 3.6e3 on odd steps and 3.6e4 on even ones (1.2e3 / 1.2e4 at scale 1/3).
  for (const Config& c : {Config{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f, 1.0f, 1e4f},
                          Config{3e-2f, 0.3f, 0.95f, 1e-6f, 0.0f, 0.25f, 0.0f},
                          Config{2e-3f, 0.9f, 0.98f, 1e-8f, 0.1f, 1.0f / 3.0f, 4e3f}}) {
    for (size_t offset : {0, 1}) {
      std::mt19937 rng(11);
      OptimizerSet set(kOptimizerSizes, rng, offset);
      lc::DeviceOptimizerList list(set.dev_list.data(), (int)set.dev_list.size());
      Raw<float> norm(1);
      Raw<double> partials(lc::kNormMaxBlocks);
      int clipped = 0, unclipped = 0;
      for (int step = 1; step <= 6; ++step) {
        set.new_gradients(rng);
        if (step % 2 == 0)  // alternate steps' gradients 10x larger, around the threshold
          for (size_t t = 0; t < set.grad.size(); ++t) {
            for (float& x : set.grad[t]) x *= 10.0f;
            set.dgrad[t]->upload(set.grad[t]);
          }
        cpu::AdamWStepArgs args;
        args.lr = c.lr;
        args.beta1 = c.beta1;
        args.beta2 = c.beta2;
        args.eps = c.eps;
        args.weight_decay = c.wd;
        args.step = step;
        args.grad_scale = c.grad_scale;
        args.max_grad_norm = c.max_norm;
        const float want = cpu::adamw_step(set.host_list.data(), (int)set.host_list.size(), args);
        lc::adamw_step_cuda(norm.ptr, partials.ptr, list, args, nullptr);
        const std::string at = "beta1=" + std::to_string(c.beta1) + " step " + std::to_string(step);
        ASSERT_EQ(bits(norm.get1()), bits(want)) << at << ": norm " << norm.get1() << " want " << want;
        ASSERT_TRUE(set.identical(at));
        if (c.max_norm > 0) (want > c.max_norm ? clipped : unclipped)++;
      }
      if (c.max_norm > 0) {
        EXPECT_GT(clipped, 0) << "the threshold never clipped";
        EXPECT_GT(unclipped, 0) << "the threshold always clipped";
      }
    }
  }
}

// The norm is bit-identical over every emulator scheduling order (no float atomics, a fixed reduction
// tree), within an ulp of the double-precision norm, and so is the one step it drives; also with more
// elements than the largest grid has threads.
TEST(AdamWStep, NormDeterministicAndWithinAnUlp) {
  for (const std::vector<long>& sizes : {kOptimizerSizes, std::vector<long>{300000, 7}}) {
    std::mt19937 rng(13);
    OptimizerSet set(sizes, rng);
    set.new_gradients(rng);
    lc::DeviceOptimizerList list(set.dev_list.data(), (int)set.dev_list.size());
    Raw<float> norm(1);
    Raw<double> partials(lc::kNormMaxBlocks);
    cpu::AdamWStepArgs args;
    args.lr = 0.0f;  // the values stay; only the norm is compared
    args.grad_scale = 0.5f;
    lc::adamw_step_cuda(norm.ptr, partials.ptr, list, args, nullptr);
    const float first = norm.get1();
    const double want = set.double_norm(0.5f);
    EXPECT_NEAR(first, want, std::numeric_limits<float>::epsilon() * want);  // one ulp
    std::printf("optimizer norm of %zu tensors: got %.9g, double %.17g, |rel err| %.3g\n", sizes.size(), first, want,
                std::fabs(first - want) / want);
#if defined(L2V_EMULATE)  // the emulator's scheduling orders; on a GPU the test checks one run
    for (emu::Schedule order : {emu::Schedule{emu::Order::kForward, 0}, emu::Schedule{emu::Order::kReverse, 0},
                                emu::Schedule{emu::Order::kShuffle, 5}, emu::Schedule{emu::Order::kShuffle, 6}}) {
      ScheduleScope scope(order);
      CUDA_CHECK(cudaMemset(partials.ptr, 0xFF, lc::kNormMaxBlocks * sizeof(double)));
      for (size_t t = 0; t < set.grad.size(); ++t) set.dgrad[t]->upload(set.grad[t]);  // the step scaled them
      lc::adamw_step_cuda(norm.ptr, partials.ptr, list, args, nullptr);
      EXPECT_EQ(bits(norm.get1()), bits(first)) << "schedule " << (int)order.order << ":" << order.seed;
    }
#endif
  }
}

// A NaN or infinite gradient: the norm says so and nothing is written anywhere (values, moments and
// gradients keep their bits), in every block, so the caller can stop with the parameters intact. An
// empty list gives norm 0.
TEST(AdamWStep, NonFiniteNormWritesNothing) {
  for (float bad : {std::numeric_limits<float>::quiet_NaN(), std::numeric_limits<float>::infinity()}) {
    std::mt19937 rng(15);
    OptimizerSet set({300000, 1000}, rng);
    set.new_gradients(rng);
    set.grad[1][500] = bad;
    set.dgrad[1]->upload(set.grad[1]);
    for (size_t t = 0; t < set.m.size(); ++t) {  // non-zero moments, so that a write would show
      set.m[t] = randn((long)set.m[t].size(), rng);
      set.dm[t]->upload(set.m[t]);
    }
    lc::DeviceOptimizerList list(set.dev_list.data(), (int)set.dev_list.size());
    Raw<float> norm(1);
    Raw<double> partials(lc::kNormMaxBlocks);
    cpu::AdamWStepArgs args;
    args.lr = 1e-2f;
    args.grad_scale = 0.5f;
    args.max_grad_norm = 1.0f;
    lc::adamw_step_cuda(norm.ptr, partials.ptr, list, args, nullptr);
    EXPECT_FALSE(std::isfinite(norm.get1()));
    EXPECT_TRUE(set.identical("non-finite gradient " + std::to_string(bad)));
    const float cpu_norm = cpu::adamw_step(set.host_list.data(), (int)set.host_list.size(), args);
    EXPECT_EQ(std::isnan(cpu_norm), std::isnan(norm.get1()));
    EXPECT_TRUE(set.identical("the reference wrote nothing either"));
  }
  lc::DeviceOptimizerList empty(nullptr, 0);
  Raw<float> norm(1);
  Raw<double> partials(lc::kNormMaxBlocks);
  CUDA_CHECK(cudaMemset(norm.ptr, 0xFF, sizeof(float)));
  lc::adamw_step_cuda(norm.ptr, partials.ptr, empty, cpu::AdamWStepArgs{}, nullptr);
  EXPECT_EQ(norm.get1(), 0.0f);
}

// A list whose host array changed: matches() notices every field.
TEST(AdamWStep, DeviceListMatchesOnlyItsOwnTensors) {
  float a[4], b[4];
  std::vector<cpu::OptimizerTensor> list = {{a, a + 1, a + 2, a + 3, 1}, {b, b + 1, b + 2, b + 3, 1}};
  lc::DeviceOptimizerList dev(list.data(), 2);
  EXPECT_TRUE(dev.matches(list.data(), 2));
  EXPECT_FALSE(dev.matches(list.data(), 1));
  for (int field = 0; field < 5; ++field) {
    std::vector<cpu::OptimizerTensor> other = list;
    cpu::OptimizerTensor& x = other[1];
    if (field == 0) x.value = a;
    if (field == 1) x.grad = a;
    if (field == 2) x.m = a;
    if (field == 3) x.v = a;
    if (field == 4) x.n = 2;
    EXPECT_FALSE(dev.matches(other.data(), 2)) << "field " << field;
  }
}

// ====================================================================================== Argument checks

TEST(Launchers, RejectBadShapes) {
  float* p = nullptr;
  EXPECT_THROW(lc::rmsnorm_forward_cuda(p, p, p, p, 1, 0, 1e-5f, nullptr), std::invalid_argument);
  EXPECT_THROW(lc::rope_forward_cuda(p, p, 7, p, p, 1, 1, 1, 7, nullptr), std::invalid_argument);
  EXPECT_THROW(lc::rope_forward_cuda(p, p, 7, p, p, 1, 1, 1, 8, nullptr), std::invalid_argument);  // ld < nh*D
  cpu::AdamWStepArgs step0;
  step0.step = 0;
  lc::DeviceOptimizerList none(nullptr, 0);
  EXPECT_THROW(lc::adamw_step_cuda(p, nullptr, none, step0, nullptr), std::invalid_argument);
  const cpu::OptimizerTensor negative{p, p, p, p, -1};
  EXPECT_THROW(lc::DeviceOptimizerList(&negative, 1), std::invalid_argument);
  // Empty work launches nothing (a zero-sized grid would be a launch error).
  EXPECT_NO_THROW(lc::rmsnorm_forward_cuda(p, p, p, p, 0, 16, 1e-5f, nullptr));
  EXPECT_NO_THROW(lc::swiglu_forward_cuda(p, p, 0, 0, nullptr));
}

}  // namespace
