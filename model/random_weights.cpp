#include "model/random_weights.h"

#include <cmath>
#include <stdexcept>

#include "host/philox.h"
#include "model/model.h"

namespace l2v {

namespace {

// FNV-1a of the name: each tensor its own Philox stream.
uint32_t name_hash(const std::string& s) {
  uint32_t h = 2166136261u;
  for (unsigned char c : s) h = (h ^ c) * 16777619u;
  return h;
}

}  // namespace

RandomWeights::RandomWeights(const ModelConfig& c, uint64_t seed)
    : model_(c.model_type + " config, " + std::to_string(c.num_hidden_layers) + " layers, hidden " +
             std::to_string(c.hidden_size)),
      seed_(seed) {
  const int64_t C = c.hidden_size, V = c.vocab_size;
  // Uniform on [-a, a] has std a / sqrt(3).
  auto std_range = [](double std) {
    const float a = (float)(std * std::sqrt(3.0));
    return std::pair<float, float>(-a, a);
  };
  auto add = [&](const std::string& name, std::vector<int64_t> shape, std::pair<float, float> range) {
    tensors_[name] = {std::move(shape), range.first, range.second};
  };
  add("model.embed_tokens.weight", {V, C}, std_range(1.0));
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    add(p + "input_layernorm.weight", {C}, {0.8f, 1.2f});
    add(p + "post_attention_layernorm.weight", {C}, {0.8f, 1.2f});
    for (int id = 0; id < kNumLinears; ++id) {
      const int64_t in = linear_in_features(c, id), out = linear_out_features(c, id);
      const std::string name = p + (id <= kO ? "self_attn." : "mlp.") + linear_name(id);
      add(name + ".weight", {out, in}, std_range(1.0 / std::sqrt((double)in)));
      if (linear_has_bias(c, id)) add(name + ".bias", {out}, std_range(0.3));
    }
  }
  add("model.norm.weight", {C}, {0.8f, 1.2f});
  if (!c.tie_word_embeddings) add("lm_head.weight", {V, C}, std_range(1.0 / std::sqrt((double)C)));
}

const RandomWeights::Tensor& RandomWeights::find(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) throw std::runtime_error(describe() + ": no tensor '" + name + "'");
  return it->second;
}

bool RandomWeights::has(const std::string& name) const { return tensors_.count(name) != 0; }

std::vector<int64_t> RandomWeights::shape(const std::string& name) const { return find(name).shape; }

void RandomWeights::read_f32(const std::string& name, float* dst, size_t count) const {
  const Tensor& t = find(name);
  size_t n = 1;
  for (int64_t d : t.shape) n *= (size_t)d;
  if (count != n)
    throw std::runtime_error(describe() + ": tensor '" + name + "' has " + std::to_string(n) + " values, " +
                             std::to_string(count) + " asked for");
  const uint32_t stream = name_hash(name);
  const float width = t.high - t.low;
#pragma omp parallel for
  for (long g = 0; g < (long)((n + 3) / 4); ++g) {
    const Philox4 r = philox4x32_10((uint32_t)g, (uint32_t)((uint64_t)g >> 32), stream, 0x5EEDu, seed_);
    for (int j = 0; j < 4 && (size_t)g * 4 + j < n; ++j) dst[(size_t)g * 4 + j] = t.low + width * philox_to_unit(r.v[j]);
  }
}

std::vector<std::string> RandomWeights::names() const {
  std::vector<std::string> out;
  for (const auto& kv : tensors_) out.push_back(kv.first);
  return out;
}

std::string RandomWeights::describe() const { return "random weights (seed " + std::to_string(seed_) + ") of a " + model_; }

}  // namespace l2v
