// The CPU backend with --precision bf16 (host/cpu_backend.h): its base-weight GEMMs against double-precision
// references written here, its attention against the fp32 reference within the bounds of
// test/attention_bounds.h, and the packed-weight cache against every way the backend can change a weight.
//
// Bounds (see host/cpu_gemm_bf16.h). A GEMM rounds its two inputs to bf16 (unit roundoff 2^-8) and sums the
// K exact products in fp32: with a', w' the rounded inputs, |out - sum a'w'| <= gamma_K sum |a'w'|; a bias
// or an accumulated value c adds one fp32 rounding: gamma_{K+1} (sum |a'w'| + |c|). A bias dropped, the
// wrong packing (W instead of W^T), a stale packed weight or a missing accumulation are O(|a||w|) off.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <string>
#include <memory>
#include <random>
#include <vector>

#include "host/cpu_attention_bf16.h"
#include "host/cpu_backend.h"
#include "host/cpu_gemm_bf16.h"
#include "host/cpu_ops.h"
#include "model/backend.h"
#include "test/attention_bounds.h"
#include "test/test_util.h"

namespace l2v {
namespace {

using test::gamma32;
using test::randn;

constexpr double kU = 1.0 / 16777216.0;  // fp32 unit roundoff

float bf(float x) { return cpu::float_from_bf16(cpu::bf16_from_float(x)); }

// A CPU backend and the tensors a test uploads into it, released with it (the tests run under
// LeakSanitizer too).
class TestBackend {
 public:
  explicit TestBackend(CpuPrecision precision = CpuPrecision::kFp32) : be_(make_cpu_backend(precision)) {}
  ~TestBackend() {
    for (Tensor t : owned_) be_->release(t);
  }
  TestBackend(const TestBackend&) = delete;
  TestBackend& operator=(const TestBackend&) = delete;
  Backend& operator*() { return *be_; }
  Backend* operator->() { return be_.get(); }
  // A tensor holding `values`.
  Tensor upload(const std::vector<float>& values) {
    Tensor t = static_cast<Tensor>(be_->alloc(values.size() * sizeof(float)));
    owned_.push_back(t);
    be_->upload_tensor(t, values.data(), values.size());
    return t;
  }
  void release(Tensor t) {
    owned_.erase(std::find(owned_.begin(), owned_.end(), t));
    be_->release(t);
  }

 private:
  std::unique_ptr<Backend> be_;
  std::vector<Tensor> owned_;
};

std::vector<float> download(Backend& be, ConstTensor t, size_t n) {
  std::vector<float> v(n);
  be.download_tensor(v.data(), t, n);
  return v;
}

TEST(CpuBf16Backend, MatmulForwardWithBiasWithinTheBound) {
  const int N = 37, IC = 70, OC = 45;
  std::mt19937 rng(1);
  const std::vector<float> x = randn((size_t)N * IC, rng), W = randn((size_t)OC * IC, rng), b = randn(OC, rng);
  TestBackend be(CpuPrecision::kBf16);
  Tensor tx = be.upload(x), tw = be.upload(W), tb = be.upload(b), out = be.upload(std::vector<float>(N * OC));
  be->matmul_forward(out, tx, tw, tb, N, IC, OC, nullptr);
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
  TestBackend fp32;
  Tensor fx = fp32.upload(x), fw = fp32.upload(W), fb = fp32.upload(b), fo = fp32.upload(std::vector<float>(N * OC));
  fp32->matmul_forward(fo, fx, fw, fb, N, IC, OC, nullptr);
  const std::vector<float> ref = download(*fp32, fo, (size_t)N * OC);
  size_t differ = 0;
  for (size_t i = 0; i < ref.size(); ++i) differ += ref[i] != got[i];
  EXPECT_GT(differ, ref.size() / 2) << "bf16 mode computed in fp32";
}

// out = residual + bias + x W^T (the down projection's residual added by the product), the residual a
// separate tensor or out itself: in bf16 the products of bf16-rounded x and W summed in fp32 onto the fp32
// residual + bias, within the fp32 sum's bound; in fp32 the reference's bound alike.
TEST(CpuBf16Backend, MatmulForwardAddsTheResidual) {
  const int N = 37, IC = 70, OC = 45;
  std::mt19937 rng(6);
  const std::vector<float> x = randn((size_t)N * IC, rng), W = randn((size_t)OC * IC, rng), b = randn(OC, rng);
  const std::vector<float> r = randn((size_t)N * OC, rng);
  for (CpuPrecision precision : {CpuPrecision::kBf16, CpuPrecision::kFp32}) {
    const bool bf16 = precision == CpuPrecision::kBf16;
    for (bool in_place : {false, true}) {
      TestBackend be(precision);
      Tensor tx = be.upload(x), tw = be.upload(W), tb = be.upload(b), tr = be.upload(r);
      Tensor out = in_place ? tr : be.upload(std::vector<float>((size_t)N * OC, 7.0f));
      be->matmul_forward(out, tx, tw, tb, N, IC, OC, tr);
      const std::vector<float> got = download(*be, out, (size_t)N * OC);
      for (int n = 0; n < N; ++n)
        for (int o = 0; o < OC; ++o) {
          double s = (double)r[(size_t)n * OC + o] + b[o], mag = std::fabs(s);
          for (int i = 0; i < IC; ++i) {
            const double xi = bf16 ? bf(x[(size_t)n * IC + i]) : x[(size_t)n * IC + i];
            const double wi = bf16 ? bf(W[(size_t)o * IC + i]) : W[(size_t)o * IC + i];
            s += xi * wi;
            mag += std::fabs(xi * wi);
          }
          ASSERT_LE(std::fabs(got[(size_t)n * OC + o] - s), gamma32(IC + 2) * mag)
              << (bf16 ? "bf16" : "fp32") << " in place " << in_place << " (" << n << ", " << o << ")";
        }
    }
  }
}

TEST(CpuBf16Backend, MatmulBackwardInputOverwritesAndAccumulates) {
  const int N = 33, IC = 50, OC = 64;
  std::mt19937 rng(2);
  const std::vector<float> dy = randn((size_t)N * OC, rng), W = randn((size_t)OC * IC, rng), c0 = randn((size_t)N * IC, rng);
  TestBackend be(CpuPrecision::kBf16);
  Tensor tdy = be.upload(dy), tw = be.upload(W), dx = be.upload(c0);
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
  TestBackend be(CpuPrecision::kBf16);
  Tensor th = be.upload(h), tw = be.upload(W), dh = be.upload(std::vector<float>((size_t)N * C, 7.0f));
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
    TestBackend be(CpuPrecision::kBf16);
    Tensor tx = be.upload(x), tw = be.upload(W), out = be.upload(std::vector<float>((size_t)N * OC));
    be->matmul_forward(out, tx, tw, nullptr, N, IC, OC, nullptr);
    return download(*be, out, (size_t)N * OC);
  };
  TestBackend be(CpuPrecision::kBf16);
  Tensor tx = be.upload(x), tw = be.upload(W1), out = be.upload(std::vector<float>((size_t)N * OC));
  auto run = [&] {
    be->matmul_forward(out, tx, tw, nullptr, N, IC, OC, nullptr);
    return download(*be, out, (size_t)N * OC);
  };
  EXPECT_EQ(run(), fresh(W1));
  be->upload_tensor(tw, W2.data(), W2.size());
  EXPECT_EQ(run(), fresh(W2)) << "upload_tensor";
  Tensor other = be.upload(W1);
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
  TestBackend be(CpuPrecision::kBf16);
  Tensor tx = be.upload(randn((size_t)N * IC, rng)), dy = be.upload(randn((size_t)N * OC, rng)),
         out = be.upload(std::vector<float>((size_t)N * OC)), dx = be.upload(std::vector<float>((size_t)N * IC));
  const size_t before = cpu_backend_memory(*be).current;
  Tensor tw = be.upload(randn((size_t)OC * IC, rng));
  const size_t with_weight = cpu_backend_memory(*be).current;
  be->matmul_forward(out, tx, tw, nullptr, N, IC, OC, nullptr);
  const size_t tile_bytes = (size_t)IC * OC * 2;  // bf16, IC and OC multiples of 32: no padding
  EXPECT_EQ(cpu_backend_memory(*be).current, with_weight + tile_bytes);
  be->matmul_backward_input(dx, dy, tw, N, IC, OC, false);
  EXPECT_EQ(cpu_backend_memory(*be).current, with_weight + 2 * tile_bytes);
  be.release(tw);
  EXPECT_EQ(cpu_backend_memory(*be).current, before);
  // The fp32 backend packs nothing.
  TestBackend fp32;
  Tensor fx = fp32.upload(randn((size_t)N * IC, rng)), fo = fp32.upload(std::vector<float>((size_t)N * OC));
  Tensor fw = fp32.upload(randn((size_t)OC * IC, rng));
  const size_t fp32_before = cpu_backend_memory(*fp32).current;
  fp32->matmul_forward(fo, fx, fw, nullptr, N, IC, OC, nullptr);
  EXPECT_EQ(cpu_backend_memory(*fp32).current, fp32_before);
}

// Inference keeps a weight only in its tiles (Backend::keep_only_forward_form): the forward gives the same
// bits as before, the fp32 pages inside the allocation are given back (the accounting drops by them: a
// 256 x 576 weight holds whole pages), and every other use of the weight — a download, a write, the
// backward's packing — throws instead of reading zeros; releasing it gives back the rest. The fp32 backend
// keeps the weight as it is.
TEST(CpuBf16Backend, KeepOnlyForwardFormGivesTheWeightBack) {
  const int N = 3, IC = 576, OC = 256;
  std::mt19937 rng(8);
  TestBackend be(CpuPrecision::kBf16);
  Tensor tx = be.upload(randn((size_t)N * IC, rng)), out = be.upload(std::vector<float>((size_t)N * OC)),
         dy = be.upload(randn((size_t)N * OC, rng)), dx = be.upload(std::vector<float>((size_t)N * IC));
  const size_t before = cpu_backend_memory(*be).current;
  Tensor tw = be.upload(randn((size_t)OC * IC, rng));
  be->matmul_forward(out, tx, tw, nullptr, N, IC, OC, nullptr);
  const std::vector<float> want = download(*be, out, (size_t)N * OC);
  const size_t packed = cpu_backend_memory(*be).current;
  be->keep_only_forward_form(tw, IC, OC);
  const size_t weight_bytes = (size_t)OC * IC * sizeof(float), page = 4096;
  EXPECT_LE(packed - cpu_backend_memory(*be).current, weight_bytes);
  EXPECT_GE(packed - cpu_backend_memory(*be).current, weight_bytes - 2 * page);
  be->matmul_forward(out, tx, tw, nullptr, N, IC, OC, nullptr);
  EXPECT_EQ(download(*be, out, (size_t)N * OC), want);
  std::vector<float> host((size_t)OC * IC);
  EXPECT_THROW(be->download_tensor(host.data(), tw, host.size()), std::logic_error);
  EXPECT_THROW(be->download(host.data(), tensor_offset(*be, tw, 1000), 16), std::logic_error);
  EXPECT_THROW(be->upload_tensor(tw, host.data(), 16), std::logic_error);
  EXPECT_THROW(be->copy(dx, tw, 16), std::logic_error);
  EXPECT_THROW(be->matmul_backward_input(dx, dy, tw, N, IC, OC, false), std::logic_error);
  be->keep_only_forward_form(tw, IC, OC);  // again: nothing more to give back
  be.release(tw);
  EXPECT_EQ(cpu_backend_memory(*be).current, before);
  // The buffers beside it are untouched.
  EXPECT_NO_THROW(download(*be, out, (size_t)N * OC));
  TestBackend fp32;
  Tensor fw = fp32.upload(randn((size_t)OC * IC, rng));
  fp32->keep_only_forward_form(fw, IC, OC);
  EXPECT_NO_THROW(download(*fp32, fw, (size_t)OC * IC));
}

// ------------------------------------------------------------------------------------------ attention

struct AttnCase {
  test::AttentionDims d;
  int pad;  // 0: none; 1: batch row 0 left-padded by 5 keys and row 1 with holes (every third key); 2: row 1
            // fully padded (no visible key: out 0, lse -inf, no gradient)
};

test::AttentionInputs attention_inputs(const AttnCase& c, uint32_t seed) {
  std::mt19937 rng(seed);
  const test::AttentionDims& d = c.d;
  const size_t N = (size_t)d.B * d.T;
  auto fill = [&](size_t n, float scale) {
    std::vector<float> x = randn(n, rng, scale);
    for (float& e : x) e = bf(e);  // the bf16 GEMMs see exactly these values: the bounds measure the kernel
    return x;
  };
  test::AttentionInputs in;
  in.q = fill(N * d.H * d.D, 2.0f);  // a softmax far from flat
  in.k = fill(N * d.KV * d.D, 1.0f);
  in.v = fill(N * d.KV * d.D, 1.0f);
  in.dout = fill(N * d.H * d.D, 1.0f);
  in.mask.assign(N, 1);
  for (int t = 0; t < d.T; ++t) {
    if (c.pad == 1) {
      in.mask[t] = t >= 5;
      if (d.B > 1) in.mask[(size_t)d.T + t] = t % 3 != 1;
    } else if (c.pad == 2 && d.B > 1) {
      in.mask[(size_t)d.T + t] = 0;
    }
  }
  return in;
}

// The bf16 forward, then its backward on the forward's own out and lse (as training runs them).
test::AttentionResults run_bf16(const test::AttentionDims& d, const test::AttentionInputs& in, DropoutKey key,
                                uint32_t site) {
  const size_t N = (size_t)d.B * d.T;
  test::AttentionResults r;
  r.out.resize(N * d.H * d.D);
  r.lse.resize((size_t)d.B * d.H * d.T);
  r.dq.resize(N * d.H * d.D);
  r.dk.resize(N * d.KV * d.D);
  r.dv.resize(N * d.KV * d.D);
  const QkvStrides ld = packed_qkv(d.H, d.KV, d.D);
  cpu::attention_forward_bf16(r.out.data(), r.lse.data(), in.q.data(), in.k.data(), in.v.data(), ld, in.mask.data(),
                              d.B, d.T, d.H, d.KV, d.D, d.causal, d.p, key, site);
  cpu::attention_backward_bf16(r.dq.data(), r.dk.data(), r.dv.data(), in.dout.data(), r.out.data(), r.lse.data(),
                               in.q.data(), in.k.data(), in.v.data(), ld, in.mask.data(), d.B, d.T, d.H, d.KV, d.D,
                               d.causal, d.p, key, site);
  return r;
}

// The reference forward on the inputs, its backward on `got`'s out and lse.
test::AttentionResults run_reference(const test::AttentionDims& d, const test::AttentionInputs& in,
                                     const test::AttentionResults& got, DropoutKey key, uint32_t site) {
  test::AttentionResults r = got;
  const QkvStrides ld = packed_qkv(d.H, d.KV, d.D);
  cpu::attention_forward(r.out.data(), r.lse.data(), in.q.data(), in.k.data(), in.v.data(), ld, in.mask.data(), d.B,
                         d.T, d.H, d.KV, d.D, d.causal, d.p, key, site);
  cpu::attention_backward(r.dq.data(), r.dk.data(), r.dv.data(), in.dout.data(), got.out.data(), got.lse.data(),
                          in.q.data(), in.k.data(), in.v.data(), ld, in.mask.data(), d.B, d.T, d.H, d.KV, d.D,
                          d.causal, d.p, key, site);
  return r;
}

// |got - want| <= pre element by element (the results are fp32: no storage rounding on top); returns the
// worst |got - want| / pre, or a failure naming the element.
::testing::AssertionResult within(const char* what, const std::vector<float>& got, const std::vector<float>& want,
                                  const test::Bound& bound, double* worst) {
  for (size_t e = 0; e < want.size(); ++e) {
    if (std::isinf(want[e]) || std::isinf(got[e])) {
      if (got[e] != want[e]) return ::testing::AssertionFailure() << what << "[" << e << "] = " << got[e] << ", want " << want[e];
      continue;
    }
    const double err = std::fabs((double)got[e] - want[e]);
    if (err > bound.pre[e])
      return ::testing::AssertionFailure() << what << "[" << e << "] = " << got[e] << ", want " << want[e]
                                           << ": error " << err << " > bound " << bound.pre[e];
    if (bound.pre[e] > 0) *worst = std::max(*worst, err / bound.pre[e]);
  }
  return ::testing::AssertionSuccess();
}

constexpr uint32_t kSite = 7;
const DropoutKey kKey{0xB16Full, 12};

// The tails of the 32-row query blocks (T = 1, 33, 37, 70, 150), GQA 1, 2 and 4, padding (holes, left, a row
// without visible keys), causal and bidirectional, dropout (over two 128-key blocks of mask bits at T = 150). D = 16 and 64: 1/sqrt(D) is a power of two, so
// scaling dS rounds nothing the derivation does not count. The worst error must also be a sizeable part
// of the bound for the rounded results (the bound is not so loose that a rounding-sized bug would pass).
TEST(CpuBf16Backend, AttentionWithinTheTensorCoreBounds) {
  const AttnCase cases[] = {{{1, 1, 2, 2, 16, false, 0.0f}, 0},  {{2, 37, 4, 2, 16, false, 0.0f}, 1},
                            {{2, 70, 4, 1, 64, true, 0.1f}, 1},  {{2, 33, 2, 2, 64, false, 0.2f}, 2},
                            {{1, 40, 4, 4, 16, true, 0.0f}, 0},  {{1, 150, 2, 1, 16, true, 0.1f}, 1}};
  double worst[5] = {0, 0, 0, 0, 0};
  uint32_t seed = 1;
  for (const AttnCase& c : cases) {
    SCOPED_TRACE("B T H KV D " + std::to_string(c.d.B) + " " + std::to_string(c.d.T) + " " + std::to_string(c.d.H) +
                 " " + std::to_string(c.d.KV) + " " + std::to_string(c.d.D) + (c.d.causal ? " causal" : "") +
                 " p " + std::to_string(c.d.p) + " pad " + std::to_string(c.pad));
    const test::AttentionInputs in = attention_inputs(c, seed++);
    const test::AttentionResults got = run_bf16(c.d, in, kKey, kSite);
    const test::AttentionResults want = run_reference(c.d, in, got, kKey, kSite);
    const test::AttentionBounds bd = test::derive_attention_bounds(c.d, in, got, kKey, kSite, 1.0 / 256, 0.0);
    EXPECT_TRUE(within("out", got.out, want.out, bd.out, &worst[0]));
    EXPECT_TRUE(within("lse", got.lse, want.lse, bd.lse, &worst[1]));
    EXPECT_TRUE(within("dq", got.dq, want.dq, bd.dq, &worst[2]));
    EXPECT_TRUE(within("dk", got.dk, want.dk, bd.dk, &worst[3]));
    EXPECT_TRUE(within("dv", got.dv, want.dv, bd.dv, &worst[4]));
  }
  const char* names[5] = {"out", "lse", "dq", "dk", "dv"};
  for (int t = 0; t < 5; ++t) {
    std::printf("worst error / bound: %s %.3f\n", names[t], worst[t]);
    if (t == 1) continue;  // lse is not rounded to bf16: its worst-case bound is far above the typical error
    EXPECT_GT(worst[t], 0.05) << names[t] << ": the bound is loose";
  }
}

// A dropout mask that is not the reference's (another site) fails the bounds: the masks are what the
// comparison would otherwise hide.
TEST(CpuBf16Backend, AttentionWithAnotherDropoutSiteFailsTheBounds) {
  const AttnCase c{{2, 37, 4, 2, 16, false, 0.2f}, 0};
  const test::AttentionInputs in = attention_inputs(c, 9);
  const test::AttentionResults got = run_bf16(c.d, in, kKey, kSite + 1);
  const test::AttentionResults want = run_reference(c.d, in, got, kKey, kSite);
  const test::AttentionBounds bd = test::derive_attention_bounds(c.d, in, got, kKey, kSite, 1.0 / 256, 0.0);
  double worst = 0;
  EXPECT_FALSE(within("out", got.out, want.out, bd.out, &worst));
}

// q, k, v and their gradients as column blocks of the fused q|k|v product's rows (spare columns of NaN): the
// packed layout's bits, the spare columns neither read nor written.
TEST(CpuBf16Backend, AttentionOnFusedQkvRowsGivesThePackedBits) {
  const AttnCase c{{2, 37, 4, 2, 16, true, 0.1f}, 1};
  const test::AttentionInputs in = attention_inputs(c, 13);
  const test::AttentionDims& d = c.d;
  const test::AttentionResults packed = run_bf16(d, in, kKey, kSite);
  const int N = d.B * d.T, QD = d.H * d.D, KVD = d.KV * d.D, W = QD + 2 * KVD + 5;
  const float nan = std::numeric_limits<float>::quiet_NaN();
  std::vector<float> qkv((size_t)N * W, nan), grad((size_t)N * W, nan);
  for (int n = 0; n < N; ++n) {
    std::copy_n(&in.q[(size_t)n * QD], QD, &qkv[(size_t)n * W]);
    std::copy_n(&in.k[(size_t)n * KVD], KVD, &qkv[(size_t)n * W + QD]);
    std::copy_n(&in.v[(size_t)n * KVD], KVD, &qkv[(size_t)n * W + QD + KVD]);
  }
  std::vector<float> out(packed.out.size()), lse(packed.lse.size());
  const float *q = qkv.data(), *k = q + QD, *v = k + KVD;
  cpu::attention_forward_bf16(out.data(), lse.data(), q, k, v, {W, W}, in.mask.data(), d.B, d.T, d.H, d.KV, d.D,
                              d.causal, d.p, kKey, kSite);
  cpu::attention_backward_bf16(grad.data(), grad.data() + QD, grad.data() + QD + KVD, in.dout.data(), out.data(),
                               lse.data(), q, k, v, {W, W}, in.mask.data(), d.B, d.T, d.H, d.KV, d.D, d.causal, d.p,
                               kKey, kSite);
  EXPECT_EQ(out, packed.out);
  EXPECT_EQ(lse, packed.lse);
  for (int n = 0; n < N; ++n) {
    const float* row = &grad[(size_t)n * W];
    EXPECT_TRUE(std::equal(row, row + QD, &packed.dq[(size_t)n * QD])) << "dq row " << n;
    EXPECT_TRUE(std::equal(row + QD, row + QD + KVD, &packed.dk[(size_t)n * KVD])) << "dk row " << n;
    EXPECT_TRUE(std::equal(row + QD + KVD, row + QD + 2 * KVD, &packed.dv[(size_t)n * KVD])) << "dv row " << n;
    for (int j = QD + 2 * KVD; j < W; ++j) EXPECT_TRUE(std::isnan(row[j])) << "spare column written, row " << n;
  }
}

// The bf16 backend's attention is this one: bit for bit through the backend's handles.
TEST(CpuBf16Backend, TheBackendRunsTheBf16Attention) {
  const AttnCase c{{2, 37, 4, 2, 16, true, 0.1f}, 1};
  const test::AttentionInputs in = attention_inputs(c, 11);
  const test::AttentionResults direct = run_bf16(c.d, in, kKey, kSite);
  TestBackend be(CpuPrecision::kBf16);
  const test::AttentionDims& d = c.d;
  Tensor q = be.upload(in.q), k = be.upload(in.k), v = be.upload(in.v), dout = be.upload(in.dout);
  Tensor out = be.upload(std::vector<float>(direct.out.size())), dq = be.upload(std::vector<float>(direct.dq.size()));
  Tensor dk = be.upload(std::vector<float>(direct.dk.size())), dv = be.upload(std::vector<float>(direct.dv.size()));
  std::vector<float> lse(direct.lse.size());
  const QkvStrides ld = packed_qkv(d.H, d.KV, d.D);
  be->attention_forward(out, lse.data(), q, k, v, ld, in.mask.data(), d.B, d.T, d.H, d.KV, d.D, d.causal, d.p, kKey,
                        kSite);
  be->attention_backward(dq, dk, dv, dout, out, lse.data(), q, k, v, ld, in.mask.data(), d.B, d.T, d.H, d.KV, d.D,
                         d.causal, d.p, kKey, kSite);
  EXPECT_EQ(download(*be, out, direct.out.size()), direct.out);
  EXPECT_EQ(lse, direct.lse);
  EXPECT_EQ(download(*be, dq, direct.dq.size()), direct.dq);
  EXPECT_EQ(download(*be, dk, direct.dk.size()), direct.dk);
  EXPECT_EQ(download(*be, dv, direct.dv.size()), direct.dv);
}

}  // namespace
}  // namespace l2v
