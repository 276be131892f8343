// `llm2vec bench-step`: the speed of MNTP training steps at a model configuration's real size, with random
// weights (model/random_weights.h) and random tokens — no checkpoint, tokenizer or data needed, so a GPU
// machine can measure a 1B- or 7B-parameter step from a config.json alone (scripts/gpu_check.sh). Each
// step is what the trainer runs for one MNTP micro-batch: forward (bidirectional unless configured
// otherwise, dropout on), the fused LM-head loss on the mlm_probability share of positions, backward and
// the AdamW step, queued as CUDA graphs with cuda_graphs (as the trainer does); the step ends with the
// read of its loss and gradient norm, so its wall time is the device's. The first step (allocations,
// cuBLAS heuristics; its captures are abandoned) is run and reported apart.
#pragma once
#include <vector>

#include "model/backend.h"
#include "model/config.h"
#include "train/train_config.h"

namespace l2v {

struct BenchStepResult {
  double first_ms = 0;                 // the untimed first step
  std::vector<double> step_ms;         // each timed step
  long tokens_per_step = 0;            // B x T
  double model_flops = 0;              // of one step (the plan's, without recomputation)
  double executed_flops = 0;           // with the recomputed forwards
  int recompute_layers = 0;
  GraphStats graphs;                   // the backend's, after the run (cuda_graphs)
  double median_ms() const;
};

// Runs 1 + `steps` MNTP steps of cfg (stage must be mntp) on `backend`; progress lines when `progress`.
BenchStepResult bench_steps(const TrainConfig& cfg, const ModelConfig& model, Backend& backend, int steps,
                            bool progress);

}  // namespace l2v
