// The memory plan of a training configuration: how the trainer's options map onto the step's shapes
// (model/memory_plan.h), in one place for the trainer (recompute_layers, gpu_memory_gb) and
// `llm2vec plan`, and the plan as the table both print.
#pragma once
#include <string>

#include "model/config.h"
#include "model/memory_plan.h"
#include "train/train_config.h"

namespace l2v {

// The planner's inputs for `cfg` on a backend storing tensors in `tensor_bytes` (cuda: with the CUDA
// backend's scratch), on one of world_size ranks. recompute_layers: cfg's when >= 0, else every layer
// with gradient_checkpointing. The supervised stage is planned with hard negatives when cfg asks for
// them (an upper bound when the data has none).
PlanInputs plan_inputs(const TrainConfig& cfg, const ModelConfig& model, bool cuda, size_t tensor_bytes,
                       bool cpu_bf16_tiles, int world_size = 1);

// The recomputation a run uses: cfg.recompute_layers when >= 0; with gpu_memory_gb > 0 the least that
// fits (throws, naming the shortfall, when even every layer recomputed does not); else all or none by
// gradient_checkpointing. *plan receives the plan it was chosen from.
int choose_recompute_layers(const TrainConfig& cfg, const ModelConfig& model, bool cuda, size_t tensor_bytes,
                            bool cpu_bf16_tiles, MemoryPlan* plan, int world_size = 1);

// One line per item (group, what, GB), the recomputation, the FLOPs of one step, and last
// "total: X GB of Y GB" (budget_gb 0: "total: X GB").
std::string format_plan(const MemoryPlan& plan, const ModelConfig& model, double budget_gb);

}  // namespace l2v
