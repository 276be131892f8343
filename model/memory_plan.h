// The memory and FLOPs of one training step, from the model's config.json and the training options
// alone (no weights, no device): every buffer the model (model.cpp: weights, LoRA, activations, RoPE
// tables), the optimizer (AdamW moments), the pooling head, the trainer (the contrastive stages' hidden
// gradient) and the CUDA backend (its scratch buffers, cuda/workspace_sizes.h) allocate for a step,
// with the same sizes — test_memory_plan compares the planned bytes with what the CPU backend and the
// CUDA backend on the emulator allocate — and the least selective recomputation that fits a budget.
// `llm2vec plan` prints it; the trainer takes its recomputation from it (recompute_layers auto).
//
// Sizes are exact for fixed-length batches (MNTP blocks; contrastive batches whose texts all reach
// max_seq_length) and upper bounds otherwise (a contrastive batch pads to its longest text). Not
// counted: what CUDA and cuBLAS reserve for themselves (context, cuBLAS workspace: tens to hundreds of
// MB on a GPU) and allocator rounding on a real GPU.
#pragma once
#include <cstddef>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/latent_attention.h"
#include "model/model.h"

namespace l2v {

struct PlanInputs {
  int rows = 1;      // rows of the largest forward pass: MNTP the per-device batch, SimCSE twice it,
                     // supervised the per-device batch (its groups run one at a time), or the chunk
  int seq_len = 1;   // T: MNTP's block length, the contrastive stages' max_seq_length
  bool mntp = true;  // the LM head's scratch (MNTP) or the trainer's hidden gradient (contrastive)
  LoraConfig lora;   // r and targets
  bool latent_head = false;  // NV-Embed's latent-attention pooling head, of this configuration
  LatentAttentionConfig latent;
  size_t tensor_bytes = 4;   // stored tensor element: 4 fp32, 2 bf16
  bool cuda = false;         // the CUDA backend's scratch buffers; else the CPU backend's 64-byte rounding
  // The CPU backend in bf16 (Backend::packs_bf16_weights): every base weight's bf16 tiles for the forward
  // and the backward GEMMs (host/cpu_gemm_bf16.h: both dimensions padded to 32), and the LM head's for MNTP.
  bool cpu_bf16_tiles = false;
  int recompute_layers = 0;  // layers [0, k) recomputed in the backward (ForwardOptions::recompute_layers)
  double scored_fraction = 0.2;  // MNTP: the fraction of positions with a label (mlm_probability)
  // Contrastive stages: the pooled rows of one micro-batch on this rank (SimCSE twice the batch;
  // supervised the batch per group: queries, positives, hard negatives), the queries of the loss (all
  // ranks' when the negatives are gathered), whether it has hard negatives, and the rows gathered from
  // every rank (0 on one rank or without gathering).
  int pooled_rows = 0;
  int accumulation = 1;  // micro-batches per step (the trainer reads back one loss per micro-batch)
  int loss_queries = 0;
  bool loss_negatives = false;
  int gathered_rows = 0;
};

// The trainer's buffers that grow on demand keep a quarter spare: the bytes allocated for a request.
inline size_t grown_bytes(size_t bytes) { return bytes + bytes / 4; }

struct MemoryItem {
  std::string group;  // weights, adapter, optimizer, activations, recomputation, scratch
  std::string what;
  size_t bytes = 0;   // as allocated (CPU: rounded up to 64 bytes per buffer)
};

struct MemoryPlan {
  std::vector<MemoryItem> items;
  int recompute_layers = 0;
  double model_flops = 0;      // one step's useful FLOPs (forward and backward, no recomputation)
  double recompute_flops = 0;  // the recomputed forwards on top
  size_t total() const;
  size_t group_bytes(const std::string& group) const;
};

// The "runtime" item of a CUDA plan (not allocated by the backend; the tests leave it out).
constexpr size_t kRuntimeReserveBytes = size_t{2} << 30;

MemoryPlan plan_memory(const ModelConfig& c, const PlanInputs& in);

// The plan with the fewest recomputed layers whose total is at most budget_bytes; *fits = false (and
// every layer recomputed) when even that does not fit.
MemoryPlan plan_least_recomputation(const ModelConfig& c, PlanInputs in, size_t budget_bytes, bool* fits);

}  // namespace l2v
