// The LoRA side path of one Mistral-7B decoder layer on the GPU (cuda/lora.cuh), bf16 activations, rank 16,
// lora_dropout 0.05 (llm2vec's default), 16384 tokens per step: the adapters that share an input run
// together (q, k, v on x1: 4096 -> 4096, 1024, 1024; gate, up on x2: 4096 -> 14336 each), forward and
// backward, against their peer: the same adapters one call each (the schedule before the shared kernels),
// in the same run.
//   usage: bench_lora          (from anywhere; without a GPU it says so and exits 0)
//
// Validation before timing: each branch's xa (forward) and dA (backward) from the shared call equal the
// one-call-each values to the bit (both sum in the same order; test_cuda_gemm proves it under the
// emulator), and the shared dinp is within one bf16 rounding per branch of the other (the shared kernel
// rounds the sum once, the separate calls once each): |a - b| <= (count + 1) 2^-8 max(|a|, |b|) + 1e-30.
// FLOPs: 2 N IC R (xa) + 2 N R OC (out) per branch forward; backward 2 N OC R (dB) + 2 N OC R (dxa) +
// 2 N R IC (dA) + 2 N R IC (dinp). Bytes: what must cross DRAM at least once (the input once, each
// output or gradient once, dinp read and written once).
#include <cmath>
#include <cstdio>
#include <cstring>
#include <memory>
#include <string>
#include <vector>

#include "bench/gpu_bench.h"
#include "cuda/lora.cuh"

namespace {

using l2v::bench::DeviceArray;
using bf16 = __nv_bfloat16;
namespace lc = l2v::cuda;

constexpr int kTokens = 16384, kIn = 4096, kRank = 16;
constexpr float kDropout = 0.05f;

struct Group {
  const char* name;
  std::vector<int> out;  // each branch's OC
};
const Group kGroups[] = {{"qkv", {4096, 1024, 1024}}, {"gate_up", {14336, 14336}}};

struct Branch {
  std::unique_ptr<DeviceArray<bf16>> out, xa, dout;
  std::unique_ptr<DeviceArray<float>> A, B, dA, dB;
};

bool same_bits(const DeviceArray<bf16>& a, const DeviceArray<bf16>& b) {
  std::vector<bf16> x(a.n), y(b.n);
  CUDA_CHECK(cudaMemcpy(x.data(), a.ptr, a.bytes(), cudaMemcpyDeviceToHost));
  CUDA_CHECK(cudaMemcpy(y.data(), b.ptr, b.bytes(), cudaMemcpyDeviceToHost));
  return std::memcmp(x.data(), y.data(), a.bytes()) == 0;
}
bool same_bits(const DeviceArray<float>& a, const DeviceArray<float>& b) {
  return std::memcmp(a.to_host().data(), b.to_host().data(), a.bytes()) == 0;
}

}  // namespace

int main() {
  if (!l2v::bench::gpu_present("bench_lora")) return 0;
  l2v::bench::Timer timer;
  cublasHandle_t handle;
  CUBLAS_CHECK(cublasCreate(&handle));
  bool all_ok = true;
  const l2v::DropoutKey key{0x5EED, 0};
  for (const Group& g : kGroups) {
    const int count = (int)g.out.size();
    DeviceArray<bf16> x((size_t)kTokens * kIn), dx((size_t)kTokens * kIn), dx1((size_t)kTokens * kIn);
    l2v::bench::fill_uniform(x, 1);
    std::vector<Branch> br(count), sep(count);  // shared call, one call each
    lc::LoraForwardBranch<bf16> fwd[l2v::kMaxLoraBranches], fwd1[l2v::kMaxLoraBranches];
    lc::LoraBackwardBranch<bf16> bwd[l2v::kMaxLoraBranches], bwd1[l2v::kMaxLoraBranches];
    int OC[l2v::kMaxLoraBranches];
    double flops_fwd = 0, flops_bwd = 0, bytes_fwd = 2.0 * kTokens * kIn, bytes_bwd = 2.0 * 2 * kTokens * kIn;
    for (int b = 0; b < count; ++b) {
      OC[b] = g.out[b];
      for (std::vector<Branch>* v : {&br, &sep}) {
        Branch& z = (*v)[b];
        z.out = std::make_unique<DeviceArray<bf16>>((size_t)kTokens * OC[b]);
        z.xa = std::make_unique<DeviceArray<bf16>>((size_t)kTokens * kRank);
        z.dout = std::make_unique<DeviceArray<bf16>>((size_t)kTokens * OC[b]);
        z.A = std::make_unique<DeviceArray<float>>((size_t)kRank * kIn);
        z.B = std::make_unique<DeviceArray<float>>((size_t)OC[b] * kRank);
        z.dA = std::make_unique<DeviceArray<float>>((size_t)kRank * kIn);
        z.dB = std::make_unique<DeviceArray<float>>((size_t)OC[b] * kRank);
        l2v::bench::fill_uniform(*z.out, 10 + b);
        l2v::bench::fill_uniform(*z.dout, 20 + b);
        l2v::bench::fill_uniform(*z.A, 30 + b, -0.02f, 0.02f);
        l2v::bench::fill_uniform(*z.B, 40 + b, -0.02f, 0.02f);
        CUDA_CHECK(cudaMemset(z.dA->ptr, 0, z.dA->bytes()));
        CUDA_CHECK(cudaMemset(z.dB->ptr, 0, z.dB->bytes()));
      }
      const uint32_t site = 100 + b;
      fwd[b] = {br[b].out->ptr, br[b].xa->ptr, br[b].A->ptr, br[b].B->ptr, site, OC[b], OC[b]};
      fwd1[b] = {sep[b].out->ptr, sep[b].xa->ptr, sep[b].A->ptr, sep[b].B->ptr, site, OC[b], OC[b]};
      bwd[b] = {br[b].dout->ptr, br[b].xa->ptr, br[b].A->ptr, br[b].B->ptr, br[b].dA->ptr, br[b].dB->ptr, site, OC[b],
                OC[b]};
      bwd1[b] = {sep[b].dout->ptr, sep[b].xa->ptr, sep[b].A->ptr, sep[b].B->ptr, sep[b].dA->ptr, sep[b].dB->ptr, site,
                 OC[b], OC[b]};
      flops_fwd += 2.0 * kTokens * kRank * (kIn + OC[b]);
      flops_bwd += 4.0 * kTokens * kRank * (kIn + OC[b]);
      bytes_fwd += 2.0 * 2 * kTokens * OC[b];  // out read and written
      bytes_bwd += 2.0 * kTokens * OC[b];      // dout read
    }
    // Same A, B and dout in both sets, so that their results can be compared.
    for (int b = 0; b < count; ++b) {
      CUDA_CHECK(cudaMemcpy(sep[b].A->ptr, br[b].A->ptr, br[b].A->bytes(), cudaMemcpyDeviceToDevice));
      CUDA_CHECK(cudaMemcpy(sep[b].B->ptr, br[b].B->ptr, br[b].B->bytes(), cudaMemcpyDeviceToDevice));
      CUDA_CHECK(cudaMemcpy(sep[b].dout->ptr, br[b].dout->ptr, br[b].dout->bytes(), cudaMemcpyDeviceToDevice));
    }
    DeviceArray<unsigned char> ws(lc::lora_branches_workspace_bytes(sizeof(bf16), kTokens, kIn, OC, count, kRank));
    const lc::LoraInput<bf16> in{x.ptr, kTokens, kIn, kRank, 2.0f, kDropout, key};
    const auto shared_fwd = [&] { lc::lora_forward_cuda<bf16>(handle, in, fwd, count, ws.ptr); };
    const auto separate_fwd = [&] {
      for (int b = 0; b < count; ++b) lc::lora_forward_cuda<bf16>(handle, in, &fwd1[b], 1, ws.ptr);
    };
    const auto shared_bwd = [&] {
      lc::lora_backward_cuda<bf16>(handle, dx.ptr, {x.ptr, kTokens, kIn, kRank, 2.0f, kDropout, key}, bwd, count,
                                   ws.ptr);
    };
    const auto separate_bwd = [&] {
      for (int b = 0; b < count; ++b)
        lc::lora_backward_cuda<bf16>(handle, dx1.ptr, {x.ptr, kTokens, kIn, kRank, 2.0f, kDropout, key}, &bwd1[b], 1,
                                     ws.ptr);
    };
    CUDA_CHECK(cudaMemset(dx.ptr, 0, dx.bytes()));
    CUDA_CHECK(cudaMemset(dx1.ptr, 0, dx1.bytes()));
    shared_fwd();
    separate_fwd();
    shared_bwd();
    separate_bwd();
    CUDA_CHECK(cudaDeviceSynchronize());
    bool bits = true;
    for (int b = 0; b < count; ++b) bits = bits && same_bits(*br[b].xa, *sep[b].xa) && same_bits(*br[b].dA, *sep[b].dA);
    const std::string base = std::string("bench=lora group=") + g.name + " shape=N" + std::to_string(kTokens) + "_IC" +
                             std::to_string(kIn) + "_R" + std::to_string(kRank) + " dropout=0.05";
    const bool ok_bits = l2v::bench::check(base + " xa and dA bits unlike one call each (0 = equal)", bits ? 0 : 1, 0);
    const std::vector<float> a = dx.to_host(), c = dx1.to_host();
    double worst = 0;
    for (size_t i = 0; i < a.size(); ++i) {
      const double r = std::fabs((double)a[i] - c[i]) /
                       ((count + 1) / 256.0 * std::max(std::fabs((double)a[i]), std::fabs((double)c[i])) + 1e-30);
      worst = std::isnan(r) || r > worst ? r : worst;
    }
    const bool ok_dx = l2v::bench::check(base + " dinp shared vs one call each (worst |diff| / bound)", worst, 1.0);
    all_ok = all_ok && ok_bits && ok_dx;
    if (!ok_bits || !ok_dx) continue;
    l2v::bench::report(base + " impl=shared pass=fwd", flops_fwd, bytes_fwd, timer.median_ms(shared_fwd));
    l2v::bench::report(base + " impl=one_call_each pass=fwd", flops_fwd, bytes_fwd, timer.median_ms(separate_fwd));
    l2v::bench::report(base + " impl=shared pass=bwd", flops_bwd, bytes_bwd, timer.median_ms(shared_bwd));
    l2v::bench::report(base + " impl=one_call_each pass=bwd", flops_bwd, bytes_bwd, timer.median_ms(separate_bwd));
  }
  CUBLAS_CHECK(cublasDestroy(handle));
  if (!all_ok) std::printf("bench_lora: a validation FAILED (its timings were skipped)\n");
  return all_ok ? 0 : 1;
}
