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
  s.norm = model.alloc_floats(1);
  return s;
}

void queue_adamw_step(Model& model, AdamWState& state, const AdamWConfig& cfg, float lr, float grad_scale,
                      float* norm) {
  if (state.m.size() != model.trainable.size() || !state.norm)
    throw std::runtime_error("adamw_step: optimizer state does not match the model's trainable parameters");
  std::vector<cpu::OptimizerTensor> tensors;
  for (size_t i = 0; i < model.trainable.size(); ++i) {
    const TrainableParam& p = model.trainable[i];
    tensors.push_back({p.value, p.grad, state.m[i], state.v[i], (long)p.count});
  }
  cpu::AdamWStepArgs args;
  args.lr = lr;
  args.beta1 = cfg.beta1;
  args.beta2 = cfg.beta2;
  args.eps = cfg.eps;
  args.weight_decay = cfg.weight_decay;
  args.step = state.step + 1;
  args.grad_scale = grad_scale;
  args.max_grad_norm = cfg.max_grad_norm;
  model.backend->adamw_step(tensors.data(), (int)tensors.size(), args, norm ? norm : state.norm);
}

float finish_adamw_step(AdamWState& state, float norm) {
  if (!std::isfinite(norm))
    throw std::runtime_error("adamw_step: the gradient norm is " + std::to_string(norm) +
                             " (NaN or infinite loss/gradients); parameters left unchanged");
  ++state.step;
  return norm;
}

float adamw_step(Model& model, AdamWState& state, const AdamWConfig& cfg, float lr, float grad_scale) {
  queue_adamw_step(model, state, cfg, lr, grad_scale);
  float norm = 0.0f;
  model.backend->download(&norm, state.norm, sizeof(float));
  return finish_adamw_step(state, norm);
}

}  // namespace l2v
