// AdamW over a model's trainable parameters (LoRA A/B; fp32 master values on every backend), with
// global-norm gradient clipping as Hugging Face's Trainer applies it (torch.nn.utils.clip_grad_norm_).
#pragma once
#include <vector>

#include "model/model.h"

namespace l2v {

struct AdamWConfig {
  float lr = 5e-5f;            // the learning rate of a step is passed to adamw_step (schedules live outside)
  float beta1 = 0.9f;
  float beta2 = 0.999f;
  float eps = 1e-8f;
  float weight_decay = 0.0f;   // Hugging Face TrainingArguments' defaults
  float max_grad_norm = 1.0f;  // <= 0: no clipping
};

// First and second moments per trainable parameter, in backend memory, the step count, and the backend
// scalar the step writes the gradient norm to.
struct AdamWState {
  std::vector<float*> m, v;
  float* norm = nullptr;
  int step = 0;
};

// Allocates zeroed moments for every trainable parameter of `model` (call after add_lora).
AdamWState adamw_init(Model& model);

// Multiplies the gradients by grad_scale (the trainer's average over micro-batches and ranks), clips them
// to max_grad_norm (scale = max_norm / (norm + 1e-6) when that is < 1, as torch) and takes one AdamW step
// with learning rate `lr`: Backend::adamw_step over every trainable tensor (two launches on CUDA). Returns
// the norm of the scaled gradients before clipping, read back once the step has run (the step's one wait
// for the device). Throws if the norm is not finite (a NaN/inf loss or gradient), leaving the parameters
// and moments untouched.
float adamw_step(Model& model, AdamWState& state, const AdamWConfig& cfg, float lr, float grad_scale = 1.0f);
// adamw_step in two halves, for a caller that reads the norm together with other values (the trainer:
// with its losses, in one wait). queue_adamw_step queues the step and returns at once, the norm going to
// `norm` (one float in backend memory; state.norm when null); finish_adamw_step takes the norm the host
// read back: throws when it is not finite (the step wrote nothing), else counts the step and returns it.
void queue_adamw_step(Model& model, AdamWState& state, const AdamWConfig& cfg, float lr, float grad_scale,
                      float* norm = nullptr);
float finish_adamw_step(AdamWState& state, float norm);

}  // namespace l2v
