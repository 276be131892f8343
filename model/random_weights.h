// Random weights for a model configuration without a checkpoint: every tensor load_model asks for, with
// its shape, filled on read from a counter-based generator (Philox4x32-10 keyed by the seed and the
// tensor's name), so that a 1B-parameter model loads in seconds with no file and no host copy. For
// measurements that do not depend on the values (`llm2vec bench-step`, the GPU check), not for quality.
//
// Values are uniform with the variances of a trained model's scale: linear weights and the LM head
// std 1/sqrt(in_features) (activations stay O(1) through the layers), embeddings std 1, norm weights in
// [0.8, 1.2], biases std 0.3.
#pragma once
#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/tensor_source.h"

namespace l2v {

class RandomWeights : public TensorSource {
 public:
  RandomWeights(const ModelConfig& config, uint64_t seed);
  bool has(const std::string& name) const override;
  std::vector<int64_t> shape(const std::string& name) const override;
  void read_f32(const std::string& name, float* dst, size_t count) const override;
  std::vector<std::string> names() const override;
  std::string describe() const override;

 private:
  struct Tensor {
    std::vector<int64_t> shape;
    float low, high;  // the uniform range
  };
  const Tensor& find(const std::string& name) const;
  std::string model_;
  uint64_t seed_;
  std::map<std::string, Tensor> tensors_;
};

}  // namespace l2v
