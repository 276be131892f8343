// The CPU backend's bf16 GEMM (host/cpu_gemm_bf16.h: a weight packed once into AMX tiles, A rounded to
// bf16 per call, fp32 accumulation) against OpenBLAS's fp32 sgemm on the same shapes, threads and
// machine: the linear layers of SmolLM2-135M (hidden 576, MLP 1536, 3 KV heads of 64) and a 6,144-column
// piece of its LM head, at 16 x 128 = 2,048 rows (a training micro-batch, or an embedding batch).
// Where oneDNN is installed (Debian: libdnnl-dev; the Makefile then builds this with it), its bf16 matmul too.
// The shared-input rows: q/k/v and gate/up of one input as the model runs them (one weight of the summed width,
// the fused layers of model.h), in one gemm_bf16_shared call over their separate weights, and a call per weight.
// Counters: FLOP/s (2 M N K per GEMM). OpenBLAS runs one single-threaded GEMM per thread on its share of
// the rows, as the CPU backend runs it. Run from the repository root:
//   make bench && OMP_NUM_THREADS=2 ./build/bench/bench_cpu_gemm
// (On a CPU without AMX-BF16 the bf16 rows time the portable kernel, which is not meant to be fast.)
#include <benchmark/benchmark.h>
#include <cblas.h>
#include <omp.h>

#include <random>
#include <vector>

#include "host/cpu_gemm_bf16.h"

#ifdef L2V_HAVE_ONEDNN
#include <oneapi/dnnl/dnnl.hpp>
#endif

namespace {

struct Shapes {
  int M, K, N;
};

struct Operands {
  std::vector<float> A, W, C;
  explicit Operands(const Shapes& s) : A((size_t)s.M * s.K), W((size_t)s.N * s.K), C((size_t)s.M * s.N) {
    std::mt19937 rng(1);
    std::uniform_real_distribution<float> d(-1, 1);
    for (float& x : A) x = d(rng);
    for (float& x : W) x = d(rng);
  }
};

Shapes shapes(const benchmark::State& state) {
  return {(int)state.range(0), (int)state.range(1), (int)state.range(2)};
}

void set_flops(benchmark::State& state, const Shapes& s) {
  state.counters["FLOP/s"] =
      benchmark::Counter(2.0 * s.M * s.N * s.K, benchmark::Counter::kIsIterationInvariantRate);
}

void BM_GemmBf16(benchmark::State& state) {
  const Shapes s = shapes(state);
  Operands o(s);
  const l2v::cpu::PackedBf16 B = l2v::cpu::pack_bf16_transposed(o.W.data(), s.N, s.K);  // once, as at load
  for (auto _ : state) {
    l2v::cpu::gemm_bf16(o.C.data(), s.N, o.A.data(), s.K, s.M, B, false);
    benchmark::DoNotOptimize(o.C.data());
  }
  set_flops(state, s);
  state.SetLabel(l2v::cpu::amx_bf16_available() ? "AMX-BF16" : "portable");
}

void BM_SgemmOpenBlas(benchmark::State& state) {
  const Shapes s = shapes(state);
  Operands o(s);
  for (auto _ : state) {
#pragma omp parallel
    {
      const int t = omp_get_thread_num(), n = omp_get_num_threads();
      const int m0 = (int)((long)s.M * t / n), m1 = (int)((long)s.M * (t + 1) / n);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, m1 - m0, s.N, s.K, 1.0f, o.A.data() + (size_t)m0 * s.K,
                  s.K, o.W.data(), s.K, 0.0f, o.C.data() + (size_t)m0 * s.N, s.N);
    }
    benchmark::DoNotOptimize(o.C.data());
  }
  set_flops(state, s);
}

// q / o (576 -> 576), k / v (576 -> 192), gate / up (576 -> 1536), down (1536 -> 576), LM head piece.
void SmolLm2Shapes(benchmark::internal::Benchmark* b) {
  for (const Shapes& s : {Shapes{2048, 576, 576}, Shapes{2048, 576, 192}, Shapes{2048, 576, 1536},
                          Shapes{2048, 1536, 576}, Shapes{2048, 576, 6144}})
    b->Args({s.M, s.K, s.N});
  b->ArgNames({"M", "K", "N"})->Unit(benchmark::kMillisecond)->UseRealTime();
}

#ifdef L2V_HAVE_ONEDNN
// oneDNN's bf16 matmul (brgemm on AMX where the CPU has it) under the same contract as BM_GemmBf16: the weight
// reordered once into the layout the primitive prefers, A rounded from fp32 to bf16 per call (a reorder),
// fp32 output. Threads: oneDNN's OpenMP runtime, OMP_NUM_THREADS as ours.
void BM_OneDnnBf16(benchmark::State& state) {
  using namespace dnnl;
  const Shapes s = shapes(state);
  Operands o(s);
  engine eng(engine::kind::cpu, 0);
  stream str(eng);
  const memory::desc a_f32({s.M, s.K}, memory::data_type::f32, memory::format_tag::ab);
  const memory::desc a_bf16({s.M, s.K}, memory::data_type::bf16, memory::format_tag::ab);
  const memory::desc w_f32({s.K, s.N}, memory::data_type::f32, memory::format_tag::ba);  // W [N, K] = B^T
  const memory::desc w_any({s.K, s.N}, memory::data_type::bf16, memory::format_tag::any);
  const memory::desc c_f32({s.M, s.N}, memory::data_type::f32, memory::format_tag::ab);
#if DNNL_VERSION_MAJOR >= 3
  const matmul::primitive_desc pd(eng, a_bf16, w_any, c_f32);
#else
  const matmul::primitive_desc pd(matmul::desc(a_bf16, w_any, c_f32), eng);
#endif
  memory a(a_f32, eng, o.A.data()), a16(a_bf16, eng), w(w_f32, eng, o.W.data()), packed(pd.weights_desc(), eng),
      c(c_f32, eng, o.C.data());
  reorder(w, packed).execute(str, w, packed);  // once, as at load
  const reorder round_a(a, a16);
  const matmul mm(pd);
  for (auto _ : state) {
    round_a.execute(str, a, a16);
    mm.execute(str, {{DNNL_ARG_SRC, a16}, {DNNL_ARG_WEIGHTS, packed}, {DNNL_ARG_DST, c}});
    str.wait();
    benchmark::DoNotOptimize(o.C.data());
  }
  set_flops(state, s);
  state.SetLabel(pd.impl_info_str());
}
#endif

// One input through several weights (SmolLM2's q, k, v: 576 -> 576, 192, 192; gate, up: 576 -> 1536 twice):
// fused, as the model holds them (one weight of the summed width: one gemm_bf16); shared (gemm_bf16_shared
// over the separate weights: A rounded to bf16 once); or one gemm_bf16 per weight (A rounded per call).
// Arg: 0 for q/k/v, 1 for gate/up.
enum class Layout { kFused, kShared, kPerWeight };
void shared_input(benchmark::State& state, Layout layout) {
  const int M = 2048, K = 576;
  const std::vector<int> widths = state.range(0) == 0 ? std::vector<int>{576, 192, 192} : std::vector<int>{1536, 1536};
  Operands in(Shapes{M, K, 1});
  std::vector<Operands> w;
  std::vector<l2v::cpu::PackedBf16> packed;
  std::vector<l2v::cpu::Bf16Product> products;
  double flops = 0;
  int total = 0;
  for (int n : widths) {
    w.emplace_back(Shapes{M, K, n});
    packed.push_back(l2v::cpu::pack_bf16_transposed(w.back().W.data(), n, K));
    flops += 2.0 * M * n * K;
    total += n;
  }
  for (size_t i = 0; i < widths.size(); ++i)
    products.push_back({w[i].C.data(), widths[i], &packed[i], widths[i], false});
  Operands fused(Shapes{M, K, total});
  const l2v::cpu::PackedBf16 fused_w = l2v::cpu::pack_bf16_transposed(fused.W.data(), total, K);
  for (auto _ : state) {
    if (layout == Layout::kFused) {
      l2v::cpu::gemm_bf16(fused.C.data(), total, in.A.data(), K, M, fused_w, false);
    } else if (layout == Layout::kShared) {
      l2v::cpu::gemm_bf16_shared(in.A.data(), K, M, K, products.data(), (int)products.size());
    } else {
      for (const l2v::cpu::Bf16Product& p : products)
        l2v::cpu::gemm_bf16(p.C, p.ldc, in.A.data(), K, M, *p.B, false);
    }
    benchmark::DoNotOptimize(products.data());
    benchmark::DoNotOptimize(fused.C.data());
  }
  state.counters["FLOP/s"] = benchmark::Counter(flops, benchmark::Counter::kIsIterationInvariantRate);
  state.SetLabel(state.range(0) == 0 ? "q, k, v" : "gate, up");
}
void BM_GemmBf16FusedWeight(benchmark::State& state) { shared_input(state, Layout::kFused); }
void BM_GemmBf16SharedInput(benchmark::State& state) { shared_input(state, Layout::kShared); }
void BM_GemmBf16PerWeight(benchmark::State& state) { shared_input(state, Layout::kPerWeight); }

}  // namespace

BENCHMARK(BM_GemmBf16)->Apply(SmolLm2Shapes);
BENCHMARK(BM_SgemmOpenBlas)->Apply(SmolLm2Shapes);
#ifdef L2V_HAVE_ONEDNN
BENCHMARK(BM_OneDnnBf16)->Apply(SmolLm2Shapes);
#endif
BENCHMARK(BM_GemmBf16FusedWeight)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_GemmBf16SharedInput)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_GemmBf16PerWeight)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK_MAIN();
