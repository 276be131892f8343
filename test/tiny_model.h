// Shared by the model tests: a tiny random Llama/Qwen2-style model built in memory (no files), a padded
// batch with MNTP labels, and helpers to run a loss and read results back.
#pragma once
#include <cmath>
#include <cstring>
#include <map>
#include <memory>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "host/cpu_backend.h"
#include "model/model.h"
#include "test/test_util.h"

namespace l2v::test {

// Named in-memory tensors: lets a test build a random model of any config without files.
class MemoryTensors : public TensorSource {
 public:
  void add(const std::string& name, std::vector<int64_t> shape, std::vector<float> data) {
    tensors_[name] = {std::move(shape), std::move(data)};
  }
  void erase(const std::string& name) { tensors_.erase(name); }
  // Replaces every tensor's values by f(values) (e.g. rounding them to a storage precision).
  template <class F>
  void transform(F&& f) {
    for (auto& kv : tensors_) kv.second.second = f(std::move(kv.second.second));
  }
  bool has(const std::string& name) const override { return tensors_.count(name) > 0; }
  std::vector<int64_t> shape(const std::string& name) const override { return tensors_.at(name).first; }
  void read_f32(const std::string& name, float* dst, size_t count) const override {
    const auto& d = tensors_.at(name).second;
    if (count != d.size()) throw std::runtime_error("count mismatch for " + name);
    std::memcpy(dst, d.data(), count * sizeof(float));
  }
  std::vector<std::string> names() const override {
    std::vector<std::string> n;
    for (const auto& kv : tensors_) n.push_back(kv.first);
    return n;
  }
  std::string describe() const override { return "memory-tensors"; }

 private:
  std::map<std::string, std::pair<std::vector<int64_t>, std::vector<float>>> tensors_;
};

// hidden_size / 4 heads is the head dim: 16 gives D = 4 (CPU tests), 32 gives D = 8 (a head dim the
// CUDA attention kernels are compiled for).
inline ModelConfig tiny_config(bool qkv_bias, int hidden_size = 16) {
  nlohmann::json j = {{"model_type", qkv_bias ? "qwen2" : "llama"},
                      {"vocab_size", 32},
                      {"hidden_size", hidden_size},
                      {"intermediate_size", 24},
                      {"num_hidden_layers", 2},
                      {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},
                      {"rms_norm_eps", 1e-5},
                      {"rope_theta", 10000.0},
                      {"tie_word_embeddings", !qkv_bias}};
  return parse_hf_config(j, "tiny");
}

// Random weights with O(1) activations, Hugging Face names.
inline MemoryTensors random_weights(const ModelConfig& c, unsigned seed) {
  std::mt19937 rng(seed);
  MemoryTensors t;
  const int C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const int QD = c.num_attention_heads * c.head_dim, KVD = c.num_key_value_heads * c.head_dim;
  auto mat = [&](int out, int in) { return randn((size_t)out * in, rng, 1.0f / std::sqrt((float)in)); };
  auto norm = [&]() { return randu(C, rng, 0.8f, 1.2f); };
  t.add("model.embed_tokens.weight", {V, C}, randn((size_t)V * C, rng, 1.0f));
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    t.add(p + "input_layernorm.weight", {C}, norm());
    t.add(p + "post_attention_layernorm.weight", {C}, norm());
    t.add(p + "self_attn.q_proj.weight", {QD, C}, mat(QD, C));
    t.add(p + "self_attn.k_proj.weight", {KVD, C}, mat(KVD, C));
    t.add(p + "self_attn.v_proj.weight", {KVD, C}, mat(KVD, C));
    t.add(p + "self_attn.o_proj.weight", {C, QD}, mat(C, QD));
    if (c.qkv_bias) {
      t.add(p + "self_attn.q_proj.bias", {QD}, randn(QD, rng, 0.3f));
      t.add(p + "self_attn.k_proj.bias", {KVD}, randn(KVD, rng, 0.3f));
      t.add(p + "self_attn.v_proj.bias", {KVD}, randn(KVD, rng, 0.3f));
    }
    t.add(p + "mlp.gate_proj.weight", {F, C}, mat(F, C));
    t.add(p + "mlp.up_proj.weight", {F, C}, mat(F, C));
    t.add(p + "mlp.down_proj.weight", {C, F}, mat(C, F));
  }
  t.add("model.norm.weight", {C}, norm());
  if (!c.tie_word_embeddings) t.add("lm_head.weight", {V, C}, mat(V, C));
  return t;
}

// Adds an adapter and gives every A and B a random nonzero value (PEFT starts from B = 0, where the
// gradient of A would be 0 too).
inline void add_random_lora(Model& m, int r, float alpha, float dropout, unsigned seed) {
  LoraConfig lc;
  lc.r = r;
  lc.alpha = alpha;
  lc.dropout = dropout;
  add_lora(m, lc, seed);
  std::mt19937 rng(seed + 1);
  for (TrainableParam& p : m.trainable) {
    std::vector<float> v = randn(p.count, rng, 0.2f);
    m.backend->upload(p.value, v.data(), p.count * sizeof(float));
  }
}

// A tiny random model on a backend (the CPU one unless given); `round_weights`, when given, maps every
// weight tensor's values first (a bf16 test gives both backends the weights bf16 storage holds).
struct TinyModel {
  std::unique_ptr<Backend> backend;
  Model model;
  explicit TinyModel(bool qkv_bias = false, unsigned seed = 1, std::unique_ptr<Backend> be = make_cpu_backend(),
                     int hidden_size = 16, std::vector<float> (*round_weights)(std::vector<float>) = nullptr)
      : backend(std::move(be)) {
    ModelConfig c = tiny_config(qkv_bias, hidden_size);
    MemoryTensors w = random_weights(c, seed);
    if (round_weights) w.transform(round_weights);
    load_model(model, c, w, *backend);
  }
};

struct Batch {
  int B, T;
  std::vector<int> ids, mask, labels;
};

// Row 0 full, row 1 left-padded by 2, row 2 right-padded by 3; padding ids are arbitrary tokens.
inline Batch padded_batch(int V, unsigned seed) {
  std::mt19937 rng(seed);
  Batch b{3, 9, {}, {}, {}};
  b.ids.resize(27);
  b.mask.assign(27, 1);
  b.labels.assign(27, -100);
  for (int& x : b.ids) x = (int)(rng() % V);
  for (int t = 0; t < 2; ++t) b.mask[1 * 9 + t] = 0;
  for (int t = 6; t < 9; ++t) b.mask[2 * 9 + t] = 0;
  for (int i = 0; i < 27; ++i)
    if (b.mask[i] && i % 9 != 0 && rng() % 3 == 0) b.labels[i] = (int)(rng() % V);
  b.labels[0 * 9 + 4] = 3;
  b.labels[1 * 9 + 5] = 7;
  b.labels[2 * 9 + 2] = 11;
  return b;
}

inline std::vector<float> hidden(Model& m) {
  return download_tensor(m, m.acts.final_hidden, (size_t)m.acts.B * m.acts.T * m.config.hidden_size);
}

// Every trainable tensor's gradients (all_grads) or values (all_values), concatenated in order.
inline std::vector<float> all_trainable(Model& m, bool grads) {
  std::vector<float> out;
  for (const TrainableParam& p : m.trainable) {
    std::vector<float> x = download_floats(m, grads ? p.grad : p.value, p.count);
    out.insert(out.end(), x.begin(), x.end());
  }
  return out;
}
inline std::vector<float> all_grads(Model& m) { return all_trainable(m, true); }
inline std::vector<float> all_values(Model& m) { return all_trainable(m, false); }

inline float loss_and_grads(Model& m, const Batch& b, const ForwardOptions& opt) {
  zero_grads(m);
  model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, opt);
  return mntp_loss(m, b.labels.data(), true);
}

}  // namespace l2v::test
