#include "model/peft.h"

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <set>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "data/file_io.h"
#include "model/safetensors.h"

namespace l2v {

LoraConfig load_peft_adapter_config(const std::string& path) {
  const nlohmann::json j = read_json_file(path, "adapter config");
  auto need = [&](const char* key) -> const nlohmann::json& {
    if (!j.contains(key) || j.at(key).is_null()) throw std::runtime_error(path + ": missing field '" + key + "'");
    return j.at(key);
  };
  LoraConfig c;
  try {
    if (j.value("peft_type", "LORA") != "LORA")
      throw std::runtime_error(path + ": peft_type '" + j.value("peft_type", "") + "' is not LORA");
    if (j.value("bias", "none") != "none")
      throw std::runtime_error(path + ": bias '" + j.value("bias", "") + "' is not supported (only \"none\")");
    // Options that change the adapter's function and that we do not implement are refused, not ignored.
    if (j.value("use_dora", false)) throw std::runtime_error(path + ": use_dora=true is not supported");
    if (j.value("fan_in_fan_out", false)) throw std::runtime_error(path + ": fan_in_fan_out=true is not supported");
    for (const char* key : {"rank_pattern", "alpha_pattern"})
      if (j.contains(key) && !j.at(key).is_null() && !j.at(key).empty())
        throw std::runtime_error(path + ": a non-empty " + key + " is not supported");
    if (j.contains("layers_to_transform") && !j.at("layers_to_transform").is_null())
      throw std::runtime_error(path + ": layers_to_transform is not supported");
    c.use_rslora = j.value("use_rslora", false);
    c.r = need("r").get<int>();
    c.alpha = need("lora_alpha").get<float>();
    c.dropout = j.value("lora_dropout", 0.0f);
    const nlohmann::json& targets = need("target_modules");
    c.targets.fill(false);
    for (const auto& t : targets) {
      int id;
      if (!parse_linear_name(t.get<std::string>(), &id))
        throw std::runtime_error(path + ": unsupported target module '" + t.get<std::string>() + "'");
      c.targets[id] = true;
    }
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path + ": a field has the wrong type: " + e.what());
  }
  if (c.r <= 0) throw std::runtime_error(path + ": r must be positive");
  if (c.dropout < 0.0f || c.dropout >= 1.0f) throw std::runtime_error(path + ": lora_dropout must be in [0, 1)");
  return c;
}

void check_export_complete(const std::string& dir) {
  if (std::filesystem::exists(std::filesystem::path(dir) / kExportIncomplete))
    throw std::runtime_error(dir + ": its outputs were being written when the run stopped (" + kExportIncomplete +
                             " is there), so they may be incomplete; finish the run with `llm2vec train ... "
                             "--resume_from_checkpoint latest`");
}

// PEFT also saves whole tensors beside the LoRA factors: the embedding (save_embedding_layers, which it
// turns on when the vocabulary was resized during training: llm2vec's run_mntp.py does so whenever
// len(tokenizer) exceeds the embedding) and modules_to_save. Loading the factors alone would run another
// model than the one trained unless such a tensor is the base's own: the embedding or the LM head, equal to
// the base's within the rounding of the dtype it was saved in (bf16 at worst: round-to-nearest with 8
// significant bits, |a - b| <= 2^-8 |b| per element). Anything else is refused by name.
static void check_whole_tensors(const Model& m, const TensorSource& src, const std::set<std::string>& lora) {
  const std::string outer = "base_model.model.model.", inner = "base_model.model.";
  const size_t V = (size_t)m.config.vocab_size, C = (size_t)m.config.hidden_size;
  for (const std::string& name : src.names()) {
    if (lora.count(name)) continue;
    const bool is_embed = name == inner + "embed_tokens.weight" || name == outer + "embed_tokens.weight";
    const bool is_head = name == inner + "lm_head.weight";
    const ConstTensor base = is_embed ? m.embed : is_head ? m.lm_head : nullptr;
    const std::string what = src.describe() + ": tensor '" + name + "'";
    if (!base)
      throw std::runtime_error(what + " is not a LoRA factor of this adapter (modules_to_save or a resized "
                               "layer?): whole trained tensors in an adapter are not supported");
    const std::vector<int64_t> shape = src.shape(name);
    if (shape != std::vector<int64_t>{(int64_t)V, (int64_t)C})
      throw std::runtime_error(what + " has shape " + shape_str(shape) + ", the model's is [" + std::to_string(V) +
                               ", " + std::to_string(C) + "]: the vocabulary was resized when the adapter was "
                               "trained (a tokenizer with tokens the base lacks), which is not supported");
    std::vector<float> saved(V * C);
    src.read_f32(name, saved.data(), saved.size());
    const std::vector<float> own = download_tensor(m, base, V * C);
    for (size_t i = 0; i < saved.size(); ++i)
      if (!(std::fabs(saved[i] - own[i]) <= std::ldexp(std::fabs(own[i]), -8)))
        throw std::runtime_error(what + " differs from the base model's at row " + std::to_string(i / C) +
                                 ", column " + std::to_string(i % C) + " (" + std::to_string(saved[i]) + " vs " +
                                 std::to_string(own[i]) + "): a trained embedding is not supported");
  }
}

void load_peft_adapter(Model& m, const std::string& dir) {
  namespace fs = std::filesystem;
  check_export_complete(dir);
  LoraConfig c = load_peft_adapter_config((fs::path(dir) / "adapter_config.json").string());
  add_lora(m, c, /*seed=*/0);
  SafetensorsCheckpoint weights((fs::path(dir) / "adapter_model.safetensors").string());
  check_whole_tensors(m, weights, load_lora_weights(m, weights));
}

PeftLayout parse_peft_layout(const std::string& name) {
  if (name == "llm2vec") return PeftLayout::kInnerModel;
  if (name == "causal_lm") return PeftLayout::kCausalLM;
  throw std::runtime_error("unknown adapter layout '" + name + "' (llm2vec or causal_lm)");
}

void save_peft_adapter(const Model& m, const std::string& dir, const std::string& base_model_name_or_path,
                       PeftLayout layout) {
  namespace fs = std::filesystem;
  if (m.lora.r <= 0 || m.lora_merged) throw std::runtime_error("save_peft_adapter: the model has no unmerged adapter");
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir + ": cannot create directory: " + ec.message());
  // TrainableParam names use the causal-LM layout; the inner-model layout drops one "model.".
  const std::string outer = "base_model.model.model.", inner = "base_model.model.";
  std::vector<std::vector<float>> data;
  data.reserve(m.trainable.size());  // entries point into data: no reallocation
  std::vector<SafetensorsEntry> entries;
  for (const TrainableParam& p : m.trainable) {
    if (p.name.rfind(outer, 0) != 0) continue;  // not a LoRA tensor
    data.push_back(download_floats(m, p.value, p.count));
    entries.push_back({layout == PeftLayout::kCausalLM ? p.name : inner + p.name.substr(outer.size()), "F32", p.shape,
                       data.back().data()});
  }
  write_safetensors((fs::path(dir) / "adapter_model.safetensors").string(), entries, {{"format", "pt"}});

  nlohmann::json targets = nlohmann::json::array();
  std::vector<std::string> sorted;
  for (int id = 0; id < kNumLinears; ++id)
    if (m.lora.targets[id]) sorted.push_back(linear_name(id));
  std::sort(sorted.begin(), sorted.end());  // PEFT stores target_modules as a sorted list
  for (const std::string& t : sorted) targets.push_back(t);
  nlohmann::json j = {{"alpha_pattern", nlohmann::json::object()},
                      {"auto_mapping", nullptr},
                      {"base_model_name_or_path", base_model_name_or_path},
                      {"bias", "none"},
                      {"fan_in_fan_out", false},
                      {"inference_mode", true},
                      {"init_lora_weights", true},
                      {"layer_replication", nullptr},
                      {"layers_pattern", nullptr},
                      {"layers_to_transform", nullptr},
                      {"loftq_config", nlohmann::json::object()},
                      {"lora_alpha", shortest_decimal(m.lora.alpha)},
                      {"lora_dropout", shortest_decimal(m.lora.dropout)},
                      {"megatron_config", nullptr},
                      {"megatron_core", "megatron.core"},
                      {"modules_to_save", nullptr},
                      {"peft_type", "LORA"},
                      {"r", m.lora.r},
                      {"rank_pattern", nlohmann::json::object()},
                      {"revision", nullptr},
                      {"target_modules", targets},
                      {"task_type", nullptr},
                      {"use_dora", false},
                      {"use_rslora", m.lora.use_rslora}};
  write_file_atomic((fs::path(dir) / "adapter_config.json").string(), j.dump(2) + "\n");
}

}  // namespace l2v
