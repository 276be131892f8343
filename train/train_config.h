// The `llm2vec train` configuration: one table of keys (train_config_keys) drives the JSON config file,
// the command-line overrides (--key value) and the --help text, so the three never disagree. Key names
// follow llm2vec's train_configs/*.json (and Hugging Face TrainingArguments) where llm2vec has the
// setting, so its users' configs mostly work as they are; the keys llm2vec has and we do not act on are
// listed as ignored (reported, not silently dropped); every other unknown key is an error.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/latent_attention.h"
#include "model/model.h"
#include "model/pooling.h"

namespace l2v {

enum class Stage { kMntp, kSimcse, kSupervised };
const char* stage_name(Stage s);

struct TrainConfig {
  Stage stage = Stage::kMntp;
  std::string model_name_or_path, tokenizer;
  std::vector<std::string> peft_model_name_or_path;  // adapters merged into the base, in order
  std::string dataset_file_path, output_dir;
  std::string backend, precision;  // empty: the binary's default backend / the backend's default precision
  int batch_size = 8, gradient_accumulation_steps = 1;
  int max_steps = 1000;
  double learning_rate = 5e-5, warmup_ratio = 0.0;
  int warmup_steps = 0;
  bool linear_decay = true;
  float weight_decay = 0, adam_beta1 = 0.9f, adam_beta2 = 0.999f, adam_epsilon = 1e-8f, max_grad_norm = 1.0f;
  int logging_steps = 10, save_steps = 500, save_total_limit = 2;
  uint64_t seed = 42;
  bool bidirectional = true, gradient_checkpointing = false;
  LoraConfig lora;
  int max_seq_length = 512;
  float mlm_probability = 0.2f;
  std::string data_collator_type = "default", mask_token_type = "blank";
  float attention_dropout = 0.0f;  // simcse_dropout for the SimCSE stage
  PoolingMode pooling = PoolingMode::kMean;
  LatentAttentionConfig latent;
  float loss_scale = 20.0f;
  bool in_batch_negatives = true, hard_negatives = true, use_instructions = true, skip_instruction = true;
  std::string padding_side = "left";
  bool save_merged_model = true;
  std::string adapter_layout = "llm2vec";
  std::string resume_from_checkpoint;  // "" | "latest" | a checkpoint directory
  bool overwrite_output_dir = false;

  nlohmann::json resolved;  // every key with its final value, as written to <output_dir>/train_config.json
};

struct ConfigKey {
  std::string name;
  char type;  // 'i' int, 'f' number, 'b' bool, 's' string, 'l' string or list of strings
  nlohmann::json fallback;  // null: required, or a stage-dependent default described in help
  std::string help;
};
const std::vector<ConfigKey>& train_config_keys();
const std::vector<std::string>& ignored_llm2vec_keys();

// Builds the configuration from an optional JSON file (config_path may be empty) and --key value
// overrides (name without the dashes → value as typed on the command line). Throws std::runtime_error
// naming the file and key for an unknown key, a value of the wrong type or out of range, a missing
// required key. `notes` receives one line per ignored llm2vec key.
TrainConfig load_train_config(const std::string& config_path, const std::vector<std::pair<std::string, std::string>>& overrides,
                              std::vector<std::string>* notes);

}  // namespace l2v
