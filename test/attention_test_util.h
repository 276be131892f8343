// Shared by the attention kernel tests (test_cuda_attention: the SIMT kernels of cuda/attention.cuh;
// test_cuda_attention_mma: the tensor-core kernels of cuda/attention_mma.cuh): one case's inputs and
// its five results (test/attention_bounds.h), random inputs rounded to the storage type, and the fp32 CPU reference
// (l2v::cpu::attention_forward / attention_backward) run the way both tests compare against it, and the
// device run of an implementation's forward and backward.
#pragma once
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "cuda/attention.cuh"
#include "cuda/launch.h"
#include "host/cpu_ops.h"
#include "test/attention_bounds.h"
#include "test/cuda_test_util.h"

namespace l2v::test {

// Random normal q, k, v and dout rounded to T (the reference sees exactly the kernels' values); q is
// scaled by 2 so that the softmax is far from flat.
template <typename T>
AttentionInputs random_attention_inputs(const AttentionDims& d, std::vector<int> mask, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  const size_t N = (size_t)d.B * d.T;
  auto fill = [&](size_t n, float scale) {
    std::vector<float> x(n);
    for (float& e : x) e = scale * normal(rng);
    return rounded<T>(std::move(x));
  };
  AttentionInputs in;
  in.q = fill(N * d.H * d.D, 2.0f);
  in.k = fill(N * d.KV * d.D, 1.0f);
  in.v = fill(N * d.KV * d.D, 1.0f);
  in.dout = fill(N * d.H * d.D, 1.0f);
  in.mask = std::move(mask);
  return in;
}

// The reference: the forward on the inputs, and the backward on the inputs and the given out and lse
// (the kernel forward's, which the kernel backward reads: the backward's comparison then sees only the
// backward's own errors).
inline AttentionResults cpu_attention(const AttentionDims& d, const AttentionInputs& in, const std::vector<float>& out,
                                      const std::vector<float>& lse, DropoutKey seed, uint32_t site) {
  const size_t N = (size_t)d.B * d.T;
  AttentionResults r;
  r.out.resize(N * d.H * d.D);
  r.lse.resize((size_t)d.B * d.H * d.T);
  r.dq.resize(N * d.H * d.D);
  r.dk.resize(N * d.KV * d.D);
  r.dv.resize(N * d.KV * d.D);
  const QkvStrides ld = packed_qkv(d.H, d.KV, d.D);
  l2v::cpu::attention_forward(r.out.data(), r.lse.data(), in.q.data(), in.k.data(), in.v.data(), ld, in.mask.data(),
                              d.B, d.T, d.H, d.KV, d.D, d.causal, d.p, seed, site);
  l2v::cpu::attention_backward(r.dq.data(), r.dk.data(), r.dv.data(), in.dout.data(), out.data(), lse.data(),
                               in.q.data(), in.k.data(), in.v.data(), ld, in.mask.data(), d.B, d.T, d.H, d.KV, d.D,
                               d.causal, d.p, seed, site);
  return r;
}

// The layouts a device run can give q, k and v (and dq, dk, dv): packed arrays, or the column blocks of one
// [N, W] array as the model's fused q|k|v product holds them, W = (H + 2 KV) D plus 16 bytes of spare columns
// that hold NaN (a kernel that read them would spread NaN; one that wrote them is caught).
enum class QkvLayout { kPacked, kFused };

// q, k, v (or dq, dk, dv) on the device in `layout`.
template <typename T>
struct DeviceQkv {
  int N, H, KV, D, W;
  QkvLayout layout;
  std::unique_ptr<Dev<T>> all, q_, k_, v_;
  T *q, *k, *v;
  DeviceQkv(const AttentionDims& d, QkvLayout l) : N(d.B * d.T), H(d.H), KV(d.KV), D(d.D), layout(l) {
    const int pad = 16 / (int)sizeof(T);
    W = (H + 2 * KV) * D + pad;
    if (layout == QkvLayout::kFused) {
      all = std::make_unique<Dev<T>>((size_t)N * W);  // NaN everywhere until written
      q = all->ptr;
      k = q + H * D;
      v = k + KV * D;
    } else {
      q_ = std::make_unique<Dev<T>>((size_t)N * H * D);
      k_ = std::make_unique<Dev<T>>((size_t)N * KV * D);
      v_ = std::make_unique<Dev<T>>((size_t)N * KV * D);
      q = q_->ptr;
      k = k_->ptr;
      v = v_->ptr;
    }
  }
  QkvStrides strides() const { return layout == QkvLayout::kFused ? QkvStrides{W, W} : packed_qkv(H, KV, D); }
  void upload(const std::vector<float>& hq, const std::vector<float>& hk, const std::vector<float>& hv) {
    if (layout == QkvLayout::kPacked) {
      q_->upload(hq);
      k_->upload(hk);
      v_->upload(hv);
      return;
    }
    std::vector<float> wide((size_t)N * W, std::numeric_limits<float>::quiet_NaN());
    for (int n = 0; n < N; ++n) {
      std::copy_n(&hq[(size_t)n * H * D], H * D, &wide[(size_t)n * W]);
      std::copy_n(&hk[(size_t)n * KV * D], KV * D, &wide[(size_t)n * W + H * D]);
      std::copy_n(&hv[(size_t)n * KV * D], KV * D, &wide[(size_t)n * W + (H + KV) * D]);
    }
    all->upload(wide);
  }
  // The three arrays packed, after checking (fused) that the spare columns still hold NaN.
  std::vector<std::vector<float>> get() const {
    if (layout == QkvLayout::kPacked) return {q_->get(), k_->get(), v_->get()};
    const std::vector<float> wide = all->get();
    std::vector<std::vector<float>> out(3);
    const int widths[3] = {H * D, KV * D, KV * D};
    for (int n = 0; n < N; ++n) {
      int col = 0;
      for (int t = 0; t < 3; ++t) {
        out[t].insert(out[t].end(), &wide[(size_t)n * W + col], &wide[(size_t)n * W + col + widths[t]]);
        col += widths[t];
      }
      for (; col < W; ++col) EXPECT_TRUE(std::isnan(wide[(size_t)n * W + col])) << "spare column written, row " << n;
    }
    return out;
  }
};

// One implementation's forward, then its backward on the forward's own out and lse (as in training),
// on the device, with q, k, v and their gradients in `layout`: `fwd` and `bwd` have the signatures of
// attention_forward_cuda<T> and attention_backward_cuda<T> (cuda/attention.cuh), which every attention
// implementation shares.
template <typename T, class Fwd, class Bwd>
AttentionResults run_attention_kernels(const AttentionDims& d, const AttentionInputs& in, Fwd fwd, Bwd bwd,
                                       DropoutKey seed, uint32_t site, QkvLayout layout = QkvLayout::kPacked) {
  const size_t N = (size_t)d.B * d.T;
  DeviceQkv<T> qkv(d, layout), grad(d, layout);
  qkv.upload(in.q, in.k, in.v);
  Dev<T> dout(in.dout);
  Raw<int> mask(in.mask);
  Dev<T> out(N * d.H * d.D);
  Dev<float> lse((size_t)d.B * d.H * d.T);
  Dev<float> scratch(l2v::cuda::attention_backward_scratch_bytes(d.B, d.T, d.H, d.KV, d.D) / sizeof(float));
  fwd(out.ptr, lse.ptr, qkv.q, qkv.k, qkv.v, qkv.strides(), mask.ptr, d.B, d.T, d.H, d.KV, d.D, d.causal, d.p, seed,
      site, nullptr);
  bwd(grad.q, grad.k, grad.v, dout.ptr, out.ptr, lse.ptr, qkv.q, qkv.k, qkv.v, qkv.strides(), mask.ptr, d.B, d.T, d.H,
      d.KV, d.D, d.causal, d.p, seed, site, scratch.ptr, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  std::vector<std::vector<float>> g = grad.get();
  return {out.get(), lse.get(), std::move(g[0]), std::move(g[1]), std::move(g[2])};
}

}  // namespace l2v::test
