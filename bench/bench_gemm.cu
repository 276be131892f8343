// One Mistral-7B decoder layer's GEMMs on the GPU through the CUDA backend's cuBLAS wrappers
// (cuda/matmul.cuh: matmul_forward_cuda, matmul_backward_input_cuda), bf16 with fp32 accumulation, at
// 16384 tokens per step: the products the model runs (model.h kLinearGroups: the fused q|k|v, 4096 -> 6144;
// o, 4096 -> 4096; the fused gate|up, 4096 -> 28672; down, 14336 -> 4096) and, as their peer, the 7
// projections one by one as the model ran them before the fusion (q: 4096 -> 4096; k, v: 4096 -> 1024; gate,
// up: 4096 -> 14336), whose input gradients after the first of a group accumulate into dinp (beta = 1: one
// more read of it, counted in their bytes). Forward: out = inp W^T, through cuBLASLt; the input gradient:
// dinp = dout W (the base weights are frozen under LoRA, so there is no weight gradient). Beside the forward, its
// peer: the same product through cublasGemmEx (impl=cublas), as the forward ran before cuBLASLt; and the
// down projection with the residual added by the GEMM (impl=cublaslt_residual: D = C + inp W^T, C != D;
// its bytes count C's read).
//   usage: bench_gemm          (from anywhere; without a GPU it says so and exits 0)
//
// Before timing, each GEMM is validated on 256 sampled output elements against a double-precision dot
// product of the same bf16 inputs, with the bound of an fp32 sum of K products rounded once to bf16:
// |c - ref| <= u |ref| + (1 + u) gamma_K sum_k |a_k b_k|, u = 2^-8, gamma_K = K 2^-24 / (1 - K 2^-24)
// (whatever order or split cuBLAS sums in). FLOPs 2 M N K; bytes: both operands read and the result
// written once.
#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <vector>

#include "bench/gpu_bench.h"
#include "cuda/matmul.cuh"
#include "cuda/workspace_sizes.h"

namespace {

using l2v::bench::DeviceArray;
using bf16 = __nv_bfloat16;

constexpr int kTokens = 16384;
constexpr double kU = 1.0 / 256, kEps32 = 1.0 / 16777216.0;

struct Projection {
  const char* name;
  int in, out;
  bool accumulate;  // the input gradient adds into dinp (a group's later layers, unfused)
};
constexpr Projection kLayer[] = {{"qkv_proj", 4096, 6144, false},    {"o_proj", 4096, 4096, false},
                                 {"gate_up_proj", 4096, 28672, false}, {"down_proj", 14336, 4096, false},
                                 {"q_proj", 4096, 4096, false},      {"k_proj", 4096, 1024, true},
                                 {"v_proj", 4096, 1024, true},       {"gate_proj", 4096, 14336, false},
                                 {"up_proj", 4096, 14336, true}};

// Row r of a row-major [rows, cols] device matrix, as floats.
std::vector<float> row_of(const bf16* m, int cols, int r) {
  std::vector<bf16> raw(cols);
  CUDA_CHECK(cudaMemcpy(raw.data(), m + (size_t)r * cols, cols * sizeof(bf16), cudaMemcpyDeviceToHost));
  return std::vector<float>(raw.begin(), raw.end());
}

// Checks C [M, N] = A [M, K] op(B) on 256 sampled elements; B is [N, K] (b_transposed: C = A B^T) or
// [K, N] (C = A B). Returns the worst |c - ref| / bound.
double sampled_worst_ratio(const bf16* A, const bf16* B, bool b_transposed, const bf16* C, int M, int N, int K) {
  std::mt19937 rng(7);
  const double gamma = K * kEps32 / (1 - K * kEps32);
  double worst = 0;
  for (int s = 0; s < 256; ++s) {
    const int i = (int)(rng() % M), j = (int)(rng() % N);
    const std::vector<float> a = row_of(A, K, i);
    std::vector<float> b;
    if (b_transposed) {
      b = row_of(B, K, j);
    } else {  // column j of B [K, N]
      std::vector<bf16> raw(K);
      CUDA_CHECK(cudaMemcpy2D(raw.data(), sizeof(bf16), B + j, N * sizeof(bf16), sizeof(bf16), K,
                              cudaMemcpyDeviceToHost));
      b.assign(raw.begin(), raw.end());
    }
    double ref = 0, mag = 0;
    for (int k = 0; k < K; ++k) {
      ref += (double)a[k] * b[k];
      mag += std::fabs((double)a[k] * b[k]);
    }
    const double c = row_of(C, N, i)[j];
    const double r = std::fabs(c - ref) / (kU * std::fabs(ref) + (1 + kU) * gamma * mag);
    worst = std::isnan(r) || r > worst ? r : worst;
  }
  return worst;
}

}  // namespace

int main() {
  if (!l2v::bench::gpu_present("bench_gemm")) return 0;
  l2v::bench::Timer timer;
  cublasHandle_t handle;
  CUBLAS_CHECK(cublasCreate(&handle));
  cublasLtHandle_t lt;
  CUBLAS_CHECK(cublasLtCreate(&lt));
  DeviceArray<unsigned char> lt_workspace(l2v::cuda::kLtWorkspaceBytes);
  const l2v::cuda::LtContext ctx{handle, lt, lt_workspace.ptr, l2v::cuda::kLtWorkspaceBytes};
  bool all_ok = true;
  for (const Projection& pr : kLayer) {
    DeviceArray<bf16> x((size_t)kTokens * pr.in), w((size_t)pr.out * pr.in), y((size_t)kTokens * pr.out);
    DeviceArray<bf16> dy((size_t)kTokens * pr.out), dx((size_t)kTokens * pr.in);
    l2v::bench::fill_uniform(x, 11);
    l2v::bench::fill_uniform(w, 12, -0.05f, 0.05f);
    l2v::bench::fill_uniform(dy, 13);
    const auto fwd = [&] { l2v::cuda::matmul_forward_cuda(ctx, y.ptr, x.ptr, w.ptr, (const bf16*)nullptr, kTokens, pr.in, pr.out); };
    const auto fwd_gemmex = [&] {
      l2v::cuda::gemm_rowmajor(handle, false, true, kTokens, pr.out, pr.in, 1.0f, x.ptr, pr.in, w.ptr, pr.in, 0.0f, y.ptr,
                               pr.out);
    };
    const auto fwd_residual = [&] {  // y = dy + x W^T (dy stands for the residual stream)
      l2v::cuda::matmul_forward_cuda(ctx, y.ptr, x.ptr, w.ptr, (const bf16*)nullptr, kTokens, pr.in, pr.out, dy.ptr);
    };
    const auto bwd = [&] {
      l2v::cuda::matmul_backward_input_cuda(handle, dx.ptr, dy.ptr, w.ptr, kTokens, pr.in, pr.out, pr.accumulate);
    };
    fwd();
    CUDA_CHECK(cudaMemset(dx.ptr, 0, dx.bytes()));  // the validated product alone, when it accumulates
    bwd();
    CUDA_CHECK(cudaDeviceSynchronize());
    const std::string base = std::string("bench=gemm impl=cublas shape=") + pr.name + "_M" + std::to_string(kTokens) +
                             "_K" + std::to_string(pr.in) + "_N" + std::to_string(pr.out) + " dropout=0.0";
    const bool ok_f = l2v::bench::check(base + " fwd (worst |diff| / bound)",
                                        sampled_worst_ratio(x.ptr, w.ptr, true, y.ptr, kTokens, pr.out, pr.in), 1.0);
    const bool ok_b = l2v::bench::check(base + " bwd (worst |diff| / bound)",
                                        sampled_worst_ratio(dy.ptr, w.ptr, false, dx.ptr, kTokens, pr.in, pr.out), 1.0);
    all_ok = all_ok && ok_f && ok_b;
    if (!ok_f || !ok_b) continue;
    const double flops = 2.0 * kTokens * pr.in * pr.out;
    const double bytes = 2.0 * ((double)kTokens * pr.in + (double)pr.in * pr.out + (double)kTokens * pr.out);
    // base names impl=cublas (cublasGemmEx); the forward's rows rename it.
    const auto named = [&](const char* impl) { return "bench=gemm impl=" + std::string(impl) + base.substr(base.find(" shape=")); };
    l2v::bench::report(named("cublaslt") + " pass=fwd", flops, bytes, timer.median_ms(fwd));
    l2v::bench::report(base + " pass=fwd", flops, bytes, timer.median_ms(fwd_gemmex));
    if (std::string(pr.name) == "down_proj")
      l2v::bench::report(named("cublaslt_residual") + " pass=fwd", flops, bytes + 2.0 * kTokens * pr.out,
                         timer.median_ms(fwd_residual));
    l2v::bench::report(base + " pass=bwd", flops, bytes + (pr.accumulate ? 2.0 * kTokens * pr.in : 0.0),
                       timer.median_ms(bwd));
  }
  CUBLAS_CHECK(cublasLtDestroy(lt));
  CUBLAS_CHECK(cublasDestroy(handle));
  if (!all_ok) std::printf("bench_gemm: a validation FAILED (its timings were skipped)\n");
  return all_ok ? 0 : 1;
}
