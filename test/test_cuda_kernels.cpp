// The element-wise and row kernels (cuda/embedding.cuh, rmsnorm.cuh, rope.cuh, swiglu.cuh,
// elementwise.cuh, adamw.cuh) run on the CUDA-on-CPU emulator and are compared with the fp32 CPU
// reference (host/cpu_ops.h) on random inputs of awkward shapes, for T = float and T = __nv_bfloat16.
// The references that host/cpu_ops.h lacks are composed here: the fused residual + RMSNorm is
// cpu::residual_forward, the rounding to T, then cpu::rmsnorm_forward; clipping is torch's
// _clip_grads_with_norm_ in fp32 on top of cpu::global_norm.
//
// Tolerances are set for a real GPU, not only for the emulator (whose fp32 arithmetic is the CPU's):
// nvcc contracts a*b+c into FMAs, expf is within 2 ulps, and the row reductions add in another order,
// so fp32 results are allowed a few ulps of their operands' scale (stated per test, in units of
// u = 2^-24). bf16 tests round the inputs to bf16 and give the reference those values, so what remains
// is the kernel's single rounding of each stored value: bf16 tolerances add 2^-8 |ref| (bf16's unit
// roundoff, the worst case of one rounding) to the fp32 one. That is tight on purpose: the worst errors
// seen reach ~0.99 of it, and a second rounding on the way (e.g. x * rstd rounded before the weight
// multiply) would exceed it. Copies, adds, conversions, scaling and AdamW are one IEEE
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
#include "cuda/elementwise.cuh"
#include "cuda/embedding.cuh"
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
        cpu::rope_backward(want.data(), x.data(), cos.data(), sin.data(), s.N, s.T, s.nh, s.D);
      } else {
        cpu::rope_forward(want.data(), x.data(), cos.data(), sin.data(), s.N, s.T, s.nh, s.D);
      }
      Dev<T> dx(x, s.offset), dout(n, s.offset);
      if (backward) {
        lc::rope_backward_cuda(dout.ptr, dx.ptr, dcos.ptr, dsin.ptr, s.N, s.T, s.nh, s.D, this->stream_);
        lc::rope_backward_cuda(dx.ptr, dx.ptr, dcos.ptr, dsin.ptr, s.N, s.T, s.nh, s.D, this->stream_);
      } else {
        lc::rope_forward_cuda(dout.ptr, dx.ptr, dcos.ptr, dsin.ptr, s.N, s.T, s.nh, s.D, this->stream_);
        lc::rope_forward_cuda(dx.ptr, dx.ptr, dcos.ptr, dsin.ptr, s.N, s.T, s.nh, s.D, this->stream_);
      }
      this->sync();
      const char* name = backward ? "rope_backward" : "rope_forward";
      EXPECT_TRUE(Close(this->family(name), dout.get(), want, rope_tol<T>(x, want, s.D))) << at;
      EXPECT_TRUE(Identical(this->family(name), dx.get(), dout.get())) << "in place, " << at;
    }
  }
}

// ================================================================================================ SwiGLU

// n = 1, one whole pack, packs plus a tail of 3, and misaligned pointers.
struct FlatShape {
  long n;
  size_t offset;
};
const FlatShape kFlatShapes[] = {{1, 0}, {8, 0}, {1003, 0}, {1003, 1}};

// fp32 forward: exp within 2 ulps, then three correctly rounded ops: 8 u relative. Backward: dgate is
// dout*up*sig*(1 + g(1 - sig)), where 1 + g(1 - sig) cancels near g = -1.28, so its tolerance is 16 u of
// |dout up| sig (1 + |g| (1 - sig)); dup = dout*silu(g): 8 u relative. Plus 2^-8 |ref| for bf16.
TYPED_TEST(Kernels, SwiGluForwardAndBackward) {
  using T = TypeParam;
  for (const FlatShape& s : kFlatShapes) {
    const long n = s.n;
    const std::vector<float> gate = rounded<T>(randn(n, this->rng_, 3.0f)), up = rounded<T>(randn(n, this->rng_));
    const std::vector<float> dout = rounded<T>(randn(n, this->rng_));
    std::vector<float> want(n), want_dg(n), want_du(n);
    cpu::swiglu_forward(want.data(), gate.data(), up.data(), n);
    cpu::swiglu_backward(want_dg.data(), want_du.data(), dout.data(), gate.data(), up.data(), n);
    std::vector<double> tol_dg(n);
    for (long i = 0; i < n; ++i) {
      const double g = gate[i], sig = 1.0 / (1.0 + std::exp(-g));
      tol_dg[i] = 16 * kU32 * std::fabs((double)dout[i] * up[i]) * sig * (1.0 + std::fabs(g) * (1.0 - sig)) +
                  Prec<T>::u * std::fabs(want_dg[i]);
    }
    const std::string at = "n=" + std::to_string(n) + " offset=" + std::to_string(s.offset);

    Dev<T> dgate(gate, s.offset), dup_in(up, s.offset), ddout(dout, s.offset), dout_fwd(n, s.offset);
    Dev<T> ddg(n, s.offset), ddu(n, s.offset);
    lc::swiglu_forward_cuda(dout_fwd.ptr, dgate.ptr, dup_in.ptr, n, this->stream_);
    lc::swiglu_backward_cuda(ddg.ptr, ddu.ptr, ddout.ptr, dgate.ptr, dup_in.ptr, n, this->stream_);
    this->sync();
    EXPECT_TRUE(Close(this->family("swiglu_forward"), dout_fwd.get(), want, 0.0, 8 * kU32 + Prec<T>::u)) << at;
    EXPECT_TRUE(Close(this->family("swiglu_backward dgate"), ddg.get(), want_dg, tol_dg)) << at;
    EXPECT_TRUE(Close(this->family("swiglu_backward dup"), ddu.get(), want_du, 0.0, 8 * kU32 + Prec<T>::u)) << at;

    // The backward may write its gradients over its inputs (dgate over gate, dup over up).
    const std::vector<float> dg = ddg.get(), du = ddu.get();
    lc::swiglu_backward_cuda(dgate.ptr, dup_in.ptr, ddout.ptr, dgate.ptr, dup_in.ptr, n, this->stream_);
    this->sync();
    EXPECT_TRUE(Identical(this->family("swiglu_backward in place"), dgate.get(), dg)) << at;
    EXPECT_TRUE(Identical(this->family("swiglu_backward in place"), dup_in.get(), du)) << at;
  }
}

// ======================================================================================= Residual, scale

TYPED_TEST(Kernels, ResidualAddIsExactAndMayRunInPlace) {
  using T = TypeParam;
  for (const FlatShape& s : kFlatShapes) {
    const long n = s.n;
    const std::vector<float> a = rounded<T>(randn(n, this->rng_)), b = rounded<T>(randn(n, this->rng_));
    std::vector<float> want(n);
    cpu::residual_forward(want.data(), a.data(), b.data(), n);
    want = rounded<T>(want);  // one fp32 add, one rounding to T
    Dev<T> da(a, s.offset), db(b, s.offset), dout(n, s.offset);
    lc::residual_forward_cuda(dout.ptr, da.ptr, db.ptr, n, this->stream_);
    lc::residual_forward_cuda(db.ptr, da.ptr, db.ptr, n, this->stream_);
    this->sync();
    EXPECT_TRUE(Identical(this->family("residual_forward"), dout.get(), want)) << "n=" << n;
    EXPECT_TRUE(Identical(this->family("residual_forward"), db.get(), want)) << "in place, n=" << n;
  }
}

TYPED_TEST(Kernels, ScaleIsOneRoundedMultiply) {
  using T = TypeParam;
  for (const FlatShape& s : kFlatShapes) {
    const long n = s.n;
    const std::vector<float> x = rounded<T>(randn(n, this->rng_));
    const float f = 0.3f;
    std::vector<float> want = x;
    cpu::scale(want.data(), n, f);
    want = rounded<T>(want);
    Dev<T> dx(x, s.offset);
    lc::scale_cuda(dx.ptr, n, f, this->stream_);
    this->sync();
    EXPECT_TRUE(Identical(this->family("scale"), dx.get(), want)) << "n=" << n;
  }
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

// ================================================================================================ AdamW

// The kernel's element-wise ops are IEEE-rounded intrinsics in cpu::adamw_update's order (and its step
// scalars are computed on the host as the reference computes them), so every step is bit-identical:
// parameters, first and second moments, over several steps. Both of torch's lerp branches (1 - beta1 below
// and above 0.5), with and without weight decay; gradients include zeros and a wide range of magnitudes.
TEST(AdamWCuda, SeveralStepsBitIdenticalToCpu) {
  struct Config {
    float lr, beta1, beta2, eps, wd;
  };
  for (const Config& c : {Config{1e-3f, 0.9f, 0.999f, 1e-8f, 0.01f}, Config{3e-2f, 0.3f, 0.95f, 1e-6f, 0.0f}}) {
    for (size_t offset : {0, 1}) {
      std::mt19937 rng(11);
      const long n = 1001;
      std::vector<float> p = randn(n, rng), m(n, 0.0f), v(n, 0.0f);
      Dev<float> dp(p, offset), dg(n, offset), dm(m, offset), dv(v, offset);
      for (int step = 1; step <= 6; ++step) {
        std::vector<float> g = randn(n, rng, 0.1f);
        for (long i = 0; i < n; i += 7) g[i] *= 1e-4f;
        for (long i = 3; i < n; i += 11) g[i] = 0.0f;
        dg.upload(g);
        cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), n, c.lr, c.beta1, c.beta2, c.eps, c.wd, step);
        lc::adamw_update_cuda(dp.ptr, dg.ptr, dm.ptr, dv.ptr, n, c.lr, c.beta1, c.beta2, c.eps, c.wd, step, nullptr);
        const std::string at = "beta1=" + std::to_string(c.beta1) + " step " + std::to_string(step);
        ASSERT_TRUE(Identical("adamw param", dp.get(), p)) << at;
        ASSERT_TRUE(Identical("adamw m", dm.get(), m)) << at;
        ASSERT_TRUE(Identical("adamw v", dv.get(), v)) << at;
      }
    }
  }
}

// ======================================================================================= Norm, clipping

// torch.nn.utils._clip_grads_with_norm_ with its fp32 tensor arithmetic: clip_coef = max_norm /
// (total_norm + 1e-6) is Tensor.__rtruediv__, i.e. reciprocal(total_norm + 1e-6) * max_norm;
// clamp(max=1.0) keeps a NaN; every gradient is multiplied by the coefficient.
void ref_clip_grads(std::vector<std::vector<float>>& grads, float total_norm, float max_norm) {
  float coef = (1.0f / (total_norm + 1e-6f)) * max_norm;
  if (coef > 1.0f) coef = 1.0f;
  for (std::vector<float>& g : grads)
    for (float& x : g) x *= coef;
}

// The global norm in double from the host (cpu::global_norm), and an independent double sum.
float ref_global_norm(const std::vector<std::vector<float>>& tensors) {
  std::vector<const float*> ptrs;
  std::vector<long> sizes;
  for (const std::vector<float>& t : tensors) {
    ptrs.push_back(t.data());
    sizes.push_back((long)t.size());
  }
  return cpu::global_norm(ptrs.data(), sizes.data(), (int)ptrs.size());
}

double double_norm(const std::vector<std::vector<float>>& tensors) {
  double ss = 0.0;
  for (const std::vector<float>& t : tensors)
    for (float x : t) ss += (double)x * x;
  return std::sqrt(ss);
}

// Gradients of LoRA-like sizes (including an empty tensor and one of a single element) on the device,
// each tensor with its own magnitude.
struct GradSet {
  std::vector<std::vector<float>> host;
  std::vector<std::unique_ptr<Dev<float>>> dev;
  std::unique_ptr<lc::DeviceTensorList> list;
  GradSet(const std::vector<long>& sizes, std::mt19937& rng) {
    std::vector<float*> ptrs;
    float scale = 1e-3f;
    for (long n : sizes) {
      host.push_back(randn(n, rng, scale));
      scale *= 7.0f;
      dev.push_back(std::make_unique<Dev<float>>(host.back()));
      ptrs.push_back(dev.back()->ptr);
    }
    list = std::make_unique<lc::DeviceTensorList>(ptrs, sizes);
  }
  std::vector<std::vector<float>> get() const {
    std::vector<std::vector<float>> out;
    for (const auto& d : dev) out.push_back(d->get());
    return out;
  }
};

const std::vector<long> kGradSizes = {37, 0, 1, 1000, 4097, 30000, 515};

// Bit-identical over repeated runs and every emulator scheduling order (no float atomics, a fixed reduction
// tree), and within an ulp of the double-precision norm (the kernel accumulates in double and rounds once).
TEST(GlobalNorm, DeterministicAndEqualToDoubleNorm) {
  std::mt19937 rng(13);
  GradSet gs(kGradSizes, rng);
  Raw<float> norm(1);
  Raw<double> partials(lc::kNormMaxBlocks);
  lc::global_norm_cuda(norm.ptr, partials.ptr, *gs.list, nullptr);
  const float first = norm.get1();
  const double want = double_norm(gs.host);
  EXPECT_NEAR(first, want, std::numeric_limits<float>::epsilon() * want);  // one ulp
  EXPECT_EQ(bits(first), bits(ref_global_norm(gs.host))) << "cpu::global_norm";
  std::printf("global norm: got %.9g, double %.17g, |rel err| %.3g\n", first, want, std::fabs(first - want) / want);
#if defined(L2V_EMULATE)  // the emulator's scheduling orders; on a GPU the test checks one run
  for (emu::Schedule order : {emu::Schedule{emu::Order::kForward, 0}, emu::Schedule{emu::Order::kReverse, 0},
                              emu::Schedule{emu::Order::kShuffle, 5}, emu::Schedule{emu::Order::kShuffle, 6}}) {
    ScheduleScope scope(order);
    CUDA_CHECK(cudaMemset(partials.ptr, 0xFF, lc::kNormMaxBlocks * sizeof(double)));
    lc::global_norm_cuda(norm.ptr, partials.ptr, *gs.list, nullptr);
    EXPECT_EQ(bits(norm.get1()), bits(first)) << "schedule " << (int)order.order << ":" << order.seed;
  }
#endif
}

// More elements than the largest grid has threads (each thread then adds several per tensor).
TEST(GlobalNorm, LargerThanOneGridPass) {
  std::mt19937 rng(14);
  GradSet gs({300000, 7}, rng);
  Raw<float> norm(1);
  Raw<double> partials(lc::kNormMaxBlocks);
  lc::global_norm_cuda(norm.ptr, partials.ptr, *gs.list, nullptr);
  const double want = double_norm(gs.host);
  EXPECT_NEAR(norm.get1(), want, std::numeric_limits<float>::epsilon() * want);
  EXPECT_EQ(bits(norm.get1()), bits(ref_global_norm(gs.host)));
}

TEST(GlobalNorm, EmptyListIsZero) {
  lc::DeviceTensorList empty({}, {});
  Raw<float> norm(1);
  Raw<double> partials(lc::kNormMaxBlocks);
  lc::global_norm_cuda(norm.ptr, partials.ptr, empty, nullptr);
  EXPECT_EQ(norm.get1(), 0.0f);
}

// clip_grad_norm_: the returned norm is the one before clipping; above max_norm every gradient is scaled
// by torch's coefficient (bit-identical to the fp32 reference given the same norm), below it nothing
// changes, and a NaN gradient makes the norm and every gradient NaN (torch's clamp keeps the NaN).
TEST(ClipGradNorm, ScalesLikeTorch) {
  std::mt19937 rng(15);
  Raw<float> norm(1);
  Raw<double> partials(lc::kNormMaxBlocks);
  {
    GradSet gs(kGradSizes, rng);
    const float total = ref_global_norm(gs.host);
    const float max_norm = total / 4.0f;
    lc::clip_grad_norm_cuda(norm.ptr, partials.ptr, *gs.list, max_norm, nullptr);
    EXPECT_EQ(bits(norm.get1()), bits(total)) << "the norm before clipping";
    std::vector<std::vector<float>> want = gs.host;
    ref_clip_grads(want, total, max_norm);
    const std::vector<std::vector<float>> got = gs.get();
    for (size_t t = 0; t < want.size(); ++t) EXPECT_TRUE(Identical("clip_grad_norm clipped", got[t], want[t])) << t;
    // Their norm is now max_norm (up to the 1e-6 and fp32 rounding).
    EXPECT_NEAR(double_norm(got), max_norm, 1e-5 * max_norm);
  }
  {
    GradSet gs(kGradSizes, rng);
    const float total = ref_global_norm(gs.host);
    lc::clip_grad_norm_cuda(norm.ptr, partials.ptr, *gs.list, total * 1.5f, nullptr);
    EXPECT_EQ(bits(norm.get1()), bits(total));
    const std::vector<std::vector<float>> got = gs.get();
    for (size_t t = 0; t < got.size(); ++t) EXPECT_TRUE(Identical("clip_grad_norm unclipped", got[t], gs.host[t]));
  }
  {
    GradSet gs(kGradSizes, rng);
    gs.host[3][500] = std::numeric_limits<float>::quiet_NaN();
    gs.dev[3]->upload(gs.host[3]);
    lc::clip_grad_norm_cuda(norm.ptr, partials.ptr, *gs.list, 1.0f, nullptr);
    EXPECT_TRUE(std::isnan(norm.get1()));
    for (const std::vector<float>& g : gs.get())
      for (float x : g) ASSERT_TRUE(std::isnan(x));
  }
}

// ====================================================================================== Argument checks

TEST(Launchers, RejectBadShapes) {
  float* p = nullptr;
  EXPECT_THROW(lc::rmsnorm_forward_cuda(p, p, p, p, 1, 0, 1e-5f, nullptr), std::invalid_argument);
  EXPECT_THROW(lc::rope_forward_cuda(p, p, p, p, 1, 1, 1, 7, nullptr), std::invalid_argument);
  EXPECT_THROW(lc::adamw_update_cuda(p, p, p, p, 1, 1e-3f, 0.9f, 0.999f, 1e-8f, 0.0f, 0, nullptr),
               std::invalid_argument);
  EXPECT_THROW(lc::DeviceTensorList({p}, {1, 2}), std::invalid_argument);
  // Empty work launches nothing (a zero-sized grid would be a launch error).
  EXPECT_NO_THROW(lc::rmsnorm_forward_cuda(p, p, p, p, 0, 16, 1e-5f, nullptr));
  EXPECT_NO_THROW(lc::swiglu_forward_cuda(p, p, p, 0, nullptr));
}

}  // namespace
