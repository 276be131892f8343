// Our forward pass, MNTP loss and LoRA gradients against references computed by code no one here
// wrote: Hugging Face transformers (causal), the official llm2vec package's bidirectional classes, and
// PEFT (LoRA), produced by scripts/make_hf_fixtures.py into test/fixtures/ (see its README.md).
// Also AdamW against torch.optim.AdamW.
//
// Tolerances are stated per quantity; everything is fp32 on both sides, so the differences are only
// summation order (BLAS blocking, softmax reductions) and a few libm ulps in RoPE tables. Only real
// (attention_mask = 1) positions are compared: HF's outputs at padded query rows are meaningless.
#include <gtest/gtest.h>

#include <cstdio>
#include <string>

#include "host/cpu_backend.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/peft.h"
#include "model/safetensors.h"
#include "host/cpu_ops.h"

namespace l2v {
namespace {

const std::string kFixtures = "test/fixtures/";

std::vector<float> ref_f32(const SafetensorsCheckpoint& ref, const std::string& name) {
  std::vector<int64_t> shape = ref.shape(name);
  size_t n = 1;
  for (int64_t d : shape) n *= (size_t)d;
  std::vector<float> out(n);
  ref.read_f32(name, out.data(), n);
  return out;
}

std::vector<int> ref_ints(const SafetensorsCheckpoint& ref, const std::string& name) {
  std::vector<int64_t> v = ref.read_i64(name);
  return std::vector<int>(v.begin(), v.end());
}

struct Worst {
  double abs = 0.0, rel = 0.0;  // max |got - want| and max |got - want| / max|want|
};

// Compares rows of `width` values, only the rows whose mask is 1 (all rows when mask is empty);
// passes when every |got - want| <= atol + rtol * max|want|.
Worst compare_rows(const std::vector<float>& got, const std::vector<float>& want, const std::vector<int>& mask,
                   size_t width, double atol, double rtol, const std::string& what) {
  EXPECT_EQ(got.size(), want.size()) << what;
  double scale = 0.0;
  for (float w : want) scale = std::max(scale, (double)std::fabs(w));
  Worst worst;
  size_t bad = 0, first_bad = 0;
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    if (!mask.empty() && !mask[i / width]) continue;
    double err = std::fabs((double)got[i] - (double)want[i]);
    if (!(err <= atol + rtol * scale) && bad++ == 0) first_bad = i;
    worst.abs = std::max(worst.abs, err);
  }
  worst.rel = scale > 0 ? worst.abs / scale : worst.abs;
  EXPECT_EQ(0u, bad) << what << ": " << bad << " values out of tolerance, first at " << first_bad << " got "
                     << got[first_bad] << " want " << want[first_bad] << " (max|want| " << scale << ")";
  std::printf("  %-58s max abs err %.3g  rel to max|ref| %.3g\n", what.c_str(), worst.abs, worst.rel);
  return worst;
}

class HfFixture : public ::testing::TestWithParam<const char*> {
 protected:
  void SetUp() override { open(kFixtures + GetParam() + "/", kFixtures + GetParam() + "/reference.safetensors"); }

  void open(const std::string& dir, const std::string& reference) {
    dir_ = dir;
    ck_ = open_checkpoint(dir_ + "model");
    load_model(model_, ck_.config, *ck_.tensors, *backend_);
    ref_ = std::make_unique<SafetensorsCheckpoint>(reference);
    ids_ = ref_ints(*ref_, "input_ids");
    mask_ = ref_ints(*ref_, "attention_mask");
    labels_ = ref_ints(*ref_, "labels");
    std::vector<int64_t> shape = ref_->shape("input_ids");
    B_ = (int)shape[0];
    T_ = (int)shape[1];
  }

  std::vector<float> forward(bool causal, bool training) {
    ForwardOptions opt;
    opt.causal = causal;
    opt.training = training;  // with zero dropout rates: must equal eval mode
    model_forward(model_, ids_.data(), mask_.data(), B_, T_, opt);
    return download_tensor(model_, model_.acts.final_hidden, (size_t)B_ * T_ * model_.config.hidden_size);
  }

  std::vector<float> logits() {
    lm_head_forward(model_);
    return download_tensor(model_, model_.acts.logits, (size_t)B_ * T_ * model_.config.vocab_size);
  }

  // With the adapter loaded: hidden states, logits, the shifted MNTP loss and its gradient w.r.t. every
  // LoRA A and B against the reference tensors `<prefix>.hidden`, `.logits`, `.loss` and
  // `<grad_prefix>.<name>`.
  // Gradients are compared relative to the largest gradient of the same tensor (1e-4): a gradient is a
  // sum over all positions, so its absolute error scales with the tensor's magnitude, while any real
  // error (wrong mask, scale, transpose) is O(1) relative.
  void expect_lora_matches(bool causal, const std::string& prefix, const std::string& grad_prefix,
                           const std::string& label) {
    const int C = model_.config.hidden_size, V = model_.config.vocab_size;
    std::vector<float> h = forward(causal, true);
    compare_rows(h, ref_f32(*ref_, prefix + ".hidden"), mask_, C, 0.0, 2e-5, label + ".hidden");
    compare_rows(logits(), ref_f32(*ref_, prefix + ".logits"), mask_, V, 0.0, 2e-5, label + ".logits");
    zero_grads(model_);
    const float loss = mntp_loss(model_, labels_.data(), true);
    const float want_loss = ref_f32(*ref_, prefix + ".loss")[0];
    EXPECT_NEAR(loss, want_loss, 2e-5 * std::fabs(want_loss)) << label;
    std::printf("  %-58s ours %.7f  reference %.7f\n", (label + ".loss").c_str(), loss, want_loss);
    Worst worst_grad;
    for (const TrainableParam& p : model_.trainable) {
      std::vector<float> g = download_floats(model_, p.grad, p.count);
      std::vector<float> want = ref_f32(*ref_, grad_prefix + "." + p.name);
      double scale = 0.0, err = 0.0;
      for (size_t i = 0; i < want.size(); ++i) {
        scale = std::max(scale, (double)std::fabs(want[i]));
        err = std::max(err, std::fabs((double)g[i] - want[i]));
      }
      EXPECT_LE(err, 1e-4 * scale) << label << " " << p.name << " (max|grad| " << scale << ")";
      worst_grad.abs = std::max(worst_grad.abs, err);
      worst_grad.rel = std::max(worst_grad.rel, scale > 0 ? err / scale : err);
    }
    EXPECT_EQ(model_.trainable.size(), (size_t)model_.config.num_hidden_layers * 14);
    std::printf("  %-58s max abs err %.3g  rel to max|ref| of tensor %.3g\n", (label + ".grad (all LoRA A/B)").c_str(),
                worst_grad.abs, worst_grad.rel);
  }

  std::string dir_;
  std::unique_ptr<Backend> backend_ = make_cpu_backend();
  Checkpoint ck_;
  Model model_;
  std::unique_ptr<SafetensorsCheckpoint> ref_;
  std::vector<int> ids_, mask_, labels_;
  int B_ = 0, T_ = 0;
};

TEST_P(HfFixture, RopeFrequenciesMatchTransformers) {
  std::vector<float> want = ref_f32(*ref_, "rope.inv_freq");
  std::vector<float> got = rope_inv_freq(model_.config);
  // fp32 pow in torch vs libm: a few ulps.
  compare_rows(got, want, {}, 1, 0.0, 1e-6, std::string(GetParam()) + " rope.inv_freq");
}

// Base model, causal (transformers) and bidirectional (llm2vec): last hidden state and logits.
// Hidden states are O(1) after the final norm; 2e-5 of the largest value is ~100 fp32 ulps of
// accumulated reordering over a few layers, far below what any wrong op produces (>= 1e-2).
TEST_P(HfFixture, BaseModelMatchesTransformersAndLlm2vec) {
  const int C = model_.config.hidden_size, V = model_.config.vocab_size;
  for (bool causal : {true, false}) {
    const std::string mode = causal ? "causal" : "bidir";
    std::vector<float> h = forward(causal, false);
    compare_rows(h, ref_f32(*ref_, mode + ".hidden"), mask_, C, 0.0, 2e-5,
                 std::string(GetParam()) + " " + mode + ".hidden");
    compare_rows(logits(), ref_f32(*ref_, mode + ".logits"), mask_, V, 0.0, 2e-5,
                 std::string(GetParam()) + " " + mode + ".logits");
  }
}

// With the PEFT adapter (r=4, alpha=8, nonzero B), causal (PEFT on transformers) and bidirectional
// (PEFT on llm2vec's class).
TEST_P(HfFixture, LoraForwardLossAndGradientsMatchPeft) {
  load_peft_adapter(model_, dir_ + "adapter");
  for (bool causal : {true, false}) {
    const std::string mode = causal ? "causal" : "bidir";
    expect_lora_matches(causal, mode + ".lora", mode + ".grad", std::string(GetParam()) + " " + mode + ".lora");
  }
}

// llm2vec saves adapters around the inner decoder (base_model.model.layers.…); both layouts must load
// to the same adapter.
TEST_P(HfFixture, Llm2vecAdapterLayoutLoadsTheSameWeights) {
  load_peft_adapter(model_, dir_ + "adapter");
  std::vector<float> a = forward(false, false);
  load_peft_adapter(model_, dir_ + "adapter_inner");
  std::vector<float> b = forward(false, false);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(float)));
}

INSTANTIATE_TEST_SUITE_P(Models, HfFixture, ::testing::Values("stories260k", "mistral_tiny", "qwen2_tiny", "llama3_tiny"));

// LoRA scales other than the default alpha = 2r (scale 2) that every fixture above uses
// (test/fixtures/lora_scale/, scripts/make_lora_scale_fixtures.py): the same A and B on llama3_tiny with
// r = 4, lora_alpha = 6, as alpha6/ (scale alpha / r = 1.5) and with use_rslora as rslora/ (alpha /
// sqrt(r) = 3). A scale hard-coded to 2, alpha / r applied to an rslora adapter, or use_rslora read and
// then ignored fails the forward and gradients, and the merged weights (PEFT's merge_and_unload).
class LoraScale : public HfFixture {
 protected:
  void SetUp() override { open(kFixtures + "llama3_tiny/", kFixtures + "lora_scale/reference.safetensors"); }
};

TEST_P(LoraScale, ForwardLossGradientsAndMergeMatchPeft) {
  const std::string adapter = GetParam();
  load_peft_adapter(model_, kFixtures + "lora_scale/" + adapter);
  EXPECT_EQ(model_.lora.use_rslora, adapter == "rslora");
  EXPECT_EQ(model_.lora.scale(), adapter == "rslora" ? 3.0f : 1.5f);
  expect_lora_matches(false, adapter, adapter + ".grad", "lora_scale " + adapter);
  // merged = W0 + scale * sum_k B_ik A_kj: r = 4 products, the scale and the addition, each rounded
  // in fp32, so |error| <= (r + 2) u (|W0| + scale sum_k |B_ik A_kj|) <= 6 u max|merged| up to the
  // cancellation, which at these magnitudes (|W0| ~ 0.1, |scale B A| ~ 0.1) is at most a factor ~2:
  // 12 u relative to the largest merged value. A wrong scale errs by ~0.05 absolute.
  merge_and_unload_lora(model_);
  int compared = 0;
  for (const NamedWeight& w : model_weights(model_)) {
    const std::string key = adapter + ".merged." + w.name;
    if (!ref_->has(key)) continue;
    compare_rows(download_weight(model_, w), ref_f32(*ref_, key), {}, 1, 0.0, 12 * 0x1p-24, key);
    ++compared;
  }
  EXPECT_EQ(compared, 2);
}

INSTANTIATE_TEST_SUITE_P(Adapters, LoraScale, ::testing::Values("alpha6", "rslora"));

TEST(TorchAdamW, FiveStepsMatchTorchOptimAdamW) {
  SafetensorsCheckpoint ref(kFixtures + "adamw.safetensors");
  std::vector<float> p = ref_f32(ref, "param0"), m(p.size(), 0.0f), v(p.size(), 0.0f);
  for (int step = 1; step <= 5; ++step) {
    std::vector<float> g = ref_f32(ref, "grad." + std::to_string(step));
    // The fixture's hyper-parameters (scripts/make_hf_fixtures.py): lr 1e-2, betas (0.9, 0.999), eps 1e-8, wd 0.1.
    cpu::adamw_update(p.data(), g.data(), m.data(), v.data(), (long)p.size(), 1e-2f, 0.9f, 0.999f, 1e-8f, 0.1f, step);
    std::vector<float> want = ref_f32(ref, "param." + std::to_string(step));
    // torch keeps the hyper-parameters as Python doubles and rounds 1-beta etc. differently from our
    // fp32 arguments: a few ulps of the parameter per step.
    compare_rows(p, want, {}, 1, 1e-6, 1e-6, "adamw step " + std::to_string(step));
  }
}

}  // namespace
}  // namespace l2v
