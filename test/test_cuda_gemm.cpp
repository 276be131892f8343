// The GEMM launchers (cuda/matmul.cuh, cuda/lora.cuh, cuda/lm_head.cuh) run on the CUDA-on-CPU emulator
// and are compared with the fp32 CPU reference (host/cpu_ops.h) on random inputs of awkward shapes, for
// T = float and T = __nv_bfloat16.
//
// Tolerances. Every output is a sum of products; `mag` is the same op applied to the absolute values of
// its inputs (the CPU reference run on |inputs|), which bounds |each term| summed. An fp32 dot product of
// length K is off by at most ~K u32 mag (u32 = 2^-24), for the GPU and the reference alike, hence
//   |got - ref| <= (2 K u32 + r u_T) mag
// with K the longest chain of fp32 additions behind the element, r the number of roundings to T on the
// way (bf16 operands or intermediates, the rounded result), u_T = 0 for fp32 and 2^-8 for bf16 (bf16's
// unit roundoff). bf16 tests round the activation inputs to bf16 first and give the reference those
// values, so the bound covers only what the GPU path rounds. Dropout masks must be identical: the
// LoRA dropout kernels never store the dropped input, but one wrong mask bit moves an output by about
// mag / K, far above the fp32 bounds. The losses of the MNTP head use fp32 logits for both
// types and get an fp32 bound (see LmHead). The worst errors seen, as |got - ref| / mag and as a fraction
// of the tolerance, are printed at the end.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <memory>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/lm_head.cuh"
#include "cuda/lora.cuh"
#include "cuda/matmul.cuh"
#include "host/cpu_ops.h"
#include "test/cuda_test_util.h"
#include "test/test_util.h"

namespace {

namespace cpu = l2v::cpu;
namespace lc = l2v::cuda;
using bf16 = __nv_bfloat16;
using l2v::test::Dev, l2v::test::kU32, l2v::test::Prec, l2v::test::Raw, l2v::test::randn, l2v::test::rounded;

std::vector<float> absv(std::vector<float> v) {
  for (float& x : v) x = std::fabs(x);
  return v;
}

// Bytes for a launcher's scratch or workspace (never a null pointer, even for 0 bytes).
struct Bytes {
  void* ptr = nullptr;
  explicit Bytes(size_t n) { CUDA_CHECK(cudaMalloc(&ptr, std::max<size_t>(n, 1))); }
  ~Bytes() { cudaFree(ptr); }
  Bytes(const Bytes&) = delete;
  Bytes& operator=(const Bytes&) = delete;
};

// The worst errors per comparison family, printed when the tests end.
const auto* const kWorstReport = ::testing::AddGlobalTestEnvironment(
    new l2v::test::WorstReport("|got - ref| / mag, fraction of the tolerance, |got - ref|",
                               [](const std::string& family, const l2v::test::Worst& w) {
                                 std::printf("  %-34s %10.3e  %6.3f  %10.3e\n", family.c_str(), w.rel, w.of_tol,
                                             w.abs);
                               }));

// |got - ref| <= tol_factor * mag element-wise (tol_factor per element when given as a vector); the
// relative error recorded is |got - ref| / mag.
::testing::AssertionResult Close(const std::string& family, const std::vector<float>& got,
                                 const std::vector<float>& ref, const std::vector<float>& mag,
                                 const std::vector<double>& tol_factor) {
  if (got.size() != ref.size() || ref.size() != mag.size() || tol_factor.size() != ref.size())
    return ::testing::AssertionFailure() << "size mismatch";
  std::vector<double> tol(ref.size()), rel_scale(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    tol[i] = tol_factor[i] * mag[i];
    rel_scale[i] = mag[i];
  }
  return l2v::test::CloseRecorded(family, got, ref, tol, rel_scale);
}

::testing::AssertionResult Close(const std::string& family, const std::vector<float>& got,
                                 const std::vector<float>& ref, const std::vector<float>& mag, double tol_factor) {
  return Close(family, got, ref, mag, std::vector<double>(ref.size(), tol_factor));
}

// Bit-for-bit equality (the dropped input: identical masks, identical fp32 scaling).
::testing::AssertionResult Identical(const std::vector<float>& got, const std::vector<float>& want) {
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::memcmp(&got[i], &want[i], sizeof(float)) != 0)
      return ::testing::AssertionFailure() << "element " << i << ": got " << got[i] << " want " << want[i];
  }
  return ::testing::AssertionSuccess();
}

template <typename T>
class Gemm : public ::testing::Test {
 protected:
  void SetUp() override {
    ASSERT_EQ(cublasCreate(&handle_), CUBLAS_STATUS_SUCCESS);
    // A stream of its own: the launchers must put their kernels on the handle's stream.
    CUDA_CHECK(cudaStreamCreate(&stream_));
    ASSERT_EQ(cublasSetStream(handle_, stream_), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasLtCreate(&lt_), CUBLAS_STATUS_SUCCESS);
  }
  void TearDown() override {
    cublasLtDestroy(lt_);
    cublasDestroy(handle_);
    cudaStreamDestroy(stream_);
  }
  void sync() { CUDA_CHECK(cudaStreamSynchronize(stream_)); }
  std::string family(const char* op) const { return std::string(op) + " " + Prec<T>::name; }

  lc::LtContext lt() { return {handle_, lt_, lt_workspace_.ptr, lc::kLtWorkspaceBytes}; }

  cublasHandle_t handle_ = nullptr;
  cublasLtHandle_t lt_ = nullptr;
  Bytes lt_workspace_{lc::kLtWorkspaceBytes};
  cudaStream_t stream_ = nullptr;
  std::mt19937 rng_{20240611};
};

using StorageTypes = ::testing::Types<float, bf16>;
TYPED_TEST_SUITE(Gemm, StorageTypes);

// cuBLASLt's D = residual + bias + inp W^T (the residual a separate C, or out itself), rounded once.
TYPED_TEST(Gemm, MatmulForward) {
  using T = TypeParam;
  struct Shape {
    int N, IC, OC;
  };
  enum Residual { kNone, kSeparate, kInPlace };
  for (const Shape s : {Shape{1, 7, 5}, Shape{37, 129, 67}, Shape{64, 96, 33}, Shape{5, 1, 3}}) {
    for (bool with_bias : {false, true}) {
      for (const Residual res : {kNone, kSeparate, kInPlace}) {
        const auto inp = rounded<T>(randn((size_t)s.N * s.IC, this->rng_));
        const auto w = rounded<T>(randn((size_t)s.OC * s.IC, this->rng_, 0.3f));
        const auto bias = rounded<T>(randn(s.OC, this->rng_));
        const auto resid = rounded<T>(randn((size_t)s.N * s.OC, this->rng_));
        const float* b = with_bias ? bias.data() : nullptr;
        const float* r = res == kNone ? nullptr : resid.data();
        std::vector<float> ref((size_t)s.N * s.OC), mag(ref.size());
        cpu::matmul_forward(ref.data(), inp.data(), w.data(), b, s.N, s.IC, s.OC, r);
        const auto abs_bias = absv(bias), abs_resid = absv(resid);
        cpu::matmul_forward(mag.data(), absv(inp).data(), absv(w).data(), b ? abs_bias.data() : nullptr, s.N, s.IC,
                            s.OC, r ? abs_resid.data() : nullptr);
        Dev<T> d_inp(inp), d_w(w), d_bias(bias), d_resid(resid), d_out(ref.size());
        T* out = res == kInPlace ? d_resid.ptr : d_out.ptr;
        lc::matmul_forward_cuda<T>(this->lt(), out, d_inp.ptr, d_w.ptr, with_bias ? d_bias.ptr : nullptr, s.N, s.IC,
                                   s.OC, res == kNone ? nullptr : d_resid.ptr);
        this->sync();
        // K = IC (+1 for the bias, +1 for the residual); one rounding of the result to T.
        EXPECT_TRUE(Close(this->family("matmul_forward"), res == kInPlace ? d_resid.get() : d_out.get(), ref, mag,
                          2 * (s.IC + 2) * kU32 + Prec<T>::u))
            << "N " << s.N << " IC " << s.IC << " OC " << s.OC << " bias " << with_bias << " residual " << res;
        if (res == kSeparate) {
          EXPECT_TRUE(Identical(d_resid.get(), resid)) << "the residual is read only";
        }
      }
    }
  }
}

TYPED_TEST(Gemm, MatmulBackwardInput) {
  using T = TypeParam;
  struct Shape {
    int N, IC, OC;
  };
  for (const Shape s : {Shape{1, 7, 5}, Shape{37, 129, 67}, Shape{64, 33, 96}}) {
    for (bool accumulate : {false, true}) {
      const auto dout = rounded<T>(randn((size_t)s.N * s.OC, this->rng_));
      const auto w = rounded<T>(randn((size_t)s.OC * s.IC, this->rng_, 0.3f));
      const auto dinp0 = rounded<T>(randn((size_t)s.N * s.IC, this->rng_));
      std::vector<float> ref = dinp0, mag = absv(dinp0);
      cpu::matmul_backward_input(ref.data(), dout.data(), w.data(), s.N, s.IC, s.OC, accumulate);
      cpu::matmul_backward_input(mag.data(), absv(dout).data(), absv(w).data(), s.N, s.IC, s.OC, accumulate);
      Dev<T> d_dout(dout), d_w(w), d_dinp(dinp0);
      if (!accumulate) CUDA_CHECK(cudaMemset(d_dinp.ptr, 0xFF, d_dinp.n * sizeof(T)));  // overwritten, never read
      lc::matmul_backward_input_cuda<T>(this->handle_, d_dinp.ptr, d_dout.ptr, d_w.ptr, s.N, s.IC, s.OC, accumulate);
      this->sync();
      EXPECT_TRUE(Close(this->family("matmul_backward_input"), d_dinp.get(), ref, mag,
                        2 * (s.OC + 1) * kU32 + Prec<T>::u))
          << "N " << s.N << " IC " << s.IC << " OC " << s.OC << " accumulate " << accumulate;
    }
  }
}

struct LoraShape {
  int N, IC, OC, R;
};
// R = 20 spans two blocks of ranks in the dropout kernels; N = 1100 two slices of dA's partial sums.
const LoraShape kLoraShapes[] = {{1, 9, 7, 1}, {37, 129, 67, 4}, {50, 96, 130, 16}, {3, 5, 2, 16}, {40, 70, 33, 20},
                                 {1100, 9, 5, 3}};

// Up to three adapters on one input (q, k and v; gate and up): each its own A, B, output width and dropout
// site.
constexpr int kBranchCounts[] = {1, 2, 3};
int branch_oc(const LoraShape& s, int b) { return s.OC + 3 * b; }
std::string lora_where(const LoraShape& s, float p, int count) {
  return "N " + std::to_string(s.N) + " IC " + std::to_string(s.IC) + " OC " + std::to_string(s.OC) + " R " +
         std::to_string(s.R) + " p " + std::to_string(p) + " branches " + std::to_string(count);
}
template <typename T>
using DevPtr = std::unique_ptr<Dev<T>>;
// The branches' outputs (output gradients) are column blocks of one [N, W] array, as the fused gate|up
// product holds gate and up: branch b at columns [col_b, col_b + OC_b), rows ld = W apart, W one column wider
// than the blocks (which no branch may touch). A launcher that took OC for the row stride fails these.
struct Blocks {
  int ld = 1, col[l2v::kMaxLoraBranches] = {};
  Blocks(const LoraShape& s, int count) {
    int w = 0;
    for (int b = 0; b < count; ++b) {
      col[b] = w;
      w += branch_oc(s, b);
    }
    ld = w + 1;
  }
};
// Columns [col, col + OC) of row-major [N, ld] `wide`.
std::vector<float> block_of(const std::vector<float>& wide, int N, int ld, int col, int OC) {
  std::vector<float> out((size_t)N * OC);
  for (int n = 0; n < N; ++n)
    for (int j = 0; j < OC; ++j) out[(size_t)n * OC + j] = wide[(size_t)n * ld + col + j];
  return out;
}

TYPED_TEST(Gemm, LoraForward) {
  using T = TypeParam;
  // An offset that is not a multiple of 4 (the kernel's per-element path; DropoutKey in host/philox.h).
  const l2v::DropoutKey seed{0x5EEDull, 4097};
  for (const LoraShape s : kLoraShapes) {
    for (float p : {0.0f, 0.3f}) {
      for (const int count : kBranchCounts) {
        const float scale = 16.0f / s.R;
        const auto inp = rounded<T>(randn((size_t)s.N * s.IC, this->rng_));
        Dev<T> d_inp(inp);
        const lc::LoraInput<T> in{d_inp.ptr, s.N, s.IC, s.R, scale, p, seed};
        std::vector<std::vector<float>> ref(count), xa_ref(count), mag(count), xa_mag(count);
        const Blocks blk(s, count);
        const auto wide0 = rounded<T>(randn((size_t)s.N * blk.ld, this->rng_));
        Dev<T> d_out(wide0), d_out1(wide0);
        std::vector<DevPtr<T>> d_xa, d_xa1;
        std::vector<DevPtr<float>> d_A, d_B;
        lc::LoraForwardBranch<T> br[l2v::kMaxLoraBranches];
        int OC[l2v::kMaxLoraBranches];
        for (int b = 0; b < count; ++b) {
          OC[b] = branch_oc(s, b);
          const uint32_t site = 77 + b;
          const auto A = randn((size_t)s.R * s.IC, this->rng_, 0.2f);
          const auto B = randn((size_t)OC[b] * s.R, this->rng_, 0.2f);
          const auto out0 = block_of(wide0, s.N, blk.ld, blk.col[b], OC[b]);
          ref[b] = out0;
          xa_ref[b].resize((size_t)s.N * s.R);
          std::vector<float> scratch((size_t)s.N * s.IC);
          cpu::lora_forward(ref[b].data(), OC[b], xa_ref[b].data(), inp.data(), A.data(), B.data(), scale, p, seed,
                            site, scratch.data(), s.N, s.IC, OC[b], s.R);
          mag[b] = absv(out0);
          xa_mag[b].resize(xa_ref[b].size());
          cpu::lora_forward(mag[b].data(), OC[b], xa_mag[b].data(), absv(inp).data(), absv(A).data(),
                            absv(B).data(), scale, p, seed, site, scratch.data(), s.N, s.IC, OC[b], s.R);
          d_xa.push_back(std::make_unique<Dev<T>>(xa_ref[b].size()));
          d_xa1.push_back(std::make_unique<Dev<T>>(xa_ref[b].size()));
          d_A.push_back(std::make_unique<Dev<float>>(A));
          d_B.push_back(std::make_unique<Dev<float>>(B));
          br[b] = {d_out.ptr + blk.col[b], d_xa[b]->ptr, d_A[b]->ptr, d_B[b]->ptr, site, OC[b], blk.ld};
        }
        Bytes ws(lc::lora_branches_workspace_bytes(sizeof(T), s.N, s.IC, OC, count, s.R));
        lc::lora_forward_cuda<T>(this->handle_, in, br, count, ws.ptr);
        // Each branch alone, for the bits.
        for (int b = 0; b < count; ++b) {
          lc::LoraForwardBranch<T> one = br[b];
          one.out = d_out1.ptr + blk.col[b];
          one.xa = d_xa1[b]->ptr;
          lc::lora_forward_cuda<T>(this->handle_, in, &one, 1, ws.ptr);
        }
        this->sync();
        const auto wide = d_out.get(), wide1 = d_out1.get();
        EXPECT_EQ(block_of(wide, s.N, blk.ld, blk.ld - 1, 1), block_of(wide0, s.N, blk.ld, blk.ld - 1, 1))
            << lora_where(s, p, count) << ": the column beside the blocks was written";
        const std::string where = lora_where(s, p, count);
        for (int b = 0; b < count; ++b) {
          // xa: K = IC; bf16 rounds xa, and without dropout (a cuBLAS GEMM on bf16 copies) A too; the dropout
          // kernel multiplies the reference's fp32 dropped value by fp32 A. A wrong mask bit (another
          // branch's site) moves an element of xa by about mag / IC, far above the fp32 bound. out:
          // K = IC + R + 1; bf16 rounds those, B and the result.
          const int xa_roundings = p > 0 ? 1 : 2;
          const auto xa = d_xa[b]->get(), out = block_of(wide, s.N, blk.ld, blk.col[b], OC[b]);
          EXPECT_TRUE(Close(this->family("lora_forward xa"), xa, xa_ref[b], xa_mag[b],
                            2 * s.IC * kU32 + xa_roundings * Prec<T>::u))
              << where << " branch " << b;
          EXPECT_TRUE(Close(this->family("lora_forward out"), out, ref[b], mag[b],
                            2 * (s.IC + s.R + 1) * kU32 + (xa_roundings + 2) * Prec<T>::u))
              << where << " branch " << b;
          EXPECT_TRUE(Identical(xa, d_xa1[b]->get())) << where << " branch " << b << ": xa unlike the branch alone";
          EXPECT_TRUE(Identical(out, block_of(wide1, s.N, blk.ld, blk.col[b], OC[b])))
              << where << " branch " << b << ": out unlike the branch alone";
        }
      }
    }
  }
}

TYPED_TEST(Gemm, LoraBackward) {
  using T = TypeParam;
  // An offset that is a multiple of 4 (the kernel's one-Philox-per-thread path).
  const l2v::DropoutKey seed{0xD20Full, 1 << 20};
  for (const LoraShape s : kLoraShapes) {
    for (float p : {0.0f, 0.3f}) {
      for (const int count : kBranchCounts) {
        const float scale = 16.0f / s.R;
        const auto inp = rounded<T>(randn((size_t)s.N * s.IC, this->rng_));
        const auto dinp0 = rounded<T>(randn((size_t)s.N * s.IC, this->rng_));
        Dev<T> d_inp(inp), d_dinp(dinp0), d_dinp1(dinp0);
        const lc::LoraInput<T> in{d_inp.ptr, s.N, s.IC, s.R, scale, p, seed};
        // The reference runs the branches one after the other into one dinp.
        std::vector<float> dinp = dinp0, dinp_mag = absv(dinp0), scratch((size_t)s.N * s.IC);
        std::vector<std::vector<float>> dA(count), dB(count), dA_mag(count), dB_mag(count);
        const Blocks blk(s, count);
        std::vector<float> dout_wide = rounded<T>(randn((size_t)s.N * blk.ld, this->rng_));
        Dev<T> d_dout(dout_wide);
        std::vector<DevPtr<T>> d_xa;
        std::vector<DevPtr<float>> d_A, d_B, d_dA, d_dB, d_dA1, d_dB1;
        lc::LoraBackwardBranch<T> br[l2v::kMaxLoraBranches];
        int OC[l2v::kMaxLoraBranches];
        int chain = 2;  // dinp's fp32 additions: its start, then each branch's OC + R terms and its sum
        for (int b = 0; b < count; ++b) {
          OC[b] = branch_oc(s, b);
          chain += OC[b] + s.R + 1;
          const uint32_t site = 3 + 5 * b;
          const auto A = randn((size_t)s.R * s.IC, this->rng_, 0.2f);
          const auto B = randn((size_t)OC[b] * s.R, this->rng_, 0.2f);
          const auto dout = block_of(dout_wide, s.N, blk.ld, blk.col[b], OC[b]);
          // xa as the forward saved it (in T).
          std::vector<float> out_unused((size_t)s.N * OC[b]), xa((size_t)s.N * s.R);
          cpu::lora_forward(out_unused.data(), OC[b], xa.data(), inp.data(), A.data(), B.data(), scale, p, seed, site,
                            scratch.data(), s.N, s.IC, OC[b], s.R);
          xa = rounded<T>(xa);
          const auto dA0 = randn((size_t)s.R * s.IC, this->rng_), dB0 = randn((size_t)OC[b] * s.R, this->rng_);
          dA[b] = dA0;
          dB[b] = dB0;
          cpu::lora_backward(dinp.data(), dA[b].data(), dB[b].data(), dout.data(), OC[b], inp.data(), xa.data(),
                             A.data(), B.data(), scale, p, seed, site, scratch.data(), s.N, s.IC, OC[b], s.R);
          dA_mag[b] = absv(dA0);
          dB_mag[b] = absv(dB0);
          cpu::lora_backward(dinp_mag.data(), dA_mag[b].data(), dB_mag[b].data(), absv(dout).data(), OC[b],
                             absv(inp).data(), absv(xa).data(), absv(A).data(), absv(B).data(), scale, p, seed, site,
                             scratch.data(), s.N, s.IC, OC[b], s.R);
          d_xa.push_back(std::make_unique<Dev<T>>(xa));
          d_A.push_back(std::make_unique<Dev<float>>(A));
          d_B.push_back(std::make_unique<Dev<float>>(B));
          d_dA.push_back(std::make_unique<Dev<float>>(dA0));
          d_dB.push_back(std::make_unique<Dev<float>>(dB0));
          d_dA1.push_back(std::make_unique<Dev<float>>(dA0));
          d_dB1.push_back(std::make_unique<Dev<float>>(dB0));
          br[b] = {d_dout.ptr + blk.col[b], d_xa[b]->ptr, d_A[b]->ptr, d_B[b]->ptr, d_dA[b]->ptr, d_dB[b]->ptr, site,
                   OC[b], blk.ld};
        }
        Bytes ws(lc::lora_branches_workspace_bytes(sizeof(T), s.N, s.IC, OC, count, s.R));
        lc::lora_backward_cuda<T>(this->handle_, d_dinp.ptr, in, br, count, ws.ptr);
        for (int b = 0; b < count; ++b) {  // each branch alone, in order, for the bits
          lc::LoraBackwardBranch<T> one = br[b];
          one.dA = d_dA1[b]->ptr;
          one.dB = d_dB1[b]->ptr;
          lc::lora_backward_cuda<T>(this->handle_, d_dinp1.ptr, in, &one, 1, ws.ptr);
        }
        this->sync();
        const std::string where = lora_where(s, p, count);
        for (int b = 0; b < count; ++b) {
          // dB: K = N + 1, fp32 out of T operands that are the reference's own inputs: no rounding.
          const auto got_dA = d_dA[b]->get(), got_dB = d_dB[b]->get();
          EXPECT_TRUE(Close(this->family("lora_backward dB"), got_dB, dB[b], dB_mag[b], 2 * (s.N + 1) * kU32))
              << where << " branch " << b;
          // dA: K = OC + N + slices + 1 (the dropout kernels add at most 16 slices' partial sums); bf16 rounds
          // B and dxa (the dropout kernel's dropped input is the reference's fp32 value).
          EXPECT_TRUE(Close(this->family("lora_backward dA"), got_dA, dA[b], dA_mag[b],
                            2 * (OC[b] + s.N + lc::kLoraMaxSlices + 1) * kU32 + 2 * Prec<T>::u))
              << where << " branch " << b;
          EXPECT_TRUE(Identical(got_dA, d_dA1[b]->get())) << where << " branch " << b << ": dA unlike it alone";
          EXPECT_TRUE(Identical(got_dB, d_dB1[b]->get())) << where << " branch " << b << ": dB unlike it alone";
        }
        // dinp: K = `chain`; bf16 rounds each branch's B and dxa, and the result: once with dropout (the
        // branches summed in fp32), once per branch without (a cuBLAS GEMM with beta = 1 each, on bf16
        // copies of A too); the dropout kernel reads A in fp32.
        const auto got_dinp = d_dinp.get();
        EXPECT_TRUE(Close(this->family("lora_backward dinp"), got_dinp, dinp, dinp_mag,
                          2 * chain * kU32 + (p > 0 ? 3 : 3 + count) * Prec<T>::u))
            << where;
        // In fp32 the sum in registers is the same chain of additions as one branch after the other.
        if (std::is_same<T, float>::value) {
          EXPECT_TRUE(Identical(got_dinp, d_dinp1.get())) << where;
        }
      }
    }
  }
}

TYPED_TEST(Gemm, LoraMergeAndUnmerge) {
  using T = TypeParam;
  for (const LoraShape s : kLoraShapes) {
    for (float sign : {1.0f, -1.0f}) {
      const float scale = 16.0f / s.R;
      const auto w0 = rounded<T>(randn((size_t)s.OC * s.IC, this->rng_));
      const auto A = randn((size_t)s.R * s.IC, this->rng_, 0.2f);
      const auto B = randn((size_t)s.OC * s.R, this->rng_, 0.2f);
      std::vector<float> ref = w0, mag = absv(w0);
      cpu::lora_merge(ref.data(), A.data(), B.data(), scale, sign, s.IC, s.OC, s.R);
      cpu::lora_merge(mag.data(), absv(A).data(), absv(B).data(), scale, 1.0f, s.IC, s.OC, s.R);
      Dev<T> d_w(w0);
      Dev<float> d_A(A), d_B(B);
      const size_t bytes = lc::lora_workspace_bytes<T>(0, s.IC, s.OC, s.R);
      if (std::is_same<T, float>::value) {
        EXPECT_EQ(bytes, 0u) << "fp32 merges with the master weights in place";
      }
      Bytes ws(bytes);
      lc::lora_merge_cuda<T>(this->handle_, d_w.ptr, d_A.ptr, d_B.ptr, scale, sign, ws.ptr, s.IC, s.OC, s.R);
      this->sync();
      // K = R + 1; bf16 rounds A, B and the result.
      EXPECT_TRUE(Close(this->family("lora_merge"), d_w.get(), ref, mag, 2 * (s.R + 1) * kU32 + 3 * Prec<T>::u))
          << "IC " << s.IC << " OC " << s.OC << " R " << s.R << " sign " << sign;
    }
  }
}

TYPED_TEST(Gemm, LoraRejectsBadArguments) {
  using T = TypeParam;
  Dev<T> x(12), out(6), xa(2);
  Dev<float> A(4), B(6);
  const int OC[] = {3, 3, 3, 3};
  Bytes ws(lc::lora_branches_workspace_bytes(sizeof(T), 2, 2, OC, 4, 2));
  const lc::LoraForwardBranch<T> br[4] = {{out.ptr, xa.ptr, A.ptr, B.ptr, 1, 3, 3}, {out.ptr, xa.ptr, A.ptr, B.ptr, 2, 3, 3},
                                          {out.ptr, xa.ptr, A.ptr, B.ptr, 3, 3, 3}, {out.ptr, xa.ptr, A.ptr, B.ptr, 4, 3, 3}};
  lc::LoraForwardBranch<T> narrow = br[0];
  narrow.ld = 2;
  EXPECT_THROW(lc::lora_forward_cuda<T>(this->handle_, {x.ptr, 2, 2, 2, 1.0f, 0.0f, {1, 1}}, &narrow, 1, ws.ptr),
               std::invalid_argument);  // rows closer than OC
  EXPECT_THROW(lc::lora_forward_cuda<T>(this->handle_, {x.ptr, 2, 2, 2, 1.0f, 1.0f, {1, 1}}, br, 1, ws.ptr),
               std::invalid_argument);  // p = 1
  EXPECT_THROW(lc::lora_forward_cuda<T>(this->handle_, {x.ptr, 2, 2, 2, 1.0f, 0.0f, {1, 1}}, br, 1, nullptr),
               std::invalid_argument);  // no workspace (it holds at least dxa)
  EXPECT_THROW(lc::lora_forward_cuda<T>(this->handle_, {x.ptr, 2, 2, 2, 1.0f, 0.0f, {1, 1}}, br, 4, ws.ptr),
               std::invalid_argument);  // more branches than kMaxLoraBranches
  EXPECT_THROW(lc::lora_forward_cuda<T>(this->handle_, {x.ptr, 2, 2, 2, 1.0f, 0.0f, {1, 1}}, br, 0, ws.ptr),
               std::invalid_argument);  // none
}

// The fused MNTP head. Loss bound (both types: the logits are fp32 from exact products of T values):
// every logit is off by at most 2 C u32 m, m = max_v sum_c |h_c||W_vc| (GPU and reference), which moves
// log-sum-exp - logit[target] by at most twice that; the fp32 sum of V exponentials adds (V + 64) u32
// (the reference sums in double), the final additions a few u32 |loss|. d_hidden = dlogits W with
// |d dlogits_v| <= dloss p_v (loss bound) + rounding, so its mag is dloss (p + onehot) |W| and its factor
// the loss bound + 2 V u32, plus 2 u_T for bf16 (dlogits and the result are rounded).
struct HeadShape {
  int M, N, C, V, chunk;
};

TYPED_TEST(Gemm, LmHeadCrossEntropy) {
  using T = TypeParam;
  const float dloss = 0.37f;
  for (const HeadShape s : {HeadShape{1, 1, 8, 17, 1}, HeadShape{23, 37, 48, 301, 5}, HeadShape{23, 37, 48, 301, 1},
                            HeadShape{23, 37, 48, 301, 64}, HeadShape{40, 40, 33, 1000, 16},
                            HeadShape{7, 50, 19, 3, 3}}) {
    const std::string where = "M " + std::to_string(s.M) + " N " + std::to_string(s.N) + " C " + std::to_string(s.C) +
                              " V " + std::to_string(s.V) + " chunk " + std::to_string(s.chunk);
    const auto hidden = rounded<T>(randn((size_t)s.N * s.C, this->rng_));
    const auto head = rounded<T>(randn((size_t)s.V * s.C, this->rng_, 2.0f / std::sqrt((float)s.C)));
    std::vector<int> perm(s.N);
    std::iota(perm.begin(), perm.end(), 0);
    std::shuffle(perm.begin(), perm.end(), this->rng_);
    const std::vector<int> rows(perm.begin(), perm.begin() + s.M);
    std::vector<int> targets(s.M);
    std::uniform_int_distribution<int> target_dist(0, s.V - 1);
    for (int& t : targets) t = target_dist(this->rng_);

    std::vector<float> losses(s.M), d_hidden((size_t)s.N * s.C);
    cpu::lm_head_crossentropy(losses.data(), d_hidden.data(), hidden.data(), head.data(), rows.data(), targets.data(),
                              s.M, s.N, s.C, s.V, dloss);
    // Bounds from the gathered rows: m per row, and p = softmax from the reference's dlogits.
    std::vector<float> x((size_t)s.M * s.C), logits((size_t)s.M * s.V), m_abs((size_t)s.M * s.V);
    for (int k = 0; k < s.M; ++k)
      std::copy_n(hidden.begin() + (long)rows[k] * s.C, s.C, x.begin() + (long)k * s.C);
    cpu::matmul_forward(logits.data(), x.data(), head.data(), nullptr, s.M, s.C, s.V);
    cpu::matmul_forward(m_abs.data(), absv(x).data(), absv(head).data(), nullptr, s.M, s.C, s.V);
    std::vector<float> p_plus_onehot((size_t)s.M * s.V);
    cpu::crossentropy_softmax_backward(p_plus_onehot.data(), logits.data(), targets.data(), 1.0f, s.M, s.V, -1);
    for (int k = 0; k < s.M; ++k) p_plus_onehot[(size_t)k * s.V + targets[k]] += 2.0f;  // p - 1 -> p + 1
    std::vector<float> dx_mag((size_t)s.M * s.C);
    cpu::matmul_backward_input(dx_mag.data(), p_plus_onehot.data(), absv(head).data(), s.M, s.C, s.V, false);
    std::vector<double> loss_tol(s.M), dh_factor((size_t)s.N * s.C, 0.0);
    std::vector<float> loss_mag(s.M, 1.0f), dh_mag((size_t)s.N * s.C, 0.0f);
    for (int k = 0; k < s.M; ++k) {
      const double m = *std::max_element(m_abs.begin() + (long)k * s.V, m_abs.begin() + (long)(k + 1) * s.V);
      loss_tol[k] = 4 * s.C * kU32 * m + (s.V + 64) * kU32 + 4 * kU32 * std::fabs(losses[k]);
      for (int c = 0; c < s.C; ++c) {
        const size_t i = (size_t)rows[k] * s.C + c;
        dh_mag[i] = dloss * dx_mag[(size_t)k * s.C + c];
        dh_factor[i] = loss_tol[k] + 2 * s.V * kU32 + 2 * Prec<T>::u;
      }
    }

    Dev<T> d_hid(hidden), d_head(head), d_dh((size_t)s.N * s.C);
    Dev<float> d_losses(s.M), d_losses_fwd(s.M);
    Raw<int> d_rows(rows), d_targets(targets);
    Bytes scratch(lc::lm_head_crossentropy_scratch_bytes<T>(s.chunk, s.C, s.V));
    lc::lm_head_crossentropy_cuda<T>(this->handle_, d_losses.ptr, d_dh.ptr, d_hid.ptr, d_head.ptr, d_rows.ptr,
                                     d_targets.ptr, s.M, s.N, s.C, s.V, dloss, scratch.ptr, s.chunk);
    lc::lm_head_crossentropy_cuda<T>(this->handle_, d_losses_fwd.ptr, static_cast<T*>(nullptr), d_hid.ptr,
                                     d_head.ptr, d_rows.ptr, d_targets.ptr, s.M, s.N, s.C, s.V, dloss, scratch.ptr,
                                     s.chunk);
    this->sync();
    const std::vector<float> got_losses = d_losses.get();
    // mag 1 per loss: the factor is the absolute bound itself.
    EXPECT_TRUE(Close(this->family("lm_head losses"), got_losses, losses, loss_mag, loss_tol)) << where;
    EXPECT_TRUE(Identical(d_losses_fwd.get(), got_losses)) << "forward-only losses, " << where;
    const std::vector<float> got_dh = d_dh.get();
    std::vector<bool> labelled(s.N, false);
    for (int r : rows) labelled[r] = true;
    for (int n = 0; n < s.N; ++n) {
      if (labelled[n]) continue;
      for (int c = 0; c < s.C; ++c) {
        const float v = got_dh[(size_t)n * s.C + c];
        ASSERT_TRUE(v == 0.0f && !std::signbit(v)) << "unlabelled row " << n << " col " << c << " = " << v << ", "
                                                   << where;
      }
    }
    EXPECT_TRUE(Close(this->family("lm_head d_hidden"), got_dh, d_hidden, dh_mag, dh_factor)) << where;
  }
}

TYPED_TEST(Gemm, LmHeadRejectsBadArguments) {
  using T = TypeParam;
  Dev<T> h(8), w(12), dh(8);
  Dev<float> losses(2);
  Raw<int> rows({0, 1}), targets({0, 2});
  Bytes scratch(lc::lm_head_crossentropy_scratch_bytes<T>(2, 4, 3));
  EXPECT_THROW(lc::lm_head_crossentropy_cuda<T>(this->handle_, losses.ptr, dh.ptr, h.ptr, w.ptr, rows.ptr, targets.ptr,
                                                2, 2, 4, 3, 1.0f, scratch.ptr, 0),
               std::invalid_argument);  // chunk 0
  EXPECT_THROW(lc::lm_head_crossentropy_cuda<T>(this->handle_, losses.ptr, dh.ptr, h.ptr, w.ptr, rows.ptr, targets.ptr,
                                                3, 2, 4, 3, 1.0f, scratch.ptr, 2),
               std::invalid_argument);  // more labelled rows than rows
}

}  // namespace
