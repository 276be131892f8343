// Tests of cuDNN SDPA (--attention_impl cudnn, cuda/attention_cudnn.h) through the CUDA backend, for a
// GPU: built by nvcc into build/gpu/test/ (make gpu-tests, scripts/gpu_check.sh) they run where a GPU and
// cuDNN are present; everywhere else every test skips and says why (under the CPU emulator, which cannot
// run cuDNN, that is `make test`'s build of this file).
//   * Forward and backward against the fp32 CPU reference (l2v::cpu::attention_forward/backward) on the
//     same bf16-rounded inputs: tails (T not a multiple of a tile), GQA 1/2/4, D = 64 and 128, causal and
//     bidirectional, no mask, right and left padding (causal left padding: rows without a visible key,
//     out = 0, lse = -inf, dq = 0). The backward reference runs on cuDNN's own out and
//     lse, as training does. Tolerances: out per element 4 u sum_j P_ij |v_jd| (u = 2^-8: P and out are
//     each rounded to bf16 once, and as much again for the softmax's fp32 arithmetic); lse 1e-4 (1 + |lse|)
//     (fp32 only); gradients normwise, 8 u max |ref| per tensor. These are bounds of the rounding this
//     arithmetic needs, not derived from cuDNN's unpublished kernels: they catch a wrong layout, head
//     mapping, mask or statistic (errors of the order of the values), not a last-bit difference.
//   * Everywhere (no GPU needed): the key_mask -> lengths and ragged offsets conversion
//     (cuda/attention_cudnn_padding.h) and its refusals; "cudnn" is accepted exactly in builds with cuDNN,
//     else refused as not built.
//   * Refusals: key_mask holes, a row without a visible key, padding on both sides under the causal mask,
//     an unsupported head dim, fp32 storage.
//   * Dropout, statistically (cuDNN's RNG is not ours, so no mask can be compared bit for bit): with
//     q = 0 and v = 1 every output is (kept keys)/(T (1-p)), whose mean over all rows must be within 5
//     standard deviations of 1 (plus the bf16 rounding of the outputs); the same (seed, site) gives the
//     same outputs bit for bit, another site other outputs.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "cuda/attention_cudnn_padding.h"
#include "cuda/cuda_backend.h"
#include "cuda/launch.h"  // the CUDA runtime (cudaGetDeviceCount)
#include "host/cpu_ops.h"

namespace l2v {
namespace {

constexpr double kU = 1.0 / 256.0;  // bf16's unit roundoff

// Why cuDNN SDPA cannot run here, or "" when it can.
std::string cudnn_unavailable() {
#if defined(L2V_EMULATE)
  return "the CPU emulator cannot run cuDNN; cuDNN SDPA is tested on a GPU (make gpu-tests)";
#elif !defined(L2V_WITH_CUDNN)
  return "this build has no cuDNN (cuda/cuda.mk found no cuDNN 9)";
#else
  int devices = 0;
  if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0) {
    cudaGetLastError();
    return "no CUDA GPU on this machine: cuDNN SDPA needs one";
  }
  return "";
#endif
}

#define SKIP_WITHOUT_CUDNN_GPU()                          \
  do {                                                    \
    const std::string why = cudnn_unavailable();          \
    if (!why.empty()) GTEST_SKIP() << "skipped: " << why; \
  } while (0)

enum class Padding { kNone, kRight, kLeft };

struct Case {
  int B, T, H, KV, D;
  bool causal;
  Padding padding;
};

std::string describe(const Case& c) {
  const char* pad[] = {"none", "right", "left"};
  return "B=" + std::to_string(c.B) + " T=" + std::to_string(c.T) + " H=" + std::to_string(c.H) +
         " KV=" + std::to_string(c.KV) + " D=" + std::to_string(c.D) + (c.causal ? " causal" : " bidirectional") +
         " padding=" + pad[(int)c.padding];
}

// Row b hides its first or last b*T/(2B) + 1 keys (row 0 of a right/left padded batch hides one).
std::vector<int> make_mask(const Case& c) {
  std::vector<int> mask((size_t)c.B * c.T, 1);
  for (int b = 0; b < c.B && c.padding != Padding::kNone; ++b) {
    const int hidden = b * c.T / (2 * c.B) + 1;
    for (int j = 0; j < hidden; ++j) mask[(size_t)b * c.T + (c.padding == Padding::kRight ? c.T - 1 - j : j)] = 0;
  }
  return mask;
}

// A device tensor of the backend (bf16 storage) or fp32 buffer, with its host values.
struct DeviceTensor {
  Backend& be;
  size_t n;
  bool storage;  // a tensor in the backend's storage type, else plain fp32
  void* ptr;
  DeviceTensor(Backend& backend, size_t count, bool is_storage)
      : be(backend), n(count), storage(is_storage),
        ptr(be.alloc(count * (is_storage ? be.tensor_element_bytes() : sizeof(float)))) {}
  Tensor t() const { return static_cast<Tensor>(ptr); }   // a storage tensor
  float* f() const { return static_cast<float*>(ptr); }  // an fp32 buffer
  ~DeviceTensor() { be.release(ptr); }
  DeviceTensor(const DeviceTensor&) = delete;
  DeviceTensor& operator=(const DeviceTensor&) = delete;
  // Uploads `values` and returns them as stored (rounded to bf16 for a storage tensor).
  std::vector<float> set(const std::vector<float>& values) {
    if (storage)
      be.upload_tensor(t(), values.data(), n);
    else
      be.upload(ptr, values.data(), n * sizeof(float));
    return get();
  }
  std::vector<float> get() const {
    std::vector<float> h(n);
    if (storage)
      be.download_tensor(h.data(), t(), n);
    else
      be.download(h.data(), ptr, n * sizeof(float));
    return h;
  }
};

std::vector<float> uniform(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

// Normwise: max |a - ref| <= tol_factor * max |ref|.
void expect_normwise(const std::vector<float>& a, const std::vector<float>& ref, double tol_factor, const char* what) {
  double err = 0.0, scale = 0.0;
  for (size_t i = 0; i < ref.size(); ++i) {
    err = std::max(err, std::fabs((double)a[i] - ref[i]));
    scale = std::max(scale, std::fabs((double)ref[i]));
  }
  EXPECT_LE(err, tol_factor * scale) << what << ": max error " << err << " against max |ref| " << scale;
}

void check_case(const Case& c) {
  SCOPED_TRACE(describe(c));
  std::unique_ptr<Backend> be = make_cuda_backend(CudaPrecision::kBf16, AttentionImpl::kCudnn);
  const size_t nq = (size_t)c.B * c.T * c.H * c.D, nkv = (size_t)c.B * c.T * c.KV * c.D;
  const size_t nlse = (size_t)c.B * c.H * c.T;
  DeviceTensor q(*be, nq, true), k(*be, nkv, true), v(*be, nkv, true), out(*be, nq, true), dout(*be, nq, true);
  DeviceTensor dq(*be, nq, true), dk(*be, nkv, true), dv(*be, nkv, true), lse(*be, nlse, false);
  const std::vector<float> hq = q.set(uniform(nq, 1)), hk = k.set(uniform(nkv, 2)), hv = v.set(uniform(nkv, 3));
  const std::vector<float> hdout = dout.set(uniform(nq, 4));
  const std::vector<int> mask = make_mask(c);
  const bool masked = c.padding != Padding::kNone;
  int* dmask = static_cast<int*>(be->alloc(mask.size() * sizeof(int)));
  be->upload(dmask, mask.data(), mask.size() * sizeof(int));
  const int* km = masked ? dmask : nullptr;
  const int* hm = masked ? mask.data() : nullptr;

  const QkvStrides packed = packed_qkv(c.H, c.KV, c.D);
  be->attention_forward(out.t(), lse.f(), q.t(), k.t(), v.t(), packed, km, c.B, c.T, c.H, c.KV, c.D, c.causal, 0.0f, 7,
                        1);
  const std::vector<float> hout = out.get(), hlse = lse.get();
  std::vector<float> ref_out(nq), ref_lse(nlse);
  cpu::attention_forward(ref_out.data(), ref_lse.data(), hq.data(), hk.data(), hv.data(), packed, hm, c.B, c.T, c.H,
                         c.KV, c.D, c.causal, 0.0f, 7, 1);

  // out: per element, from the reference's probabilities P_ij = exp(scale q_i.k_j - lse_i).
  const double scale = 1.0 / std::sqrt((double)c.D);
  const int group = c.H / c.KV;
  double worst = 0.0;
  for (int b = 0; b < c.B; ++b)
    for (int h = 0; h < c.H; ++h)
      for (int i = 0; i < c.T; ++i) {
        const size_t r = ((size_t)b * c.H + h) * c.T + i;
        if (std::isinf(ref_lse[r]))  // no visible key: -inf, out 0 (pv stays 0 below)
          EXPECT_EQ(hlse[r], ref_lse[r]) << "lse row " << r;
        else
          EXPECT_NEAR(hlse[r], ref_lse[r], 1e-4 * (1.0 + std::fabs(ref_lse[r]))) << "lse row " << r;
        std::vector<double> pv(c.D, 0.0);
        const float* qi = &hq[((size_t)b * c.T + i) * c.H * c.D + (size_t)h * c.D];
        for (int j = 0; j < (c.causal ? i + 1 : c.T); ++j) {
          if (hm && hm[(size_t)b * c.T + j] == 0) continue;
          const size_t kj = ((size_t)b * c.T + j) * c.KV * c.D + (size_t)(h / group) * c.D;
          double x = 0.0;
          for (int d = 0; d < c.D; ++d) x += (double)qi[d] * hk[kj + d];
          const double p = std::exp(x * scale - ref_lse[r]);
          for (int d = 0; d < c.D; ++d) pv[d] += p * std::fabs(hv[kj + d]);
        }
        for (int d = 0; d < c.D; ++d) {
          const size_t o = ((size_t)b * c.T + i) * c.H * c.D + (size_t)h * c.D + d;
          const double tol = 4 * kU * pv[d] + 1e-6, err = std::fabs((double)hout[o] - ref_out[o]);
          worst = std::max(worst, err / tol);
          EXPECT_LE(err, tol) << "out " << o;
        }
      }
  std::printf("  %s: worst out error %.2f of its bound\n", describe(c).c_str(), worst);

  be->attention_backward(dq.t(), dk.t(), dv.t(), dout.t(), out.t(), lse.f(), q.t(), k.t(), v.t(), packed, km, c.B,
                         c.T, c.H, c.KV, c.D, c.causal, 0.0f, 7, 1);
  std::vector<float> ref_dq(nq), ref_dk(nkv), ref_dv(nkv);
  cpu::attention_backward(ref_dq.data(), ref_dk.data(), ref_dv.data(), hdout.data(), hout.data(), hlse.data(),
                          hq.data(), hk.data(), hv.data(), packed, hm, c.B, c.T, c.H, c.KV, c.D, c.causal, 0.0f, 7, 1);
  expect_normwise(dq.get(), ref_dq, 8 * kU, "dq");
  expect_normwise(dk.get(), ref_dk, 8 * kU, "dk");
  expect_normwise(dv.get(), ref_dv, 8 * kU, "dv");

  // The model's layout: q, k, v and their gradients as column blocks of fused q|k|v rows, which the backend
  // copies to and from packed staging for cuDNN. The forward's bits, and the gradients within the same bounds.
  const int N = c.B * c.T, QD = c.H * c.D, KVD = c.KV * c.D, W = QD + 2 * KVD;
  std::vector<float> wide((size_t)N * W);
  for (int n = 0; n < N; ++n) {
    std::copy_n(&hq[(size_t)n * QD], QD, &wide[(size_t)n * W]);
    std::copy_n(&hk[(size_t)n * KVD], KVD, &wide[(size_t)n * W + QD]);
    std::copy_n(&hv[(size_t)n * KVD], KVD, &wide[(size_t)n * W + QD + KVD]);
  }
  DeviceTensor qkv(*be, wide.size(), true), grad(*be, wide.size(), true), out2(*be, nq, true), lse2(*be, nlse, false);
  qkv.set(wide);
  const QkvStrides fused{W, W};
  auto block = [&](const DeviceTensor& t, int col) { return tensor_offset(*be, t.t(), col); };
  be->attention_forward(out2.t(), lse2.f(), block(qkv, 0), block(qkv, QD), block(qkv, QD + KVD), fused, km, c.B, c.T,
                        c.H, c.KV, c.D, c.causal, 0.0f, 7, 1);
  EXPECT_EQ(out2.get(), hout) << "fused q|k|v rows";
  be->attention_backward(block(grad, 0), block(grad, QD), block(grad, QD + KVD), dout.t(), out.t(), lse.f(),
                         block(qkv, 0), block(qkv, QD), block(qkv, QD + KVD), fused, km, c.B, c.T, c.H, c.KV, c.D,
                         c.causal, 0.0f, 7, 1);
  const std::vector<float> g = grad.get();
  std::vector<float> gq, gk, gv;
  for (int n = 0; n < N; ++n) {
    gq.insert(gq.end(), &g[(size_t)n * W], &g[(size_t)n * W + QD]);
    gk.insert(gk.end(), &g[(size_t)n * W + QD], &g[(size_t)n * W + QD + KVD]);
    gv.insert(gv.end(), &g[(size_t)n * W + QD + KVD], &g[(size_t)n * W + W]);
  }
  expect_normwise(gq, ref_dq, 8 * kU, "dq (fused rows)");
  expect_normwise(gk, ref_dk, 8 * kU, "dk (fused rows)");
  expect_normwise(gv, ref_dv, 8 * kU, "dv (fused rows)");
  be->release(dmask);
}

// Runs everywhere (plain C++): key_mask -> cuDNN's per-row lengths and ragged offsets, and the refusals.
TEST(CudnnPadding, LengthsAndOffsetsFollowTheMask) {
  const int B = 3, T = 8, H = 2, KV = 1, D = 8;  // a token is H*D = 16 query-side, KV*D = 8 key-side elements
  // Row 0 sees every key, row 1 is right-padded (5 keys), row 2 left-padded (keys 3..7).
  const std::vector<int> mask = {1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1};
  cuda::CudnnPadding p;
  cuda::cudnn_padding_from_mask(mask, B, T, H, KV, D, false, p);
  EXPECT_TRUE(p.padded);
  EXPECT_FALSE(p.shifted);
  auto slice = [&](size_t at, int n) { return std::vector<int32_t>(p.ints.begin() + at, p.ints.begin() + at + n); };
  EXPECT_EQ((std::vector<int32_t>{8, 8, 8}), slice(p.seq_q(), B));  // every query row attends
  EXPECT_EQ((std::vector<int32_t>{8, 5, 5}), slice(p.seq_kv(), B));
  EXPECT_EQ((std::vector<int32_t>{0, 8 * 16, 16 * 16, 24 * 16}), slice(p.off_q(), B + 1));
  EXPECT_EQ((std::vector<int32_t>{0, 8 * 8, 19 * 8, 24 * 8}), slice(p.off_kv(), B + 1));
  // Causal: row 2's queries 0..2 see no key; cuDNN gets its queries from 3 on.
  cuda::cudnn_padding_from_mask(mask, B, T, H, KV, D, true, p);
  EXPECT_TRUE(p.shifted);
  EXPECT_EQ((std::vector<int>{0, 0, 3}), p.q_start);
  EXPECT_EQ((std::vector<int32_t>{8, 8, 5}), slice(p.seq_q(), B));
  EXPECT_EQ((std::vector<int32_t>{0, 8 * 16, 19 * 16, 24 * 16}), slice(p.off_q(), B + 1));
  EXPECT_EQ((std::vector<int32_t>{8, 5, 5}), slice(p.seq_kv(), B));
  // Nothing hidden: no padding mask.
  cuda::cudnn_padding_from_mask(std::vector<int>(B * T, 1), B, T, H, KV, D, true, p);
  EXPECT_FALSE(p.padded);
  EXPECT_FALSE(p.shifted);

  auto refusal = [&](const std::vector<int>& m, bool causal, int b, int t) -> std::string {
    try {
      cuda::cudnn_padding_from_mask(m, b, t, H, KV, D, causal, p);
    } catch (const std::runtime_error& e) {
      return e.what();
    }
    return "not refused";
  };
  std::vector<int> holes = mask;
  holes[4] = 0;
  EXPECT_NE(std::string::npos, refusal(holes, false, B, T).find("key_mask row 0: holes"))
      << refusal(holes, false, B, T);
  std::vector<int> empty = mask;
  std::fill(empty.begin() + 8, empty.begin() + 16, 0);
  EXPECT_NE(std::string::npos, refusal(empty, false, B, T).find("key_mask row 1: no visible key"));
  std::vector<int> both = mask;
  both[16 + 7] = 0;  // row 2: keys 3..6
  EXPECT_EQ("not refused", refusal(both, false, B, T));
  EXPECT_NE(std::string::npos, refusal(both, true, B, T).find("key_mask row 2: keys padded on both sides"));
  const int big_t = 1 << 16;  // B*T*H*D = 3 * 2^16 * 16 fits; with H*D = 2^15 it does not
  EXPECT_EQ("not refused", refusal(std::vector<int>((size_t)B * big_t, 1), false, B, big_t));
  try {
    cuda::cudnn_padding_from_mask(std::vector<int>((size_t)B * big_t, 1), B, big_t, 4096, 8, D, false, p);
    ADD_FAILURE() << "32-bit offsets overflow not refused";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string::npos, std::string(e.what()).find("exceed the 32-bit ragged offsets")) << e.what();
  }
}

// Runs everywhere: "cudnn" is an implementation exactly where the build has cuDNN, else refused as not
// built, and the emulator's backend refuses it too.
TEST(CudnnAttention, IsAcceptedExactlyWhereBuilt) {
#if defined(L2V_WITH_CUDNN)
  EXPECT_EQ(AttentionImpl::kCudnn, parse_attention_impl("cudnn"));
#else
  try {
    parse_attention_impl("cudnn");
    ADD_FAILURE() << "cudnn accepted by a build without cuDNN";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string::npos, std::string(e.what()).find("'cudnn' is not built")) << e.what();
  }
#if defined(L2V_EMULATE)
  try {
    make_cuda_backend(CudaPrecision::kBf16, AttentionImpl::kCudnn);
    ADD_FAILURE() << "the emulator's backend took cudnn";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string::npos, std::string(e.what()).find("the CPU emulator cannot run cuDNN")) << e.what();
  }
#endif
#endif
}

TEST(CudnnAttention, ForwardAndBackwardFollowTheCpuReference) {
  SKIP_WITHOUT_CUDNN_GPU();
  const Case cases[] = {
      {2, 77, 4, 4, 64, false, Padding::kNone},    {2, 77, 4, 4, 64, true, Padding::kNone},
      {3, 130, 8, 2, 128, false, Padding::kRight}, {3, 130, 8, 2, 128, true, Padding::kRight},
      {3, 100, 4, 1, 64, false, Padding::kLeft},   {2, 64, 8, 2, 128, false, Padding::kLeft},
      {3, 100, 4, 2, 64, true, Padding::kLeft},    {2, 70, 8, 8, 128, true, Padding::kLeft},
  };
  for (const Case& c : cases) check_case(c);
}

// One forward of a [2, 16] batch with head dim D under `mask` ([2, 16] or empty: none), cuDNN attention.
void forward_with_mask(Backend& be, const std::vector<int>& mask, bool causal, int D = 64) {
  const int B = 2, T = 16, H = 2;
  const size_t n = (size_t)B * T * H * D;
  DeviceTensor q(be, n, true), out(be, n, true), lse(be, (size_t)B * H * T, false);
  q.set(uniform(n, 5));
  int* dmask = static_cast<int*>(be.alloc(sizeof(int) * B * T));
  be.upload(dmask, mask.data(), sizeof(int) * B * T);
  try {
    be.attention_forward(out.t(), lse.f(), q.t(), q.t(), q.t(), packed_qkv(H, H, D), dmask, B, T, H, H, D, causal,
                         0.0f, 1, 1);
  } catch (...) {
    be.release(dmask);
    throw;
  }
  be.release(dmask);
}

void expect_refused(Backend& be, const std::vector<int>& mask, bool causal, const std::string& why) {
  try {
    forward_with_mask(be, mask, causal);
    ADD_FAILURE() << "not refused: " << why;
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string::npos, std::string(e.what()).find(why)) << e.what();
  }
}

TEST(CudnnAttention, RefusesWhatItCannotExpress) {
  SKIP_WITHOUT_CUDNN_GPU();
  std::unique_ptr<Backend> be = make_cuda_backend(CudaPrecision::kBf16, AttentionImpl::kCudnn);
  std::vector<int> mask(32, 1);
  mask[16 + 5] = 0;  // a hole in row 1
  expect_refused(*be, mask, false, "key_mask row 1: holes");
  std::fill(mask.begin(), mask.end(), 1);
  std::fill(mask.begin(), mask.begin() + 16, 0);  // row 0 hides every key
  expect_refused(*be, mask, false, "key_mask row 0: no visible key");
  std::fill(mask.begin(), mask.end(), 1);
  mask[16] = mask[31] = 0;  // row 1 padded on both sides
  expect_refused(*be, mask, true, "keys padded on both sides under the causal mask");
  EXPECT_NO_THROW(forward_with_mask(*be, mask, false));  // bidirectional: fine
  try {
    forward_with_mask(*be, mask, false, 20);
    ADD_FAILURE() << "head dim 20 not refused";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string::npos, std::string(e.what()).find("head dim 20")) << e.what();
  }
  EXPECT_THROW(make_cuda_backend(CudaPrecision::kFp32, AttentionImpl::kCudnn), std::invalid_argument);
}

TEST(CudnnAttention, DropoutKeepsOneMinusPOfTheProbabilityMassAndIsKeyedBySeedAndSite) {
  SKIP_WITHOUT_CUDNN_GPU();
  std::unique_ptr<Backend> be = make_cuda_backend(CudaPrecision::kBf16, AttentionImpl::kCudnn);
  const int B = 4, T = 128, H = 4, D = 64;
  const float p = 0.3f;
  const size_t n = (size_t)B * T * H * D;
  DeviceTensor q(*be, n, true), v(*be, n, true), out(*be, n, true), lse(*be, (size_t)B * H * T, false);
  q.set(std::vector<float>(n, 0.0f));
  v.set(std::vector<float>(n, 1.0f));
  auto run = [&](uint32_t site) {
    be->attention_forward(out.t(), lse.f(), q.t(), q.t(), v.t(), packed_qkv(H, H, D), nullptr, B, T, H, H, D, false, p,
                          42, site);
    return out.get();
  };
  const std::vector<float> a = run(3), again = run(3), other = run(4);
  // Column 0 of every row: kept/(T (1-p)); N = B H T^2 independent decisions, each kept with 1-p.
  double mean = 0.0;
  for (size_t r = 0; r < (size_t)B * H * T; ++r) mean += a[r * D];
  mean /= (double)B * H * T;
  const double decisions = (double)B * H * T * T;
  const double sd = std::sqrt(p * (1.0 - p) / decisions) / (1.0 - p);
  EXPECT_NEAR(mean, 1.0, 5 * sd + kU) << "mean of kept/(T (1-p)) over rows";
  EXPECT_EQ(a, again) << "the same (seed, site) must give the same dropout mask";
  EXPECT_NE(a, other) << "another site must give another dropout mask";
}

}  // namespace
}  // namespace l2v
