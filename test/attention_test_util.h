// Shared by the attention kernel tests (test_cuda_attention: the SIMT kernels of cuda/attention.cuh;
// test_cuda_attention_mma: the tensor-core kernels of cuda/attention_mma.cuh): one case's inputs and
// its five results (test/attention_bounds.h), random inputs rounded to the storage type, and the fp32 CPU reference
// (l2v::cpu::attention_forward / attention_backward) run the way both tests compare against it, and the
// device run of an implementation's forward and backward.
#pragma once
#include <cstdint>
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
  l2v::cpu::attention_forward(r.out.data(), r.lse.data(), in.q.data(), in.k.data(), in.v.data(), in.mask.data(), d.B,
                              d.T, d.H, d.KV, d.D, d.causal, d.p, seed, site);
  l2v::cpu::attention_backward(r.dq.data(), r.dk.data(), r.dv.data(), in.dout.data(), out.data(), lse.data(),
                               in.q.data(), in.k.data(), in.v.data(), in.mask.data(), d.B, d.T, d.H, d.KV, d.D,
                               d.causal, d.p, seed, site);
  return r;
}

// One implementation's forward, then its backward on the forward's own out and lse (as in training),
// on the device: `fwd` and `bwd` have the signatures of attention_forward_cuda<T> and
// attention_backward_cuda<T> (cuda/attention.cuh), which every attention implementation shares.
template <typename T, class Fwd, class Bwd>
AttentionResults run_attention_kernels(const AttentionDims& d, const AttentionInputs& in, Fwd fwd, Bwd bwd,
                                       DropoutKey seed, uint32_t site) {
  const size_t N = (size_t)d.B * d.T;
  Dev<T> q(in.q), k(in.k), v(in.v), dout(in.dout);
  Raw<int> mask(in.mask);
  Dev<T> out(N * d.H * d.D), dq(N * d.H * d.D), dk(N * d.KV * d.D), dv(N * d.KV * d.D);
  Dev<float> lse((size_t)d.B * d.H * d.T);
  Dev<float> scratch(l2v::cuda::attention_backward_scratch_bytes(d.B, d.T, d.H, d.KV, d.D) / sizeof(float));
  fwd(out.ptr, lse.ptr, q.ptr, k.ptr, v.ptr, mask.ptr, d.B, d.T, d.H, d.KV, d.D, d.causal, d.p, seed, site, nullptr);
  bwd(dq.ptr, dk.ptr, dv.ptr, dout.ptr, out.ptr, lse.ptr, q.ptr, k.ptr, v.ptr, mask.ptr, d.B, d.T, d.H, d.KV, d.D,
      d.causal, d.p, seed, site, scratch.ptr, nullptr);
  CUDA_CHECK(cudaDeviceSynchronize());
  return {out.get(), lse.get(), dq.get(), dk.get(), dv.get()};
}

}  // namespace l2v::test
