#include "train/bench_step.h"

#include <algorithm>
#include <chrono>
#include <functional>
#include <cstdio>
#include <random>
#include <stdexcept>

#include "model/model.h"
#include "model/random_weights.h"
#include "train/optimizer.h"
#include "train/plan.h"

namespace l2v {

double BenchStepResult::median_ms() const {
  if (step_ms.empty()) return 0.0;
  std::vector<double> s = step_ms;
  std::sort(s.begin(), s.end());
  return s.size() % 2 ? s[s.size() / 2] : 0.5 * (s[s.size() / 2 - 1] + s[s.size() / 2]);
}

BenchStepResult bench_steps(const TrainConfig& cfg, const ModelConfig& mc, Backend& backend, int steps,
                            bool progress) {
  if (cfg.stage != Stage::kMntp)
    throw std::runtime_error("bench-step measures MNTP steps; --stage " + std::string(stage_name(cfg.stage)) +
                             " is not supported");
  if (steps < 1) throw std::runtime_error("bench-step: --max_steps must be at least 1");
  const int B = cfg.batch_size, T = cfg.max_seq_length, V = mc.vocab_size;
  BenchStepResult r;
  MemoryPlan plan;
  r.recompute_layers = choose_recompute_layers(cfg, mc, !backend.is_host_memory(), backend.tensor_element_bytes(),
                                               backend.packs_bf16_weights(), &plan);
  r.executed_flops = plan.model_flops + plan.recompute_flops;
  r.model_flops = plan.model_flops;
  r.tokens_per_step = (long)B * T;

  Model m;
  load_model(m, mc, RandomWeights(mc, cfg.seed), backend);
  add_lora(m, cfg.lora, cfg.seed);
  AdamWState adam = adamw_init(m);
  AdamWConfig ac;
  ac.max_grad_norm = cfg.max_grad_norm;

  // Random tokens; the label of a position is its own token with probability mlm_probability (the
  // masked positions' share, which sets the LM head's work), as the MNTP collator draws them.
  std::mt19937 rng((uint32_t)cfg.seed);
  std::uniform_int_distribution<int> token(0, V - 1);
  std::bernoulli_distribution scored(cfg.mlm_probability);
  std::vector<int> ids((size_t)B * T), key_mask((size_t)B * T, 1), labels((size_t)B * T, kIgnoreIndex);
  for (size_t i = 0; i < ids.size(); ++i) {
    ids[i] = token(rng);
    if (scored(rng)) labels[i] = ids[i];
  }
  ForwardOptions opt;
  opt.causal = !cfg.bidirectional;
  opt.training = true;
  opt.attn_dropout = cfg.attention_dropout;
  opt.recompute_layers = r.recompute_layers;
  // The trainer's step: the micro-batch and the optimizer step queued (as CUDA graphs with cuda_graphs),
  // the loss and the norm read together at the end.
  const bool graphs = cfg.cuda_graphs && !backend.is_host_memory();
  auto queue = [&](int slot, const std::function<void()>& work) {
    if (!graphs || !backend.run_as_graph(slot, work)) work();
  };
  double* loss_dev = static_cast<double*>(backend.alloc(sizeof(double)));
  for (int s = 0; s <= steps; ++s) {
    const auto t0 = std::chrono::steady_clock::now();
    opt.seed = cfg.seed + (uint64_t)s;
    queue(0, [&] {
      zero_grads(m);
      model_forward(m, ids.data(), key_mask.data(), B, T, opt);
      queue_mntp_loss(m, labels.data(), true, 0, loss_dev);
    });
    queue(1, [&] { queue_adamw_step(m, adam, ac, (float)cfg.learning_rate, 1.0f); });
    double loss = 0;
    float norm = 0;
    backend.download(&loss, loss_dev, sizeof loss);  // waits: the step has run
    backend.download(&norm, adam.norm, sizeof norm);
    finish_adamw_step(adam, norm);
    const double ms = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
    if (s == 0) r.first_ms = ms;
    else r.step_ms.push_back(ms);
    if (progress) {
      std::printf("step %d%s: %.1f ms, loss %.4f, grad norm %.3g\n", s, s == 0 ? " (first, not timed)" : "", ms, loss,
                  norm);
      std::fflush(stdout);
    }
  }
  backend.release(loss_dev);
  r.graphs = backend.graph_stats();
  return r;
}

}  // namespace l2v
