#include "train/optimizer.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace l2v {

AdamWState adamw_init(Model& model) {
  AdamWState s;
  for (const TrainableParam& p : model.trainable) {
    s.m.push_back(model.alloc_floats(p.count));
    s.v.push_back(model.alloc_floats(p.count));
  }
  return s;
}

float adamw_step(Model& model, AdamWState& state, const AdamWConfig& cfg, float lr) {
  Backend& be = *model.backend;
  if (state.m.size() != model.trainable.size())
    throw std::runtime_error("adamw_step: optimizer state does not match the model's trainable parameters");
  std::vector<const float*> grads;
  std::vector<long> sizes;
  for (const TrainableParam& p : model.trainable) {
    grads.push_back(p.grad);
    sizes.push_back((long)p.count);
  }
  const float norm = be.global_norm(grads.data(), sizes.data(), (int)grads.size());
  if (!std::isfinite(norm))
    throw std::runtime_error("adamw_step: the gradient norm is " + std::to_string(norm) +
                             " (NaN or infinite loss/gradients); parameters left unchanged");
  if (cfg.max_grad_norm > 0.0f) {
    // torch.nn.utils.clip_grad_norm_: clip_coef = max_norm / (total_norm + 1e-6), applied when < 1; torch
    // evaluates `scalar / tensor` as reciprocal(tensor) * scalar, in fp32, and so do we (bit-identical).
    const float coef = (1.0f / (norm + 1e-6f)) * cfg.max_grad_norm;
    if (coef < 1.0f)
      for (const TrainableParam& p : model.trainable) be.scale(p.grad, (long)p.count, coef);
  }
  ++state.step;
  for (size_t i = 0; i < model.trainable.size(); ++i) {
    const TrainableParam& p = model.trainable[i];
    be.adamw_update(p.value, p.grad, state.m[i], state.v[i], (long)p.count, lr, cfg.beta1, cfg.beta2, cfg.eps,
                    cfg.weight_decay, state.step);
  }
  return norm;
}

}  // namespace l2v
