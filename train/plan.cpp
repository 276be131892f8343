#include "train/plan.h"

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>

namespace l2v {

PlanInputs plan_inputs(const TrainConfig& cfg, const ModelConfig& model, bool cuda, size_t tensor_bytes,
                       bool cpu_bf16_tiles, int world_size) {
  PlanInputs in;
  in.mntp = cfg.stage == Stage::kMntp;
  // The largest forward: MNTP's batch, SimCSE's doubled batch, one supervised group; or a chunk of it.
  in.rows = cfg.stage == Stage::kSimcse ? 2 * cfg.batch_size : cfg.batch_size;
  if (!in.mntp && cfg.embedding_chunk_size > 0) in.rows = std::min(in.rows, cfg.embedding_chunk_size);
  in.seq_len = cfg.max_seq_length;
  in.lora = cfg.lora;
  in.latent_head = !in.mntp && cfg.pooling == PoolingMode::kLatentAttention;
  in.latent = cfg.latent;
  in.tensor_bytes = tensor_bytes;
  in.cuda = cuda;
  in.cpu_bf16_tiles = cpu_bf16_tiles;
  in.scored_fraction = cfg.mlm_probability;
  in.accumulation = cfg.gradient_accumulation_steps;
  if (!in.mntp) {
    const bool simcse = cfg.stage == Stage::kSimcse;
    in.loss_negatives = !simcse && cfg.hard_negatives;
    in.pooled_rows = simcse ? 2 * cfg.batch_size : cfg.batch_size * (in.loss_negatives ? 3 : 2);
    const bool gather = cfg.gather_negatives && world_size > 1;
    in.loss_queries = cfg.batch_size * (gather ? world_size : 1);
    in.gathered_rows = gather ? in.pooled_rows * world_size : 0;
  }
  in.recompute_layers = cfg.recompute_layers >= 0      ? cfg.recompute_layers
                        : cfg.gradient_checkpointing ? model.num_hidden_layers
                                                     : 0;
  return in;
}

int choose_recompute_layers(const TrainConfig& cfg, const ModelConfig& model, bool cuda, size_t tensor_bytes,
                            bool cpu_bf16_tiles, MemoryPlan* plan, int world_size) {
  const PlanInputs in = plan_inputs(cfg, model, cuda, tensor_bytes, cpu_bf16_tiles, world_size);
  if (cfg.recompute_layers >= 0 || cfg.gpu_memory_gb <= 0) {
    *plan = plan_memory(model, in);
    return in.recompute_layers;
  }
  bool fits = false;
  *plan = plan_least_recomputation(model, in, (size_t)(cfg.gpu_memory_gb * 1e9), &fits);
  if (!fits) {
    char msg[256];
    std::snprintf(msg, sizeof msg, "the step needs %.2f GB with every layer recomputed, more than gpu_memory_gb %.2f",
                  plan->total() / 1e9, cfg.gpu_memory_gb);
    throw std::runtime_error(std::string(msg) +
                             ": lower per_device_train_batch_size or max_seq_length (llm2vec plan lists the items)");
  }
  return plan->recompute_layers;
}

std::string format_plan(const MemoryPlan& plan, const ModelConfig& model, double budget_gb) {
  std::string out;
  char line[256];
  for (const MemoryItem& it : plan.items) {
    std::snprintf(line, sizeof line, "  %-14s %-48s %10.3f GB\n", it.group.c_str(), it.what.c_str(), it.bytes / 1e9);
    out += line;
  }
  std::snprintf(line, sizeof line, "recomputation: %d of %d layers (the first %d keep only their input)\n",
                plan.recompute_layers, model.num_hidden_layers, plan.recompute_layers);
  out += line;
  std::snprintf(line, sizeof line, "model FLOPs per step: %.3g (%.3g with the recomputed forwards)\n", plan.model_flops,
                plan.model_flops + plan.recompute_flops);
  out += line;
  if (budget_gb > 0)
    std::snprintf(line, sizeof line, "total: %.2f GB of %.2f GB\n", plan.total() / 1e9, budget_gb);
  else
    std::snprintf(line, sizeof line, "total: %.2f GB\n", plan.total() / 1e9);
  out += line;
  return out;
}

}  // namespace l2v
