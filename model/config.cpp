#include "model/config.h"

#include <climits>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <type_traits>

#include <nlohmann/json.hpp>

#include "data/file_io.h"

namespace l2v {
namespace {

[[noreturn]] void fail(const std::string& source, const std::string& msg) {
  throw std::runtime_error(source + ": " + msg);
}

[[noreturn]] void wrong_type(const nlohmann::json& v, const char* key, const char* wanted, const std::string& source) {
  fail(source, std::string("field '") + key + "' must be " + wanted + ", got " + v.dump() + " (" + v.type_name() + ")");
}

// The value of `key` exactly as T, never narrowed: nlohmann's own get<int>() would read 64.9 as 64,
// true as 1 and 2^32 + 512 as 512, and get<float>() 1e300 as inf.
template <typename T>
T exact(const nlohmann::json& v, const char* key, const std::string& source) {
  if constexpr (std::is_same_v<T, int>) {
    if (!v.is_number_integer()) wrong_type(v, key, "an integer", source);
    if (v.is_number_unsigned() ? v.get<uint64_t>() > static_cast<uint64_t>(INT_MAX)
                               : v.get<int64_t>() < INT_MIN || v.get<int64_t>() > INT_MAX)
      fail(source, std::string("field '") + key + "' = " + v.dump() + " is out of range for a 32-bit integer");
    return static_cast<int>(v.get<int64_t>());
  } else if constexpr (std::is_same_v<T, float>) {
    if (!v.is_number()) wrong_type(v, key, "a number", source);
    const float f = static_cast<float>(v.get<double>());
    if (!std::isfinite(f)) fail(source, std::string("field '") + key + "' = " + v.dump() + " is out of range for a float");
    return f;
  } else if constexpr (std::is_same_v<T, bool>) {
    if (!v.is_boolean()) wrong_type(v, key, "true or false", source);
    return v.get<bool>();
  } else {
    static_assert(std::is_same_v<T, std::string>);
    if (!v.is_string()) wrong_type(v, key, "a string", source);
    return v.get<std::string>();
  }
}

template <typename T>
T required(const nlohmann::json& j, const char* key, const std::string& source) {
  if (!j.contains(key) || j.at(key).is_null()) fail(source, std::string("missing required field '") + key + "'");
  return exact<T>(j.at(key), key, source);
}

template <typename T>
T optional(const nlohmann::json& j, const char* key, T fallback, const std::string& source) {
  if (!j.contains(key) || j.at(key).is_null()) return fallback;
  return required<T>(j, key, source);
}

// bos/eos may be an int or a list of ints (Llama-3.1 lists several EOS ids); we keep the first.
int token_id(const nlohmann::json& j, const char* key, const std::string& source) {
  if (!j.contains(key) || j.at(key).is_null()) return -1;
  const auto& v = j.at(key);
  if (v.is_number_integer()) return exact<int>(v, key, source);
  if (v.is_array() && !v.empty() && v[0].is_number_integer()) return exact<int>(v[0], key, source);
  fail(source, std::string("field '") + key + "' must be an integer or a list of integers");
}

template <typename T>
void check_positive(T value, const char* key, const std::string& source) {
  if (value > 0) return;
  const nlohmann::json shown = std::is_floating_point_v<T> ? nlohmann::json(shortest_decimal(value)) : nlohmann::json(value);
  fail(source, std::string("field '") + key + "' must be positive, got " + shown.dump());
}

}  // namespace

ModelConfig parse_hf_config(const nlohmann::json& j, const std::string& source) {
  if (!j.is_object()) fail(source, "config is not a JSON object");
  ModelConfig c;
  c.model_type = required<std::string>(j, "model_type", source);
  if (c.model_type != "llama" && c.model_type != "mistral" && c.model_type != "qwen2")
    fail(source, "unsupported model_type '" + c.model_type + "' (supported: llama, mistral, qwen2)");

  c.vocab_size = required<int>(j, "vocab_size", source);
  c.hidden_size = required<int>(j, "hidden_size", source);
  c.intermediate_size = required<int>(j, "intermediate_size", source);
  c.num_hidden_layers = required<int>(j, "num_hidden_layers", source);
  c.num_attention_heads = required<int>(j, "num_attention_heads", source);
  // transformers falls back to multi-head attention when num_key_value_heads is absent (old Llama-1/2 configs).
  c.num_key_value_heads = optional<int>(j, "num_key_value_heads", c.num_attention_heads, source);
  check_positive(c.vocab_size, "vocab_size", source);
  check_positive(c.hidden_size, "hidden_size", source);
  check_positive(c.intermediate_size, "intermediate_size", source);
  check_positive(c.num_hidden_layers, "num_hidden_layers", source);
  check_positive(c.num_attention_heads, "num_attention_heads", source);
  check_positive(c.num_key_value_heads, "num_key_value_heads", source);
  if (c.num_attention_heads % c.num_key_value_heads != 0)
    fail(source, "num_attention_heads (" + std::to_string(c.num_attention_heads) +
                     ") is not a multiple of num_key_value_heads (" + std::to_string(c.num_key_value_heads) + ")");
  if (c.hidden_size % c.num_attention_heads != 0 && !j.contains("head_dim"))
    fail(source, "hidden_size is not a multiple of num_attention_heads and no head_dim is given");
  c.head_dim = optional<int>(j, "head_dim", c.hidden_size / c.num_attention_heads, source);
  check_positive(c.head_dim, "head_dim", source);
  if (c.head_dim % 2 != 0) fail(source, "head_dim must be even for RoPE, got " + std::to_string(c.head_dim));

  c.max_position_embeddings = optional<int>(j, "max_position_embeddings", 4096, source);
  check_positive(c.max_position_embeddings, "max_position_embeddings", source);
  c.rms_norm_eps = required<float>(j, "rms_norm_eps", source);
  check_positive(c.rms_norm_eps, "rms_norm_eps", source);
  c.rope_theta = optional<float>(j, "rope_theta", 10000.0f, source);
  check_positive(c.rope_theta, "rope_theta", source);
  c.tie_word_embeddings = optional<bool>(j, "tie_word_embeddings", false, source);
  c.bos_token_id = token_id(j, "bos_token_id", source);
  c.eos_token_id = token_id(j, "eos_token_id", source);

  if (c.model_type == "qwen2") {
    c.qkv_bias = true;  // Qwen2Attention hard-codes bias=True on q/k/v and bias=False on o.
  } else if (c.model_type == "llama") {
    c.qkv_bias = c.o_bias = optional<bool>(j, "attention_bias", false, source);
    if (optional<bool>(j, "mlp_bias", false, source)) fail(source, "mlp_bias=true is not supported");
  }
  // Mistral/Qwen2 sliding_window is ignored on purpose: LLM2Vec's bidirectional classes drop it, and so
  // do we (every position sees every non-padding position, or every earlier one when causal).
  const std::string act = optional<std::string>(j, "hidden_act", "silu", source);
  if (act != "silu") fail(source, "unsupported hidden_act '" + act + "' (only silu)");

  if (j.contains("rope_scaling") && !j.at("rope_scaling").is_null()) {
    const auto& rs = j.at("rope_scaling");
    const std::string where = source + " rope_scaling";
    if (!rs.is_object()) fail(source, "field 'rope_scaling' must be an object or null");
    // transformers accepts both spellings; "rope_type" is the current one.
    std::string type = rs.contains("rope_type") ? required<std::string>(rs, "rope_type", where)
                                                : required<std::string>(rs, "type", where);
    if (type == "default") {
      // no scaling
    } else if (type == "llama3") {
      c.rope_scaling.type = "llama3";
      c.rope_scaling.factor = required<float>(rs, "factor", where);
      c.rope_scaling.low_freq_factor = required<float>(rs, "low_freq_factor", where);
      c.rope_scaling.high_freq_factor = required<float>(rs, "high_freq_factor", where);
      c.rope_scaling.original_max_position_embeddings = required<int>(rs, "original_max_position_embeddings", where);
      check_positive(c.rope_scaling.factor, "factor", where);
      check_positive(c.rope_scaling.low_freq_factor, "low_freq_factor", where);
      check_positive(c.rope_scaling.original_max_position_embeddings, "original_max_position_embeddings", where);
      if (c.rope_scaling.high_freq_factor <= c.rope_scaling.low_freq_factor)
        fail(where, "high_freq_factor must be larger than low_freq_factor");
    } else {
      fail(source, "unsupported rope_scaling type '" + type + "' (supported: default, llama3)");
    }
  }
  return c;
}

ModelConfig load_hf_config(const std::string& path) {
  return parse_hf_config(read_json_file(path, "model config"), path);
}

double shortest_decimal(float x) {
  if (!std::isfinite(x)) return x;
  char buf[32];
  for (int digits = 1; digits <= 9; ++digits) {  // 9 significant digits always round-trip a float
    std::snprintf(buf, sizeof buf, "%.*g", digits, (double)x);
    if (std::strtof(buf, nullptr) == x) break;
  }
  return std::strtod(buf, nullptr);
}

nlohmann::json to_hf_config_json(const ModelConfig& c) {
  nlohmann::json j = {
      {"model_type", c.model_type},
      {"architectures", {c.model_type == "llama" ? "LlamaForCausalLM"
                         : c.model_type == "mistral" ? "MistralForCausalLM"
                                                     : "Qwen2ForCausalLM"}},
      {"vocab_size", c.vocab_size},
      {"hidden_size", c.hidden_size},
      {"intermediate_size", c.intermediate_size},
      {"num_hidden_layers", c.num_hidden_layers},
      {"num_attention_heads", c.num_attention_heads},
      {"num_key_value_heads", c.num_key_value_heads},
      {"head_dim", c.head_dim},
      {"max_position_embeddings", c.max_position_embeddings},
      {"rms_norm_eps", shortest_decimal(c.rms_norm_eps)},
      {"rope_theta", c.rope_theta},
      {"tie_word_embeddings", c.tie_word_embeddings},
      {"hidden_act", "silu"},
      {"torch_dtype", "float32"},
  };
  if (c.model_type == "llama") j["attention_bias"] = c.qkv_bias;
  if (c.bos_token_id >= 0) j["bos_token_id"] = c.bos_token_id;
  if (c.eos_token_id >= 0) j["eos_token_id"] = c.eos_token_id;
  if (c.rope_scaling.type == "llama3") {
    j["rope_scaling"] = {{"rope_type", "llama3"},
                         {"factor", shortest_decimal(c.rope_scaling.factor)},
                         {"low_freq_factor", shortest_decimal(c.rope_scaling.low_freq_factor)},
                         {"high_freq_factor", shortest_decimal(c.rope_scaling.high_freq_factor)},
                         {"original_max_position_embeddings", c.rope_scaling.original_max_position_embeddings}};
  }
  return j;
}

std::vector<float> rope_inv_freq(const ModelConfig& c) {
  const int half = c.head_dim / 2;
  std::vector<float> inv(half);
  for (int i = 0; i < half; ++i) {
    // transformers: 1.0 / (base ** (arange(0, dim, 2).float() / dim)), all in fp32.
    float exponent = (float)(2 * i) / (float)c.head_dim;
    inv[i] = 1.0f / std::pow(c.rope_theta, exponent);
  }
  if (c.rope_scaling.type == "llama3") {
    // transformers' _compute_llama3_parameters: long wavelengths are divided by `factor`, short ones
    // kept, and the band in between interpolated smoothly.
    const RopeScaling& s = c.rope_scaling;
    const float old_len = (float)s.original_max_position_embeddings;
    const float low_freq_wavelen = old_len / s.low_freq_factor;
    const float high_freq_wavelen = old_len / s.high_freq_factor;
    const float pi = 3.141592653589793f;
    for (int i = 0; i < half; ++i) {
      const float wavelen = 2.0f * pi / inv[i];
      if (wavelen < high_freq_wavelen) continue;
      if (wavelen > low_freq_wavelen) {
        inv[i] = inv[i] / s.factor;
      } else {
        const float smooth = (old_len / wavelen - s.low_freq_factor) / (s.high_freq_factor - s.low_freq_factor);
        inv[i] = (1.0f - smooth) * inv[i] / s.factor + smooth * inv[i];
      }
    }
  }
  return inv;
}

}  // namespace l2v
