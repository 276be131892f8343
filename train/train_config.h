// The `llm2vec train` configuration: one table of keys (train_config_keys) drives the JSON config file,
// the command-line overrides (--key value) and the --help text, so the three never disagree. Key names
// follow llm2vec's train_configs/*.json (and Hugging Face TrainingArguments) where llm2vec has the
// setting, so its users' configs mostly work as they are; the keys llm2vec has and we do not act on are
// listed as ignored (reported, not silently dropped); every other unknown key is an error.
//
// Defaults are llm2vec's recipe: a key's default is the value that most of llm2vec's published
// train_configs/<stage>/*.json give it (lora_r 16, save_steps 200, gradient_checkpointing true, the
// batch sizes 32 / 128 / 64, learning rates 3e-5 SimCSE and 2e-4 supervised, supervised warmup 300,
// max_seq_length 512 / 128 / 512, SimCSE loss_scale 20 and simcse_dropout 0.3, mlm_probability 0.2
// and the default collator, stop_after_n_steps 1000 as max_steps); where the configs do not set it,
// the default of llm2vec's experiments/run_<stage>.py (supervised loss_scale 50, lora_dropout 0.05,
// mask_token_type blank); else Hugging Face TrainingArguments' (learning rate 5e-5 for MNTP, AdamW's
// betas and epsilon, max_grad_norm 1, seed 42, linear schedule). Deliberate exceptions: overwrite_output_dir
// false (the configs say true, which would let a typo overwrite a finished run), logging_steps 10 (a
// progress line; the JSONL log has every step), save_total_limit 2 (Hugging Face keeps every checkpoint)
// and the precision, which follows the backend (bf16 on CUDA and on CPUs with AMX-BF16, else fp32; llm2vec
// uses bfloat16).
// test/test_train_defaults.cpp checks all of this against values read from those sources
// (scripts/make_default_fixtures.py).
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
  std::string attention_impl;      // the cuda backend's attention kernels: "" (auto), simt, mma or cudnn
  int batch_size = 32, gradient_accumulation_steps = 1;
  int max_steps = 1000;
  double learning_rate = 5e-5, warmup_ratio = 0.0;
  int warmup_steps = 0;
  bool linear_decay = true;
  float weight_decay = 0, adam_beta1 = 0.9f, adam_beta2 = 0.999f, adam_epsilon = 1e-8f, max_grad_norm = 1.0f;
  int logging_steps = 10, save_steps = 200, save_total_limit = 2;
  uint64_t seed = 42;
  bool bidirectional = true, gradient_checkpointing = true;
  int recompute_layers = -1;   // -1: gradient_checkpointing's all or none, or the plan's with gpu_memory_gb
  double gpu_memory_gb = 0;    // > 0: plan the step into this budget (model/memory_plan.h)
  bool cuda_graphs = true;     // the trainer's device work as CUDA graphs (Backend::run_as_graph), one process only
  LoraConfig lora;
  int max_seq_length = 512;
  float mlm_probability = 0.2f;
  std::string data_collator_type = "default", mask_token_type = "blank";
  float attention_dropout = 0.0f;  // simcse_dropout for the SimCSE stage
  PoolingMode pooling = PoolingMode::kMean;
  LatentAttentionConfig latent;
  float loss_scale = 20.0f;
  bool in_batch_negatives = true, hard_negatives = true, use_instructions = true, skip_instruction = true;
  bool gather_negatives = true;   // data parallel: contrastive losses over the global batch
  int embedding_chunk_size = 0;   // contrastive: rows per forward/backward chunk (0: a whole group)
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

// The learning rate of optimizer step `step` (0-based): Hugging Face's get_linear_schedule_with_warmup
// or get_constant_schedule_with_warmup as the Trainer drives them (step k runs at lr * lambda(k), so
// the first warmup step runs at 0), computed in the same order so the values are equal to the bit.
double learning_rate_at(const TrainConfig& c, int step);

}  // namespace l2v
