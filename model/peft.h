// PEFT LoRA adapters on disk (adapter_config.json + adapter_model.safetensors), the layout `peft` and
// `llm2vec` load in Python.
#pragma once
#include <string>

#include "model/model.h"

namespace l2v {

// Reads adapter_config.json: r, lora_alpha, lora_dropout, target_modules. Throws naming the file and
// field for a missing field, a non-LoRA adapter, an unsupported target module or bias != "none".
LoraConfig load_peft_adapter_config(const std::string& path);

// Adds the adapter found in directory `dir` to the model (config + weights). Refuses a directory that
// holds kExportIncomplete (an `llm2vec train` export that was interrupted).
void load_peft_adapter(Model& m, const std::string& dir);

// The file `llm2vec train` keeps in its output_dir while it moves a finished run's outputs into place;
// loaders refuse such a directory, since its outputs may be a partial set.
constexpr const char* kExportIncomplete = "EXPORT_INCOMPLETE";
// Throws std::runtime_error naming `dir` if it holds kExportIncomplete.
void check_export_complete(const std::string& dir);

// Where the adapter's tensor names start.
enum class PeftLayout {
  kInnerModel,  // base_model.model.layers.…: PEFT wrapping AutoModel (LlamaModel), what llm2vec trains and loads
  kCausalLM,    // base_model.model.model.layers.…: PEFT wrapping AutoModelForCausalLM
};
PeftLayout parse_peft_layout(const std::string& name);  // "llm2vec" | "causal_lm"

// Writes the model's current (unmerged) LoRA adapter to `dir` as PEFT writes it: adapter_config.json
// (peft 0.12's fields) and adapter_model.safetensors (F32, PEFT's tensor names for `layout`), each
// atomically. Only the LoRA tensors are written (not a pooling head).
void save_peft_adapter(const Model& m, const std::string& dir, const std::string& base_model_name_or_path,
                       PeftLayout layout);

}  // namespace l2v
