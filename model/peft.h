// PEFT LoRA adapters on disk (adapter_config.json + adapter_model.safetensors), the layout `peft` and
// `llm2vec` load in Python.
#pragma once
#include <string>

#include "model/model.h"

namespace l2v {

// Reads adapter_config.json: r, lora_alpha, lora_dropout, target_modules. Throws naming the file and
// field for a missing field, a non-LoRA adapter, an unsupported target module or bias != "none".
LoraConfig load_peft_adapter_config(const std::string& path);

// Adds the adapter found in directory `dir` to the model (config + weights).
void load_peft_adapter(Model& m, const std::string& dir);

}  // namespace l2v
