// `llm2vec train` on the CUDA backend (kernels + cuBLAS executed by the CPU emulator) against the same
// run on the fp32 CPU backend: whole SimCSE and supervised steps — pooling and the contrastive loss on
// the device (the latent-attention head too), the backward into LoRA (and the latent-attention
// head), the supervised stage's per-group forward recomputation, AdamW — on the real stories260K model
// (head dim 8); MNTP and SimCSE steps in bf16 with the tensor-core attention (--attention_impl mma) on a
// random model of head dim 16, the smallest the tensor-core kernels take; and the host's waits per step.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>

#include "cuda/cuda_backend.h"
#include "data/prepare.h"
#include "data/tokenizer.h"
#include "host/cpu_backend.h"
#include "model/checkpoint.h"
#include "model/safetensors.h"
#include "test/temp_dir.h"
#include "test/tiny_model.h"
#include "train/trainer.h"
#if defined(L2V_EMULATE)
#include "host/emu/cuda_emu.h"
#endif

namespace l2v {
namespace {

const char* kModel = "assets/stories260K/stories260K.bin";
const char* kTokenizer = "assets/stories260K/tok512.bin";

// Short sentences in the stories260K domain, so the pooled vectors are far from degenerate.
const char* kSentences[] = {
    "The cat sat on the mat.",        "Lily went to the park with her mom.", "The dog ran after the ball.",
    "Tom had a red toy car.",         "The sun was hot and bright.",         "A little bird sang a song.",
    "She liked to play in the rain.", "The boy ate a big apple.",
};

std::string prepare(const test::TempDir& dir, PrepareFormat format, const std::string& name,
                    const std::string& text) {
  const std::string input = dir / (name + ".txt");
  std::ofstream(input) << text;
  PrepareOptions opt;
  opt.inputs = {input};
  opt.format = format;
  opt.output_prefix = dir / name;
  opt.progress = false;
  run_prepare(opt, *load_tokenizer(kTokenizer));
  return dir / (name + "-*.bin");
}

struct TrainRun {
  std::vector<double> losses;
  // every tensor (trainable values, AdamW moments) of the checkpoints after steps 1 and 2
  std::vector<std::vector<float>> state[2];
  std::vector<std::string> names;
};

TrainRun train(Backend& backend, const std::string& stage, const std::string& data, const std::string& out,
          const std::vector<std::pair<std::string, std::string>>& extra, const std::string& model = kModel) {
  std::vector<std::pair<std::string, std::string>> o = {
      {"stage", stage},          {"model_name_or_path", model}, {"tokenizer", kTokenizer},
      {"dataset_file_path", data}, {"output_dir", out},          {"max_steps", "2"},
      {"learning_rate", "1e-3"}, {"lora_r", "4"},                {"save_merged_model", "false"},
      {"max_seq_length", "16"}, {"save_steps", "1"}};
  o.insert(o.end(), extra.begin(), extra.end());
  TrainConfig cfg = load_train_config("", o, nullptr);
  TrainHooks hooks;
  hooks.progress = false;
  run_training(cfg, backend, hooks);
  TrainRun r;
  std::ifstream log(out + "/train_log.jsonl");
  for (std::string line; std::getline(log, line);) r.losses.push_back(nlohmann::json::parse(line).at("loss").get<double>());
  for (int step = 1; step <= 2; ++step) {
    SafetensorsCheckpoint st(out + "/checkpoint-" + std::to_string(step) + "/state.safetensors");
    r.names = st.names();
    for (const std::string& name : r.names) {
      size_t n = 1;
      for (int64_t d : st.shape(name)) n *= (size_t)d;
      r.state[step - 1].emplace_back(n);
      st.read_f32(name, r.state[step - 1].back().data(), n);
    }
  }
  return r;
}

// The runs must agree to fp32 summation-order differences. Losses: relative. AdamW moments (first:
// the gradient's running mean; second: of its square), relative to the tensor's largest value — the
// gradient check (fp32 summation order: the CPU backend cuts GEMMs into row blocks, cuBLAS here runs
// them whole, and the loss's cosine normalisation and scale 20 amplify the differences): tight after
// step 1; looser after step 2, whose gradients are taken at parameters that
// already differ (below). Parameter values: the same, except that Adam normalises every element's step
// to about lr, so an element whose gradient is close to zero can move by up to lr per step in a
// direction that rounding decides; such elements are counted, bounded by 2 * lr * steps, and must stay rare.
void expect_same(const TrainRun& gpu, const TrainRun& cpu, double lr) {
  ASSERT_EQ(gpu.losses.size(), 2u);
  ASSERT_EQ(cpu.losses.size(), 2u);
  ASSERT_EQ(gpu.names, cpu.names);
  for (size_t s = 0; s < 2; ++s) EXPECT_NEAR(gpu.losses[s], cpu.losses[s], 1e-5 * std::fabs(cpu.losses[s]));
  for (int step = 0; step < 2; ++step) {
    const auto& c = cpu.state[step];
    const auto& g = gpu.state[step];
    ASSERT_EQ(g.size(), c.size());
    double worst_moment = 0.0, worst_value = 0.0;
    size_t flipped = 0, values = 0;
    for (size_t t = 0; t < c.size(); ++t) {
      const bool moment = cpu.names[t].find(".exp_avg") != std::string::npos;
      double scale = 0.0;
      for (float x : c[t]) scale = std::max(scale, (double)std::fabs(x));
      if (scale == 0.0) continue;
      for (size_t i = 0; i < c[t].size(); ++i) {
        const double err = std::fabs(g[t][i] - c[t][i]) / scale;
        if (moment) {
          worst_moment = std::max(worst_moment, err);
          continue;
        }
        ++values;
        if (err > 1e-4) {
          ++flipped;
          EXPECT_LE(std::fabs(g[t][i] - c[t][i]), 2 * lr * (step + 1)) << cpu.names[t] << "[" << i << "]";
        } else {
          worst_value = std::max(worst_value, err);
        }
      }
    }
    std::printf("after step %d: losses cpu %.7f, cuda %.7f; worst moment error %.2e, worst value error %.2e, "
                "%zu of %zu values moved differently\n",
                step + 1, cpu.losses[step], gpu.losses[step], worst_moment, worst_value, flipped, values);
    EXPECT_LT(worst_moment, step == 0 ? 1e-4 : 1e-3);
    EXPECT_LT(flipped, values / 1000 + 1);
  }
}

TEST(CudaTrainer, SimcseStepsMatchTheCpuBackend) {
  test::TempDir dir("cuda_trainer");
  std::string text;
  for (const char* s : kSentences) text += std::string(s) + "\n";
  const std::string data = prepare(dir, PrepareFormat::kSentences, "sentences", text);
  const std::vector<std::pair<std::string, std::string>> extra = {
      {"per_device_train_batch_size", "4"}, {"pooling_mode", "weighted_mean"}, {"simcse_dropout", "0.3"}};
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::unique_ptr<Backend> gpu = make_cuda_backend(CudaPrecision::kFp32);
  const TrainRun c = train(*cpu, "simcse", data, dir / "cpu", extra);
  const TrainRun g = train(*gpu, "simcse", data, dir / "gpu", extra);
  expect_same(g, c, 1e-3);
}

// A bf16 run against the fp32 CPU run: the losses of two steps, and the first step's gradient (AdamW's
// first moment after one step is (1 - beta1) * g) pointing the same way as the fp32 CPU gradient.
// Step 1 sees the same parameters: bf16 rounding only. Step 2 follows an Adam step, which moves every
// element by about lr whatever its gradient's size, so rounding-sized gradient differences become
// lr-sized parameter differences: a looser bound.
void expect_bf16_follows(const TrainRun& g, const TrainRun& c, const char* what) {
  ASSERT_EQ(g.losses.size(), 2u);
  ASSERT_EQ(c.losses.size(), 2u);
  EXPECT_NEAR(g.losses[0], c.losses[0], 2e-2 * std::fabs(c.losses[0]));
  EXPECT_NEAR(g.losses[1], c.losses[1], 1e-1 * std::fabs(c.losses[1]));
  double dot = 0.0, nc = 0.0, ng = 0.0;
  for (size_t t = 0; t < c.names.size(); ++t) {
    const std::string& name = c.names[t];
    if (name.size() < 8 || name.compare(name.size() - 8, 8, ".exp_avg") != 0) continue;
    for (size_t i = 0; i < c.state[0][t].size(); ++i) {
      dot += (double)c.state[0][t][i] * g.state[0][t][i];
      nc += (double)c.state[0][t][i] * c.state[0][t][i];
      ng += (double)g.state[0][t][i] * g.state[0][t][i];
    }
  }
  const double cosine = dot / std::sqrt(nc * ng);
  std::printf("%s: losses cpu %.5f %.5f, cuda %.5f %.5f; step-1 gradient cosine %.5f\n", what, c.losses[0],
              c.losses[1], g.losses[0], g.losses[1], cosine);
  EXPECT_GT(cosine, 0.99);
}

// Production precision: activations and base weights in bf16 (fp32 accumulation, fp32 LoRA and
// optimizer).
TEST(CudaTrainer, SimcseStepsInBf16FollowTheCpuBackend) {
  test::TempDir dir("cuda_trainer");
  std::string text;
  for (const char* s : kSentences) text += std::string(s) + "\n";
  const std::string data = prepare(dir, PrepareFormat::kSentences, "sentences", text);
  const std::vector<std::pair<std::string, std::string>> extra = {{"per_device_train_batch_size", "4"}};
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::unique_ptr<Backend> gpu = make_cuda_backend(CudaPrecision::kBf16);
  const TrainRun c = train(*cpu, "simcse", data, dir / "cpu", extra);
  const TrainRun g = train(*gpu, "simcse", data, dir / "gpu", extra);
  expect_bf16_follows(g, c, "bf16");
}

// A llama model with tok512's vocabulary and head dim 16 (hidden 64, 4 heads, 2 kv heads), random
// weights, as a Hugging Face directory. The (tied) embeddings are scaled to std 0.05, so that the MNTP
// logits (normalised hidden states times the embeddings) are O(1), as in a trained model, not O(8).
std::string write_head_dim_16_model(const test::TempDir& dir) {
  const nlohmann::json j = {{"model_type", "llama"},       {"vocab_size", 512},         {"hidden_size", 64},
                            {"intermediate_size", 128},    {"num_hidden_layers", 2},    {"num_attention_heads", 4},
                            {"num_key_value_heads", 2},    {"rms_norm_eps", 1e-5},      {"rope_theta", 10000.0},
                            {"tie_word_embeddings", true}, {"max_position_embeddings", 512}};
  const ModelConfig c = parse_hf_config(j, "head_dim_16");
  const std::string path = dir / "head_dim_16";
  test::MemoryTensors w = test::random_weights(c, 7);
  const char* embed = "model.embed_tokens.weight";
  std::vector<float> e((size_t)c.vocab_size * c.hidden_size);
  w.read_f32(embed, e.data(), e.size());
  for (float& x : e) x *= 0.05f;
  w.add(embed, w.shape(embed), std::move(e));
  save_hf_checkpoint(c, w, path);
  return path;
}

// MNTP (with attention dropout) and SimCSE steps whose attention runs on the tensor-core kernels
// (--attention_impl mma refuses a case they do not take), in bf16, against the fp32 CPU backend.
TEST(CudaTrainer, MntpAndSimcseStepsWithTensorCoreAttentionFollowTheCpuBackend) {
  test::TempDir dir("cuda_trainer");
  const std::string model = write_head_dim_16_model(dir);
  std::string text;
  for (int rep = 0; rep < 3; ++rep)
    for (const char* s : kSentences) text += std::string(s) + "\n";
  const std::string docs = prepare(dir, PrepareFormat::kLines, "docs", text);
  const std::string sentences = prepare(dir, PrepareFormat::kSentences, "sentences", text);
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::unique_ptr<Backend> gpu = make_cuda_backend(CudaPrecision::kBf16, AttentionImpl::kMma);
  // tok512 has no "_" piece: its byte token stands in for llm2vec's blank mask token.
  const std::vector<std::pair<std::string, std::string>> mntp = {
      {"per_device_train_batch_size", "4"}, {"attention_dropout", "0.1"}, {"mask_token_type", "<0x5F>"}};
  expect_bf16_follows(train(*gpu, "mntp", docs, dir / "gpu_mntp", mntp, model),
                      train(*cpu, "mntp", docs, dir / "cpu_mntp", mntp, model), "mntp, mma attention");
  const std::vector<std::pair<std::string, std::string>> simcse = {{"per_device_train_batch_size", "4"}};
  expect_bf16_follows(train(*gpu, "simcse", sentences, dir / "gpu_simcse", simcse, model),
                      train(*cpu, "simcse", sentences, dir / "cpu_simcse", simcse, model), "simcse, mma attention");
}

TEST(CudaTrainer, SupervisedLatentAttentionStepsMatchTheCpuBackend) {
  test::TempDir dir("cuda_trainer");
  std::string jsonl;
  for (int i = 0; i < 8; ++i)
    jsonl += nlohmann::json({{"query", kSentences[i]},
                             {"positive", kSentences[(i + 1) % 8]},
                             {"negative", kSentences[(i + 3) % 8]},
                             {"instruction", "Find a similar sentence"}})
                 .dump() +
             "\n";
  const std::string data = prepare(dir, PrepareFormat::kSupervised, "triples", jsonl);
  const std::vector<std::pair<std::string, std::string>> extra = {
      {"per_device_train_batch_size", "4"}, {"pooling_mode", "latent_attention"}, {"latent_num_latents", "8"},
      {"latent_heads", "2"}, {"latent_dim_head", "16"}, {"attention_dropout", "0.1"},
      {"gradient_accumulation_steps", "2"}};
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  std::unique_ptr<Backend> gpu = make_cuda_backend(CudaPrecision::kFp32);
  const TrainRun c = train(*cpu, "supervised", data, dir / "cpu", extra);
  const TrainRun g = train(*gpu, "supervised", data, dir / "gpu", extra);
  expect_same(g, c, 1e-3);
}

#if defined(L2V_EMULATE)  // the emulator counts the host's waits for the device
// "No host synchronisation inside a step except reading the loss": after the first steps (which size the
// activations and scratch buffers), each optimizer step of 3 micro-batches waits for the device exactly
// once — for the micro-batches' losses and the gradient norm, read together after the optimizer step is
// queued — for MNTP and for SimCSE (pooling and loss on the device), with mean pooling and with the
// latent-attention head. A per-micro-batch loss read, a pooled-row or hidden-state download, a buffer
// allocated and freed per step or a norm read of its own would each add waits. The SimCSE batches pad to their
// longest text: the step lengths are fixed here (max_seq_length 8, shorter than every text).
TEST(CudaTrainer, AStepWaitsOnceWhateverItsMicroBatches) {
  test::TempDir dir("cuda_trainer_waits");
  std::string text;
  for (int rep = 0; rep < 3; ++rep)
    for (const char* s : kSentences) text += std::string(s) + "\n";
  const std::string docs = prepare(dir, PrepareFormat::kLines, "docs", text);
  const std::string sentences = prepare(dir, PrepareFormat::kSentences, "sentences", text);
  std::unique_ptr<Backend> gpu = make_cuda_backend(CudaPrecision::kBf16);
  for (const std::string run : {"mntp", "simcse", "simcse_latent"}) {
    const std::string stage = run == "mntp" ? "mntp" : "simcse";
    std::vector<std::pair<std::string, std::string>> o = {
        {"stage", stage}, {"model_name_or_path", kModel}, {"tokenizer", kTokenizer},
        {"dataset_file_path", stage == "mntp" ? docs : sentences}, {"output_dir", dir / run},
        {"max_steps", "6"}, {"gradient_accumulation_steps", "3"}, {"lora_r", "4"},
        {"per_device_train_batch_size", "2"}, {"max_seq_length", "8"}, {"save_merged_model", "false"},
        {"save_steps", "1000"}, {"lora_dropout", "0.1"}};
    if (stage == "mntp") o.push_back({"mask_token_type", "<0x5F>"});
    if (run == "simcse_latent")
      o.insert(o.end(), {{"pooling_mode", "latent_attention"}, {"latent_num_latents", "8"}, {"latent_heads", "2"}});
    std::vector<uint64_t> at_step_end;
    TrainHooks hooks;
    hooks.progress = false;
    hooks.stop_after = [&](int) {
      at_step_end.push_back(emu::host_waits());
      return false;
    };
    run_training(load_train_config("", o, nullptr), *gpu, hooks);
    ASSERT_EQ(at_step_end.size(), 6u) << run;
    for (size_t s = 3; s < 6; ++s)
      EXPECT_EQ(at_step_end[s] - at_step_end[s - 1], 1u) << run << ": waits in step " << s + 1;
  }
}

// CUDA graphs (cuda_graphs, Backend::run_as_graph): every stage trains to the same bits with its
// micro-batches and optimizer steps captured and launched as graphs as with every kernel launched
// directly — losses, learning rates and gradient norms of each step, and every tensor of the final
// checkpoint — with dropout in attention and LoRA, accumulation, the latent-attention head and the
// supervised stage's chunked recomputation. From the third step on, each micro-batch and each optimizer
// step is one graph launch (the first steps grow buffers, which abandons their captures: they run
// directly); with cuda_graphs false nothing is launched as a graph. A graph launched with the
// parameters of an earlier capture (a stale update: checked by keeping the emulator's update from
// copying them), work that ran outside its graph, or captures that never succeed would each fail this.
TEST(CudaTrainer, StepsAsCudaGraphsEqualDirectLaunches) {
  test::TempDir dir("cuda_trainer_graphs");
  std::string text, jsonl;
  for (int rep = 0; rep < 3; ++rep)
    for (const char* s : kSentences) text += std::string(s) + "\n";
  for (int i = 0; i < 8; ++i)
    jsonl += nlohmann::json({{"query", kSentences[i]}, {"positive", kSentences[(i + 1) % 8]},
                             {"negative", kSentences[(i + 3) % 8]}, {"instruction", "Find a similar sentence"}})
                 .dump() +
             "\n";
  const std::string docs = prepare(dir, PrepareFormat::kLines, "docs", text);
  const std::string sentences = prepare(dir, PrepareFormat::kSentences, "sentences", text);
  const std::string triples = prepare(dir, PrepareFormat::kSupervised, "triples", jsonl);
  const int kSteps = 4, kMicro = 2;
  struct Case {
    const char* stage;
    std::string data;
    std::vector<std::pair<std::string, std::string>> extra;
  };
  const Case cases[] = {
      {"mntp", docs, {{"mask_token_type", "<0x5F>"}, {"attention_dropout", "0.1"}}},
      {"simcse", sentences, {{"pooling_mode", "latent_attention"}, {"latent_num_latents", "8"}, {"latent_heads", "2"}}},
      {"supervised", triples, {{"embedding_chunk_size", "1"}, {"attention_dropout", "0.1"}}},
  };
  for (const Case& c : cases) {
    std::string logs[2];
    std::vector<std::vector<float>> states[2];
    for (int graphs = 0; graphs < 2; ++graphs) {
      SCOPED_TRACE(std::string(c.stage) + (graphs ? ", graphs" : ", direct launches"));
      const std::string out = dir / (std::string(c.stage) + (graphs ? "_graphs" : "_direct"));
      std::vector<std::pair<std::string, std::string>> o = {
          {"stage", c.stage}, {"model_name_or_path", kModel}, {"tokenizer", kTokenizer},
          {"dataset_file_path", c.data}, {"output_dir", out}, {"max_steps", std::to_string(kSteps)},
          {"gradient_accumulation_steps", std::to_string(kMicro)}, {"lora_r", "4"}, {"lora_dropout", "0.1"},
          {"learning_rate", "1e-3"}, {"per_device_train_batch_size", "2"}, {"max_seq_length", "24"},
          {"save_merged_model", "false"}, {"save_steps", "1000"}, {"cuda_graphs", graphs ? "true" : "false"}};
      o.insert(o.end(), c.extra.begin(), c.extra.end());
      std::unique_ptr<Backend> gpu = make_cuda_backend(CudaPrecision::kBf16);
      std::vector<uint64_t> launches{emu::graph_launches()};
      TrainHooks hooks;
      hooks.progress = false;
      hooks.stop_after = [&](int) {
        launches.push_back(emu::graph_launches());
        return false;
      };
      run_training(load_train_config("", o, nullptr), *gpu, hooks);
      ASSERT_EQ(launches.size(), (size_t)kSteps + 1);
      for (int s = 3; s <= kSteps; ++s)
        EXPECT_EQ(launches[s] - launches[s - 1], graphs ? (uint64_t)kMicro + 1 : 0u) << "graph launches in step " << s;
      const GraphStats st = gpu->graph_stats();
      EXPECT_EQ(st.launches, (long)(launches.back() - launches.front()));
      EXPECT_EQ(st.launches, st.instantiations + st.updates);
      if (graphs) {
        // The first step's captures meet buffers still to be allocated: abandoned, then run directly.
        EXPECT_GE(st.broken, 1);
        EXPECT_NE(st.last_break.find("captur"), std::string::npos) << st.last_break;
      } else {
        EXPECT_EQ(st.broken, 0);
      }
      std::ifstream log(out + "/train_log.jsonl");
      for (std::string line; std::getline(log, line);) {
        nlohmann::json j = nlohmann::json::parse(line);
        j.erase("seconds");
        logs[graphs] += j.dump() + "\n";
      }
      SafetensorsCheckpoint ck(out + "/checkpoint-" + std::to_string(kSteps) + "/state.safetensors");
      for (const std::string& name : ck.names()) {
        size_t n = 1;
        for (int64_t d : ck.shape(name)) n *= (size_t)d;
        states[graphs].emplace_back(n);
        ck.read_f32(name, states[graphs].back().data(), n);
      }
    }
    EXPECT_EQ(logs[1], logs[0]) << c.stage;
    ASSERT_EQ(states[1].size(), states[0].size()) << c.stage;
    for (size_t t = 0; t < states[0].size(); ++t)
      EXPECT_EQ(std::memcmp(states[1][t].data(), states[0][t].data(), states[0][t].size() * sizeof(float)), 0)
          << c.stage << ": tensor " << t << " of the final checkpoint";
  }
}
#endif

}  // namespace
}  // namespace l2v
