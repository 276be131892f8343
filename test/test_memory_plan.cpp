// The memory planner (model/memory_plan.h, train/plan.h, `llm2vec plan`):
//   - on the CPU backend, real training runs (MNTP with all, some and no layers recomputed; SimCSE;
//     supervised with the latent-attention head in chunks) allocate at their peak exactly the bytes the
//     plan of their configuration lists (the CUDA backend's twin: test_cuda_memory_plan);
//   - every shipped config (assets/configs) plans; Mistral-7B's MNTP step at 32 x 512 fits an 80 GB GPU,
//     with the least recomputation: one layer fewer does not fit, and memory falls as layers are
//     recomputed;
//   - the trainer refuses, before writing anything, a step that cannot fit gpu_memory_gb.
#include <gtest/gtest.h>

#include <filesystem>

#include "host/cpu_backend.h"
#include "model/config.h"
#include "test/memory_plan_test_util.h"

namespace l2v {
namespace {

TEST(MemoryPlan, CpuBackendAllocatesWhatThePlanSays) {
  test::expect_plans_match_allocations([] { return make_cpu_backend(); }, /*cuda=*/false,
                                       [](const Backend& b) { return cpu_backend_memory(b).peak; });
}

// In bf16 the CPU backend also keeps the weights' bf16 tiles (forward and backward, the LM head's for
// MNTP): the plan counts them to the byte (a tile count off by one padding block, or the LM head's tiles
// counted for a contrastive stage, would show).
TEST(MemoryPlan, CpuBf16BackendAllocatesWhatThePlanSays) {
  test::expect_plans_match_allocations([] { return make_cpu_backend(CpuPrecision::kBf16); }, /*cuda=*/false,
                                       [](const Backend& b) { return cpu_backend_memory(b).peak; });
}

TrainConfig mntp_config(const std::string& model, int batch, int T) {
  return load_train_config("",
                           {{"stage", "mntp"}, {"model_name_or_path", model}, {"dataset_file_path", "-"},
                            {"output_dir", "-"}, {"per_device_train_batch_size", std::to_string(batch)},
                            {"max_seq_length", std::to_string(T)}},
                           nullptr);
}

TEST(MemoryPlan, Mistral7bMntpAt32x512FitsAnH100WithTheLeastRecomputation) {
  const ModelConfig mc = load_hf_config("assets/configs/Mistral-7B-v0.1/config.json");
  const TrainConfig cfg = mntp_config("assets/configs/Mistral-7B-v0.1", 32, 512);
  PlanInputs in = plan_inputs(cfg, mc, /*cuda=*/true, 2, /*cpu_bf16_tiles=*/false);
  bool fits = false;
  const MemoryPlan plan = plan_least_recomputation(mc, in, 80'000'000'000ull, &fits);
  ASSERT_TRUE(fits);
  EXPECT_LE(plan.total(), 80'000'000'000ull);
  EXPECT_LT(plan.recompute_layers, mc.num_hidden_layers);
  ASSERT_GT(plan.recompute_layers, 0);
  in.recompute_layers = plan.recompute_layers - 1;
  EXPECT_GT(plan_memory(mc, in).total(), 80'000'000'000ull) << "one layer less recomputed would have fit";
  // bf16 weights of 7.24 B parameters.
  EXPECT_NEAR(plan.group_bytes("weights") / 1e9, 14.48, 0.01);
  // Memory falls with every recomputed layer after the first (which adds the shared slot).
  for (int k = 2; k <= mc.num_hidden_layers; ++k) {
    in.recompute_layers = k;
    const size_t with_k = plan_memory(mc, in).total();
    in.recompute_layers = k - 1;
    EXPECT_LT(with_k, plan_memory(mc, in).total()) << k;
  }
  // FLOPs: 2 x 2 x 6.98 G linear parameters per token (forward, input-gradient backward) over 16 k tokens,
  // plus attention and the head: within 5% of 4.7e14.
  EXPECT_NEAR(plan.model_flops / 4.7e14, 1.0, 0.05);
}

TEST(MemoryPlan, EveryShippedConfigPlans) {
  size_t n = 0;
  for (const auto& e : std::filesystem::directory_iterator("assets/configs")) {
    if (!e.is_directory()) continue;
    const ModelConfig mc = load_hf_config((e.path() / "config.json").string());
    const TrainConfig cfg = mntp_config(e.path().string(), 8, 512);
    MemoryPlan plan;
    choose_recompute_layers(cfg, mc, true, 2, false, &plan);
    EXPECT_GT(plan.total(), plan.group_bytes("weights")) << e.path();
    EXPECT_GT(plan.model_flops, 0) << e.path();
    ++n;
  }
  EXPECT_EQ(n, 5u);
}

TEST(MemoryPlan, TrainingThatCannotFitIsRefusedBeforeAnythingIsWritten) {
  test::TempDir dir("plan_refusal");
  const TrainConfig cfg = load_train_config(
      "",
      {{"stage", "mntp"}, {"model_name_or_path", "assets/stories260K/stories260K.bin"},
       {"tokenizer", "assets/stories260K/tok512.bin"}, {"dataset_file_path", dir / "none-*.bin"},
       {"output_dir", dir / "out"}, {"gpu_memory_gb", "0.0001"}, {"max_seq_length", "64"}},
      nullptr);
  std::unique_ptr<Backend> backend = make_cpu_backend();
  TrainHooks quiet;
  quiet.progress = false;
  try {
    run_training(cfg, *backend, quiet);
    FAIL() << "a step of more than 0.0001 GB was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("with every layer recomputed, more than gpu_memory_gb 0.00"),
              std::string::npos)
        << e.what();
  }
  // Only the run's lock (taken first, as every run does) is there.
  for (const auto& e : std::filesystem::directory_iterator(dir / "out"))
    EXPECT_EQ(".lock", e.path().filename().string()) << "the refusal came after output_dir was written";
}

}  // namespace
}  // namespace l2v
