// Whole-model tests of the schedule in model/model.cpp on the CPU backend: LoRA gradients against
// finite differences, exact properties of bidirectional/causal attention, padding, LoRA merging,
// dropout determinism, recomputation, config/checkpoint errors, and greedy decoding of the real
// stories260K model against the text published with it.
#include <gtest/gtest.h>

#include <cstring>
#include <fstream>
#include <map>
#include <sstream>
#include <type_traits>
#include <utility>

#include <nlohmann/json.hpp>

#include "data/llama2c_tokenizer.h"
#include "host/cpu_backend.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "model/model.h"
#include "test/test_util.h"
#include "test/tiny_model.h"

namespace l2v {
namespace {

using test::add_random_lora;
using test::all_grads;
using test::Batch;
using test::hidden;
using test::loss_and_grads;
using test::MemoryTensors;
using test::padded_batch;
using test::random_weights;
using test::tiny_config;
using test::TinyModel;

// ---------------------------------------------------------------------------------------------
// Gradients of the whole model w.r.t. every LoRA parameter against central differences of the MNTP
// loss, with attention dropout and LoRA dropout active (fixed seed: the loss is then a deterministic
// function of the parameters, so the check also proves that backward regenerates the forward's masks).
struct GradCase {
  bool causal, qkv_bias, dropout, recompute;
};

class ModelGrad : public ::testing::TestWithParam<GradCase> {};

TEST_P(ModelGrad, LoraGradientsMatchFiniteDifferences) {
  const GradCase gc = GetParam();
  TinyModel tm(gc.qkv_bias, 3);
  Model& m = tm.model;
  add_random_lora(m, 2, 4.0f, gc.dropout ? 0.2f : 0.0f, 5);
  Batch b = padded_batch(m.config.vocab_size, 7);
  ForwardOptions opt;
  opt.causal = gc.causal;
  opt.training = true;
  opt.attn_dropout = gc.dropout ? 0.3f : 0.0f;
  opt.seed = 99;
  opt.recompute_layers = gc.recompute ? m.config.num_hidden_layers : 0;
  loss_and_grads(m, b, opt);
  auto loss = [&]() {
    model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, opt);
    return (double)mntp_loss(m, b.labels.data(), false);
  };
  // Numeric derivative by Richardson extrapolation of central differences, (4 D(h/2) - D(h)) / 3, which
  // cancels the h^2 truncation term (the gradients here reach ~2, and curvature made a plain central
  // difference with h = 1e-2 off by ~1e-3). With h = 2e-2, fp32 roundoff of the loss (~1e-6 absolute)
  // contributes ~1e-4 after division. Tolerance 2e-4 + 1e-2 |g|: a wrong term (a missing scale, sign,
  // head or mask) shows up as an O(1) relative error.
  auto perturbed = [&](float* x, float v) {
    const float x0 = *x;
    *x = v;
    double l = loss();
    *x = x0;
    return l;
  };
  size_t checked = 0;
  double max_abs = 0.0;
  for (TrainableParam& p : m.trainable) {
    std::vector<float> analytic = download_floats(m, p.grad, p.count);
    for (size_t k = 0; k < 6; ++k) {
      const size_t i = (k * 7919 + 13) % p.count;
      float* x = p.value + i;
      auto central = [&](double h) {
        const float xp = (float)(*x + h), xm = (float)(*x - h);
        return (perturbed(x, xp) - perturbed(x, xm)) / ((double)xp - (double)xm);
      };
      const double numeric = (4.0 * central(1e-2) - central(2e-2)) / 3.0;
      EXPECT_NEAR(analytic[i], numeric, 2e-4 + 1e-2 * std::fabs(numeric)) << p.name << "[" << i << "]";
      max_abs = std::max(max_abs, std::fabs(numeric));
      ++checked;
    }
  }
  EXPECT_EQ(checked, m.trainable.size() * 6);
  EXPECT_GT(max_abs, 1e-2) << "vacuous: all gradients ~0";
}

INSTANTIATE_TEST_SUITE_P(All, ModelGrad,
                         ::testing::Values(GradCase{false, false, false, false}, GradCase{true, false, false, false},
                                           GradCase{false, true, true, false}, GradCase{true, true, true, true}));

// ---------------------------------------------------------------------------------------------
TEST(ModelProperties, BidirectionalSeesTheFutureCausalDoesNot) {
  TinyModel tm;
  Model& m = tm.model;
  const int T = 8, C = m.config.hidden_size;
  std::vector<int> ids = {1, 5, 9, 2, 30, 7, 11, 4}, changed = ids;
  changed[T - 1] = 20;
  for (bool causal : {true, false}) {
    ForwardOptions opt;
    opt.causal = causal;
    model_forward(m, ids.data(), nullptr, 1, T, opt);
    std::vector<float> a = hidden(m);
    model_forward(m, changed.data(), nullptr, 1, T, opt);
    std::vector<float> b = hidden(m);
    double diff0 = 0.0;
    for (int c = 0; c < C; ++c) diff0 = std::max(diff0, (double)std::fabs(a[c] - b[c]));
    if (causal)
      EXPECT_EQ(0.0, diff0) << "causal: position 0 must not depend on the last token";
    else
      EXPECT_GT(diff0, 1e-3) << "bidirectional: position 0 must depend on the last token";
    // The last position itself always changes.
    double diff_last = 0.0;
    for (int c = 0; c < C; ++c) diff_last = std::max(diff_last, (double)std::fabs(a[(T - 1) * C + c] - b[(T - 1) * C + c]));
    EXPECT_GT(diff_last, 1e-3);
  }
}

TEST(ModelProperties, PaddingTokensDoNotChangeRealOutputs) {
  TinyModel tm(true);
  Model& m = tm.model;
  Batch b = padded_batch(m.config.vocab_size, 11);
  const int C = m.config.hidden_size;
  for (bool causal : {true, false}) {
    ForwardOptions opt;
    opt.causal = causal;
    model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, opt);
    std::vector<float> ref = hidden(m);
    std::vector<int> other = b.ids;
    for (size_t i = 0; i < other.size(); ++i)
      if (!b.mask[i]) other[i] = (other[i] + 13) % m.config.vocab_size;
    model_forward(m, other.data(), b.mask.data(), b.B, b.T, opt);
    std::vector<float> got = hidden(m);
    for (size_t i = 0; i < b.mask.size(); ++i) {
      if (!b.mask[i]) continue;
      for (int c = 0; c < C; ++c) {
        ASSERT_EQ(ref[i * C + c], got[i * C + c]) << "token " << i << " causal=" << causal;
      }
    }
  }
}

TEST(ModelProperties, RightPaddingEqualsTheUnpaddedSequence) {
  // Positions are 0..T-1 on every row (as Hugging Face without explicit position ids), so a
  // right-padded row must reproduce the unpadded sequence at its real positions.
  TinyModel tm;
  Model& m = tm.model;
  const int C = m.config.hidden_size;
  std::vector<int> ids = {1, 5, 9, 2, 30}, padded = {1, 5, 9, 2, 30, 17, 3}, mask = {1, 1, 1, 1, 1, 0, 0};
  for (bool causal : {true, false}) {
    ForwardOptions opt;
    opt.causal = causal;
    model_forward(m, ids.data(), nullptr, 1, 5, opt);
    std::vector<float> ref = hidden(m);
    model_forward(m, padded.data(), mask.data(), 1, 7, opt);
    std::vector<float> got = hidden(m);
    std::vector<double> want(ref.begin(), ref.end());
    EXPECT_TRUE(test::AllClose(got.data(), want.data(), 5 * C, 1e-5, 1e-5)) << "causal=" << causal;
  }
}

TEST(ModelProperties, LoraWithZeroBEqualsTheBaseModel) {
  TinyModel tm(true);
  Model& m = tm.model;
  Batch b = padded_batch(m.config.vocab_size, 12);
  ForwardOptions opt;
  model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, opt);
  std::vector<float> base = hidden(m);
  LoraConfig lc;
  lc.r = 4;
  add_lora(m, lc, 3);  // PEFT init: A random, B = 0
  model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, opt);
  std::vector<float> adapted = hidden(m);
  ASSERT_EQ(base.size(), adapted.size());
  EXPECT_EQ(0, std::memcmp(base.data(), adapted.data(), base.size() * sizeof(float)));
}

TEST(ModelProperties, MergedEqualsUnmergedAndUnmergeRestoresWeights) {
  TinyModel tm(true);
  Model& m = tm.model;
  add_random_lora(m, 4, 8.0f, 0.0f, 3);
  Batch b = padded_batch(m.config.vocab_size, 13);
  const Linear& q0 = m.layers[0].linear[kQ];
  std::vector<float> w_before = download_tensor(m, q0.weight, (size_t)q0.in * q0.out);
  for (bool causal : {true, false}) {
    ForwardOptions opt;
    opt.causal = causal;
    model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, opt);
    std::vector<float> unmerged = hidden(m);
    merge_lora(m);
    model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, opt);
    std::vector<float> merged = hidden(m);
    unmerge_lora(m);
    std::vector<double> want(unmerged.begin(), unmerged.end());
    // Merging reassociates x(W + sBA)^T vs xW^T + s(xA^T)B^T: equal up to fp32 rounding.
    EXPECT_TRUE(test::AllClose(merged.data(), want.data(), want.size(), 2e-5, 2e-5)) << "causal=" << causal;
  }
  std::vector<float> w_after = download_tensor(m, q0.weight, w_before.size());
  std::vector<double> want(w_before.begin(), w_before.end());
  EXPECT_TRUE(test::AllClose(w_after.data(), want.data(), want.size(), 1e-6, 1e-6));
  EXPECT_THROW(unmerge_lora(m), std::runtime_error);
}

TEST(ModelProperties, DropoutIsDeterministicPerSeedAndOffOutsideTraining) {
  TinyModel tm;
  Model& m = tm.model;
  add_random_lora(m, 2, 16.0f, 0.1f, 3);
  Batch b = padded_batch(m.config.vocab_size, 14);
  ForwardOptions opt;
  opt.training = true;
  opt.attn_dropout = 0.3f;
  opt.seed = 1234;
  loss_and_grads(m, b, opt);
  std::vector<float> h1 = hidden(m), g1 = all_grads(m);
  loss_and_grads(m, b, opt);
  std::vector<float> h2 = hidden(m), g2 = all_grads(m);
  EXPECT_EQ(0, std::memcmp(h1.data(), h2.data(), h1.size() * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(g1.data(), g2.data(), g1.size() * sizeof(float)));
  opt.seed = 1235;
  loss_and_grads(m, b, opt);
  std::vector<float> h3 = hidden(m);
  EXPECT_NE(0, std::memcmp(h1.data(), h3.data(), h1.size() * sizeof(float)));
  // training=false: dropout rates are ignored and the result equals a run with no dropout at all.
  ForwardOptions eval = opt, none;
  eval.training = false;
  model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, eval);
  std::vector<float> he = hidden(m);
  model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, none);
  std::vector<float> hn = hidden(m);
  EXPECT_EQ(0, std::memcmp(he.data(), hn.data(), he.size() * sizeof(float)));
  EXPECT_NE(0, std::memcmp(h1.data(), he.data(), h1.size() * sizeof(float)));
}

TEST(ModelProperties, RecomputationGivesBitIdenticalGradients) {
  TinyModel tm(true);
  Model& m = tm.model;
  add_random_lora(m, 2, 16.0f, 0.1f, 3);
  Batch b = padded_batch(m.config.vocab_size, 15);
  ForwardOptions opt;
  opt.training = true;
  opt.attn_dropout = 0.2f;
  opt.seed = 77;
  float l1 = loss_and_grads(m, b, opt);
  std::vector<float> g1 = all_grads(m);
  // Every split between recomputed and stored layers (selective recomputation), up to all of them.
  const int L = m.config.num_hidden_layers;
  ASSERT_GE(L, 2);
  for (int k = 1; k <= L; ++k) {
    opt.recompute_layers = k;
    float l2 = loss_and_grads(m, b, opt);
    std::vector<float> g2 = all_grads(m);
    EXPECT_EQ(l1, l2) << k << " layers recomputed";
    ASSERT_EQ(g1.size(), g2.size());
    EXPECT_EQ(0, std::memcmp(g1.data(), g2.data(), g1.size() * sizeof(float))) << k << " layers recomputed";
    EXPECT_EQ((int)m.acts.layers.size(), L - k + 1) << "activation slots with " << k << " layers recomputed";
  }
}

TEST(ModelProperties, GradientsAccumulateOverMicroBatches) {
  TinyModel tm;
  Model& m = tm.model;
  add_random_lora(m, 2, 16.0f, 0.0f, 3);
  Batch b = padded_batch(m.config.vocab_size, 16);
  ForwardOptions opt;
  loss_and_grads(m, b, opt);
  std::vector<float> once = all_grads(m);
  model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, opt);
  mntp_loss(m, b.labels.data(), true);  // no zero_grads: adds a second copy
  std::vector<float> twice = all_grads(m);
  std::vector<double> want(once.size());
  for (size_t i = 0; i < once.size(); ++i) want[i] = 2.0 * once[i];
  EXPECT_TRUE(test::AllClose(twice.data(), want.data(), want.size(), 1e-7, 1e-6));
}

// ---------------------------------------------------------------------------------------------
TEST(ModelErrors, ConfigErrorsNameTheField) {
  nlohmann::json good = {{"model_type", "llama"}, {"vocab_size", 32}, {"hidden_size", 16},
                         {"intermediate_size", 24}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                         {"rms_norm_eps", 1e-5}};
  EXPECT_NO_THROW(parse_hf_config(good, "cfg.json"));
  auto message = [](const nlohmann::json& j) {
    try {
      parse_hf_config(j, "cfg.json");
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  for (const char* field : {"vocab_size", "hidden_size", "num_hidden_layers", "rms_norm_eps", "model_type"}) {
    nlohmann::json j = good;
    j.erase(field);
    std::string msg = message(j);
    EXPECT_NE(msg.find(field), std::string::npos) << msg;
    EXPECT_NE(msg.find("cfg.json"), std::string::npos) << msg;
  }
  nlohmann::json j = good;
  j["model_type"] = "gpt2";
  EXPECT_NE(message(j).find("gpt2"), std::string::npos);
  j = good;
  j["hidden_size"] = "sixteen";
  EXPECT_NE(message(j).find("hidden_size"), std::string::npos);
  j = good;
  j["num_key_value_heads"] = 3;
  EXPECT_NE(message(j).find("num_key_value_heads"), std::string::npos);
  j = good;
  j["rope_scaling"] = {{"rope_type", "yarn"}, {"factor", 4.0}};
  EXPECT_NE(message(j).find("yarn"), std::string::npos);
  j = good;
  j["rope_scaling"] = {{"rope_type", "llama3"}, {"factor", 8.0}};
  EXPECT_NE(message(j).find("low_freq_factor"), std::string::npos);
}

TEST(ModelErrors, ConfigValuesAreReadExactlyOrRefused) {
  // No narrowing (nlohmann's get<int> reads 2^32 + 512 as 512, 64.9 as 64 and true as 1), and the
  // values a forward pass divides by or takes powers of must be positive.
  const nlohmann::json good = {{"model_type", "llama"}, {"vocab_size", 32}, {"hidden_size", 16},
                               {"intermediate_size", 24}, {"num_hidden_layers", 2}, {"num_attention_heads", 4},
                               {"rms_norm_eps", 1e-5}};
  auto message = [&](const char* key, const nlohmann::json& value) {
    nlohmann::json j = good;
    j[key] = value;
    try {
      parse_hf_config(j, "dir/config.json");
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_EQ(message("vocab_size", 4294967808ull),
            "dir/config.json: field 'vocab_size' = 4294967808 is out of range for a 32-bit integer");
  EXPECT_EQ(message("vocab_size", -4294967296ll),
            "dir/config.json: field 'vocab_size' = -4294967296 is out of range for a 32-bit integer");
  EXPECT_EQ(message("hidden_size", 64.9), "dir/config.json: field 'hidden_size' must be an integer, got 64.9 (number)");
  EXPECT_EQ(message("num_hidden_layers", true),
            "dir/config.json: field 'num_hidden_layers' must be an integer, got true (boolean)");
  EXPECT_EQ(message("bos_token_id", 4294967297ull),
            "dir/config.json: field 'bos_token_id' = 4294967297 is out of range for a 32-bit integer");
  EXPECT_EQ(message("tie_word_embeddings", 1),
            "dir/config.json: field 'tie_word_embeddings' must be true or false, got 1 (number)");
  EXPECT_EQ(message("rms_norm_eps", 0), "dir/config.json: field 'rms_norm_eps' must be positive, got 0.0");
  EXPECT_EQ(message("rms_norm_eps", -1e-6), "dir/config.json: field 'rms_norm_eps' must be positive, got -1e-06");
  EXPECT_EQ(message("rms_norm_eps", 1e300), "dir/config.json: field 'rms_norm_eps' = 1e+300 is out of range for a float");
  EXPECT_EQ(message("rope_theta", 0.0), "dir/config.json: field 'rope_theta' must be positive, got 0.0");
  EXPECT_EQ(message("rope_theta", -10000), "dir/config.json: field 'rope_theta' must be positive, got -10000.0");
  EXPECT_EQ(message("max_position_embeddings", 0),
            "dir/config.json: field 'max_position_embeddings' must be positive, got 0");
  EXPECT_EQ(message("rope_scaling", nlohmann::json({{"rope_type", "llama3"}, {"factor", 0}, {"low_freq_factor", 1},
                                                    {"high_freq_factor", 4}, {"original_max_position_embeddings", 8192}})),
            "dir/config.json rope_scaling: field 'factor' must be positive, got 0.0");
  // Integral JSON numbers are fine for float fields, and exact values of int fields are kept.
  EXPECT_EQ(message("rope_theta", 500000), "no error");
  nlohmann::json j = good;
  j["vocab_size"] = 2147483647;
  EXPECT_EQ(parse_hf_config(j, "dir/config.json").vocab_size, 2147483647);
}

TEST(ModelErrors, MissingOrMisshapenTensorsNameTheTensor) {
  ModelConfig c = tiny_config(true);
  auto message = [&](MemoryTensors& w) {
    auto be = make_cpu_backend();
    Model m;
    try {
      load_model(m, c, w, *be);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  MemoryTensors w = random_weights(c, 1);
  w.erase("model.layers.1.self_attn.k_proj.bias");
  std::string msg = message(w);
  EXPECT_NE(msg.find("model.layers.1.self_attn.k_proj.bias"), std::string::npos) << msg;
  EXPECT_NE(msg.find("memory-tensors"), std::string::npos) << msg;
  w = random_weights(c, 1);
  w.add("model.layers.0.mlp.up_proj.weight", {16, 24}, std::vector<float>(16 * 24));
  msg = message(w);
  EXPECT_NE(msg.find("model.layers.0.mlp.up_proj.weight"), std::string::npos) << msg;
  EXPECT_NE(msg.find("[24, 16]"), std::string::npos) << msg;
}

TEST(ModelErrors, BadTokenIdsAndMasksAreRejected) {
  TinyModel tm;
  Model& m = tm.model;
  std::vector<int> ids = {1, 2, 32}, mask = {1, 1, 1};
  EXPECT_THROW(model_forward(m, ids.data(), mask.data(), 1, 3, ForwardOptions{}), std::runtime_error);
  ids[2] = 3;
  mask[1] = 2;
  EXPECT_THROW(model_forward(m, ids.data(), mask.data(), 1, 3, ForwardOptions{}), std::runtime_error);
}

// ---------------------------------------------------------------------------------------------
std::string asset(const std::string& name) {
  for (std::string dir : {"assets/stories260K/", "../shared/data/llama2c/"}) {
    std::ifstream f(dir + name);
    if (f) return dir + name;
  }
  return "assets/stories260K/" + name;
}

// The published greedy sample of stories260K: a causal forward pass, the llama2.c checkpoint import
// (including the RoPE row permutation) and the tokenizer's decoding must all be right to reproduce it.
TEST(Stories260K, GreedyDecodingFromBosReproducesThePublishedText) {
  Checkpoint ck = open_checkpoint(asset("stories260K.bin"));
  auto be = make_cpu_backend();
  Model m;
  load_model(m, ck.config, *ck.tensors, *be);
  Llama2cTokenizer tok = load_llama2c_tokenizer(asset("tok512.bin"), ck.config.vocab_size);
  std::ifstream f(asset("greedy_from_bos.txt"));
  ASSERT_TRUE(f);
  std::stringstream ss;
  ss << f.rdbuf();
  std::string expected = ss.str();
  // run.c ends its output with a newline of its own after the last token.
  ASSERT_FALSE(expected.empty());
  ASSERT_EQ('\n', expected.back());
  expected.pop_back();
  // llama2.c's run.c with -n 256 counts the BOS position among its 256 steps: 255 generated tokens.
  std::vector<GreedyStep> steps = greedy_decode(m, {1}, 255);
  std::string text;
  int prev = 1;
  float min_margin = INFINITY;
  size_t min_step = 0;
  for (size_t i = 0; i < steps.size(); ++i) {
    text += decode_piece(tok, prev, steps[i].token);
    prev = steps[i].token;
    if (steps[i].margin < min_margin) {
      min_margin = steps[i].margin;
      min_step = i;
    }
    if (expected.compare(0, text.size(), text) != 0) {
      FAIL() << "diverges at step " << i << " (top-1/top-2 logit margin " << steps[i].margin << ")\n got: " << text
             << "\nwant: " << expected.substr(0, text.size());
    }
  }
  EXPECT_EQ(expected, text);
  // Reported, not asserted: shows how close the nearest tie came (see the closing note of the issue).
  std::printf("smallest top-1/top-2 logit margin over 255 steps: %.5f at step %zu\n", min_margin, min_step);
}

}  // namespace
}  // namespace l2v

namespace l2v {
namespace {

// ForwardOptions::inference (embed, eval, generate): the hidden states equal the full forward's bit for
// bit (the same ops on the same values, only the buffers differ), with an unmerged LoRA adapter and
// padding; the activation memory it allocates does not depend on the depth (one slot, two residual
// buffers, no backward buffers) while the full forward's grows with every layer; nothing can be
// differentiated after it.
TEST(Model, InferenceForwardHoldsOneLayerAndEqualsTheFullForward) {
  size_t inference_bytes[2] = {0, 0}, full_bytes[2] = {0, 0};
  for (int depth : {0, 1}) {
    nlohmann::json j = {{"model_type", "llama"},     {"vocab_size", 32},         {"hidden_size", 16},
                        {"intermediate_size", 24},   {"num_hidden_layers", depth ? 6 : 2},
                        {"num_attention_heads", 4},  {"num_key_value_heads", 2}, {"rms_norm_eps", 1e-5}};
    const ModelConfig c = parse_hf_config(j, "inference test");
    std::unique_ptr<Backend> be = make_cpu_backend();
    Model m;
    load_model(m, c, test::random_weights(c, 5), *be);
    add_random_lora(m, 4, 8.0f, 0.1f, 6);
    const Batch b = test::padded_batch(c.vocab_size, 7);
    ForwardOptions full;
    const size_t before_full = cpu_backend_memory(*be).current;
    model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, full);
    full_bytes[depth] = cpu_backend_memory(*be).current - before_full;
    const std::vector<float> want = hidden(m);
    m.release_activations();
    ForwardOptions inference;
    inference.inference = true;
    const size_t before = cpu_backend_memory(*be).current;
    model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, inference);
    inference_bytes[depth] = cpu_backend_memory(*be).current - before;
    EXPECT_EQ(hidden(m), want) << c.num_hidden_layers << " layers";
    EXPECT_THROW(model_backward(m, m.acts.final_hidden), std::runtime_error);
    EXPECT_THROW(mntp_loss(m, b.labels.data(), true), std::runtime_error);
    EXPECT_NO_THROW(mntp_loss(m, b.labels.data(), false));
    inference.training = true;
    EXPECT_THROW(model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, inference), std::runtime_error);
  }
  EXPECT_EQ(inference_bytes[0], inference_bytes[1]) << "inference memory grew with the depth";
  EXPECT_GT(full_bytes[1], full_bytes[0]);
  EXPECT_LT(inference_bytes[1] * 3, full_bytes[1]);
  std::printf("activation bytes, 2 / 6 layers: full forward %zu / %zu, inference %zu / %zu\n", full_bytes[0],
              full_bytes[1], inference_bytes[0], inference_bytes[1]);
}

}  // namespace
}  // namespace l2v

namespace l2v {
namespace {

// Tensor handles (model/backend.h) cannot be offset or mixed up with fp32 buffers: `t + n` (wrong for
// bf16 storage) and the conversions to and from float* do not compile; tensor_offset steps by the
// backend's element size.
template <typename P, typename = void>
struct Offsettable : std::false_type {};
template <typename P>
struct Offsettable<P, std::void_t<decltype(std::declval<P>() + 1)>> : std::true_type {};
static_assert(!Offsettable<Tensor>::value && !Offsettable<ConstTensor>::value, "a tensor handle was offset");
static_assert(Offsettable<float*>::value, "the detector detects nothing");
static_assert(!std::is_convertible<Tensor, float*>::value && !std::is_convertible<float*, Tensor>::value &&
                  !std::is_convertible<ConstTensor, const float*>::value,
              "tensors and fp32 buffers must not convert into each other");

TEST(Model, TensorOffsetStepsByTheBackendsElementSize) {
  std::unique_ptr<Backend> be = make_cpu_backend();
  Tensor t = static_cast<Tensor>(be->alloc(64));
  EXPECT_EQ(reinterpret_cast<char*>(tensor_offset(*be, t, 3)) - reinterpret_cast<char*>(t), 12);
  be->release(t);
}

}  // namespace
}  // namespace l2v
