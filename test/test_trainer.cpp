// `llm2vec train` (train/trainer.h) end to end on the CPU backend with the bundled stories260K model:
//   - resuming an interrupted run continues it bit for bit (MNTP, SimCSE, supervised with a latent-
//     attention head and gradient accumulation): trainable values, AdamW moments, exported adapter and
//     head, merged model and every logged step;
//   - the output-directory policy: refusing to clobber checkpoints, refusing to resume with another
//     config, save_total_limit and `latest`, resuming from an explicit checkpoint, overwrite_output_dir;
//   - training works: MNTP on WikiText and SimCSE on a repeated batch lower their losses;
//   - stage chaining: merged vs unmerged adapters, merged/ = base + scale*B*A computed here from the
//     exported adapters, a chained stage starts from the merged weights;
//   - the gradient through pooling + contrastive loss (mean, weighted_mean, last_token, latent_attention
//     with its head's parameters) against central differences on a tiny random model;
//   - errors: config files (unknown key, wrong type, missing key), missing or wrong-kind data, a
//     non-finite loss that leaves the last checkpoint intact;
//   - the Encoder built from an output directory embeds exactly as the trained model pooled in-process,
//     and pools only the text's tokens when an instruction is given.
// Expected values are computed here from first principles (double-precision merges, hand-written
// pooling sums, finite differences) or are bit-for-bit comparisons between two runs.
#include <gtest/gtest.h>
#include <omp.h>
#include <unistd.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/batches.h"
#include "data/file_io.h"
#include "data/prepare.h"
#include "data/sts.h"
#include "data/tokenizer.h"
#include "host/cpu_backend.h"
#include "model/checkpoint.h"
#include "model/encoder.h"
#include "model/model.h"
#include "model/peft.h"
#include "model/pooler.h"
#include "model/safetensors.h"
#include "test/temp_dir.h"
#include "test/test_util.h"
#include "test/tiny_model.h"
#include "train/train_config.h"
#include "train/trainer.h"

namespace l2v {

// Readable names for the parameterised pooling tests (found by argument-dependent lookup).
static void PrintTo(PoolingMode mode, std::ostream* os) { *os << pooling_mode_name(mode); }

namespace {

namespace fs = std::filesystem;
using test::TempDir;
using test::error_of;
using test::Mentions;
using Overrides = std::vector<std::pair<std::string, std::string>>;
using TensorMap = std::map<std::string, std::vector<float>>;

const std::string kModel = "assets/stories260K/stories260K.bin";
const std::string kTok = "assets/stories260K/tok512.bin";
// tok512 has no "_" piece: the byte token for '_' stands in for llm2vec's blank mask token.
const std::string kMaskToken = "<0x5F>";

// Threads: the model is so small that OpenMP's fork/join costs more than it saves, and on a loaded
// machine spinning threads made this binary ten times slower. Every test runs on one thread except the
// resume tests, which use two (the CI machine's cores) so bit-exactness is checked on threaded code.
const bool kOneThread = (omp_set_num_threads(1), true);

struct ScopedThreads {
  int saved = omp_get_max_threads();
  explicit ScopedThreads(int n) { omp_set_num_threads(n); }
  ~ScopedThreads() { omp_set_num_threads(saved); }
};

// ---- shared data: shards prepared once per process ------------------------------------------------

struct Data {
  fs::path dir;
  std::string wiki;         // documents: the first 200 lines of WikiText-2 validation (MNTP)
  std::string sentences8;   // 8 SICK sentences (SimCSE on one repeated batch)
  std::string sentences;    // 40 SICK sentences (SimCSE)
  std::string triples;      // 24 SICK (query, entailed, contradicted) triples with an instruction

  Data() {
    dir = fs::temp_directory_path() / ("l2v_trainer_data_" + std::to_string(::getpid()));
    fs::remove_all(dir);
    fs::create_directories(dir);
    std::unique_ptr<Tokenizer> tok = load_tokenizer(kTok);
    auto prepare = [&](const std::string& input, PrepareFormat format, const std::string& prefix) {
      PrepareOptions o;
      o.inputs = {input};
      o.format = format;
      o.output_prefix = (dir / prefix).string();
      o.progress = false;
      PrepareReport r = run_prepare(o, *tok);
      if (r.shards.size() != 1) throw std::runtime_error("expected one shard for " + prefix);
      return r.shards[0];
    };
    {
      std::ifstream in("assets/wikitext-2/wiki.valid.raw");
      std::ofstream out(dir / "wiki.txt");
      std::string line;
      for (int i = 0; i < 200 && std::getline(in, line); ++i) out << line << "\n";
    }
    wiki = prepare((dir / "wiki.txt").string(), PrepareFormat::kWikiText, "wiki");
    const std::vector<StsPair> pairs = read_sick("assets/sick/SICK.txt", "TRAIN");
    std::vector<std::string> distinct;
    std::set<std::string> seen;
    for (const StsPair& p : pairs)
      if (distinct.size() < 40 && seen.insert(p.a).second) distinct.push_back(p.a);
    auto write_lines = [&](const std::string& name, size_t n) {
      std::ofstream out(dir / name);
      for (size_t i = 0; i < n; ++i) out << distinct[i] << "\n";
      return (dir / name).string();
    };
    sentences8 = prepare(write_lines("s8.txt", 8), PrepareFormat::kSentences, "s8");
    sentences = prepare(write_lines("s40.txt", 40), PrepareFormat::kSentences, "s40");
    std::vector<SickTriple> t = sick_triples(pairs);
    t.resize(24);
    write_supervised_jsonl(t, (dir / "triples.jsonl").string(), "Retrieve a semantically similar sentence", "sick");
    triples = prepare((dir / "triples.jsonl").string(), PrepareFormat::kSupervised, "triples");
  }
  ~Data() { fs::remove_all(dir); }
};

const Data& data() {
  static Data d;
  return d;
}

// ---- helpers ---------------------------------------------------------------------------------------

// A small latent-attention head (NV-Embed's 512 latents and 8 heads would dominate the run time).
const Overrides kLatent = {{"pooling_mode", "latent_attention"},
                           {"latent_num_latents", "8"},
                           {"latent_heads", "2"},
                           {"latent_dim_head", "8"}};

Overrides operator+(Overrides a, const Overrides& b) {
  a.insert(a.end(), b.begin(), b.end());
  return a;
}

// A small, fast configuration through the real config path (load_train_config with overrides); `extra`
// is applied last, so it overrides these defaults.
TrainConfig make_config(const std::string& stage, const std::string& dataset, const std::string& out,
                        const Overrides& extra = {}) {
  const Overrides base = {{"stage", stage},
                          {"model_name_or_path", kModel},
                          {"tokenizer", kTok},
                          {"dataset_file_path", dataset},
                          {"output_dir", out},
                          {"per_device_train_batch_size", "2"},
                          {"max_seq_length", "32"},
                          {"learning_rate", "1e-3"},
                          {"warmup_steps", "0"},  // the supervised default, 300, would train nothing here
                          {"lora_r", "4"},
                          {"save_steps", "0"},
                          {"logging_steps", "1000"},
                          {"mask_token_type", kMaskToken}};
  return load_train_config("", base + extra, nullptr);
}

TrainResult train(const TrainConfig& cfg, std::function<bool(int)> stop_after = {}) {
  std::unique_ptr<Backend> backend = make_cpu_backend();
  TrainHooks hooks;
  hooks.progress = false;
  hooks.stop_after = std::move(stop_after);
  return run_training(cfg, *backend, hooks);
}

std::string read_text(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

std::string latest(const std::string& dir) {
  std::string s = read_text(dir + "/latest");
  while (!s.empty() && std::isspace((unsigned char)s.back())) s.pop_back();
  return s;
}

std::vector<std::string> checkpoint_dirs(const std::string& dir) {
  std::vector<std::string> out;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string f = e.path().filename().string();
    if (f.rfind("checkpoint-", 0) == 0 || f.rfind(".tmp", 0) == 0) out.push_back(f);
  }
  std::sort(out.begin(), out.end());
  return out;
}

std::vector<nlohmann::json> read_log(const std::string& dir) {
  std::vector<nlohmann::json> out;
  std::ifstream in(dir + "/train_log.jsonl");
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) out.push_back(nlohmann::json::parse(line));
  return out;
}

std::vector<double> losses(const std::string& dir) {
  std::vector<double> out;
  for (const nlohmann::json& j : read_log(dir)) out.push_back(j.at("loss").get<double>());
  return out;
}

double mean(const double* x, size_t n) {
  double s = 0;
  for (size_t i = 0; i < n; ++i) s += x[i];
  return s / n;
}

TensorMap read_tensors(const TensorSource& src) {
  TensorMap out;
  for (const std::string& name : src.names()) {
    size_t n = 1;
    for (int64_t d : src.shape(name)) n *= (size_t)d;
    std::vector<float> v(n);
    src.read_f32(name, v.data(), n);
    out[name] = std::move(v);
  }
  return out;
}
TensorMap read_safetensors(const std::string& path) { return read_tensors(SafetensorsCheckpoint(path)); }
TensorMap read_model_dir(const std::string& path) { return read_tensors(*open_checkpoint(path).tensors); }

// Same names, and every tensor equal bit for bit.
::testing::AssertionResult SameBits(const TensorMap& a, const TensorMap& b) {
  std::vector<std::string> na, nb;
  for (const auto& kv : a) na.push_back(kv.first);
  for (const auto& kv : b) nb.push_back(kv.first);
  if (na != nb) return ::testing::AssertionFailure() << "the tensor names differ (" << na.size() << " vs " << nb.size() << ")";
  if (a.empty()) return ::testing::AssertionFailure() << "no tensors";
  for (const auto& [name, x] : a) {
    const std::vector<float>& y = b.at(name);
    if (x.size() != y.size()) return ::testing::AssertionFailure() << name << ": sizes differ";
    for (size_t i = 0; i < x.size(); ++i)
      if (std::memcmp(&x[i], &y[i], sizeof(float)) != 0)
        return ::testing::AssertionFailure() << name << "[" << i << "]: " << x[i] << " vs " << y[i];
  }
  return ::testing::AssertionSuccess();
}

bool all_zero(const std::vector<float>& v) {
  for (float x : v)
    if (x != 0.0f) return false;
  return true;
}

// A model loaded from a checkpoint on its own CPU backend, with adapters applied in order: each one
// merged and unloaded (as llm2vec chains stages), except the last when merge_last is false (it then
// stays an active, unmerged LoRA branch).
struct Loaded {
  std::unique_ptr<Backend> backend = make_cpu_backend();
  Model m;
  explicit Loaded(const std::string& path, const std::vector<std::string>& adapters = {}, bool merge_last = true) {
    Checkpoint ck = open_checkpoint(path);
    load_model(m, ck.config, *ck.tensors, *backend);
    for (size_t i = 0; i < adapters.size(); ++i) {
      load_peft_adapter(m, adapters[i]);
      if (i + 1 < adapters.size() || merge_last) merge_and_unload_lora(m);
    }
  }
  std::vector<float> hidden(const EmbedBatch& b) {
    model_forward(m, b.ids.data(), b.key_mask.data(), b.B, b.T, ForwardOptions{});
    return test::hidden(m);
  }
};

const std::vector<std::string> kTexts = {"A man is playing a guitar on the stage",
                                         "The little dog ran to the park", "Lily found a red ball"};

EmbedBatch text_batch(const Tokenizer& tok, const std::vector<std::string>& texts, int max_length) {
  std::vector<std::vector<int>> ids;
  for (const std::string& t : texts) ids.push_back(tok.encode(t, true));
  PadOptions pad;
  pad.max_length = max_length;
  return build_embed_batch(ids, {}, tok, pad);
}

// max |a - b| / max |b|.
double rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d = std::max(d, std::fabs((double)a[i] - b[i]));
    m = std::max(m, std::fabs((double)b[i]));
  }
  return d / m;
}

// ============================================================================================
// 1. Resume = uninterrupted training, bit for bit.

void expect_resume_is_exact(const std::string& stage, const std::string& dataset, Overrides o, int N, int k) {
  ScopedThreads threads(2);
  TempDir tmp("trainer_resume");
  const std::string a = tmp / "a", b = tmp / "b";
  o.push_back({"max_steps", std::to_string(N)});
  o.push_back({"warmup_steps", "1"});  // the schedule's warmup and decay must continue too

  const TrainResult ra = train(make_config(stage, dataset, a, o));
  ASSERT_EQ(N, ra.steps_done);
  ASSERT_FALSE(ra.interrupted);

  const TrainResult rb1 = train(make_config(stage, dataset, b, o), [&](int done) { return done == k; });
  EXPECT_TRUE(rb1.interrupted);
  EXPECT_EQ(k, rb1.steps_done);
  EXPECT_EQ("checkpoint-" + std::to_string(k), latest(b));
  EXPECT_FALSE(fs::exists(b + "/adapter_model.safetensors")) << "an interrupted run must not write the outputs";
  EXPECT_FALSE(fs::exists(b + "/merged"));
  const TensorMap at_k = read_safetensors(b + "/checkpoint-" + std::to_string(k) + "/state.safetensors");

  Overrides resume = o;
  resume.push_back({"resume_from_checkpoint", "latest"});
  const TrainResult rb2 = train(make_config(stage, dataset, b, resume));
  EXPECT_FALSE(rb2.interrupted);
  EXPECT_EQ(N, rb2.steps_done);

  // The final state: every trainable tensor with its two AdamW moments.
  const std::string final_ckpt = "/checkpoint-" + std::to_string(N) + "/state.safetensors";
  const TensorMap sa = read_safetensors(a + final_ckpt), sb = read_safetensors(b + final_ckpt);
  EXPECT_TRUE(SameBits(sa, sb)) << stage << ": state.safetensors";
  size_t values = 0, moments = 0;
  bool trained = false;
  for (const auto& [name, v] : sa) {
    const bool moment = name.find(".exp_avg") != std::string::npos;
    (moment ? moments : values)++;
    if (name.find("lora_B") != std::string::npos && !moment) trained |= !all_zero(v);
  }
  EXPECT_GT(values, 0u);
  EXPECT_EQ(2 * values, moments) << "state.safetensors must hold exp_avg and exp_avg_sq of every tensor";
  EXPECT_TRUE(trained) << "vacuous: lora_B still zero after training";
  EXPECT_FALSE(SameBits(at_k, sb)) << "vacuous: the resumed steps changed nothing";

  // The exported outputs.
  const TensorMap adapter_a = read_safetensors(a + "/adapter_model.safetensors");
  EXPECT_TRUE(SameBits(adapter_a, read_safetensors(b + "/adapter_model.safetensors"))) << stage << ": adapter";
  EXPECT_EQ(read_text(a + "/adapter_config.json"), read_text(b + "/adapter_config.json"));
  EXPECT_TRUE(SameBits(read_model_dir(a + "/merged"), read_model_dir(b + "/merged"))) << stage << ": merged/";
  // The exported adapter holds the final trained values (llm2vec layout: one "model." less).
  size_t lora_tensors = 0;
  for (const auto& [name, v] : sa) {
    if (name.rfind("base_model.model.model.", 0) != 0 || name.find(".exp_avg") != std::string::npos) continue;
    const std::string exported = "base_model.model." + name.substr(std::string("base_model.model.model.").size());
    ASSERT_TRUE(adapter_a.count(exported)) << exported;
    EXPECT_TRUE(SameBits({{name, v}}, {{name, adapter_a.at(exported)}})) << exported;
    ++lora_tensors;
  }
  EXPECT_EQ(adapter_a.size(), lora_tensors);
  if (fs::exists(a + "/pooling_head.safetensors")) {
    const TensorMap head = read_safetensors(a + "/pooling_head.safetensors");
    EXPECT_TRUE(SameBits(head, read_safetensors(b + "/pooling_head.safetensors"))) << stage << ": pooling head";
    for (const auto& [name, v] : head) {
      ASSERT_TRUE(sa.count(name)) << name << " is not in the trainer state";
      EXPECT_TRUE(SameBits({{name, v}}, {{name, sa.at(name)}})) << name;
    }
  }

  // Every step's log entry.
  const std::vector<nlohmann::json> la = read_log(a), lb = read_log(b);
  ASSERT_EQ((size_t)N, la.size());
  ASSERT_EQ((size_t)N, lb.size()) << "the resumed log must hold each step once";
  for (int s = 0; s < N; ++s) {
    EXPECT_EQ(s + 1, la[s].at("step").get<int>());
    EXPECT_EQ(s + 1, lb[s].at("step").get<int>());
    for (const char* key : {"loss", "lr", "grad_norm"})
      EXPECT_EQ(la[s].at(key).get<double>(), lb[s].at(key).get<double>()) << stage << " step " << s + 1 << " " << key;
    EXPECT_EQ(la[s].at("tokens").get<long>(), lb[s].at("tokens").get<long>()) << stage << " step " << s + 1;
    EXPECT_TRUE(std::isfinite(la[s].at("loss").get<double>()));
  }
}

TEST(TrainerResume, MntpResumeIsBitExact) {
  expect_resume_is_exact("mntp", data().wiki, {{"attention_dropout", "0.1"}}, 4, 2);
}

TEST(TrainerResume, SimcseResumeIsBitExact) {
  expect_resume_is_exact("simcse", data().sentences, {{"per_device_train_batch_size", "4"}}, 4, 1);
}

TEST(TrainerResume, SupervisedLatentAttentionWithAccumulationResumeIsBitExact) {
  expect_resume_is_exact("supervised", data().triples,
                         kLatent + Overrides{{"gradient_accumulation_steps", "2"}, {"attention_dropout", "0.1"}}, 4, 2);
}

// The CPU backend's results do not depend on the number of OpenMP threads (GEMMs are cut into row
// blocks of a fixed size, every other loop writes each output once): a run on one thread and a run on
// two leave bit-identical checkpoints. Batch 8 x 128 makes the GEMMs large enough to be cut.
TEST(TrainerResume, ThreadCountDoesNotChangeAnyBit) {
  std::vector<std::string> states;
  for (int threads : {1, 2}) {
    ScopedThreads scoped(threads);
    const std::string out = (fs::path(data().dir) / ("threads" + std::to_string(threads))).string();
    train(make_config("mntp", data().wiki, out,
                      {{"per_device_train_batch_size", "8"}, {"max_seq_length", "128"}, {"max_steps", "2"},
                       {"attention_dropout", "0.1"}, {"overwrite_output_dir", "true"}}));
    states.push_back(read_text(out + "/checkpoint-2/state.safetensors"));
  }
  ASSERT_FALSE(states[0].empty());
  EXPECT_TRUE(states[0] == states[1]);
}

// ============================================================================================
// 2. The output directory: no silent clobbering, no resuming under another config, checkpoint rotation.

TEST(TrainerOutputDir, RefusesClobberAndChangedConfigAndRotatesCheckpoints) {
  TempDir tmp("trainer_outdir");
  const std::string out = tmp / "run";
  const Overrides o = {{"max_steps", "3"}, {"save_steps", "1"}, {"save_total_limit", "2"}};
  ASSERT_EQ(3, train(make_config("mntp", data().wiki, out, o)).steps_done);
  EXPECT_EQ((std::vector<std::string>{"checkpoint-2", "checkpoint-3"}), checkpoint_dirs(out));
  EXPECT_EQ("checkpoint-3", latest(out));
  const TensorMap state3 = read_safetensors(out + "/checkpoint-3/state.safetensors");

  // Same config again, without resume or overwrite: refused, saying what to do, nothing touched.
  EXPECT_TRUE(Mentions(error_of([&] { train(make_config("mntp", data().wiki, out, o)); }),
                       {out, "resume_from_checkpoint", "overwrite_output_dir"}));
  // Resuming with another learning rate: refused, naming the key.
  Overrides changed = o;
  changed.push_back({"max_steps", "4"});
  changed.push_back({"resume_from_checkpoint", "latest"});
  changed.push_back({"learning_rate", "2e-3"});
  EXPECT_TRUE(Mentions(error_of([&] { train(make_config("mntp", data().wiki, out, changed)); }), {"learning_rate"}));
  EXPECT_EQ((std::vector<std::string>{"checkpoint-2", "checkpoint-3"}), checkpoint_dirs(out));
  EXPECT_EQ("checkpoint-3", latest(out));
  EXPECT_TRUE(SameBits(state3, read_safetensors(out + "/checkpoint-3/state.safetensors")));

  // Resuming to a later max_steps (a key a resume may change) continues and rotates.
  Overrides more = o;
  more.push_back({"max_steps", "4"});
  more.push_back({"resume_from_checkpoint", "latest"});
  EXPECT_EQ(4, train(make_config("mntp", data().wiki, out, more)).steps_done);
  EXPECT_EQ((std::vector<std::string>{"checkpoint-3", "checkpoint-4"}), checkpoint_dirs(out));
  EXPECT_EQ("checkpoint-4", latest(out));
  EXPECT_EQ(4u, read_log(out).size());

  // Resuming from an explicit (older) checkpoint directory redoes step 4 identically, and the log keeps
  // only the steps up to that checkpoint before appending.
  const TensorMap state4 = read_safetensors(out + "/checkpoint-4/state.safetensors");
  const std::vector<double> log4 = losses(out);
  Overrides again = o;
  again.push_back({"max_steps", "4"});
  again.push_back({"resume_from_checkpoint", out + "/checkpoint-3"});
  EXPECT_EQ(4, train(make_config("mntp", data().wiki, out, again)).steps_done);
  EXPECT_TRUE(SameBits(state4, read_safetensors(out + "/checkpoint-4/state.safetensors")));
  EXPECT_EQ(log4, losses(out));

  // overwrite_output_dir starts over: old checkpoints and log entries are gone.
  Overrides over = {{"max_steps", "1"}, {"overwrite_output_dir", "true"}};
  EXPECT_EQ(1, train(make_config("mntp", data().wiki, out, over)).steps_done);
  EXPECT_EQ((std::vector<std::string>{"checkpoint-1"}), checkpoint_dirs(out));
  EXPECT_EQ("checkpoint-1", latest(out));
  EXPECT_EQ(1u, read_log(out).size());
}

// A key whose default is derived (lora_alpha = 2 * lora_r) must be compared on resume too. Disabled:
// it fails today — train/trainer.cpp's restore() only compares the keys present in the NEW resolved
// config, and load_train_config leaves lora_alpha out of `resolved` when it is not given, so a run
// trained with lora_alpha 32 silently resumes with 2 * lora_r = 8. Enable once that is fixed.
// The outputs in output_dir always describe a finished run: extending a finished run and stopping it
// midway leaves checkpoints but no (stale) adapter; and a stage may not write into the adapter it merges.
TEST(TrainerOutputDir, OutputsOnlyForFinishedRunsAndNeverOverAnInputAdapter) {
  TempDir dir("trainer_outputs");
  const std::string out = dir / "out";
  train(make_config("mntp", data().wiki, out, {{"max_steps", "2"}}));
  ASSERT_TRUE(fs::exists(out + "/adapter_model.safetensors"));
  const TrainResult r = train(make_config("mntp", data().wiki, out, {{"max_steps", "4"}, {"resume_from_checkpoint", "latest"}}),
                              [](int done) { return done == 3; });
  EXPECT_TRUE(r.interrupted);
  EXPECT_EQ(latest(out), "checkpoint-3");
  for (const char* f : {"adapter_model.safetensors", "adapter_config.json", "llm2vec_run.json", "llm2vec_config.json"})
    EXPECT_FALSE(fs::exists(out + "/" + f)) << f;
  const std::string err = error_of([&] {
    train(make_config("simcse", data().sentences, out,
                      {{"peft_model_name_or_path", out}, {"overwrite_output_dir", "true"}}));
  });
  EXPECT_NE(err.find("give the simcse stage its own output_dir"), std::string::npos) << err;
}

// The checkpoint remembers the weights it was trained on: after the base checkpoint file changes under
// the same path (here one float of the token embedding), resuming is refused, naming the cause.
TEST(TrainerOutputDir, RefusesResumeOnOtherBaseWeights) {
  TempDir dir("trainer_base");
  const std::string model = dir / "model.bin";
  fs::copy_file(kModel, model);
  const std::string out = dir / "out";
  Overrides o = {{"model_name_or_path", model}, {"max_steps", "3"}};
  EXPECT_TRUE(train(make_config("mntp", data().wiki, out, o), [](int done) { return done == 1; }).interrupted);
  {
    std::fstream f(model, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(28);  // llama2.c v0 header: 7 int32; then the token embedding's first value
    const float changed = 0.125f;
    f.write(reinterpret_cast<const char*>(&changed), sizeof changed);
  }
  const std::string err = error_of([&] {
    train(make_config("mntp", data().wiki, out, o + Overrides{{"resume_from_checkpoint", "latest"}}));
  });
  EXPECT_NE(err.find("other base weights"), std::string::npos) << err;
}

TEST(TrainerOutputDir, RefusesResumeThatDropsAnExplicitLoraAlpha) {
  TempDir tmp("trainer_alpha");
  const std::string out = tmp / "run";
  train(make_config("mntp", data().wiki, out, {{"max_steps", "1"}, {"lora_alpha", "32"}}));
  EXPECT_TRUE(Mentions(error_of([&] {
                         train(make_config("mntp", data().wiki, out,
                                           {{"max_steps", "2"}, {"resume_from_checkpoint", "latest"}}));
                       }),
                       {"lora_alpha"}));
}

// ---- Nothing a user has is destroyed (issue: reliability).

// Every file under `dir` (relative path -> bytes), the lock file aside.
std::map<std::string, std::string> tree(const std::string& dir) {
  std::map<std::string, std::string> out;
  for (const auto& e : fs::recursive_directory_iterator(dir))
    if (e.is_regular_file() && e.path().filename() != ".lock")
      out[fs::relative(e.path(), dir).string()] = read_text(e.path().string());
  return out;
}

TrainResult train_with(const TrainConfig& cfg, const TrainHooks& extra) {
  std::unique_ptr<Backend> backend = make_cpu_backend();
  TrainHooks hooks = extra;
  hooks.progress = false;
  return run_training(cfg, *backend, hooks);
}

// A finished run survives every refused follow-up: a typo in the data path with overwrite_output_dir,
// a resume under a changed config, a resume from a checkpoint that is not there. Before the fix the
// first two deleted the adapter, merged/ and llm2vec_run.json (and, with overwrite, the checkpoints)
// before the inputs were checked.
TEST(TrainerOutputDir, RefusedRunsLeaveAFinishedRunByteIdentical) {
  TempDir tmp("trainer_keep");
  const std::string out = tmp / "fin";
  train(make_config("mntp", data().wiki, out, {{"max_steps", "3"}}));
  const auto before = tree(out);
  ASSERT_TRUE(before.count("merged/model.safetensors") && before.count("llm2vec_run.json")) << before.size();
  const std::string typo = tmp / "typo-000000.bin";
  EXPECT_TRUE(Mentions(error_of([&] {
                         train(make_config("mntp", typo, out, {{"max_steps", "3"}, {"overwrite_output_dir", "true"}}));
                       }),
                       {typo}));
  EXPECT_TRUE(tree(out) == before);
  EXPECT_TRUE(Mentions(error_of([&] {
                         train(make_config("mntp", data().wiki, out,
                                           {{"max_steps", "3"}, {"resume_from_checkpoint", "latest"}, {"learning_rate", "2e-3"}}));
                       }),
                       {"learning_rate"}));
  EXPECT_TRUE(tree(out) == before);
  EXPECT_TRUE(Mentions(error_of([&] {
                         train(make_config("mntp", data().wiki, out,
                                           {{"max_steps", "3"}, {"resume_from_checkpoint", out + "/checkpoint-9"}}));
                       }),
                       {"checkpoint-9"}));
  EXPECT_TRUE(tree(out) == before);
}

// A second run on a directory that a run holds is refused, naming the holder; nothing is touched.
TEST(TrainerOutputDir, ARunningRunLocksItsOutputDir) {
  TempDir tmp("trainer_lock");
  const std::string out = tmp / "run";
  train(make_config("mntp", data().wiki, out, {{"max_steps", "1"}}));
  const auto before = tree(out);
  {
    FileLock other(out + "/.lock", "a test");  // as another process's run would hold it
    EXPECT_TRUE(Mentions(error_of([&] {
                           train(make_config("mntp", data().wiki, out, {{"max_steps", "2"}, {"resume_from_checkpoint", "latest"}}));
                         }),
                         {"in use by another process", std::to_string(::getpid()), out}));
    EXPECT_TRUE(tree(out) == before);
  }
  EXPECT_EQ(2, train(make_config("mntp", data().wiki, out, {{"max_steps", "2"}, {"resume_from_checkpoint", "latest"}})).steps_done);
}

// An export stopped midway (here by a fault injected before an output is moved into place, as a kill or
// a full disk would) leaves no set that the loaders accept; resuming writes outputs byte-identical to
// an uninterrupted run's.
TEST(TrainerOutputDir, AnInterruptedExportIsRefusedAndAResumeCompletesIt) {
  TempDir tmp("trainer_export");
  const Overrides o = {{"max_steps", "2"}};
  train(make_config("simcse", data().sentences, tmp / "ref", o + kLatent));
  for (const char* stop_at : {"adapter_config.json", "merged", "llm2vec_run.json"}) {
    const std::string out = tmp / (std::string("cut-") + stop_at);
    TrainHooks hooks;
    hooks.before_output_moved = [&](const std::string& f) {
      if (f == stop_at) throw std::runtime_error("injected: disk full");
    };
    EXPECT_TRUE(Mentions(error_of([&] { train_with(make_config("simcse", data().sentences, out, o + kLatent), hooks); }),
                         {"injected"}));
    ASSERT_TRUE(fs::exists(out + "/" + kExportIncomplete)) << stop_at;
    EXPECT_TRUE(Mentions(error_of([&] { read_encoder_spec(out); }), {out, kExportIncomplete, "resume_from_checkpoint"}));
    EXPECT_TRUE(Mentions(error_of([&] {
                           Model m;
                           load_peft_adapter(m, out);
                         }),
                         {out, kExportIncomplete}));
    // A plain re-run is refused as usual; the resume goes straight to the export.
    EXPECT_TRUE(Mentions(error_of([&] { train(make_config("simcse", data().sentences, out, o + kLatent)); }),
                         {"resume_from_checkpoint latest"}));
    EXPECT_EQ(2, train(make_config("simcse", data().sentences, out, o + kLatent + Overrides{{"resume_from_checkpoint", "latest"}}))
                     .steps_done);
    EXPECT_FALSE(fs::exists(out + "/" + kExportIncomplete));
    EXPECT_FALSE(fs::exists(out + "/.export"));
    for (const char* f : {"adapter_model.safetensors", "adapter_config.json", "pooling_head.safetensors",
                          "merged/model.safetensors", "llm2vec_config.json"})
      EXPECT_EQ(read_text(tmp / "ref" + "/" + f), read_text(out + "/" + f)) << stop_at << ": " << f;
    EXPECT_NO_THROW(read_encoder_spec(out));
  }
}

// A kill between the rename of a checkpoint and the write of `latest` leaves the file naming the one
// before (or no file, at the first checkpoint): the resume starts from the newest checkpoint directory
// and writes `latest` naming it, even when no step is left to run. (The fault-injection test met this
// by chance: its kills land in that window once in a few dozen runs.)
TEST(TrainerOutputDir, AResumeRepairsALatestFileLeftBehindByAKill) {
  TempDir tmp("trainer_latest");
  const std::string out = tmp / "run";
  train(make_config("mntp", data().wiki, out, {{"max_steps", "2"}, {"save_steps", "1"}}));
  ASSERT_TRUE(fs::exists(out + "/checkpoint-1") && fs::exists(out + "/checkpoint-2"));
  EXPECT_EQ("checkpoint-2\n", read_text(out + "/latest"));
  for (const std::string stale : {"checkpoint-1\n", ""}) {
    if (stale.empty()) fs::remove(out + "/latest");
    else std::ofstream(out + "/latest") << stale;
    EXPECT_EQ(2, train(make_config("mntp", data().wiki, out,
                                   {{"max_steps", "2"}, {"save_steps", "1"}, {"resume_from_checkpoint", "latest"}}))
                     .steps_done);
    EXPECT_EQ("checkpoint-2\n", read_text(out + "/latest")) << "stale: '" << stale << "'";
  }
}

// Inputs are compared by content on resume: the same data and model spelled `dir/`, absolute or moved
// resume; other data under the same path is refused. A damaged checkpoint is refused by its checksum.
TEST(TrainerOutputDir, ResumeComparesInputsByContentAndChecksTheCheckpoint) {
  TempDir tmp("trainer_paths");
  const std::string out = tmp / "run";
  for (const std::string f : {"wiki-000000.bin", "wiki.manifest.json"})
    fs::copy_file(fs::path(data().wiki).parent_path() / f, tmp.path / f);
  const std::string shard = tmp / "wiki-000000.bin";
  auto stop_at = [](int n) { return [n](int done) { return done == n; }; };
  EXPECT_TRUE(train(make_config("mntp", shard, out, {{"max_steps", "5"}}), stop_at(1)).interrupted);
  // The same inputs, other spellings: output_dir with a slash, the data by an absolute path and a glob,
  // the model through a relative path with a detour.
  const Overrides same = {{"max_steps", "5"}, {"resume_from_checkpoint", "latest"}};
  EXPECT_TRUE(train(make_config("mntp", fs::absolute(tmp / "wiki-*.bin").string(), out + "/", same), stop_at(2)).interrupted);
  EXPECT_TRUE(train(make_config("mntp", shard, out, same + Overrides{{"model_name_or_path", "assets/../" + kModel}}), stop_at(3))
                  .interrupted);
  // The data moved elsewhere (with its manifest) is the same data.
  fs::create_directories(tmp.path / "moved");
  for (const std::string f : {"wiki-000000.bin", "wiki.manifest.json"}) fs::rename(tmp.path / f, tmp.path / "moved" / f);
  EXPECT_TRUE(train(make_config("mntp", tmp / "moved/wiki-000000.bin", out, same), stop_at(4)).interrupted);
  // Other data under the old name: refused, naming the cause.
  {
    std::unique_ptr<Tokenizer> tok = load_tokenizer(kTok);
    std::ofstream other(tmp / "other.txt");
    for (int i = 0; i < 100; ++i) other << "Line " << i << " of a different corpus, with other words in it.\n";
    other.close();
    PrepareOptions po;
    po.inputs = {tmp / "other.txt"};
    po.format = PrepareFormat::kLines;
    po.output_prefix = tmp / "wiki";
    po.progress = false;
    run_prepare(po, *tok);
  }
  EXPECT_TRUE(Mentions(error_of([&] { train(make_config("mntp", shard, out, same)); }), {"other data", "dataset_file_path"}));
  // One flipped byte in the newest checkpoint's tensors.
  const std::string state = out + "/" + latest(out) + "/state.safetensors";
  std::string bytes = read_text(state);
  bytes[bytes.size() - 3] ^= 0x10;
  std::ofstream(state, std::ios::binary) << bytes;
  EXPECT_TRUE(Mentions(error_of([&] { train(make_config("mntp", tmp / "moved/wiki-000000.bin", out, same)); }),
                       {state, "checksum", "damaged"}));
}

// ============================================================================================
// 3. Training lowers the losses.

TEST(TrainerLearns, MntpLossDecreasesOnWikiText) {
  TempDir tmp("trainer_mntp_learns");
  const std::string out = tmp / "run";
  train(make_config("mntp", data().wiki, out,
                    {{"max_steps", "30"}, {"per_device_train_batch_size", "4"}, {"max_seq_length", "64"},
                     {"save_merged_model", "false"}}));
  const std::vector<double> l = losses(out);
  ASSERT_EQ(30u, l.size());
  const double first = mean(l.data(), 3), last = mean(l.data() + 27, 3);
  std::printf("MNTP loss: first 3 steps %.4f, last 3 steps %.4f\n", first, last);
  EXPECT_LT(last, first - 0.5) << "30 steps at lr 1e-3 should lower the MNTP loss clearly";
}

TEST(TrainerLearns, SimcseLossDecreasesOnARepeatedBatch) {
  TempDir tmp("trainer_simcse_learns");
  const std::string out = tmp / "run";
  // 8 sentences, batch 8: every step sees the same sentences (with fresh dropout).
  train(make_config("simcse", data().sentences8, out,
                    {{"max_steps", "20"}, {"per_device_train_batch_size", "8"}, {"save_merged_model", "false"}}));
  const std::vector<double> l = losses(out);
  ASSERT_EQ(20u, l.size());
  const double first = mean(l.data(), 3), last = mean(l.data() + 17, 3);
  std::printf("SimCSE loss: first 3 steps %.4f, last 3 steps %.4f (ln 8 = %.4f)\n", first, last, std::log(8.0));
  EXPECT_LT(last, 0.5 * first) << "20 steps on one repeated batch should at least halve the contrastive loss";
}

// The rate each step ran at (train_log.jsonl) is learning_rate_at for that step, which
// test_train_defaults checks against Hugging Face's schedule: a step counted from 1 or a schedule
// evaluated after the step would shift it by one.
TEST(TrainerLearns, EachStepRunsAtTheScheduledLearningRate) {
  TempDir tmp("trainer_lr");
  const std::string out = tmp / "run";
  const TrainConfig cfg = make_config("supervised", data().triples, out,
                                      {{"max_steps", "5"}, {"warmup_steps", "2"}, {"save_merged_model", "false"}});
  train(cfg);
  const std::vector<nlohmann::json> log = read_log(out);
  ASSERT_EQ(5u, log.size());
  const double expected[] = {0.0, 5e-4, 1e-3, 1e-3 * (2.0 / 3.0), 1e-3 * (1.0 / 3.0)};
  for (int k = 0; k < 5; ++k) {
    EXPECT_EQ(log[k].at("lr").get<double>(), learning_rate_at(cfg, k)) << "step " << k;
    EXPECT_EQ(log[k].at("lr").get<double>(), expected[k]) << "step " << k;
  }
}

// ============================================================================================
// 4. Stage chaining and merging.

// One stage's exported adapter as dense weight deltas, computed here in double from
// adapter_model.safetensors and adapter_config.json: per base weight name, delta = scale * B * A and
// bound = scale * |B| * |A| (what fp32 rounding of the delta scales with).
struct Delta {
  std::vector<double> delta, bound;
};
std::map<std::string, Delta> adapter_deltas(const std::string& dir, const TensorMap& base) {
  const nlohmann::json cfg = nlohmann::json::parse(read_text(dir + "/adapter_config.json"));
  const int r = cfg.at("r").get<int>();
  const double scale = cfg.at("lora_alpha").get<double>() / r;
  EXPECT_FALSE(cfg.value("use_rslora", false));
  const TensorMap ad = read_safetensors(dir + "/adapter_model.safetensors");
  std::map<std::string, Delta> out;
  for (const auto& [name, A] : ad) {
    const std::string suffix = ".lora_A.weight";
    if (name.size() < suffix.size() || name.compare(name.size() - suffix.size(), suffix.size(), suffix) != 0) continue;
    const std::string stem = name.substr(0, name.size() - suffix.size());
    const std::vector<float>& B = ad.at(stem + ".lora_B.weight");
    // llm2vec layout: base_model.model.layers.… names the inner model's model.layers.…
    const std::string weight = "model." + stem.substr(std::string("base_model.model.").size()) + ".weight";
    const std::vector<float>& W = base.at(weight);
    const size_t in = A.size() / r, outdim = B.size() / r;
    EXPECT_EQ(W.size(), in * outdim) << weight;
    Delta d{std::vector<double>(W.size(), 0.0), std::vector<double>(W.size(), 0.0)};
    for (size_t o = 0; o < outdim; ++o)
      for (size_t i = 0; i < in; ++i) {
        double s = 0, b = 0;
        for (int k = 0; k < r; ++k) {
          const double x = (double)B[o * r + k] * A[(size_t)k * in + i];
          s += x;
          b += std::fabs(x);
        }
        d.delta[o * in + i] = scale * s;
        d.bound[o * in + i] = scale * b;
      }
    out[weight] = std::move(d);
  }
  return out;
}

// merged == base + the sum of the deltas, unadapted tensors bit-identical. Tolerance per element
// 8 u (|W| + sum of the deltas' bounds): each merge rounds a rank-r fp32 GEMM (error <= r u bound,
// r = 4 here) and one add (0.5 u |result|). Returns the largest |delta| seen.
double expect_merged(const TensorMap& merged, const TensorMap& base, const std::vector<std::map<std::string, Delta>>& deltas) {
  EXPECT_EQ(base.size(), merged.size());
  double largest = 0, worst_rel = 0;
  size_t adapted = 0;
  for (const auto& [name, W] : base) {
    if (!merged.count(name) || merged.at(name).size() != W.size()) {
      ADD_FAILURE() << name << " is missing from the merged model or has another size";
      continue;
    }
    const std::vector<float>& M = merged.at(name);
    bool touched = false;
    for (const auto& d : deltas) touched |= d.count(name) > 0;
    if (!touched) {
      EXPECT_TRUE(SameBits({{name, W}}, {{name, M}})) << "unadapted tensor changed by the merge";
      continue;
    }
    ++adapted;
    std::vector<double> want(W.begin(), W.end()), mag(W.size());
    for (size_t i = 0; i < W.size(); ++i) mag[i] = std::fabs(W[i]);
    for (const auto& d : deltas)
      if (d.count(name))
        for (size_t i = 0; i < W.size(); ++i) {
          want[i] += d.at(name).delta[i];
          mag[i] += d.at(name).bound[i];
          largest = std::max(largest, std::fabs(d.at(name).delta[i]));
        }
    std::vector<double> tol(W.size());
    for (size_t i = 0; i < W.size(); ++i) {
      tol[i] = 8 * test::kU32 * mag[i] + 1e-30;
      worst_rel = std::max(worst_rel, std::fabs(M[i] - want[i]) / (test::kU32 * mag[i] + 1e-30));
    }
    EXPECT_TRUE(test::AllWithin(M.data(), want.data(), tol.data(), W.size())) << name;
  }
  EXPECT_GT(adapted, 0u);
  std::printf("merged/ vs base + %zu delta(s) computed here: %zu adapted tensors, worst |err| = %.2f u (|W| + bounds), "
              "largest |delta| %.3g\n", deltas.size(), adapted, worst_rel, largest);
  return largest;
}

TEST(TrainerChaining, MergesMatchUnmergedAdaptersAndIndependentMath) {
  TempDir tmp("trainer_chain");
  const std::string mntp = tmp / "mntp", simcse = tmp / "simcse", direct = tmp / "direct";
  // The MNTP adapter on three module kinds only, so some linears stay unadapted.
  train(make_config("mntp", data().wiki, mntp,
                    {{"max_steps", "4"}, {"lora_target_modules", "q_proj,v_proj,up_proj"}}));
  std::unique_ptr<Tokenizer> tok = load_tokenizer(kTok);
  const EmbedBatch batch = text_batch(*tok, kTexts, 64);

  // (a) A merged adapter computes what the unmerged one does.
  std::vector<float> h_base, h_unmerged, h_merged;
  {
    Loaded base(kModel);
    h_base = base.hidden(batch);
    Loaded unmerged(kModel, {mntp}, /*merge_last=*/false);
    ASSERT_FALSE(unmerged.m.trainable.empty());
    h_unmerged = unmerged.hidden(batch);
    Loaded merged(kModel, {mntp});
    ASSERT_TRUE(merged.m.trainable.empty());
    h_merged = merged.hidden(batch);
  }
  const double merge_err = rel_diff(h_merged, h_unmerged), adapter_effect = rel_diff(h_unmerged, h_base);
  std::printf("merged vs unmerged final hidden: rel err %.3g (the adapter itself changes them by %.3g)\n", merge_err,
              adapter_effect);
  EXPECT_LE(merge_err, 1e-5);
  EXPECT_GT(adapter_effect, 1e-3) << "vacuous: the trained adapter barely changes the model";

  // (b) merged/ = base + scale*B*A, from the exported adapter.
  const TensorMap base = read_model_dir(kModel);
  const auto d_mntp = adapter_deltas(mntp, base);
  EXPECT_EQ(3u * 5u, d_mntp.size()) << "q, v, up in each of stories260K's 5 layers";
  const double largest = expect_merged(read_model_dir(mntp + "/merged"), base, {d_mntp});
  EXPECT_GT(largest, 1e-4) << "vacuous: the MNTP deltas are ~0";

  // (c) A SimCSE stage on top starts from the merged weights: its merged/ is base + both deltas, and it
  // trains exactly as the same stage started from the MNTP stage's merged/ model as its base.
  const Overrides so = {{"max_steps", "3"}, {"per_device_train_batch_size", "4"},
                        {"lora_target_modules", "k_proj,v_proj,down_proj"}};
  Overrides chained = so;
  chained.push_back({"peft_model_name_or_path", mntp});
  train(make_config("simcse", data().sentences, simcse, chained));
  const auto d_simcse = adapter_deltas(simcse, base);
  expect_merged(read_model_dir(simcse + "/merged"), base, {d_mntp, d_simcse});
  Overrides from_merged = so;
  from_merged.push_back({"model_name_or_path", mntp + "/merged"});
  train(make_config("simcse", data().sentences, direct, from_merged));
  const std::vector<double> lc = losses(simcse), ld = losses(direct);
  ASSERT_EQ(3u, lc.size());
  EXPECT_EQ(lc, ld) << "the chained stage must see the merged MNTP model from its first forward";
  EXPECT_TRUE(SameBits(read_safetensors(simcse + "/adapter_model.safetensors"),
                       read_safetensors(direct + "/adapter_model.safetensors")));
  // And not just any base: from the raw base model, the first loss differs.
  const std::string raw = tmp / "raw";
  Overrides one = so;
  one.push_back({"max_steps", "1"});
  train(make_config("simcse", data().sentences, raw, one));
  EXPECT_NE(lc[0], losses(raw)[0]);
}

// ============================================================================================
// 5. The LoRA (and latent head) gradients through pooling + contrastive loss, against central
// differences, on a tiny random model without dropout.

class PoolingGradient : public ::testing::TestWithParam<PoolingMode> {};

TEST_P(PoolingGradient, MatchesCentralDifferences) {
  const PoolingMode mode = GetParam();
  test::TinyModel tm(/*qkv_bias=*/true, 11);
  Model& m = tm.model;
  test::add_random_lora(m, 2, 4.0f, 0.0f, 21);
  PoolingHead head;
  head.mode = mode;
  head.latent.num_latents = 4;
  head.latent.heads = 2;
  head.latent.dim_head = 4;
  head.latent.mult = 2;
  add_pooling_head(m, head, 33);
  if (mode == PoolingMode::kLatentAttention) {
    ASSERT_GT(head.count, 0u);
  }

  // Two (query, positive, negative) triples: rows 0-1 queries (row 0 with 2 instruction tokens),
  // 2-3 positives, 4-5 negatives; left padding of varying length; position 0 of each text is its BOS.
  const int n = 2, B = 3 * n, T = 7, C = m.config.hidden_size, V = m.config.vocab_size;
  const int lengths[B] = {7, 5, 6, 4, 7, 3};
  EmbedBatch b;
  b.B = B;
  b.T = T;
  std::mt19937 rng(5);
  for (int r = 0; r < B; ++r)
    for (int t = 0; t < T; ++t) {
      const int first = T - lengths[r];
      const bool real = t >= first;
      b.ids.push_back(real ? (t == first ? 1 : 3 + (int)(rng() % (V - 3))) : 0);
      b.key_mask.push_back(real);
      b.embed_mask.push_back(real && t > first + (r == 0 ? 2 : 0));
    }
  const float scale = 20.0f;
  // The loss on the backend from the pooled rows in backend memory (queries, positives, hard negatives:
  // n rows each), as the trainer runs it; d_pooled (backend memory) receives its gradient when asked.
  float* pooled = m.alloc_floats((size_t)3 * n * C);
  float* d_pooled = m.alloc_floats((size_t)3 * n * C);
  double* loss_dev = reinterpret_cast<double*>(m.alloc_floats(2));  // one double, owned by the model
  auto loss_of = [&](bool grads, PoolCache* cache) {
    model_forward(m, b.ids.data(), b.key_mask.data(), B, T, ForwardOptions{});
    pool_forward(m, head, b, 1, 2, pooled, cache);
    float* d = grads ? d_pooled : nullptr;
    m.backend->contrastive_loss(loss_dev, d, d ? d + (size_t)n * C : nullptr, d ? d + (size_t)2 * n * C : nullptr,
                                pooled, pooled + (size_t)n * C, pooled + (size_t)2 * n * C, n, C, C, scale,
                                /*in_batch_negatives=*/true);
    double loss;
    m.backend->download(&loss, loss_dev, sizeof(double));
    return loss;
  };

  // Analytic: loss gradients w.r.t. the pooled rows -> pool_backward -> model_backward.
  zero_grads(m);
  PoolCache cache;
  loss_of(true, &cache);
  Tensor dh = m.alloc_tensor((size_t)B * T * C);
  pool_backward(m, head, cache, d_pooled, dh);
  model_backward(m, dh);

  // Numeric: Richardson-extrapolated central differences, (4 D(h/2) - D(h)) / 3, h = 2e-2, on a few
  // entries of every trainable tensor (CPU backend: parameters are host memory, perturbed in place).
  auto loss = [&]() { return loss_of(false, nullptr); };
  auto central = [&](float* x, double h) {
    const float x0 = *x, xp = (float)(x0 + h), xm = (float)(x0 - h);
    *x = xp;
    const double lp = loss();
    *x = xm;
    const double lm = loss();
    *x = x0;
    return (lp - lm) / ((double)xp - (double)xm);
  };
  double worst = 0, max_abs = 0, max_abs_head = 0;
  size_t checked = 0;
  for (TrainableParam& p : m.trainable) {
    const std::vector<float> analytic = download_floats(m, p.grad, p.count);
    const bool is_head = p.name.rfind("latent_attention_model.", 0) == 0;
    for (size_t k = 0; k < 3; ++k) {
      const size_t i = (k * 7919 + 13 * checked) % p.count;
      const double numeric = (4.0 * central(p.value + i, 1e-2) - central(p.value + i, 2e-2)) / 3.0;
      const double tol = 3e-4 + 1e-2 * std::fabs(numeric);
      EXPECT_NEAR(analytic[i], numeric, tol) << pooling_mode_name(mode) << " " << p.name << "[" << i << "]";
      worst = std::max(worst, std::fabs(analytic[i] - numeric) / tol);
      max_abs = std::max(max_abs, std::fabs(numeric));
      if (is_head) max_abs_head = std::max(max_abs_head, std::fabs(numeric));
      ++checked;
    }
  }
  std::printf("%s: %zu entries checked, worst |analytic - numeric| / tol %.3g, largest |gradient| %.3g\n",
              pooling_mode_name(mode), checked, worst, max_abs);
  EXPECT_GT(max_abs, 1e-2) << "vacuous: all gradients ~0";
  if (mode == PoolingMode::kLatentAttention) {
    EXPECT_GT(max_abs_head, 1e-3) << "vacuous: head gradients ~0";
  }
}

INSTANTIATE_TEST_SUITE_P(Modes, PoolingGradient,
                         ::testing::Values(PoolingMode::kMean, PoolingMode::kWeightedMean, PoolingMode::kLastToken,
                                           PoolingMode::kLatentAttention),
                         [](const ::testing::TestParamInfo<PoolingMode>& info) {
                           return std::string(pooling_mode_name(info.param));
                         });

// ============================================================================================
// 6. Errors.

TEST(TrainerErrors, ConfigFileProblemsNameTheFileAndKey) {
  TempDir tmp("trainer_config_errors");
  const nlohmann::json good = {{"stage", "mntp"},
                               {"model_name_or_path", kModel},
                               {"tokenizer", kTok},
                               {"dataset_file_path", data().wiki},
                               {"output_dir", tmp / "out"}};
  int files = 0;
  auto load = [&](const nlohmann::json& j) {
    const std::string path = tmp / ("config" + std::to_string(files++) + ".json");
    std::ofstream(path) << j.dump(2);
    return std::make_pair(path, error_of([&] { load_train_config(path, {}, nullptr); }));
  };
  EXPECT_EQ("", load(good).second);

  nlohmann::json j = good;
  j["learning_rte"] = 1e-3;
  auto [p1, e1] = load(j);
  EXPECT_TRUE(Mentions(e1, {p1, "learning_rte"}));

  j = good;
  j["max_steps"] = "ten";
  auto [p2, e2] = load(j);
  EXPECT_TRUE(Mentions(e2, {p2, "max_steps", "integer"}));

  j = good;
  j["bidirectional"] = "yes";
  auto [p3, e3] = load(j);
  EXPECT_TRUE(Mentions(e3, {p3, "bidirectional"}));

  j = good;
  j.erase("output_dir");
  auto [p4, e4] = load(j);
  EXPECT_TRUE(Mentions(e4, {p4, "missing", "output_dir"}));

  // Names of a closed set, checked by the module that owns them, still name the file and key.
  for (const char* key : {"pooling_mode", "data_collator_type", "lr_scheduler_type", "padding_side", "adapter_layout",
                          "torch_dtype", "stage"}) {
    j = good;
    j[key] = "no_such_value";
    auto [p, e] = load(j);
    EXPECT_TRUE(Mentions(e, {p, key, "no_such_value"})) << key;
  }

  // An llm2vec key we do not act on is reported, not an error.
  j = good;
  j["do_train"] = true;
  const std::string path = tmp / "ignored.json";
  std::ofstream(path) << j.dump();
  std::vector<std::string> notes;
  EXPECT_EQ("", error_of([&] { load_train_config(path, {}, &notes); }));
  ASSERT_EQ(1u, notes.size());
  EXPECT_NE(std::string::npos, notes[0].find("do_train"));

  // Command-line overrides are checked too.
  EXPECT_TRUE(Mentions(error_of([&] { load_train_config("", {{"stage", "mntp"}, {"max_steps", "x"}}, nullptr); }),
                       {"max_steps"}));
}

TEST(TrainerErrors, MissingOrWrongKindOfData) {
  TempDir tmp("trainer_data_errors");
  const std::string missing = tmp / "no-such-shard.bin";
  EXPECT_TRUE(Mentions(error_of([&] { train(make_config("mntp", missing, tmp / "a", {{"max_steps", "1"}})); }),
                       {missing}));
  EXPECT_TRUE(Mentions(error_of([&] { train(make_config("simcse", data().wiki, tmp / "b", {{"max_steps", "1"}})); }),
                       {data().wiki, "sentence"}));
  EXPECT_TRUE(Mentions(
      error_of([&] { train(make_config("supervised", data().sentences, tmp / "c", {{"max_steps", "1"}})); }),
      {data().sentences, "supervised"}));
  EXPECT_TRUE(Mentions(error_of([&] { train(make_config("mntp", data().triples, tmp / "d", {{"max_steps", "1"}})); }),
                       {data().triples, "document"}));
}

// Values that would train nothing, or train on garbage, are refused before anything runs, naming the
// key: non-finite numbers (which JSON would write back as null), negative clipping or decay, an MNTP
// block of one token (nothing to predict), a contrastive batch whose softmax has one candidate (loss 0
// whatever the weights), and a sequence longer than the model's positions.
TEST(TrainerErrors, ValuesThatTrainNothingOrGarbageAreRefusedUpFront) {
  TempDir tmp("trainer_values");
  auto refused = [&](const std::string& stage, const std::string& data, const Overrides& o) {
    return error_of([&] { train(make_config(stage, data, tmp / "out", o)); });
  };
  for (const char* bad : {"nan", "inf", "-inf"}) {
    EXPECT_TRUE(Mentions(refused("mntp", data().wiki, {{"learning_rate", bad}}), {"--learning_rate", bad, "finite"}));
    EXPECT_TRUE(Mentions(refused("mntp", data().wiki, {{"lora_alpha", bad}}), {"--lora_alpha", "finite"}));
    EXPECT_TRUE(Mentions(refused("mntp", data().wiki, {{"weight_decay", bad}}), {"--weight_decay", "finite"}));
  }
  EXPECT_TRUE(Mentions(refused("mntp", data().wiki, {{"max_grad_norm", "-1"}}), {"max_grad_norm", ">= 0"}));
  EXPECT_TRUE(Mentions(refused("mntp", data().wiki, {{"weight_decay", "-0.1"}}), {"weight_decay", ">= 0"}));
  EXPECT_TRUE(Mentions(refused("mntp", data().wiki, {{"lora_alpha", "0"}}), {"lora_alpha", "> 0"}));
  EXPECT_TRUE(Mentions(refused("mntp", data().wiki, {{"max_seq_length", "1"}}), {"max_seq_length", "mntp"}));
  EXPECT_TRUE(Mentions(refused("simcse", data().sentences, {{"per_device_train_batch_size", "1"}}),
                       {"per_device_train_batch_size", ">= 2"}));
  EXPECT_TRUE(Mentions(refused("supervised", data().triples, {{"per_device_train_batch_size", "1"}, {"hard_negatives", "false"}}),
                       {"per_device_train_batch_size", ">= 2"}));
  // With its hard negative a supervised batch of one still has two candidates: allowed.
  EXPECT_EQ("", refused("supervised", data().triples, {{"per_device_train_batch_size", "1"}, {"max_steps", "1"}}));
  // stories260K has 512 positions.
  EXPECT_TRUE(Mentions(refused("mntp", data().wiki, {{"max_seq_length", "513"}, {"overwrite_output_dir", "true"}}),
                       {kModel, "max_seq_length 513", "max_position_embeddings 512"}));
}

// A model whose weights overflow gives no NaN embeddings: embed stops, naming the text and the model.
TEST(TrainerEncoder, NonFiniteEmbeddingsAreAnErrorNotOutput) {
  TempDir tmp("encoder_inf");
  const std::string model = tmp / "inf.bin";
  fs::copy_file(kModel, model);
  {
    // llama2.c v0: 7 int32 of header, the 512 x 64 token embedding, then layer 0's attention RMSNorm
    // weight, whose first value scales every token's first channel.
    std::fstream f(model, std::ios::in | std::ios::out | std::ios::binary);
    f.seekp(28 + 512 * 64 * 4);
    const float inf = INFINITY;
    f.write(reinterpret_cast<const char*>(&inf), sizeof inf);
  }
  EncoderSpec spec;
  spec.model_name_or_path = model;
  spec.tokenizer = kTok;
  std::unique_ptr<Backend> backend = make_cpu_backend();
  Encoder enc(spec, *backend);
  EXPECT_TRUE(Mentions(error_of([&] { enc.embed({{"", "a first text"}, {"", "a second one"}}, 2, false); }),
                       {"text 1", "non-finite", model}));
}

// embed batches texts in llm2vec's order (by decreasing length) and returns them in input order: the
// same texts given in another order come back as the same embeddings, bit for bit, in their new order
// (the batches are the same whatever the input order); and the embeddings are those of the texts (each
// within rounding of embedding it alone: RoPE sees relative positions, padding is masked).
// Alone, a text sits at other absolute positions than in a padded batch: RoPE rotates its q and k by other
// angles (cos/sin rounded once each, two products and a sum per element) whose rounding no longer cancels
// in q·k, and the softmax and value sums carry it on — of order 16u per layer, u = 2^-24; stories260K has
// 5 layers: 80u ≈ 4.8e-6 of the embedding's scale (1.2e-6 observed). A text embedded with another's
// padding, mask or pooled row would be off by O(1).
constexpr double kAloneTolerance = 16.0 * 5 * 0x1p-24;
TEST(TrainerEncoder, BatchesByLengthAndReturnsInputOrder) {
  EncoderSpec spec;
  spec.model_name_or_path = kModel;
  spec.tokenizer = kTok;
  std::unique_ptr<Backend> backend = make_cpu_backend();
  Encoder enc(spec, *backend);
  const int C = enc.dim();
  const std::vector<EncoderInput> texts = {{"", "a cat"},
                                           {"", "the little dog ran to the big red barn in the rain"},
                                           {"Represent the story", "she sang"},
                                           {"", "once upon a time there was a girl"},
                                           {"", "he ate an apple and a pear"}};
  const std::vector<size_t> perm = {3, 0, 4, 2, 1};
  std::vector<EncoderInput> shuffled;
  for (size_t i : perm) shuffled.push_back(texts[i]);
  const std::vector<float> a = enc.embed(texts, 2, false), b = enc.embed(shuffled, 2, false);
  for (size_t k = 0; k < perm.size(); ++k)
    for (int c = 0; c < C; ++c)
      ASSERT_EQ(b[k * C + c], a[perm[k] * C + c]) << "text " << perm[k] << " channel " << c;
  double worst = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::vector<float> alone = enc.embed({texts[i]}, 1, false);
    double diff = 0, norm = 0;
    for (int c = 0; c < C; ++c) {
      diff = std::max(diff, (double)std::fabs(alone[c] - a[i * C + c]));
      norm = std::max(norm, (double)std::fabs(alone[c]));
    }
    worst = std::max(worst, diff / norm);
  }
  std::printf("embedded alone vs in a length-sorted batch: worst |difference| / max|embedding| %.3g\n", worst);
  EXPECT_LT(worst, kAloneTolerance);
}

// embed reports what it truncates: texts whose tokens (with the EOS eos_token pooling appends) exceed
// max_length, counted against the tokenizer's own lengths.
TEST(TrainerEncoder, CountsTheTextsItTruncates) {
  const std::vector<EncoderInput> texts = {{"", "a cat"},
                                           {"", "the little dog ran to the big red barn in the rain"},
                                           {"", "once upon a time"},
                                           {"", "he ate an apple and a pear"}};
  std::unique_ptr<Tokenizer> tok = load_tokenizer(kTok);
  for (bool eos : {false, true}) {
    EncoderSpec spec;
    spec.model_name_or_path = kModel;
    spec.tokenizer = kTok;
    spec.max_length = 6;
    if (eos) spec.pooling = PoolingMode::kEosToken;
    std::unique_ptr<Backend> backend = make_cpu_backend();
    Encoder enc(spec, *backend);
    size_t want = 0;
    for (const EncoderInput& t : texts) want += tok->encode(t.text, true).size() + (eos ? 1 : 0) > 6;
    ASSERT_GT(want, 0u);
    ASSERT_LT(want, texts.size());
    EmbedStats stats;
    enc.embed(texts, 3, false, &stats);
    EXPECT_EQ(stats.max_length, 6);
    EXPECT_EQ(stats.texts, texts.size());
    EXPECT_EQ(stats.truncated, want) << (eos ? "eos_token pooling" : "mean pooling");
  }
}

void expect_non_finite_stops_cleanly(const std::string& stage, const std::string& dataset) {
  TempDir tmp("trainer_nonfinite");
  const std::string out = tmp / "run";
  // lr 1e30: the first update throws the parameters to ~1e30, the next forward overflows.
  const TrainConfig cfg =
      make_config(stage, dataset, out, {{"max_steps", "5"}, {"save_steps", "1"}, {"learning_rate", "1e30"},
                                        {"max_grad_norm", "0"}});
  const std::string e = error_of([&] { train(cfg); });
  std::printf("%s, lr 1e30: %s\n", stage.c_str(), e.c_str());
  ASSERT_FALSE(e.empty()) << "a non-finite loss must be an error";
  const bool says_non_finite = e.find("nan") != std::string::npos || e.find("inf") != std::string::npos ||
                               e.find("finite") != std::string::npos;
  EXPECT_TRUE(says_non_finite) << e;
  EXPECT_TRUE(e.find("loss") != std::string::npos || e.find("gradient") != std::string::npos) << e;
  if (stage == "mntp") {
    EXPECT_NE(std::string::npos, e.find("step 2")) << "the message should say which step: " << e;
  }
  // The checkpoint written after step 1 is intact and still the latest.
  EXPECT_EQ("checkpoint-1", latest(out));
  EXPECT_EQ((std::vector<std::string>{"checkpoint-1"}), checkpoint_dirs(out));
  const TensorMap state = read_safetensors(out + "/checkpoint-1/state.safetensors");
  EXPECT_FALSE(state.empty());
  bool blown_up = false;
  for (const auto& [name, v] : state)
    for (float x : v) {
      ASSERT_TRUE(std::isfinite(x)) << name;
      blown_up |= std::fabs(x) > 1e20f;
    }
  EXPECT_TRUE(blown_up) << "vacuous: the huge learning rate did not move the parameters";
  const nlohmann::json st = nlohmann::json::parse(read_text(out + "/checkpoint-1/trainer_state.json"));
  EXPECT_EQ(1, st.at("step").get<int>());
  EXPECT_FALSE(fs::exists(out + "/adapter_model.safetensors"));
}

TEST(TrainerErrors, NonFiniteMntpLossStopsAndKeepsTheCheckpoint) { expect_non_finite_stops_cleanly("mntp", data().wiki); }

TEST(TrainerErrors, NonFiniteContrastiveLossStopsAndKeepsTheCheckpoint) {
  expect_non_finite_stops_cleanly("simcse", data().sentences);
}

// ============================================================================================
// 7. The Encoder built from an output directory.

// Weighted mean (llm2vec: the k-th of n pooled positions weighs 2k / (n(n+1))) or mean of the last
// `n` real positions of row `row`, computed from the final hidden states in double.
std::vector<double> hand_pool(const std::vector<float>& hidden, int row, int T, int C, int n, bool weighted) {
  std::vector<double> out(C, 0.0);
  for (int k = 1; k <= n; ++k) {
    const int t = T - n + k - 1;  // left padding: the real tokens end the row
    const double w = weighted ? 2.0 * k / ((double)n * (n + 1)) : 1.0 / n;
    for (int c = 0; c < C; ++c) out[c] += w * hidden[((size_t)row * T + t) * C + c];
  }
  return out;
}

TEST(TrainerEncoder, EmbedsAsTheTrainedModelAndPoolsOnlyTheTextAfterAnInstruction) {
  TempDir tmp("trainer_encoder");
  const std::string mntp = tmp / "mntp", simcse = tmp / "simcse";
  train(make_config("mntp", data().wiki, mntp, {{"max_steps", "3"}}));
  train(make_config("simcse", data().sentences, simcse,
                    {{"max_steps", "3"}, {"per_device_train_batch_size", "4"}, {"pooling_mode", "weighted_mean"},
                     {"max_seq_length", "64"}, {"peft_model_name_or_path", mntp}}));

  EncoderSpec spec = read_encoder_spec(simcse);
  ASSERT_EQ(2u, spec.adapters.size());
  EXPECT_TRUE(fs::equivalent(mntp, spec.adapters[0]));
  EXPECT_TRUE(fs::equivalent(simcse, spec.adapters[1]));
  EXPECT_EQ(PoolingMode::kWeightedMean, spec.pooling);
  EXPECT_TRUE(spec.bidirectional);
  EXPECT_EQ(0, spec.max_length) << "not the trained max_seq_length (64)";

  std::unique_ptr<Backend> be = make_cpu_backend();
  Encoder enc(spec, *be);
  EXPECT_EQ(512, enc.spec().max_length) << "llm2vec's default (stories260K's context is 512 too)";
  const int C = enc.dim();
  std::vector<EncoderInput> inputs;
  for (const std::string& t : kTexts) inputs.push_back({"", t});
  const std::vector<float> got = enc.embed(inputs, (int)inputs.size(), false);
  ASSERT_EQ(kTexts.size() * C, got.size());

  // In-process: base + both adapters merged, the same batch, the trained pooling.
  std::unique_ptr<Tokenizer> tok = load_tokenizer(kTok);
  const EmbedBatch batch = text_batch(*tok, kTexts, enc.spec().max_length);
  PoolingHead head;
  head.mode = PoolingMode::kWeightedMean;
  std::vector<float> h;
  {
    Loaded chained(kModel, {mntp, simcse});
    h = chained.hidden(batch);
    EXPECT_TRUE(SameBits({{"e", got}}, {{"e", pool_forward(chained.m, head, batch, tok->bos_id(), tok->eos_id(), nullptr)}}))
        << "Encoder vs the adapters merged in-process";
  }
  {
    Loaded merged(simcse + "/merged");
    merged.hidden(batch);
    EXPECT_TRUE(SameBits({{"e", got}}, {{"e", pool_forward(merged.m, head, batch, tok->bos_id(), tok->eos_id(), nullptr)}}))
        << "Encoder vs the trainer's merged/ model";
  }
  // And the pooling itself by hand: the weighted mean over each text's tokens after its BOS.
  for (size_t r = 0; r < kTexts.size(); ++r) {
    const int n = (int)tok->encode(kTexts[r], true).size() - 1;
    const std::vector<double> want = hand_pool(h, (int)r, batch.T, C, n, true);
    EXPECT_TRUE(test::AllClose(&got[r * C], want.data(), C, 1e-6, 1e-5)) << "text " << r;
  }

  // With an instruction (surrounding whitespace is stripped), only the text's tokens are pooled.
  const std::string instruction = "  Retrieve semantically similar text:  ", text = kTexts[0];
  const std::vector<float> e_inst = enc.embed({{instruction, text}}, 1, false);
  const std::vector<int> full = tok->encode("Retrieve semantically similar text: " + text, true);
  const int n_text = (int)tok->encode(text, false).size();
  ASSERT_LT(n_text + 3, (int)full.size());
  ASSERT_LE((int)full.size(), enc.spec().max_length) << "the check assumes no truncation";
  PadOptions pad;
  pad.max_length = enc.spec().max_length;
  const EmbedBatch ib = build_embed_batch({full}, {(int)full.size() - n_text}, *tok, pad);
  const EmbedBatch all_b = build_embed_batch({full}, {0}, *tok, pad);
  Loaded chained(kModel, {mntp, simcse});
  const std::vector<float> hi = chained.hidden(ib);
  EXPECT_TRUE(SameBits({{"e", e_inst}}, {{"e", pool_forward(chained.m, head, ib, tok->bos_id(), tok->eos_id(), nullptr)}}));
  const std::vector<double> want_text = hand_pool(hi, 0, ib.T, C, n_text, true);
  EXPECT_TRUE(test::AllClose(e_inst.data(), want_text.data(), C, 1e-6, 1e-5));
  chained.hidden(all_b);
  const std::vector<float> e_all = pool_forward(chained.m, head, all_b, tok->bos_id(), tok->eos_id(), nullptr);
  EXPECT_GT(rel_diff(e_inst, e_all), 1e-3) << "vacuous: pooling the instruction too gives the same embedding";

  // skip_instruction = false: everything after the BOS is pooled.
  EncoderSpec no_skip = spec;
  no_skip.skip_instruction = false;
  Encoder enc2(no_skip, *be);
  const std::vector<float> e_noskip = enc2.embed({{instruction, text}}, 1, false);
  const std::vector<double> want_all = hand_pool(hi, 0, ib.T, C, (int)full.size() - 1, true);
  EXPECT_TRUE(test::AllClose(e_noskip.data(), want_all.data(), C, 1e-6, 1e-5));
}

TEST(TrainerEncoder, LatentAttentionHeadRoundTripsThroughTheOutputDirectory) {
  TempDir tmp("trainer_encoder_latent");
  const std::string out = tmp / "sup";
  train(make_config("supervised", data().triples, out, kLatent + Overrides{{"max_steps", "2"}}));
  EncoderSpec spec = read_encoder_spec(out);
  EXPECT_EQ(PoolingMode::kLatentAttention, spec.pooling);
  ASSERT_FALSE(spec.pooling_head.empty());
  std::unique_ptr<Backend> be = make_cpu_backend();
  Encoder enc(spec, *be);
  std::vector<EncoderInput> inputs;
  for (const std::string& t : kTexts) inputs.push_back({"", t});
  const std::vector<float> got = enc.embed(inputs, (int)inputs.size(), false);

  std::unique_ptr<Tokenizer> tok = load_tokenizer(kTok);
  const EmbedBatch batch = text_batch(*tok, kTexts, 32);
  Loaded merged(kModel, {out});
  PoolingHead head;
  head.mode = PoolingMode::kLatentAttention;
  head.latent.num_latents = 8;
  head.latent.heads = 2;
  head.latent.dim_head = 8;
  add_pooling_head(merged.m, head, 0);
  const TensorMap trained = read_safetensors(out + "/checkpoint-2/state.safetensors");
  // The head as trained (from the trainer's own state, not the exported file).
  std::vector<float> params(head.count);
  for (const LatentAttentionTensor& t : latent_attention_tensors(head.latent, merged.m.config.hidden_size)) {
    ASSERT_TRUE(trained.count(t.name)) << t.name;
    std::copy(trained.at(t.name).begin(), trained.at(t.name).end(), params.begin() + t.offset);
  }
  merged.m.backend->upload(head.params, params.data(), params.size() * sizeof(float));
  merged.hidden(batch);
  EXPECT_TRUE(SameBits({{"e", got}}, {{"e", pool_forward(merged.m, head, batch, tok->bos_id(), tok->eos_id(), nullptr)}}));
}

}  // namespace
}  // namespace l2v
