// model/random_weights.h: the random source holds exactly the tensors load_model asks for (a model loads
// from it for Llama with untied and tied embeddings and for Qwen2 with its biases, and every tensor is
// read), with the stated ranges and variances; values depend on the seed and the tensor's name only.
// Bugs these catch: a missing or misshapen tensor (load_model throws), a range or scale off (a wrong
// 1/sqrt(in) factor changes the standard deviation by far more than the sampling error), the same stream
// for every tensor, a seed that changes nothing.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "host/cpu_backend.h"
#include "model/model.h"
#include "model/random_weights.h"
#include "test/tiny_model.h"

namespace l2v {
namespace {

std::vector<float> read(const RandomWeights& w, const std::string& name) {
  size_t n = 1;
  for (int64_t d : w.shape(name)) n *= (size_t)d;
  std::vector<float> v(n);
  w.read_f32(name, v.data(), n);
  return v;
}

TEST(RandomWeights, HoldExactlyWhatLoadModelReads) {
  for (bool qwen : {false, true}) {
    const ModelConfig c = test::tiny_config(/*qkv_bias=*/qwen, /*hidden_size=*/32);
    const RandomWeights w(c, 7);
    std::unique_ptr<Backend> be = make_cpu_backend();
    Model m;
    ASSERT_NO_THROW(load_model(m, c, w, *be)) << c.model_type;
    // The names: 2 norms and 7 linears per layer (+3 biases for Qwen2), the embeddings, the final norm,
    // and the LM head unless tied.
    const size_t want = 1 + c.num_hidden_layers * (2 + 7 + (qwen ? 3 : 0)) + 1 + (c.tie_word_embeddings ? 0 : 1);
    EXPECT_EQ(w.names().size(), want) << c.model_type;
    EXPECT_EQ(w.has("lm_head.weight"), !c.tie_word_embeddings);
    EXPECT_FALSE(w.has("model.layers.0.self_attn.q_proj.lora_A.weight"));
    try {
      read(w, "model.layers.9.mlp.up_proj.weight");
      FAIL() << "an unknown tensor was read";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find("'model.layers.9.mlp.up_proj.weight'"), std::string::npos) << e.what();
    }
    std::vector<float> wrong(3);
    EXPECT_THROW(w.read_f32("model.norm.weight", wrong.data(), wrong.size()), std::runtime_error);
  }
}

// Uniform on [-a, a] with a = sqrt(3) std: the sample standard deviation of n values is within a few
// times sqrt((kurtosis - 1) / (4n)) = sqrt(0.8 / (4n)) of it (kurtosis 1.8 for the uniform); we allow 5x.
TEST(RandomWeights, RangesAndScales) {
  nlohmann::json j = {{"model_type", "qwen2"},       {"vocab_size", 256},          {"hidden_size", 64},
                      {"intermediate_size", 96},     {"num_hidden_layers", 1},     {"num_attention_heads", 4},
                      {"num_key_value_heads", 2},    {"rms_norm_eps", 1e-6},       {"tie_word_embeddings", false}};
  const ModelConfig c = parse_hf_config(j, "test");
  const RandomWeights w(c, 3);
  auto check = [&](const std::string& name, double want_std) {
    const std::vector<float> v = read(w, name);
    double sum = 0, sq = 0, amax = 0;
    for (float x : v) {
      sum += x;
      sq += (double)x * x;
      amax = std::max(amax, (double)std::fabs(x));
    }
    const double n = (double)v.size(), mean = sum / n, std = std::sqrt(sq / n - mean * mean);
    const double tol = 5 * std::sqrt(0.8 / (4 * n));
    EXPECT_NEAR(std / want_std, 1.0, tol) << name;
    EXPECT_LE(amax, want_std * std::sqrt(3.0) * (1 + 1e-6)) << name;
    EXPECT_NEAR(mean / want_std, 0.0, 5 / std::sqrt(n)) << name;
  };
  check("model.embed_tokens.weight", 1.0);
  check("model.layers.0.self_attn.q_proj.weight", 1.0 / 8.0);             // in = 64
  check("model.layers.0.mlp.down_proj.weight", 1.0 / std::sqrt(96.0));     // in = 96
  check("model.layers.0.self_attn.k_proj.bias", 0.3);
  check("lm_head.weight", 1.0 / 8.0);
  for (float x : read(w, "model.layers.0.input_layernorm.weight")) ASSERT_TRUE(x >= 0.8f && x <= 1.2f) << x;
}

TEST(RandomWeights, DependOnTheSeedAndTheNameOnly) {
  const ModelConfig c = test::tiny_config(false, 32);
  const RandomWeights a(c, 1), b(c, 1), other(c, 2);
  const std::string q = "model.layers.0.self_attn.q_proj.weight", k = "model.layers.1.self_attn.q_proj.weight";
  EXPECT_EQ(read(a, q), read(b, q));
  EXPECT_NE(read(a, q), read(other, q));
  EXPECT_NE(read(a, q), read(a, k));  // same shape, another tensor: another stream
  std::set<float> distinct;
  for (float x : read(a, q)) distinct.insert(x);
  EXPECT_GT(distinct.size(), read(a, q).size() * 99 / 100);
}

}  // namespace
}  // namespace l2v
