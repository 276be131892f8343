#include "model/gguf_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace l2v {
namespace {

// The Hugging Face name of a GGUF tensor of the llama / qwen2 layout, or "" for one it does not know.
std::string hf_name(const std::string& g) {
  static const std::map<std::string, std::string> top = {{"token_embd.weight", "model.embed_tokens.weight"},
                                                         {"output_norm.weight", "model.norm.weight"},
                                                         {"output.weight", "lm_head.weight"}};
  static const std::map<std::string, std::string> layer = {
      {"attn_norm.weight", "input_layernorm.weight"}, {"ffn_norm.weight", "post_attention_layernorm.weight"},
      {"attn_q", "self_attn.q_proj"},   {"attn_k", "self_attn.k_proj"},   {"attn_v", "self_attn.v_proj"},
      {"attn_output", "self_attn.o_proj"}, {"ffn_gate", "mlp.gate_proj"}, {"ffn_up", "mlp.up_proj"},
      {"ffn_down", "mlp.down_proj"}};
  if (top.count(g)) return top.at(g);
  if (g.rfind("blk.", 0) != 0) return "";
  const size_t dot = g.find('.', 4);
  if (dot == std::string::npos) return "";
  const std::string n = g.substr(4, dot - 4), rest = g.substr(dot + 1);
  if (n.empty() || n.find_first_not_of("0123456789") != std::string::npos) return "";
  for (const auto& [gg, hf] : layer)
    if (rest == gg + ".weight" || rest == gg + ".bias" || rest == gg)
      return "model.layers." + n + "." + hf + rest.substr(gg.size());
  return "";
}

// Llama 3's RoPE scaling (transformers' "llama3" rope_type) as a frequency's divisor: 1 for wavelengths
// below original/high_freq_factor, `factor` above original/low_freq_factor, a smooth blend between.
double llama3_rope_factor(double inv_freq, double factor, double low, double high, double original) {
  const double wavelen = 2.0 * 3.14159265358979323846 / inv_freq;
  if (wavelen < original / high) return 1.0;
  if (wavelen > original / low) return factor;
  const double smooth = (original / wavelen - low) / (high - low);
  return 1.0 / ((1.0 - smooth) / factor + smooth);
}

// llama.cpp stores Llama 3.1 / 3.2's scaling as the tensor rope_freqs.weight (a divisor per frequency), not
// as parameters: the parameters are those whose divisors it holds. Tried: factor = the largest divisor,
// low_freq_factor 1 and high_freq_factor 4 (every Llama 3.x release), an original context of 2^6 .. 2^20
// tokens or context_length / factor; a match is every divisor within 1e-5 of it, relative (llama.cpp computes
// the frequencies in fp32 before the divisors: a divisor in the blend moves by a few fp32 ulps with them,
// while the next candidate context moves the blend's divisors by percents).
nlohmann::json llama3_scaling(const std::vector<float>& divisors, double theta, uint64_t head_dim, uint64_t context) {
  if (divisors.empty() || divisors.size() * 2 != head_dim) return nullptr;
  const double factor = *std::max_element(divisors.begin(), divisors.end());
  std::vector<double> originals;
  for (int k = 6; k <= 20; ++k) originals.push_back(std::ldexp(1.0, k));
  if (factor > 0) originals.push_back(std::round((double)context / factor));
  for (double original : originals) {
    bool all = true;
    for (size_t i = 0; i < divisors.size() && all; ++i) {
      const double inv_freq = 1.0 / std::pow(theta, (double)(2 * i) / (double)head_dim);
      all = std::fabs(llama3_rope_factor(inv_freq, factor, 1.0, 4.0, original) - divisors[i]) <= 1e-5 * divisors[i];
    }
    if (all)
      return {{"rope_type", "llama3"}, {"factor", factor}, {"low_freq_factor", 1.0}, {"high_freq_factor", 4.0},
              {"original_max_position_embeddings", (int64_t)original}};
  }
  return nullptr;
}

}  // namespace

GgufCheckpoint::GgufCheckpoint(const std::string& path) : file_(path) {
  const nlohmann::json& m = file_.metadata();
  auto fail = [&](const std::string& what) { throw std::runtime_error(path + ": " + what); };
  if (!m.contains("general.architecture") || !m.at("general.architecture").is_string())
    fail("no general.architecture in the metadata");
  const std::string arch = m.at("general.architecture").get<std::string>();
  if (arch != "llama" && arch != "qwen2")
    fail("architecture '" + arch + "' is not supported (llama, which llama.cpp uses for Mistral too, and qwen2)");
  auto key = [&](const std::string& k) { return arch + "." + k; };
  auto uint_of = [&](const std::string& k, bool required, uint64_t fallback) -> uint64_t {
    if (!m.contains(k)) {
      if (required) fail("missing metadata " + k);
      return fallback;
    }
    if (!m.at(k).is_number_unsigned() && !(m.at(k).is_number_integer() && m.at(k).get<int64_t>() >= 0))
      fail("metadata " + k + " is not a non-negative integer");
    return m.at(k).get<uint64_t>();
  };
  auto float_of = [&](const std::string& k, double fallback) {
    if (!m.contains(k)) return fallback;
    if (!m.at(k).is_number()) fail("metadata " + k + " is not a number");
    return m.at(k).get<double>();
  };
  if (m.contains(key("rope.scaling.type")) && m.at(key("rope.scaling.type")) != "none")
    fail("RoPE scaling (" + key("rope.scaling.type") + ") is not supported");
  const uint64_t heads = uint_of(key("attention.head_count"), true, 0);
  const uint64_t hidden = uint_of(key("embedding_length"), true, 0);
  const uint64_t kv = uint_of(key("attention.head_count_kv"), false, heads);
  const GgufTensor* rope_freqs = nullptr;
  for (const GgufTensor& t : file_.tensors()) {
    if (t.name == "rope_freqs.weight") {
      rope_freqs = &t;  // Llama 3's RoPE scaling, below: not a model tensor
      continue;
    }
    const std::string hf = hf_name(t.name);
    if (hf.empty()) fail("tensor " + t.name + " is not part of the " + arch + " layout this reader knows");
    int rope_heads = 0;
    if (arch == "llama" && hf.find(".self_attn.q_proj.") != std::string::npos) rope_heads = (int)heads;
    if (arch == "llama" && hf.find(".self_attn.k_proj.") != std::string::npos) rope_heads = (int)kv;
    tensors_[hf] = {&t, rope_heads};
  }
  if (!tensors_.count("model.embed_tokens.weight")) fail("no token_embd.weight tensor");
  const GgufTensor& embed = *tensors_.at("model.embed_tokens.weight").tensor;
  nlohmann::json c = {
      {"model_type", arch},
      {"hidden_size", hidden},
      {"intermediate_size", uint_of(key("feed_forward_length"), true, 0)},
      {"num_hidden_layers", uint_of(key("block_count"), true, 0)},
      {"num_attention_heads", heads},
      {"num_key_value_heads", kv},
      {"max_position_embeddings", uint_of(key("context_length"), true, 0)},
      {"rms_norm_eps", float_of(key("attention.layer_norm_rms_epsilon"), 1e-6)},
      {"rope_theta", float_of(key("rope.freq_base"), 10000.0)},
      {"vocab_size", uint_of(key("vocab_size"), false, embed.dims.size() > 1 ? embed.dims[1] : 0)},
      {"tie_word_embeddings", !tensors_.count("lm_head.weight")}};
  const uint64_t head_dim =
      uint_of(key("attention.key_length"), false, uint_of(key("rope.dimension_count"), false, heads ? hidden / heads : 0));
  if (heads && head_dim != hidden / heads) c["head_dim"] = head_dim;
  if (rope_freqs) {
    const nlohmann::json scaling = llama3_scaling(file_.dequantize(*rope_freqs), c["rope_theta"].get<double>(),
                                                  head_dim, c["max_position_embeddings"].get<uint64_t>());
    if (scaling.is_null())
      fail("the rope_freqs tensor (RoPE scaling) matches no Llama 3 scaling (low_freq_factor 1, high_freq_factor 4, "
           "an original context of a power of two): not supported");
    c["rope_scaling"] = scaling;
  }
  if (arch == "llama" && tensors_.count("model.layers.0.self_attn.q_proj.bias")) c["attention_bias"] = true;
  for (const char* id : {"bos", "eos"}) {
    const std::string k = std::string("tokenizer.ggml.") + id + "_token_id";
    if (m.contains(k)) c[std::string(id) + "_token_id"] = uint_of(k, true, 0);
  }
  config = parse_hf_config(c, path + " (metadata)");
}

const GgufCheckpoint::Entry& GgufCheckpoint::entry(const std::string& name) const {
  const auto it = tensors_.find(name);
  if (it == tensors_.end()) throw std::runtime_error(file_.path() + ": no tensor '" + name + "'");
  return it->second;
}

bool GgufCheckpoint::has(const std::string& name) const { return tensors_.count(name) > 0; }

std::vector<int64_t> GgufCheckpoint::shape(const std::string& name) const {
  const GgufTensor& t = *entry(name).tensor;
  return std::vector<int64_t>(t.dims.rbegin(), t.dims.rend());  // ggml's ne is innermost first
}

void GgufCheckpoint::read_f32(const std::string& name, float* dst, size_t count) const {
  const Entry& e = entry(name);
  if (count != e.tensor->elements())
    throw std::runtime_error(file_.path() + ": tensor '" + name + "' (" + e.tensor->name + ") has " +
                             std::to_string(e.tensor->elements()) + " elements, not " + std::to_string(count));
  std::vector<float> values = file_.dequantize(*e.tensor);
  if (e.rope_heads == 0) {
    std::copy(values.begin(), values.end(), dst);
    return;
  }
  const int64_t cols = e.tensor->dims.size() > 1 ? (int64_t)e.tensor->dims[0] : 1;
  const int64_t rows = (int64_t)count / cols;
  if (rows % (2 * e.rope_heads))
    throw std::runtime_error(file_.path() + ": tensor " + e.tensor->name + ": " + std::to_string(rows) +
                             " rows are not whole heads of even size");
  deinterleave_rope_rows(dst, reinterpret_cast<const uint8_t*>(values.data()), e.rope_heads, rows, cols);
}

std::vector<std::string> GgufCheckpoint::names() const {
  std::vector<std::string> r;
  for (const auto& kv : tensors_) r.push_back(kv.first);
  return r;
}

}  // namespace l2v
