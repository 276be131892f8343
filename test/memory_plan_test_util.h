// Shared by test_memory_plan (the CPU backend) and test_cuda_memory_plan (the CUDA backend on the
// emulator): real `llm2vec train` runs on the bundled stories260K model whose backend memory at its
// peak must equal model/memory_plan.h's plan of the same configuration, byte for byte. The shapes are
// fixed so that the plan is exact: MNTP blocks have max_seq_length tokens, and the contrastive data is
// truncated to a max_seq_length every text reaches.
#pragma once
#include <gtest/gtest.h>

#include <fstream>
#include <functional>
#include <string>
#include <utility>
#include <vector>

#include "data/prepare.h"
#include "data/sts.h"
#include "data/tokenizer.h"
#include "model/checkpoint.h"
#include "train/plan.h"
#include "train/trainer.h"
#include "test/temp_dir.h"

namespace l2v::test {

struct PlanCase {
  std::string stage;
  std::vector<std::pair<std::string, std::string>> options;  // besides the common ones
};

// The cases: MNTP with every layer, some and no layer recomputed; SimCSE; supervised with hard
// negatives and the latent-attention head, in chunks.
inline std::vector<PlanCase> plan_cases() {
  return {
      {"mntp", {{"per_device_train_batch_size", "4"}, {"max_seq_length", "32"}}},
      {"mntp", {{"per_device_train_batch_size", "3"}, {"max_seq_length", "16"}, {"recompute_layers", "2"}}},
      {"mntp", {{"per_device_train_batch_size", "2"}, {"max_seq_length", "16"}, {"gradient_checkpointing", "false"}}},
      {"simcse", {{"per_device_train_batch_size", "4"}, {"max_seq_length", "6"}}},
      {"supervised",
       {{"per_device_train_batch_size", "4"}, {"max_seq_length", "6"}, {"pooling_mode", "latent_attention"},
        {"latent_num_latents", "8"}, {"latent_heads", "2"}, {"embedding_chunk_size", "3"}}},
  };
}

// Runs each case for two steps on the backend `make` returns and compares `peak(backend)` with the plan.
inline void expect_plans_match_allocations(const std::function<std::unique_ptr<Backend>()>& make, bool cuda,
                                           const std::function<size_t(const Backend&)>& peak) {
  TempDir dir("memory_plan");
  const std::string tok = "assets/stories260K/tok512.bin", model = "assets/stories260K/stories260K.bin";
  const std::unique_ptr<Tokenizer> tokenizer = load_tokenizer(tok);
  auto prepare = [&](PrepareFormat format, const std::string& input, const std::string& name) {
    PrepareOptions o;
    o.inputs = {input};
    o.format = format;
    o.output_prefix = dir / name;
    o.progress = false;
    run_prepare(o, *tokenizer);
    return dir / (name + "-*.bin");
  };
  const std::string wiki = prepare(PrepareFormat::kWikiText, "assets/wikitext-2/wiki.valid.raw", "wiki");
  std::ofstream(dir / "sentences.txt") << "the little cat sat on the warm mat in the sun\n"
                                          "a big dog ran after the red ball in the park\n"
                                          "lily and tom went to the sea with their mom\n"
                                          "the bird sang a happy song in the tall tree\n"
                                          "she gave her friend a pretty flower and smiled\n";
  const std::string sentences = prepare(PrepareFormat::kSentences, dir / "sentences.txt", "sentences");
  write_supervised_jsonl(sick_triples(read_sick("assets/sick/SICK.txt", "TRAIN")), dir / "sick.jsonl", "", "sick");
  const std::string sick = prepare(PrepareFormat::kSupervised, dir / "sick.jsonl", "sick");
  const ModelConfig mc = open_checkpoint(model).config;
  for (const PlanCase& c : plan_cases()) {
    std::vector<std::pair<std::string, std::string>> o = {
        {"stage", c.stage}, {"model_name_or_path", model}, {"tokenizer", tok},
        {"dataset_file_path", c.stage == "mntp" ? wiki : c.stage == "simcse" ? sentences : sick},
        {"output_dir", dir / ("out_" + c.stage)}, {"overwrite_output_dir", "true"}, {"max_steps", "2"},
        {"lora_r", "4"}, {"save_merged_model", "false"}, {"warmup_steps", "0"}};
    if (c.stage == "mntp") o.push_back({"mask_token_type", "<0x5F>"});
    std::string what = c.stage;
    for (const auto& kv : c.options) {
      o.push_back(kv);
      what += " " + kv.first + "=" + kv.second;
    }
    const TrainConfig cfg = load_train_config("", o, nullptr);
    std::unique_ptr<Backend> backend = make();
    TrainHooks quiet;
    quiet.progress = false;
    run_training(cfg, *backend, quiet);
    MemoryPlan plan;
    choose_recompute_layers(cfg, mc, cuda, backend->tensor_element_bytes(), backend->packs_bf16_weights(), &plan);
    const size_t planned = plan.total() - plan.group_bytes("runtime");
    EXPECT_EQ(planned, peak(*backend)) << what << " on " << backend->name() << "\n"
                                       << format_plan(plan, mc, 0);
  }
}

}  // namespace l2v::test
