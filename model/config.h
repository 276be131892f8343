// Model hyper-parameters of the Llama family (Llama-2, Llama-3/3.1, Mistral, Qwen2), parsed from a
// Hugging Face config.json. One struct for every family: the differences are data (biases, GQA ratio,
// RoPE scaling, tied embeddings), not code paths.
#pragma once
#include <string>
#include <vector>

#include <nlohmann/json_fwd.hpp>

namespace l2v {

struct RopeScaling {
  // "none" or "llama3" (Llama-3.1's frequency-dependent scaling); others are rejected at parse time.
  std::string type = "none";
  float factor = 1.0f;
  float low_freq_factor = 1.0f;
  float high_freq_factor = 4.0f;
  int original_max_position_embeddings = 8192;
};

struct ModelConfig {
  std::string model_type;  // "llama", "mistral" or "qwen2"
  int vocab_size = 0;
  int hidden_size = 0;        // C
  int intermediate_size = 0;  // F, the SwiGLU width
  int num_hidden_layers = 0;  // L
  int num_attention_heads = 0;  // H
  int num_key_value_heads = 0;  // KV (== H without grouped-query attention)
  int head_dim = 0;             // D (hidden_size / H unless the config says otherwise)
  int max_position_embeddings = 0;
  float rms_norm_eps = 1e-6f;
  float rope_theta = 10000.0f;
  RopeScaling rope_scaling;
  bool tie_word_embeddings = false;
  bool qkv_bias = false;  // Qwen2 always; Llama when attention_bias is true
  bool o_bias = false;    // Llama when attention_bias is true
  int bos_token_id = -1;  // -1 when the config has none
  int eos_token_id = -1;
};

// Parses a config.json object. `source` names the file in error messages. Throws std::runtime_error
// naming the field for a missing/ill-typed field, a value the field's type cannot hold exactly (64.9 or
// true for an integer, 2^32 + 512 for a 32-bit one, 1e300 for a float: never narrowed), a non-positive
// size, rms_norm_eps, rope_theta or RoPE scaling factor, an unsupported model_type or option.
ModelConfig parse_hf_config(const nlohmann::json& j, const std::string& source);
ModelConfig load_hf_config(const std::string& path);
nlohmann::json to_hf_config_json(const ModelConfig& c);

// A float as the JSON number Python prints for the value the user wrote: the shortest decimal that reads
// back as the same float (0.05f → 0.05, not 0.05000000074505806), so configs we write read like theirs.
double shortest_decimal(float x);

// RoPE inverse frequencies (D/2 values) exactly as transformers computes them in fp32, including the
// llama3 scaling rule.
std::vector<float> rope_inv_freq(const ModelConfig& c);

}  // namespace l2v
