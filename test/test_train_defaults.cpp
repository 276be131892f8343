// The trainer's defaults and learning-rate schedule against the sources they claim to follow, read
// from test/fixtures/defaults/reference.json (scripts/make_default_fixtures.py: llm2vec's published
// train_configs and run_<stage>.py argument defaults, transformers 4.44.2's TrainingArguments defaults
// and its two schedule lambdas evaluated step by step; nothing typed in by hand):
//   - every key's default at every stage is the recipe's value by the rule of train/train_config.h:
//     the value most of llm2vec's configs for that stage give it, else run_<stage>.py's default, else
//     TrainingArguments'; the deliberate exceptions are listed with their reasons, and the keys no
//     source has (our own) are listed too, so a key that starts to have a source is noticed;
//   - every published llm2vec config loads (its unused keys reported as ignored) and each value it sets
//     is the value the trainer runs with;
//   - learning_rate_at equals Hugging Face's lr for every step of linear / constant schedules with
//     warmup from steps, from a ratio, and longer than the run: bit for bit (EXPECT_EQ on doubles,
//     since both compute base_lr * (a / b) in double).
// Bugs these catch: a stage default swapped (SimCSE's loss_scale 20 and supervised's 50, learning
// rates, batch sizes), a schedule off by one step or computed in another order, a config key of
// llm2vec's silently renamed or dropped.
#include <gtest/gtest.h>

#include <fstream>
#include <map>
#include <set>

#include <nlohmann/json.hpp>

#include "test/temp_dir.h"
#include "train/train_config.h"

namespace l2v {
namespace {

using json = nlohmann::json;
using Overrides = std::vector<std::pair<std::string, std::string>>;

const json& reference() {
  static const json j = [] {
    std::ifstream in("test/fixtures/defaults/reference.json");
    if (!in) throw std::runtime_error("test/fixtures/defaults/reference.json: cannot open (run from the repository root)");
    return json::parse(in);
  }();
  return j;
}

// Values as a user reads them: 20 and 20.0 are the same number, a list of one string is that string.
bool same_value(const json& a, const json& b) {
  if (a.is_number() && b.is_number()) return a.get<double>() == b.get<double>();
  if (a.is_array() && a.size() == 1 && b.is_string()) return a[0] == b;
  return a == b;
}

// Our name for an llm2vec key (llm2vec's stop_after_n_steps is our max_steps; TrainingArguments'
// max_steps = -1 means "count epochs", which llm2vec never uses).
std::string source_name(const std::string& key) { return key == "max_steps" ? "stop_after_n_steps" : key; }

// The recipe's value of `key` at `stage`, and where it came from; null where no source sets it.
std::pair<json, std::string> recipe_default(const std::string& stage, const std::string& key) {
  const json& s = reference().at("stages").at(stage);
  const std::string name = source_name(key);
  std::map<std::string, std::pair<int, json>> votes;
  int n_configs = 0;
  for (const auto& [config, values] : s.at("train_configs").items()) {
    ++n_configs;
    if (values.contains(name)) {
      auto& v = votes[values.at(name).dump()];
      ++v.first;
      v.second = values.at(name);
    }
  }
  if (!votes.empty()) {
    auto best = std::max_element(votes.begin(), votes.end(),
                                 [](const auto& a, const auto& b) { return a.second.first < b.second.first; });
    // A default must be what most configs say; a tie would be a choice the rule does not make.
    if (2 * best->second.first <= n_configs)
      throw std::runtime_error(stage + "/" + key + ": no majority among llm2vec's configs");
    return {best->second.second, "llm2vec train_configs/" + stage};
  }
  const json& script = s.at("script_defaults");
  if (script.contains(name) && !script.at(name).is_null()) return {script.at(name), "llm2vec run_" + stage + ".py"};
  const json& hf = reference().at("training_arguments");
  if (key != "max_steps" && hf.contains(key)) return {hf.at(key), "TrainingArguments"};
  return {json(), ""};
}

// Deliberate departures from the recipe (train/train_config.h says why).
const std::map<std::string, json>& exceptions() {
  static const std::map<std::string, json> m = {
      {"overwrite_output_dir", false},  // the configs' true would let a typo delete a finished run
      {"logging_steps", 10},            // a progress line; train_log.jsonl has every step anyway
      {"save_total_limit", 2},          // Hugging Face keeps every checkpoint
      {"torch_dtype", ""},              // follows the backend (and the CPU's AMX-BF16)
      {"resume_from_checkpoint", ""},   // TrainingArguments' None, as a string key
  };
  return m;
}

// Keys only this codebase has (no llm2vec or Hugging Face source at any stage), and per-run paths.
const std::set<std::string> kOwnKeys = {
    "tokenizer", "backend", "attention_impl", "lora_alpha", "lora_target_modules", "attention_dropout",
    "latent_num_latents", "latent_heads", "latent_dim_head", "in_batch_negatives", "hard_negatives",
    "use_instructions", "skip_instruction", "padding_side", "save_merged_model", "adapter_layout",
    // Data parallelism: llm2vec always gathers (HardNegativeNLLLoss's all-gather under torch.distributed)
    // and has no chunking; both keys are ours, their defaults its behaviour.
    "gather_negatives", "embedding_chunk_size", "recompute_layers", "gpu_memory_gb", "cuda_graphs"};
const std::set<std::string> kPerRun = {"stage", "model_name_or_path", "dataset_file_path", "output_dir",
                                       "peft_model_name_or_path", "stop_after_n_steps"};

TrainConfig load(const Overrides& o) { return load_train_config("", o, nullptr); }

Overrides minimal(const std::string& stage) {
  return {{"stage", stage}, {"model_name_or_path", "m"}, {"dataset_file_path", "d"}, {"output_dir", "o"}};
}

TEST(TrainDefaults, EveryKeyAtEveryStageIsTheRecipesValue) {
  std::set<std::string> unsourced;
  for (const ConfigKey& k : train_config_keys()) unsourced.insert(k.name);
  for (const std::string stage : {"mntp", "simcse", "supervised"}) {
    const TrainConfig c = load(minimal(stage));
    for (const ConfigKey& k : train_config_keys()) {
      if (kPerRun.count(k.name)) {
        unsourced.erase(k.name);
        continue;
      }
      SCOPED_TRACE(stage + " / " + k.name);
      ASSERT_TRUE(c.resolved.contains(k.name));
      const json& ours = c.resolved.at(k.name);
      const auto [expected, source] = recipe_default(stage, k.name);
      if (!expected.is_null()) unsourced.erase(k.name);
      if (exceptions().count(k.name)) {
        EXPECT_TRUE(same_value(ours, exceptions().at(k.name))) << ours;
        EXPECT_FALSE(same_value(ours, expected)) << "no longer an exception: drop it from the list";
        unsourced.erase(k.name);
      } else if (!expected.is_null()) {
        EXPECT_TRUE(same_value(ours, expected)) << "ours " << ours << ", " << source << " " << expected;
      }
    }
  }
  EXPECT_EQ(unsourced, kOwnKeys);
  // lora_alpha has no key in any source: llm2vec's scripts pass 2 * lora_r to PEFT.
  for (const std::string stage : {"mntp", "simcse", "supervised"})
    EXPECT_EQ(load(minimal(stage)).lora.alpha, 2.0f * load(minimal(stage)).lora.r) << stage;
}

// The struct's initialisers are what code that builds a TrainConfig by hand gets: the MNTP stage's
// (the adapter's LoraConfig is the model's, where r = 0 means no adapter).
TEST(TrainDefaults, StructDefaultsAreTheMntpStagesDefaults) {
  const TrainConfig hand, loaded = load(minimal("mntp"));
  EXPECT_EQ(hand.batch_size, loaded.batch_size);
  EXPECT_EQ(hand.learning_rate, loaded.learning_rate);
  EXPECT_EQ(hand.max_seq_length, loaded.max_seq_length);
  EXPECT_EQ(hand.warmup_steps, loaded.warmup_steps);
  EXPECT_EQ(hand.save_steps, loaded.save_steps);
  EXPECT_EQ(hand.gradient_checkpointing, loaded.gradient_checkpointing);
  EXPECT_EQ(hand.mlm_probability, loaded.mlm_probability);
  EXPECT_EQ(hand.max_steps, loaded.max_steps);
}

TEST(TrainDefaults, SupervisedWarmupFromARatioReplacesTheDefaultSteps) {
  Overrides o = minimal("supervised");
  o.push_back({"warmup_ratio", "0.1"});
  o.push_back({"max_steps", "50"});
  EXPECT_EQ(load(o).warmup_steps, 5);  // ceil(0.1 * 50), TrainingArguments.get_warmup_steps
  EXPECT_EQ(load(minimal("supervised")).warmup_steps, 300);
}

TEST(TrainDefaults, EveryPublishedLlm2vecConfigLoadsWithItsValues) {
  test::TempDir dir("defaults");
  int loaded = 0;
  for (const auto& [stage, s] : reference().at("stages").items()) {
    for (const auto& [name, values] : s.at("train_configs").items()) {
      SCOPED_TRACE(stage + "/" + name);
      json file = values;
      file["stage"] = stage;
      if (!file.contains("dataset_file_path")) file["dataset_file_path"] = "wiki.bin";  // MNTP names a HF dataset
      const std::string path = dir / (stage + "_" + name + ".json");
      std::ofstream(path) << file.dump(1);
      std::vector<std::string> notes;
      const TrainConfig c = load_train_config(path, {}, &notes);
      ++loaded;
      const auto& ignored = ignored_llm2vec_keys();
      for (const auto& [key, value] : values.items()) {
        const bool is_ignored = std::find(ignored.begin(), ignored.end(), key) != ignored.end();
        bool noted = false;
        for (const std::string& n : notes) noted |= n.find("'" + key + "'") != std::string::npos;
        EXPECT_EQ(noted, is_ignored) << key;
        if (is_ignored) continue;
        const std::string ours = key == "stop_after_n_steps" ? "max_steps" : key;
        EXPECT_TRUE(same_value(c.resolved.at(ours), value)) << key << ": ours " << c.resolved.at(ours) << ", file " << value;
      }
    }
  }
  EXPECT_EQ(loaded, 14);
}

TEST(TrainDefaults, LearningRateIsHuggingFacesScheduleBitForBit) {
  int checked = 0;
  for (const json& s : reference().at("schedules")) {
    Overrides o = minimal("mntp");
    for (const char* key : {"lr_scheduler_type", "max_steps", "learning_rate", "warmup_steps", "warmup_ratio"})
      o.push_back({key, s.at(key).is_string() ? s.at(key).get<std::string>() : s.at(key).dump()});
    const TrainConfig c = load(o);
    const std::vector<double> expected = s.at("lr_per_step").get<std::vector<double>>();
    ASSERT_EQ((int)expected.size(), c.max_steps);
    for (int step = 0; step < c.max_steps; ++step) {
      EXPECT_EQ(learning_rate_at(c, step), expected[step]) << s.dump() << " step " << step;
      ++checked;
    }
  }
  EXPECT_EQ(checked, 48);
}

}  // namespace
}  // namespace l2v
