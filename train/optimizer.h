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

// First and second moments per trainable parameter, in backend memory, and the step count.
struct AdamWState {
  std::vector<float*> m, v;
  int step = 0;
};

// Allocates zeroed moments for every trainable parameter of `model` (call after add_lora).
AdamWState adamw_init(Model& model);

// Clips the gradients to max_grad_norm (scale = max_norm / (norm + 1e-6) when that is < 1, as torch) and
// takes one AdamW step with learning rate `lr`. Returns the gradient norm before clipping. Throws if the
// norm is not finite (a NaN/inf loss or gradient), leaving the parameters untouched.
float adamw_step(Model& model, AdamWState& state, const AdamWConfig& cfg, float lr);

}  // namespace l2v
