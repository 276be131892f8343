#include "model/peft.h"

#include <filesystem>
#include <fstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "model/safetensors.h"

namespace l2v {

LoraConfig load_peft_adapter_config(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open adapter config");
  nlohmann::json j;
  try {
    in >> j;
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path + ": not valid JSON: " + e.what());
  }
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

void load_peft_adapter(Model& m, const std::string& dir) {
  namespace fs = std::filesystem;
  LoraConfig c = load_peft_adapter_config((fs::path(dir) / "adapter_config.json").string());
  add_lora(m, c, /*seed=*/0);
  SafetensorsCheckpoint weights((fs::path(dir) / "adapter_model.safetensors").string());
  load_lora_weights(m, weights);
}

}  // namespace l2v
