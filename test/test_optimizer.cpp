// AdamW steps over the model's LoRA parameters: torch's clipping rule, refusal of non-finite gradients,
// and a short MNTP run on the real stories260K model and WikiText that lowers the loss.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <omp.h>
#include <unistd.h>

#include <random>

#include "data/loader.h"
#include "data/prepare.h"
#include "host/cpu_backend.h"
#include "model/checkpoint.h"
#include "test/tiny_model.h"
#include "train/optimizer.h"

namespace l2v {
namespace {

std::string asset(const std::string& rel, const std::string& shared_rel) {
  if (std::ifstream("assets/" + rel)) return "assets/" + rel;
  return "../shared/data/" + shared_rel;
}

struct Stories {
  std::unique_ptr<Backend> backend = make_cpu_backend();
  Checkpoint ck = open_checkpoint(asset("stories260K/stories260K.bin", "llama2c/stories260K.bin"));
  Model model;
  Stories() {
    load_model(model, ck.config, *ck.tensors, *backend);
    LoraConfig lc;
    lc.r = 8;
    lc.alpha = 16.0f;
    add_lora(model, lc, 1);
  }
};

void fill(Model& m, float value) {
  for (const TrainableParam& p : m.trainable) {
    std::vector<float> v(p.count, value);
    m.backend->upload(p.grad, v.data(), p.count * sizeof(float));
  }
}

TEST(AdamW, ClipsLikeTorchAndReportsTheNorm) {
  Stories s;
  size_t total = 0;
  for (const TrainableParam& p : s.model.trainable) total += p.count;
  AdamWState st = adamw_init(s.model);
  AdamWConfig cfg;
  cfg.max_grad_norm = 1.0f;
  fill(s.model, 0.5f);
  const float norm = adamw_step(s.model, st, cfg, 0.0f);
  const double want = 0.5 * std::sqrt((double)total);
  EXPECT_NEAR(norm, want, 1e-5 * want);
  // torch: grads *= max_norm / (total_norm + 1e-6)
  const float coef = 1.0f / (norm + 1e-6f);
  for (const TrainableParam& p : s.model.trainable) {
    std::vector<float> g = download_floats(s.model, p.grad, p.count);
    for (float x : g) ASSERT_FLOAT_EQ(0.5f * coef, x);
  }
  // Below the threshold nothing is scaled.
  fill(s.model, 1e-6f);
  adamw_step(s.model, st, cfg, 0.0f);
  std::vector<float> g = download_floats(s.model, s.model.trainable[0].grad, s.model.trainable[0].count);
  EXPECT_EQ(1e-6f, g[0]);
}

TEST(AdamW, NonFiniteGradientsAreRefusedAndParametersKept) {
  Stories s;
  AdamWState st = adamw_init(s.model);
  fill(s.model, 0.1f);
  const TrainableParam& p = s.model.trainable[3];
  std::vector<float> g = download_floats(s.model, p.grad, p.count);
  g[7] = NAN;
  s.model.backend->upload(p.grad, g.data(), p.count * sizeof(float));
  std::vector<float> before = download_floats(s.model, p.value, p.count);
  try {
    adamw_step(s.model, st, AdamWConfig{}, 1e-3f);
    FAIL() << "a NaN gradient was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string::npos, std::string(e.what()).find("NaN"));
  }
  EXPECT_EQ(before, download_floats(s.model, p.value, p.count));
  // Nothing else was written either: the moments are still zero, the gradients as they were.
  EXPECT_EQ(std::vector<float>(p.count, 0.0f), download_floats(s.model, st.m[3], p.count));
  std::vector<float> g_after = download_floats(s.model, p.grad, p.count);
  EXPECT_TRUE(std::isnan(g_after[7]));
  g_after[7] = g[7] = 0.0f;
  EXPECT_EQ(g, g_after);
  EXPECT_EQ(0, st.step) << "a refused step is not counted";
}

// The trainer's average over micro-batches is the step's grad_scale: the norm is that of the scaled
// gradients, and the step equals scaling the gradients first and stepping with grad_scale 1, bit for bit.
TEST(AdamW, GradScaleEqualsScalingTheGradientsFirst) {
  Stories a, b;
  AdamWState sa = adamw_init(a.model), sb = adamw_init(b.model);
  AdamWConfig cfg;
  cfg.max_grad_norm = 1.0f;
  cfg.weight_decay = 0.01f;
  size_t total = 0;
  for (const TrainableParam& p : a.model.trainable) total += p.count;
  for (int step = 0; step < 2; ++step) {
    const float g = step == 0 ? 0.03f : 3e-5f;  // clipped (norm 0.01 sqrt(n) > 1), then not
    fill(a.model, g);
    fill(b.model, g * (1.0f / 3.0f));  // the same fp32 product the step forms
    const float na = adamw_step(a.model, sa, cfg, 1e-3f, 1.0f / 3.0f);
    const float nb = adamw_step(b.model, sb, cfg, 1e-3f);
    EXPECT_EQ(na, nb);
    EXPECT_NEAR(na, (g / 3.0f) * std::sqrt((double)total), 1e-5 * na);
    EXPECT_EQ(test::all_values(a.model), test::all_values(b.model)) << "step " << step;
  }
}

// The norm's sum of squares is cut into fixed pieces: the same bits with 1 thread and with several.
TEST(AdamW, NormDoesNotDependOnTheThreadCount) {
  std::mt19937 rng(3);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<float> g(100003), value(g.size()), m(g.size()), v(g.size());
  for (float& x : g) x = nd(rng) * 1e-3f;
  float norms[2];
  const int threads = omp_get_max_threads();
  for (int k = 0; k < 2; ++k) {
    omp_set_num_threads(k == 0 ? 1 : std::max(2, threads));
    std::vector<float> grad = g;
    cpu::OptimizerTensor t{value.data(), grad.data(), m.data(), v.data(), (long)g.size()};
    norms[k] = cpu::adamw_step(&t, 1, cpu::AdamWStepArgs{});
  }
  omp_set_num_threads(threads);
  EXPECT_EQ(norms[0], norms[1]);
}

// End to end on real data: WikiText → shards → MNTP batches (bidirectional, 20% masking) → LoRA
// training. Repeating one batch must drive its loss down: the gradients point downhill.
TEST(AdamW, ShortMntpRunLowersTheLoss) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("l2v_opt_" + std::to_string(getpid()));
  fs::create_directories(dir);
  std::unique_ptr<Tokenizer> tok = load_tokenizer(asset("stories260K/tok512.bin", "llama2c/tok512.bin"));
  PrepareOptions po;
  po.inputs = {asset("wikitext-2/wiki.valid.raw", "wikitext-2/wiki.valid.raw")};
  po.output_prefix = (dir / "wiki").string();
  po.progress = false;
  ShardSet set(run_prepare(po, *tok).shards);
  MntpOptions mo;
  mo.mask_token_id = resolve_mask_token(*tok, "eos");
  MntpLoader loader(set, *tok, 64, mo, LoaderConfig{4, 3, 1, 0});
  MntpBatch batch = loader.next();
  fs::remove_all(dir);

  Stories s;
  AdamWState st = adamw_init(s.model);
  AdamWConfig cfg;
  ForwardOptions opt;  // bidirectional, as MNTP trains it
  opt.training = true;
  std::vector<float> losses;
  for (int step = 0; step < 25; ++step) {
    opt.seed = (uint64_t)step;
    zero_grads(s.model);
    model_forward(s.model, batch.ids.data(), batch.key_mask.data(), batch.B, batch.T, opt);
    losses.push_back(mntp_loss(s.model, batch.labels.data(), true));
    adamw_step(s.model, st, cfg, 2e-3f);
  }
  std::printf("MNTP loss on a repeated batch: step 0 %.3f, step 24 %.3f\n", losses.front(), losses.back());
  EXPECT_LT(losses.back(), 0.8f * losses.front());
}

}  // namespace
}  // namespace l2v
