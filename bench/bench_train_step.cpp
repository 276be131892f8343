// Training and inference throughput of the CPU backend on the bundled stories260K model: one MNTP step
// (forward, fused LM-head loss, backward, AdamW), one SimCSE step (forward over the doubled batch,
// pooling, InfoNCE, pooling backward, backward, AdamW) and an embedding forward. Reports tokens/s
// (real tokens; padding excluded) and, for embedding, the activation memory. Run from the repo root:
//   make bench && ./build/bench/bench_train_step
// OMP_NUM_THREADS controls the threads of the CPU ops.
#include <benchmark/benchmark.h>

#include <memory>
#include <random>
#include <vector>

#include "host/cpu_backend.h"
#include "model/checkpoint.h"
#include "model/pooler.h"
#include "train/optimizer.h"

namespace {

using namespace l2v;

struct Setup {
  std::unique_ptr<Backend> backend = make_cpu_backend();
  Checkpoint ck = open_checkpoint("assets/stories260K/stories260K.bin");
  Model m;
  AdamWState adam;
  Setup() {
    load_model(m, ck.config, *ck.tensors, *backend);
    LoraConfig lora;
    lora.r = 8;
    lora.alpha = 16;
    lora.dropout = 0.05f;
    add_lora(m, lora, 1);
    adam = adamw_init(m);
  }
};

// Token ids of `rows` texts of `T` tokens (all real), uniform over the vocabulary minus the specials.
EmbedBatch random_batch(int rows, int T, int vocab, uint64_t seed) {
  std::mt19937 rng(seed);
  std::uniform_int_distribution<int> id(3, vocab - 1);
  EmbedBatch b;
  b.B = rows;
  b.T = T;
  b.ids.resize((size_t)rows * T);
  for (int& x : b.ids) x = id(rng);
  b.key_mask.assign(b.ids.size(), 1);
  b.embed_mask.assign(b.ids.size(), 1);
  return b;
}

void BM_MntpStep(benchmark::State& state) {
  Setup s;
  const int B = (int)state.range(0), T = (int)state.range(1);
  EmbedBatch b = random_batch(B, T, s.m.config.vocab_size, 7);
  std::vector<int> labels(b.ids.size(), -100);
  for (size_t i = 0; i < labels.size(); i += 5) labels[i] = b.ids[i];  // 20% of the positions
  ForwardOptions opt;
  opt.training = true;
  AdamWConfig ac;
  for (auto _ : state) {
    zero_grads(s.m);
    model_forward(s.m, b.ids.data(), b.key_mask.data(), B, T, opt);
    benchmark::DoNotOptimize(mntp_loss(s.m, labels.data(), true));
    adamw_step(s.m, s.adam, ac, 1e-4f);
  }
  state.counters["tokens/s"] = benchmark::Counter((double)B * T, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_MntpStep)->Args({8, 64})->Args({8, 128})->Unit(benchmark::kMillisecond)->UseRealTime();

void BM_SimcseStep(benchmark::State& state) {
  Setup s;
  const int P = (int)state.range(0), T = (int)state.range(1), C = s.m.config.hidden_size;
  EmbedBatch b = random_batch(2 * P, T, s.m.config.vocab_size, 9);
  for (int i = 0; i < P; ++i) std::copy_n(&b.ids[(size_t)2 * i * T], T, &b.ids[(size_t)(2 * i + 1) * T]);
  PoolingHead head;
  ForwardOptions opt;
  opt.training = true;
  opt.attn_dropout = 0.3f;
  AdamWConfig ac;
  Tensor d_hidden = s.m.alloc_tensor((size_t)2 * P * T * C);
  // The trainer's layout: the doubled batch's pooled rows, pairs adjacent; the loss in backend memory.
  float* pooled = s.m.alloc_floats((size_t)2 * P * C);
  float* d_pooled = s.m.alloc_floats((size_t)2 * P * C);
  double* loss = reinterpret_cast<double*>(s.m.alloc_floats(2));
  for (auto _ : state) {
    zero_grads(s.m);
    model_forward(s.m, b.ids.data(), b.key_mask.data(), 2 * P, T, opt);
    PoolCache cache;
    pool_forward(s.m, head, b, 1, 2, pooled, &cache);
    s.m.backend->contrastive_loss(loss, d_pooled, d_pooled + C, nullptr, pooled, pooled + C, nullptr, P, C, 2 * C,
                                  20.0f, true);
    pool_backward(s.m, head, cache, d_pooled, d_hidden);
    model_backward(s.m, d_hidden);
    adamw_step(s.m, s.adam, ac, 1e-4f);
  }
  state.counters["tokens/s"] = benchmark::Counter(2.0 * P * T, benchmark::Counter::kIsIterationInvariantRate);
}
BENCHMARK(BM_SimcseStep)->Args({16, 32})->Args({32, 32})->Unit(benchmark::kMillisecond)->UseRealTime();

// The encoder's forward (inference-only: one layer's activations at a time) and pooling; the counter
// activation_MB is what the forward allocates (every layer sharing one slot), for a long-document row too.
void BM_EmbedForward(benchmark::State& state) {
  Setup s;
  const int B = (int)state.range(0), T = (int)state.range(1);
  EmbedBatch b = random_batch(B, T, s.m.config.vocab_size, 11);
  PoolingHead head;
  ForwardOptions opt;
  opt.inference = true;
  const size_t before = cpu_backend_memory(*s.backend).current;
  for (auto _ : state) {
    model_forward(s.m, b.ids.data(), b.key_mask.data(), B, T, opt);
    benchmark::DoNotOptimize(pool_forward(s.m, head, b, 1, 2, nullptr));
  }
  state.counters["tokens/s"] = benchmark::Counter((double)B * T, benchmark::Counter::kIsIterationInvariantRate);
  state.counters["activation_MB"] = (cpu_backend_memory(*s.backend).current - before) / 1e6;
}
BENCHMARK(BM_EmbedForward)->Args({32, 32})->Args({16, 512})->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace

BENCHMARK_MAIN();
