// Attention forward and backward on the GPU, every implementation of the CUDA backend: the SIMT kernels
// (cuda/attention.cuh, --attention_impl simt) and the tensor-core kernels (cuda/attention_mma.cuh, mma),
// at Mistral-7B's shapes: 16384 tokens per step as B = 16384 / T sequences of T = 128, 512, 2048 tokens,
// 32 query heads, 8 kv heads, head dim 128, bf16, bidirectional (LLM2Vec), no padding, attention
// dropout 0 and 0.3. cuDNN SDPA is not built (issue 9 section 3); scripts/gpu_check.sh times PyTorch's
// flash and cuDNN attention on the same shapes beside this program.
//   usage: bench_attention          (from anywhere; without a GPU it says so and exits 0)
//
// Before timing, every shape validates the tensor-core kernels against the SIMT kernels on the same
// inputs (the SIMT kernels are the reference: the kernel tests compare them with the CPU reference, and
// scripts/gpu_check.sh runs those tests on the GPU first). Inputs are uniform in [-1, 1), so every
// |q|, |k|, |v| <= 1. Bounds:
//   out: the SIMT kernels compute in fp32 and round once; the mma kernels round P to bf16 (relative u =
//     2^-8 each) before P V, which moves out_i by at most u * keep * max|v| (keep = 1/(1-p); the P_ij/l_i
//     sum to 1), and also round once. With fp32 noise (T-term sums: T * 2^-24; scores: D terms of
//     |q k| <= 1, times the scale, in both numerator and normaliser) on top:
//     |mma - simt| <= u (|mma| + |simt|) + keep (u + 2 T 2^-24 + 2 D^2 scale 2^-24).
//   lse: fp32 in both: 2 D^2 scale 2^-24 + 2 T 2^-24 + 2^-20 (|lse| + 1) (exp2/log2 approximations).
//   dq, dk, dv: the relative Frobenius-norm difference at most 2^-5. This one is a sanity threshold, not
//     a derived bound: the mma kernels round P and dS to bf16 before their second product, and dS sums
//     to zero over a row, so the elementwise error is bounded by sums of |terms| that can exceed the
//     result; a wrong mask, tile or head gives differences of order 1. The emulated tests hold the
//     kernels to derived per-element bounds against the CPU reference.
// Useful FLOPs (the convention of the FlashAttention papers, so the figures compare): forward 4 B H T^2 D
// (Q K^T and P V), backward 2.5 times that. The mma backward executes 3.5 times the forward (its dq pass
// recomputes S and dP), the SIMT backward the same; the extra work is not counted. Bytes: q, k, v read
// and out, lse written (forward); q, k, v, out, dout, lse read and dq, dk, dv written (backward).
#include <cmath>
#include <cstdio>
#include <string>

#include "bench/gpu_bench.h"
#include "cuda/attention.cuh"
#include "cuda/attention_mma.cuh"

namespace {

using l2v::bench::DeviceArray;
using bf16 = __nv_bfloat16;

constexpr int kTokens = 16384, kH = 32, kKV = 8, kD = 128;
constexpr uint64_t kSeed = 1234;
// Packed q, k and v. The model passes the column blocks of its fused q|k|v rows instead (host/qkv_strides.h),
// which the kernels read the same way: D contiguous elements per row and head.
const l2v::QkvStrides kPacked = l2v::packed_qkv(kH, kKV, kD);
constexpr double kU = 1.0 / 256, kEps32 = 1.0 / 16777216.0;

struct Problem {
  int B, T;
  float dropout;
  DeviceArray<bf16> q{(size_t)kTokens * kH * kD}, k{(size_t)kTokens * kKV * kD}, v{(size_t)kTokens * kKV * kD};
  DeviceArray<bf16> dout{(size_t)kTokens * kH * kD};
  DeviceArray<float> scratch{(size_t)kTokens * kH};

  // One implementation's outputs.
  struct Outputs {
    DeviceArray<bf16> out{(size_t)kTokens * kH * kD}, dq{(size_t)kTokens * kH * kD};
    DeviceArray<bf16> dk{(size_t)kTokens * kKV * kD}, dv{(size_t)kTokens * kKV * kD};
    DeviceArray<float> lse{(size_t)kTokens * kH};
  };

  Problem(int t, float p) : B(kTokens / t), T(t), dropout(p) {
    l2v::bench::fill_uniform(q, kSeed + 1);
    l2v::bench::fill_uniform(k, kSeed + 2);
    l2v::bench::fill_uniform(v, kSeed + 3);
    l2v::bench::fill_uniform(dout, kSeed + 4);
  }

  void forward(bool mma, Outputs& o) {
    if (mma) {
      l2v::cuda::attention_mma_forward_cuda(o.out.ptr, o.lse.ptr, q.ptr, k.ptr, v.ptr, kPacked, nullptr, B, T, kH, kKV, kD,
                                            false, dropout, kSeed, 0, nullptr);
    } else {
      l2v::cuda::attention_forward_cuda(o.out.ptr, o.lse.ptr, q.ptr, k.ptr, v.ptr, kPacked, nullptr, B, T, kH, kKV, kD, false,
                                        dropout, kSeed, 0, nullptr);
    }
  }
  void backward(bool mma, Outputs& o) {
    if (mma) {
      l2v::cuda::attention_mma_backward_cuda(o.dq.ptr, o.dk.ptr, o.dv.ptr, dout.ptr, o.out.ptr, o.lse.ptr, q.ptr,
                                             k.ptr, v.ptr, kPacked, nullptr, B, T, kH, kKV, kD, false, dropout, kSeed, 0,
                                             scratch.ptr, nullptr);
    } else {
      l2v::cuda::attention_backward_cuda(o.dq.ptr, o.dk.ptr, o.dv.ptr, dout.ptr, o.out.ptr, o.lse.ptr, q.ptr, k.ptr,
                                         v.ptr, kPacked, nullptr, B, T, kH, kKV, kD, false, dropout, kSeed, 0,
                                         scratch.ptr, nullptr);
    }
  }
  std::string fields(const char* impl, const char* pass) const {
    char buf[160];
    std::snprintf(buf, sizeof buf, "bench=attention impl=%s pass=%s shape=T%d_B%d_H%d_KV%d_D%d dropout=%.1f", impl,
                  pass, T, B, kH, kKV, kD, dropout);
    return buf;
  }
};

// The largest |a - b| / bound(a, b) over the elements: <= 1 passes.
template <typename Bound>
double worst_ratio(const std::vector<float>& a, const std::vector<float>& b, Bound bound) {
  double worst = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    const double r = std::fabs((double)a[i] - b[i]) / bound(a[i], b[i]);
    worst = std::isnan(r) || r > worst ? r : worst;
  }
  return worst;
}

double relative_norm_diff(const std::vector<float>& got, const std::vector<float>& ref) {
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    num += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
    den += (double)ref[i] * ref[i];
  }
  return std::sqrt(num / den);
}

bool validate(Problem& pb, Problem::Outputs& simt, Problem::Outputs& mma) {
  pb.forward(false, simt);
  pb.backward(false, simt);
  pb.forward(true, mma);
  pb.backward(true, mma);
  CUDA_CHECK(cudaDeviceSynchronize());
  const double keep = 1.0 / (1.0 - pb.dropout), scale = 1.0 / std::sqrt((double)kD);
  const double noise = 2.0 * pb.T * kEps32 + 2.0 * kD * kD * scale * kEps32;
  const std::string tag = pb.fields("mma", "vs-simt");
  bool ok = l2v::bench::check(tag + " out (worst |diff| / bound)",
                              worst_ratio(mma.out.to_host(), simt.out.to_host(),
                                          [&](double a, double b) {
                                            return kU * (std::fabs(a) + std::fabs(b)) + keep * (kU + noise);
                                          }),
                              1.0);
  ok &= l2v::bench::check(tag + " lse (worst |diff| / bound)",
                          worst_ratio(mma.lse.to_host(), simt.lse.to_host(),
                                      [&](double a, double) { return noise + (std::fabs(a) + 1.0) / 1048576.0; }),
                          1.0);
  ok &= l2v::bench::check(tag + " dq (relative norm)", relative_norm_diff(mma.dq.to_host(), simt.dq.to_host()), 1.0 / 32);
  ok &= l2v::bench::check(tag + " dk (relative norm)", relative_norm_diff(mma.dk.to_host(), simt.dk.to_host()), 1.0 / 32);
  ok &= l2v::bench::check(tag + " dv (relative norm)", relative_norm_diff(mma.dv.to_host(), simt.dv.to_host()), 1.0 / 32);
  return ok;
}

}  // namespace

int main() {
  if (!l2v::bench::gpu_present("bench_attention")) return 0;
  l2v::bench::Timer timer;
  bool all_ok = true;
  for (const int T : {128, 512, 2048}) {
    for (const float p : {0.0f, 0.3f}) {
      Problem pb(T, p);
      Problem::Outputs simt, mma;
      if (!validate(pb, simt, mma)) {
        all_ok = false;
        continue;  // a wrong kernel's speed means nothing
      }
      const double fwd_flops = 4.0 * pb.B * kH * (double)T * T * kD;
      const double q_bytes = 2.0 * kTokens * kH * kD, kv_bytes = 2.0 * kTokens * kKV * kD, lse_bytes = 4.0 * kTokens * kH;
      const double fwd_bytes = 2 * q_bytes + 2 * kv_bytes + lse_bytes;
      const double bwd_bytes = 4 * q_bytes + 4 * kv_bytes + lse_bytes;
      for (const bool use_mma : {false, true}) {
        Problem::Outputs& o = use_mma ? mma : simt;
        const char* impl = use_mma ? "mma" : "simt";
        l2v::bench::report(pb.fields(impl, "fwd"), fwd_flops, fwd_bytes,
                           timer.median_ms([&] { pb.forward(use_mma, o); }));
        l2v::bench::report(pb.fields(impl, "bwd"), 2.5 * fwd_flops, bwd_bytes,
                           timer.median_ms([&] { pb.backward(use_mma, o); }));
      }
    }
  }
  if (!all_ok) std::printf("bench_attention: a validation FAILED (its timings were skipped)\n");
  return all_ok ? 0 : 1;
}
