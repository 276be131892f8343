// Tests of the tensor-core attention kernels (cuda/attention_mma.cuh), run on the CUDA-on-CPU emulator
// (mma.sync, ldmatrix and cp.async emulated at the PTX level, host/emu/ptx.h) and compared with the fp32
// CPU reference l2v::cpu::attention_forward / attention_backward on the same bf16- or fp16-rounded inputs:
// tails (T = 1, 33, 37, 40, 70, 150 against 64-row blocks and 16/32/64-row tiles), GQA ratios 1, 2 and 4,
// left- and right-padded rows, all-padding rows and padding holes, causal and bidirectional, attention
// dropout, D = 16, 64 and 128. The backward reference runs on the kernels' own out and lse (as training
// does), so that its comparison measures the backward kernels alone.
//
// Tolerances are per element, derived from the arithmetic (the numerics paragraph of attention_mma.cuh),
// not picked: test/attention_bounds.h derives them (u_T the storage type's unit roundoff, tiny for fp16's
// subnormals).
// Each comparison records its worst error, relative to the sum of |terms| behind the element (pv_id for
// out, ...) and as a fraction of its bound (printed at the end): the bounds must hold, and for the rounded
// outputs the worst fraction must not be orders of magnitude below 1 (> 0.05), or the bound would be too
// loose to catch a rounding-sized bug. lse is fp32 only: its worst-case bound sits 1-2 orders above the
// typical error (printed, not asserted). On a GPU the mma's k-sum may
// be ordered and rounded differently (host/emu/ptx.h); gamma_n covers any order of an n-term sum.
//
// Also: the dropout masks, bit for bit (Q = cI, K = V = I make each kept or dropped probability visible
// in the sign of an output element), a planted wrong dropout site that the bounds must catch, results
// bitwise identical in every scheduling order (no missing barrier), the ldmatrix bank-conflict counts of
// each kernel (0 by design: padded rows), and the launchers' refusals.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "cuda/attention_mma.cuh"
#include "cuda/launch.h"
#include "host/cpu_ops.h"
#include "host/philox.h"
#include "test/attention_bounds.h"
#include "test/attention_test_util.h"
#include "test/cuda_test_util.h"
#include "test/test_util.h"

namespace {

#if defined(L2V_EMULATE)
namespace emu = l2v::emu;
#endif
using l2v::test::CloseStored;
using l2v::test::Dev;
using l2v::test::gamma32;
using l2v::test::kU32;
using l2v::test::Prec;
using l2v::test::Raw;
using l2v::test::rounded;

constexpr uint64_t kSeed = 0xA77Eull;
constexpr uint32_t kSite = 3;


// Padding of one batch row: `left` leading and `right` trailing padding tokens, or every third token
// (holes).
struct RowPad {
  int left = 0, right = 0;
  bool holes = false;
};

struct Case {
  int B, T, H, KV, D;
  bool causal;
  float p;
  std::vector<RowPad> pads;  // batch row b takes pads[b % size]; empty: no padding
};

std::string describe(const Case& c) {
  std::string s = "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
                  " KV=" + std::to_string(c.KV) + " D=" + std::to_string(c.D) + (c.causal ? " causal" : " bidir") +
                  " p=" + std::to_string(c.p).substr(0, 4) + " pads";
  for (const RowPad& r : c.pads)
    s += r.holes ? " holes" : " [" + std::to_string(r.left) + "," + std::to_string(r.right) + "]";
  return s;
}

std::vector<int> key_mask(const Case& c) {
  std::vector<int> mask((size_t)c.B * c.T, 1);
  if (c.pads.empty()) return mask;
  for (int b = 0; b < c.B; ++b) {
    const RowPad& r = c.pads[b % c.pads.size()];
    for (int t = 0; t < c.T; ++t) {
      const bool pad = r.holes ? t % 3 == 1 : t < r.left || t >= c.T - r.right;
      mask[(size_t)b * c.T + t] = !pad;
    }
  }
  return mask;
}

using Inputs = l2v::test::AttentionInputs;
using Results = l2v::test::AttentionResults;

l2v::test::AttentionDims dims(const Case& c) { return {c.B, c.T, c.H, c.KV, c.D, c.causal, c.p}; }

template <typename T>
Inputs random_inputs(const Case& c, uint32_t seed) {
  return l2v::test::random_attention_inputs<T>(dims(c), key_mask(c), seed);
}

// The mma forward, then the mma backward on the forward's own out and lse.
template <typename T>
Results run_mma(const Case& c, const Inputs& in, uint32_t site = kSite, uint64_t offset = 0,
                l2v::test::QkvLayout layout = l2v::test::QkvLayout::kPacked) {
  return l2v::test::run_attention_kernels<T>(dims(c), in, l2v::cuda::attention_mma_forward_cuda<T>,
                                             l2v::cuda::attention_mma_backward_cuda<T>, l2v::DropoutKey{kSeed, offset},
                                             site, layout);
}

// The reference forward on the inputs; its backward on the kernels' out and lse (`fwd`).
Results run_cpu(const Case& c, const Inputs& in, const Results& fwd) {
  return l2v::test::cpu_attention(dims(c), in, fwd.out, fwd.lse, kSeed, kSite);
}

// The bounds of test/attention_bounds.h for this case, from the inputs and the kernels' out and lse (`got`).
l2v::test::AttentionBounds derive_bounds(const Case& c, const Inputs& in, const Results& got, double uT, double tiny) {
  return l2v::test::derive_attention_bounds(dims(c), in, got, l2v::DropoutKey{kSeed, 0}, kSite, uT, tiny);
}

// -inf where the reference has -inf (rows without a visible key), exactly; those entries then compare
// as 0.
::testing::AssertionResult same_infinities(std::vector<float>& got, std::vector<float>& want) {
  for (size_t e = 0; e < want.size(); ++e) {
    if (std::isinf(want[e]) || std::isinf(got[e])) {
      if (got[e] != want[e])
        return ::testing::AssertionFailure() << "lse[" << e << "] = " << got[e] << ", want " << want[e];
      got[e] = want[e] = 0.0f;
    }
  }
  return ::testing::AssertionSuccess();
}

template <typename T>
std::string family(const char* tensor, const Case& c) {
  return std::string("mma ") + tensor + " " + Prec<T>::name + " D=" + std::to_string(c.D);
}

template <typename T>
void check_against_cpu(const Case& c, uint32_t seed) {
  SCOPED_TRACE(std::string(Prec<T>::name) + " " + describe(c));
  const Inputs in = random_inputs<T>(c, seed);
  Results got = run_mma<T>(c, in);
  Results want = run_cpu(c, in, got);
  const double tiny = std::is_same<T, __half>::value ? std::ldexp(1.0, -25) : 0.0;
  const l2v::test::AttentionBounds bd = derive_bounds(c, in, got, Prec<T>::u, tiny);
  EXPECT_TRUE(CloseStored<T>(family<T>("out", c), got.out, want.out, bd.out.mag, bd.out.pre));
  ASSERT_TRUE(same_infinities(got.lse, want.lse));
  EXPECT_TRUE(CloseStored<float>(family<T>("lse", c), got.lse, want.lse, bd.lse.mag, bd.lse.pre));
  EXPECT_TRUE(CloseStored<T>(family<T>("dq", c), got.dq, want.dq, bd.dq.mag, bd.dq.pre));
  EXPECT_TRUE(CloseStored<T>(family<T>("dk", c), got.dk, want.dk, bd.dk.mag, bd.dk.pre));
  EXPECT_TRUE(CloseStored<T>(family<T>("dv", c), got.dv, want.dv, bd.dv.mag, bd.dv.pre));
}

// The rounded outputs' worst error is a sizeable fraction of its bound (the bound is not loose).
void expect_bounds_are_tight(const char* precision) {
  for (const auto& [name, w] : l2v::test::worst_table()) {
    if (name.find(precision) == std::string::npos || name.find(" lse ") != std::string::npos) continue;
    EXPECT_GT(w.of_tol, 0.05) << name << ": the worst error is " << w.of_tol << " of the derived bound";
  }
}

const std::vector<Case>& bf16_cases() {
  static const std::vector<Case> cases = {
      // Tails against 64-row blocks and 64-key tiles, GQA 2, every padding kind, dropout.
      {4, 70, 4, 2, 16, true, 0.3f, {{0, 20}, {25, 0}, {70, 0}, {0, 0, true}}},
      {3, 33, 4, 1, 16, false, 0.0f, {{5, 0}, {0, 7}, {}}},
      {1, 1, 4, 1, 16, true, 0.3f, {}},
      {2, 40, 2, 1, 64, true, 0.3f, {{9, 0}, {0, 13}}},
      {2, 70, 2, 2, 64, false, 0.3f, {{0, 0, true}, {}}},
      // Three 64-row blocks, the first key tiles of the later ones wholly padding.
      {2, 150, 4, 2, 64, true, 0.1f, {{70, 0}, {0, 31}}},
      // 32-key and 16-query tiles.
      {1, 37, 2, 1, 128, true, 0.3f, {{3, 0}}},
      {1, 70, 4, 2, 128, false, 0.0f, {{0, 0, true}}},
  };
  return cases;
}

const std::vector<Case>& fp16_cases() {
  static const std::vector<Case> cases = {
      {2, 70, 4, 1, 64, true, 0.2f, {{0, 10}, {30, 0}}},
      {2, 37, 2, 2, 16, false, 0.0f, {{0, 0, true}, {37, 0}}},
      {1, 33, 2, 2, 128, false, 0.3f, {{0, 5}}},
  };
  return cases;
}

TEST(CudaAttentionMma, Bf16MatchesTheCpuReferenceWithinDerivedBounds) {
  uint32_t seed = 11;
  for (const Case& c : bf16_cases()) check_against_cpu<__nv_bfloat16>(c, seed++);
  expect_bounds_are_tight("bf16");
}

TEST(CudaAttentionMma, Fp16MatchesTheCpuReferenceWithinDerivedBounds) {
  uint32_t seed = 31;
  for (const Case& c : fp16_cases()) check_against_cpu<__half>(c, seed++);
  expect_bounds_are_tight("fp16");
}

// Planted bug: the kernels drawing another dropout site than the reference (a mask off by one site)
// must fail the bounds, so the comparisons above do see the mask.
TEST(CudaAttentionMma, AWrongDropoutSiteFailsTheBounds) {
  const Case c{2, 40, 2, 1, 64, false, 0.3f, {}};
  const Inputs in = random_inputs<__nv_bfloat16>(c, 5);
  const Results got = run_mma<__nv_bfloat16>(c, in, kSite + 1);
  const Results want = run_cpu(c, in, got);
  const l2v::test::AttentionBounds bd = derive_bounds(c, in, got, Prec<__nv_bfloat16>::u, 0.0);
  size_t outside = 0;
  for (size_t e = 0; e < want.out.size(); ++e) {
    const double tol = bd.out.pre[e] + Prec<__nv_bfloat16>::u * (std::fabs(want.out[e]) + bd.out.pre[e]);
    outside += std::fabs((double)got.out[e] - want.out[e]) > tol;
  }
  std::printf("wrong dropout site: %zu of %zu outputs outside the bound\n", outside, want.out.size());
  EXPECT_GT(outside, want.out.size() / 2);
}

// The dropout masks bit for bit. With q_i = c e_i, k_j = v_j = e_j (T <= D) and dout_i = (1, ..., 1):
//   out_id = P'_id: zero exactly where (i, d) is dropped or invisible;
//   dq_id = scale dS_id and dk_jd = scale c dS_dj (H = KV, so dk sums one head), where
//   dS_ij = P_ij (keep_ij/(1-p) - D_i) and D_i = sum_j P'_ij = (1/(1-p)) sum_{kept} P_ij:
//   positive where kept, negative where dropped, in every row with both (a margin of at least
//   P_ij/(1-p) sum_{dropped} P_ij, far above the rounding of D_i); 0 in a row with nothing kept.
// So each kernel's keep decision for every (query, key) shows in the sign of one output element.
template <typename T>
void check_masks(const Case& c, uint64_t offset = 0) {
  SCOPED_TRACE(describe(c));
  ASSERT_LE(c.T, c.D);
  ASSERT_EQ(c.H, c.KV);
  const float cq = 0.5f;
  const size_t N = (size_t)c.B * c.T;
  Inputs in;
  in.q.assign(N * c.H * c.D, 0.0f);
  in.k.assign(N * c.KV * c.D, 0.0f);
  in.dout.assign(N * c.H * c.D, 1.0f);
  for (size_t n = 0; n < N; ++n) {
    const int t = (int)(n % c.T);
    for (int h = 0; h < c.H; ++h) {
      in.q[(n * c.H + h) * c.D + t] = cq;
      in.k[(n * c.KV + h) * c.D + t] = 1.0f;
    }
  }
  in.v = in.k;
  in.mask = key_mask(c);
  const Results got = run_mma<T>(c, in, kSite, offset);
  size_t checked = 0;
  for (int b = 0; b < c.B; ++b) {
    for (int h = 0; h < c.H; ++h) {
      const uint32_t bh = (uint32_t)(b * c.H + h);
      for (int i = 0; i < c.T; ++i) {
        std::vector<int> state(c.T);  // 0 invisible, 1 kept, 2 dropped
        bool any_kept = false, any_dropped = false;
        for (int j = 0; j < c.T; ++j) {
          if (!in.mask[(size_t)b * c.T + j] || (c.causal && j > i)) continue;
          const bool kept =
              l2v::dropout_keep_attention(kSeed, kSite, (uint32_t)offset + bh, (uint32_t)i, (uint32_t)j, c.p);
          state[j] = kept ? 1 : 2;
          (kept ? any_kept : any_dropped) = true;
        }
        const size_t row = (((size_t)b * c.T + i) * c.H + h) * c.D;
        for (int j = 0; j < c.T; ++j) {
          const size_t key = (((size_t)b * c.T + j) * c.KV + h) * c.D + i;  // dk[b, j, h, d = i]
          const float out = got.out[row + j], dq = got.dq[row + j], dk = got.dk[key];
          ASSERT_EQ(out != 0.0f, state[j] == 1) << "out: b=" << b << " h=" << h << " i=" << i << " j=" << j;
          if (state[j] == 0 || !any_kept) {
            ASSERT_EQ(dq, 0.0f) << "b=" << b << " h=" << h << " i=" << i << " j=" << j;
            ASSERT_EQ(dk, 0.0f) << "b=" << b << " h=" << h << " i=" << i << " j=" << j;
          } else if (any_dropped) {
            const bool kept = state[j] == 1;
            ASSERT_EQ(dq > 0.0f, kept) << "dq: b=" << b << " h=" << h << " i=" << i << " j=" << j << " " << dq;
            ASSERT_EQ(dk > 0.0f, kept) << "dk: b=" << b << " h=" << h << " i=" << i << " j=" << j << " " << dk;
            ASSERT_NE(dq, 0.0f);
            ASSERT_NE(dk, 0.0f);
          }
          checked += state[j] != 0;
        }
      }
    }
  }
  std::printf("dropout masks: %zu (query, key) decisions seen in out, dq and dk (%s)\n", checked,
              describe(c).c_str());
}

TEST(CudaAttentionMma, DropoutMasksAreTheCpusBitForBit) {
  check_masks<__nv_bfloat16>({2, 61, 2, 2, 64, true, 0.5f, {{0, 7}, {11, 0}}});
  check_masks<__half>({1, 100, 2, 2, 128, false, 0.5f, {{4, 9}}});
  // Rows placed at batch*head 6 of a larger batch (DropoutKey::offset, a data-parallel rank's rows).
  check_masks<__nv_bfloat16>({2, 61, 2, 2, 64, true, 0.5f, {{0, 7}, {11, 0}}}, 6);
}

// q, k, v and their gradients as column blocks of the fused q|k|v product's rows (the model's layout): the
// packed layout's bits, the spare columns beside the blocks neither read nor written
// (test/attention_test_util.h). A kernel that took H*D for q's stride, or q's for out's, fails it.
TEST(CudaAttentionMma, FusedQkvRowsGiveThePackedBits) {
  const Case c{2, 40, 4, 2, 64, true, 0.3f, {{0, 9}, {0, 0, true}}};
  const Inputs in = random_inputs<__nv_bfloat16>(c, 31);
  const Results packed = run_mma<__nv_bfloat16>(c, in),
                fused = run_mma<__nv_bfloat16>(c, in, kSite, 0, l2v::test::QkvLayout::kFused);
  EXPECT_EQ(fused.out, packed.out);
  EXPECT_EQ(fused.lse, packed.lse);
  EXPECT_EQ(fused.dq, packed.dq);
  EXPECT_EQ(fused.dk, packed.dk);
  EXPECT_EQ(fused.dv, packed.dv);
}

#if defined(L2V_EMULATE)  // the emulator's scheduling orders and counters
// Without atomics and with every barrier in place, the results do not depend on the order in which the
// emulator runs a block's threads.
TEST(CudaAttentionMma, BitwiseIdenticalInEveryScheduleOrder) {
  const Case c{2, 40, 4, 2, 16, true, 0.3f, {{0, 9}, {0, 0, true}}};
  const Inputs in = random_inputs<__nv_bfloat16>(c, 77);
  std::vector<Results> runs;
  for (const emu::Schedule& order : l2v::test::all_orders()) {
    l2v::test::ScheduleScope scope(order);
    runs.push_back(run_mma<__nv_bfloat16>(c, in));
  }
  auto same = [](const std::vector<float>& a, const std::vector<float>& b) {
    return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
  };
  for (size_t r = 1; r < runs.size(); ++r) {
    const std::string order = l2v::test::order_name(l2v::test::all_orders()[r]);
    EXPECT_TRUE(same(runs[r].out, runs[0].out)) << order;
    EXPECT_TRUE(same(runs[r].lse, runs[0].lse)) << order;
    EXPECT_TRUE(same(runs[r].dq, runs[0].dq)) << order;
    EXPECT_TRUE(same(runs[r].dk, runs[0].dk)) << order;
    EXPECT_TRUE(same(runs[r].dv, runs[0].dv)) << order;
  }
}

// The ldmatrix bank conflicts of each kernel, as the emulator counts them (shared rows padded by 16
// bytes: none).
template <int D>
void print_bank_conflicts() {
  namespace ad = l2v::cuda::attention_detail;
  namespace md = l2v::cuda::attention_mma_detail;
  using bf16 = __nv_bfloat16;
  const Case c{1, 70, 2, 1, D, true, 0.0f, {}};
  const Inputs in = random_inputs<bf16>(c, 9);
  const size_t N = (size_t)c.B * c.T;
  Dev<bf16> q(in.q), k(in.k), v(in.v), dout(in.dout), out(N * c.H * D), dq(N * c.H * D), dk(N * c.KV * D),
      dv(N * c.KV * D);
  Dev<float> lse((size_t)c.B * c.H * c.T), scratch(N * c.H);
  l2v::cuda::AttentionParams<bf16> p = ad::make_backward_params("test", dq.ptr, dk.ptr, dv.ptr, dout.ptr, out.ptr,
                                                                lse.ptr, q.ptr, k.ptr, v.ptr,
                                                                l2v::packed_qkv(c.H, c.KV, D), nullptr, c.B, c.T, c.H,
                                                                c.KV, D, c.causal, 0.0f, kSeed, kSite, scratch.ptr);
  md::run_attention_mma_fwd<D>(p, nullptr);
  const emu::LaunchStats fwd = emu::last_launch_stats();
  ad::run_attention_bwd_dot<D>(p, nullptr);
  md::run_attention_mma_dq<D>(p, nullptr);
  const emu::LaunchStats dqs = emu::last_launch_stats();
  md::run_attention_mma_dkdv<D>(p, nullptr);
  const emu::LaunchStats kv = emu::last_launch_stats();
  CUDA_CHECK(cudaDeviceSynchronize());
  std::printf("D=%3d ldmatrix wavefronts / bank conflicts: fwd %llu / %llu, dq %llu / %llu, dkdv %llu / %llu\n", D,
              (unsigned long long)fwd.ldmatrix_wavefronts, (unsigned long long)fwd.ldmatrix_bank_conflicts,
              (unsigned long long)dqs.ldmatrix_wavefronts, (unsigned long long)dqs.ldmatrix_bank_conflicts,
              (unsigned long long)kv.ldmatrix_wavefronts, (unsigned long long)kv.ldmatrix_bank_conflicts);
  EXPECT_GT(fwd.ldmatrix_wavefronts, 0u);
  EXPECT_EQ(fwd.ldmatrix_bank_conflicts, 0u);
  EXPECT_EQ(dqs.ldmatrix_bank_conflicts, 0u);
  EXPECT_EQ(kv.ldmatrix_bank_conflicts, 0u);
}

TEST(CudaAttentionMma, NoLdmatrixBankConflicts) {
  print_bank_conflicts<16>();
  print_bank_conflicts<64>();
  print_bank_conflicts<128>();
}
#endif

TEST(CudaAttentionMma, RejectsUnsupportedArguments) {
  Dev<__nv_bfloat16> x(4 * 32 * 128);
  Dev<float> lse(4 * 32), scratch(4 * 32);
  using l2v::test::error_of;
  const std::string d8 = error_of([&] {
    l2v::cuda::attention_mma_forward_cuda<__nv_bfloat16>(x.ptr, lse.ptr, x.ptr, x.ptr, x.ptr, l2v::packed_qkv(1, 1, 8),
                                                         nullptr, 1, 4, 1, 1, 8, false, 0.0f, 0, 0, nullptr);
  });
  EXPECT_NE(d8.find("attention_mma_forward_cuda: head dim D=8 is not supported by the tensor-core kernels"),
            std::string::npos)
      << d8;
  const std::string bwd = error_of([&] {
    l2v::cuda::attention_mma_backward_cuda<__nv_bfloat16>(x.ptr, x.ptr, x.ptr, x.ptr, x.ptr, lse.ptr, x.ptr, x.ptr,
                                                          x.ptr, l2v::packed_qkv(3, 2, 16), nullptr, 1, 4, 3, 2, 16,
                                                          false, 0.0f, 0, 0, scratch.ptr, nullptr);
  });
  EXPECT_NE(bwd.find("multiple of KV"), std::string::npos) << bwd;
}

const auto* const kWorstReport = ::testing::AddGlobalTestEnvironment(
    new l2v::test::WorstReport("|got - ref|, / sum |terms|, / the derived bound",
                               [](const std::string& family, const l2v::test::Worst& w) {
                                 std::printf("  %-24s %.3e  %.3e  %.3f\n", family.c_str(), w.abs, w.rel, w.of_tol);
                               }));

}  // namespace
