// Tests of the flash-attention kernels (cuda/attention.cuh), run on the CUDA-on-CPU emulator and compared
// with the fp32 CPU reference l2v::cpu::attention_forward / attention_backward on the same inputs: ragged
// lengths (T = 1, 5, 33, 37, 40, 70 against 32- and 64-row tiles), right-, left- and all-padding rows and
// padding holes, GQA ratios 1, 2, 4 and 8, batch 1, causal and bidirectional, every compiled head dim,
// and attention dropout, whose mask must be the CPU's exactly for the outputs to agree to fp32 precision.
//
// Errors are measured relative to the largest reference value of each tensor, or to 1 if that is smaller:
// max |got - want| / max(max |want|, 1). (The inputs are O(1). The floor is for tensors that vanish up to
// rounding, such as dq and dk at T = 1, where P = 1 and dS = P (dP - D_i) cancels exactly.)
//   fp32: 1e-5. The kernels sum in another order than the reference (tiles, online softmax, exp2 of
//         base-2 scores); what remains is fp32 rounding.
//   bf16: 2e-2. Inputs are rounded to bf16 for the reference too, so the difference is the rounding of
//         the bf16 outputs (2^-9 relative) and, in the backward, of the bf16 `out` that D_i is computed from.
// lse must be -inf exactly where the reference's is.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <random>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda/attention.cuh"
#include "cuda/launch.h"
#include "host/cpu_ops.h"
#include "host/philox.h"
#include "test/cuda_test_util.h"

namespace {

namespace emu = l2v::emu;

constexpr double kFp32Tol = 1e-5;
constexpr double kBf16Tol = 2e-2;

using l2v::test::Dev, l2v::test::Raw, l2v::test::rounded;

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

struct Inputs {
  std::vector<float> q, k, v, dout;
  std::vector<int> mask;
};

// Random inputs; q is scaled up so that the softmax is not flat. bf16 runs round them first so that the
// reference sees exactly what the kernels see.
Inputs make_inputs(const Shape& s, bool bf16, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t N = (size_t)s.B * s.T;
  auto fill = [&](size_t n, float scale) {
    std::vector<float> x(n);
    for (float& e : x) e = scale * normal(rng);
    if (bf16) x = rounded<__nv_bfloat16>(std::move(x));
    return x;
  };
  Inputs in;
  in.q = fill(N * s.H * s.D, 2.0f);
  in.k = fill(N * s.KV * s.D, 1.0f);
  in.v = fill(N * s.KV * s.D, 1.0f);
  in.dout = fill(N * s.H * s.D, 1.0f);
  in.mask = make_mask(s);
  return in;
}

struct Results {
  std::vector<float> out, lse, dq, dk, dv;
};

constexpr uint64_t kSeed = 0x5EEDull;
constexpr uint32_t kStream = 7;

Results run_cpu(const Shape& s, const Inputs& in) {
  const size_t N = (size_t)s.B * s.T;
  Results r;
  r.out.resize(N * s.H * s.D);
  r.lse.resize((size_t)s.B * s.H * s.T);
  r.dq.resize(N * s.H * s.D);
  r.dk.resize(N * s.KV * s.D);
  r.dv.resize(N * s.KV * s.D);
  l2v::cpu::attention_forward(r.out.data(), r.lse.data(), in.q.data(), in.k.data(), in.v.data(), in.mask.data(), s.B,
                              s.T, s.H, s.KV, s.D, s.causal, s.dropout_p, kSeed, kStream);
  l2v::cpu::attention_backward(r.dq.data(), r.dk.data(), r.dv.data(), in.dout.data(), r.out.data(), r.lse.data(),
                               in.q.data(), in.k.data(), in.v.data(), in.mask.data(), s.B, s.T, s.H, s.KV, s.D,
                               s.causal, s.dropout_p, kSeed, kStream);
  return r;
}

// The forward, then the backward on the forward's own out and lse (as in training).
template <typename T>
Results run_cuda(const Shape& s, const Inputs& in) {
  const size_t N = (size_t)s.B * s.T;
  Dev<T> q(in.q), k(in.k), v(in.v);
  Dev<T> dout(in.dout);
  Raw<int> mask(in.mask);
  Dev<T> out(N * s.H * s.D), dq(N * s.H * s.D), dk(N * s.KV * s.D), dv(N * s.KV * s.D);
  Dev<float> lse((size_t)s.B * s.H * s.T);
  Dev<float> scratch(l2v::cuda::attention_backward_scratch_bytes(s.B, s.T, s.H, s.KV, s.D) / sizeof(float));
  l2v::cuda::attention_forward_cuda<T>(out.ptr, lse.ptr, q.ptr, k.ptr, v.ptr, mask.ptr, s.B, s.T, s.H, s.KV, s.D,
                                       s.causal, s.dropout_p, kSeed, kStream, nullptr);
  l2v::cuda::attention_backward_cuda<T>(dq.ptr, dk.ptr, dv.ptr, dout.ptr, out.ptr, lse.ptr, q.ptr, k.ptr, v.ptr,
                                        mask.ptr, s.B, s.T, s.H, s.KV, s.D, s.causal, s.dropout_p, kSeed, kStream,
                                        scratch.ptr, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  Results r;
  r.out = out.get();
  r.lse = lse.get();
  r.dq = dq.get();
  r.dk = dk.get();
  r.dv = dv.get();
  return r;
}

// max |got - want| / max(max |want|, 1); infinity when a value is NaN or an infinity does not match exactly.
double rel_err(const std::vector<float>& got, const std::vector<float>& want) {
  double err = 0.0, scale = 1.0;
  for (size_t i = 0; i < want.size(); ++i) {
    if (std::isinf(want[i]) || std::isinf(got[i]) || std::isnan(got[i])) {
      if (got[i] != want[i]) return INFINITY;
      continue;
    }
    err = std::max(err, std::fabs((double)got[i] - want[i]));
    scale = std::max(scale, std::fabs((double)want[i]));
  }
  return err / scale;
}

struct Worst {
  double out = 0, lse = 0, dq = 0, dk = 0, dv = 0;
  void print(const char* what) const {
    std::printf("[ worst    ] %s: out %.2e  lse %.2e  dq %.2e  dk %.2e  dv %.2e\n", what, out, lse, dq, dk, dv);
  }
};

template <typename T>
void check_against_cpu(const Shape& s, double tol, Worst& worst) {
  const bool bf16 = std::is_same<T, __nv_bfloat16>::value;
  const Inputs in = make_inputs(s, bf16, 1234u + s.T * 31u + s.D);
  const Results want = run_cpu(s, in);
  const Results got = run_cuda<T>(s, in);
  struct Tensor {
    const char* name;
    const std::vector<float>& got;
    const std::vector<float>& want;
    double& worst;
  };
  for (const Tensor& t : {Tensor{"out", got.out, want.out, worst.out}, Tensor{"lse", got.lse, want.lse, worst.lse},
                          Tensor{"dq", got.dq, want.dq, worst.dq}, Tensor{"dk", got.dk, want.dk, worst.dk},
                          Tensor{"dv", got.dv, want.dv, worst.dv}}) {
    const double err = rel_err(t.got, t.want);
    t.worst = std::max(t.worst, err);
    EXPECT_LE(err, tol) << (bf16 ? "bf16 " : "fp32 ") << t.name << ", " << describe(s);
  }
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
    const uint32_t stream = (uint32_t)rng(), bh = (uint32_t)rng() % 4096, i = (uint32_t)rng() % 100000,
                   j4 = (uint32_t)rng() % 100000;
    const float p = (float)(rng() % 1000) / 1000.0f;
    const unsigned bits = l2v::cuda::attention_keep4(seed, stream, bh, i, j4, p);
    for (uint32_t e = 0; e < 4; ++e) {
      ASSERT_EQ((bits >> e & 1u) != 0, l2v::dropout_keep_attention(seed, stream, bh, i, 4 * j4 + e, p))
          << "n=" << n << " e=" << e;
    }
  }
}

TEST(CudaAttention, Fp32MatchesCpuReference) {
  Worst worst;
  for (const Shape& s : fp32_shapes()) check_against_cpu<float>(s, kFp32Tol, worst);
  worst.print("fp32");
}

TEST(CudaAttention, Bf16MatchesCpuReferenceOnRoundedInputs) {
  Worst worst;
  for (const Shape& s : bf16_shapes()) check_against_cpu<__nv_bfloat16>(s, kBf16Tol, worst);
  worst.print("bf16");
}

// A missing __syncthreads() or __syncwarp() shows as results that depend on the order in which the
// emulator runs a block's threads; without atomics the results must not change at all.
TEST(CudaAttention, BitwiseIdenticalInEveryScheduleOrder) {
  const Shape s{4, 40, 4, 2, 16, true, 0.3f, Padding::kMixed};
  const Inputs in = make_inputs(s, false, 77);
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

// Rows with no visible key: out 0, lse -inf, and zero gradients for them and for padding keys.
TEST(CudaAttention, AllPaddingRowsGiveZeroOutputAndGradients) {
  const Shape s{3, 33, 2, 1, 16, false, 0.0f, Padding::kMixed};  // batch row 2 is all padding
  const Inputs in = make_inputs(s, false, 3);
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
    l2v::cuda::attention_forward_cuda<float>(x.ptr, lse.ptr, x.ptr, x.ptr, x.ptr, nullptr, 1, 4, H, KV, D, false, p,
                                             0, 0, nullptr);
  };
  auto message = [](auto&& run) -> std::string {
    try {
      run();
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "";
  };
  const std::string d32 = message([&] { forward(1, 1, 32, 0.0f); });
  EXPECT_NE(d32.find("head dim D=32 is not supported"), std::string::npos) << d32;
  EXPECT_NE(message([&] { forward(3, 2, 16, 0.0f); }).find("multiple of KV"), std::string::npos);
  EXPECT_NE(message([&] { forward(1, 1, 16, 1.0f); }).find("dropout probability"), std::string::npos);
  const std::string bwd = message([&] {
    l2v::cuda::attention_backward_cuda<float>(x.ptr, x.ptr, x.ptr, x.ptr, x.ptr, lse.ptr, x.ptr, x.ptr, x.ptr, nullptr,
                                              1, 4, 1, 1, 96, false, 0.0f, 0, 0, scratch.ptr, nullptr);
  });
  EXPECT_NE(bwd.find("attention_backward_cuda: head dim D=96"), std::string::npos) << bwd;
  EXPECT_NE(message([&] {
              l2v::cuda::attention_backward_cuda<float>(x.ptr, x.ptr, x.ptr, x.ptr, x.ptr, lse.ptr, x.ptr, x.ptr,
                                                        x.ptr, nullptr, 1, 4, 1, 1, 16, false, 0.0f, 0, 0, nullptr,
                                                        nullptr);
            }).find("scratch"),
            std::string::npos);
}

}  // namespace
