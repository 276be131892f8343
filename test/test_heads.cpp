// The embedding heads against independent references (test/fixtures/heads/, written by
// scripts/make_head_fixtures.py from llm2vec 0.2.3 and torch; see test/fixtures/README.md):
//  - pooling_weights + cpu::pool_forward vs llm2vec's LLM2Vec.get_pooling, every mode, and the refusals;
//  - contrastive_loss vs llm2vec's HardNegativeNLLLoss (SimCSE, supervised) and the plain-torch
//    variant without in-batch negatives, loss and gradients;
//  - the NV-Embed latent-attention block vs a torch module with the checkpoint's parameter names
//    (output, input and parameter gradients), vs central differences of our own forward, and exact
//    properties (rows independent of each other, chunked inference = cached forward).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <numeric>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "host/cpu_ops.h"
#include "model/latent_attention.h"
#include "model/pooling.h"
#include "model/safetensors.h"
#include "test/test_util.h"

namespace l2v {
namespace {

const std::string kHeads = "test/fixtures/heads/";

std::vector<float> read(const SafetensorsCheckpoint& f, const std::string& name) {
  size_t n = 1;
  for (int64_t s : f.shape(name)) n *= (size_t)s;
  std::vector<float> v(n);
  f.read_f32(name, v.data(), n);
  return v;
}

std::vector<int> read_ints(const SafetensorsCheckpoint& f, const std::string& name) {
  const auto v = f.read_i64(name);
  return std::vector<int>(v.begin(), v.end());
}

// Passes when every |got - want| <= rel * max|want|; prints the worst error in those units, so the
// test log shows how close each comparison is.
::testing::AssertionResult CloseRelMax(const std::string& what, const float* got, const std::vector<float>& want,
                                       double rel) {
  double scale = 0.0, worst = 0.0;
  for (float w : want) scale = std::max(scale, (double)std::fabs(w));
  for (size_t i = 0; i < want.size(); ++i) {
    const double e = std::fabs((double)got[i] - want[i]);
    worst = std::isnan(e) ? INFINITY : std::max(worst, e);
  }
  std::printf("  %-72s max|err|/max|ref| = %.3g (max|ref| %.3g)\n", what.c_str(), scale > 0 ? worst / scale : worst,
              scale);
  const std::vector<double> ref(want.begin(), want.end());
  const std::vector<double> tol(want.size(), rel * std::max(scale, 1e-30));
  ::testing::AssertionResult r = test::AllWithin(got, ref.data(), tol.data(), want.size());
  if (!r) r << " (" << what << ")";
  return r;
}

// ---------------------------------------------------------------------------------------------
// pooling
// ---------------------------------------------------------------------------------------------

struct PoolingFixture {
  SafetensorsCheckpoint f{kHeads + "pooling.safetensors"};
  EmbedBatch batch;
  int C = 0, bos = 0, eos = 0;
  std::vector<float> hidden;
  PoolingFixture() {
    const auto shape = f.shape("hidden");
    batch.B = (int)shape[0];
    batch.T = (int)shape[1];
    C = (int)shape[2];
    batch.ids = read_ints(f, "input_ids");
    batch.key_mask = read_ints(f, "attention_mask");
    batch.embed_mask = read_ints(f, "embed_mask");
    bos = (int)f.read_i64("bos_id")[0];
    eos = (int)f.read_i64("eos_id")[0];
    hidden = read(f, "hidden");
  }
};

const char* const kLlm2vecModes[] = {"mean", "weighted_mean", "eos_token", "last_token", "bos_token"};

TEST(Pooling, WeightsAndPooledMatchLlm2vecGetPooling) {
  PoolingFixture fx;
  for (const char* name : kLlm2vecModes) {
    SCOPED_TRACE(name);
    const PoolingMode mode = parse_pooling_mode(name);
    EXPECT_STREQ(pooling_mode_name(mode), name);
    const std::vector<float> w = pooling_weights(mode, fx.batch, fx.bos, fx.eos);
    ASSERT_EQ(w.size(), (size_t)fx.batch.B * fx.batch.T);
    // The coefficients are n-th fractions rounded once: within one fp32 rounding of llm2vec's.
    const auto want_w = read(fx.f, std::string(name) + ".weights");
    const std::vector<double> ww(want_w.begin(), want_w.end());
    EXPECT_TRUE(test::AllClose(w.data(), ww.data(), ww.size(), 0.0, test::kU32 * 2));
    std::vector<float> pooled((size_t)fx.batch.B * fx.C);
    cpu::pool_forward(pooled.data(), fx.hidden.data(), w.data(), fx.batch.B, fx.batch.T, fx.C);
    EXPECT_TRUE(CloseRelMax(std::string("pooling ") + name, pooled.data(), read(fx.f, std::string(name) + ".pooled"),
                            1e-6));
  }
  // Latent attention pools its outputs with the mean weights.
  EXPECT_EQ(pooling_weights(PoolingMode::kLatentAttention, fx.batch, fx.bos, fx.eos),
            pooling_weights(PoolingMode::kMean, fx.batch, fx.bos, fx.eos));
}

// Two left-padded rows: [pad BOS 7 EOS] pooling [7 EOS], and [BOS 5 6 EOS] pooling [5 6 EOS].
EmbedBatch small_batch() {
  EmbedBatch b;
  b.B = 2;
  b.T = 4;
  b.ids = {0, 1, 7, 2, 1, 5, 6, 2};
  b.key_mask = {0, 1, 1, 1, 1, 1, 1, 1};
  b.embed_mask = {0, 0, 1, 1, 0, 1, 1, 1};
  return b;
}

// Expects `fn` to throw a message naming "row <row>".
template <class Fn>
void expect_throws_naming_row(Fn fn, int row, const char* what) {
  try {
    fn();
    ADD_FAILURE() << what << ": no exception";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("row " + std::to_string(row)), std::string::npos)
        << what << ": message does not name row " << row << ": " << e.what();
  }
}

TEST(Pooling, RefusesRowsWithNothingToPoolAndMissingSpecialTokens) {
  const int bos = 1, eos = 2;
  const PoolingMode all[] = {PoolingMode::kMean,      PoolingMode::kWeightedMean, PoolingMode::kEosToken,
                             PoolingMode::kLastToken, PoolingMode::kBosToken,     PoolingMode::kLatentAttention};
  for (PoolingMode m : all) EXPECT_NO_THROW(pooling_weights(m, small_batch(), bos, eos)) << pooling_mode_name(m);

  EmbedBatch nothing = small_batch();  // row 1: no position in the embed_mask
  std::fill(nothing.embed_mask.begin() + 4, nothing.embed_mask.end(), 0);
  for (PoolingMode m : {PoolingMode::kMean, PoolingMode::kWeightedMean, PoolingMode::kLatentAttention})
    expect_throws_naming_row([&] { pooling_weights(m, nothing, bos, eos); }, 1, pooling_mode_name(m));

  EmbedBatch empty = small_batch();  // row 1: no real token at all
  std::fill(empty.key_mask.begin() + 4, empty.key_mask.end(), 0);
  std::fill(empty.embed_mask.begin() + 4, empty.embed_mask.end(), 0);
  for (PoolingMode m : all)
    expect_throws_naming_row([&] { pooling_weights(m, empty, bos, eos); }, 1, pooling_mode_name(m));

  EmbedBatch no_eos = small_batch();  // row 0 ends with 9
  no_eos.ids[3] = 9;
  expect_throws_naming_row([&] { pooling_weights(PoolingMode::kEosToken, no_eos, bos, eos); }, 0, "eos_token");
  const auto last = pooling_weights(PoolingMode::kLastToken, no_eos, bos, eos);  // last_token takes any token
  EXPECT_EQ(last, (std::vector<float>{0, 0, 0, 1, 0, 0, 0, 1}));

  EmbedBatch no_bos = small_batch();  // row 1 starts with 4
  no_bos.ids[4] = 4;
  expect_throws_naming_row([&] { pooling_weights(PoolingMode::kBosToken, no_bos, bos, eos); }, 1, "bos_token");
  EXPECT_EQ(pooling_weights(PoolingMode::kBosToken, small_batch(), bos, eos),
            (std::vector<float>{0, 1, 0, 0, 1, 0, 0, 0}));
}

// ---------------------------------------------------------------------------------------------
// contrastive losses
// ---------------------------------------------------------------------------------------------

TEST(ContrastiveLoss, MatchesLlm2vecHardNegativeNLLLossAndTorchAutograd) {
  SafetensorsCheckpoint f(kHeads + "losses.safetensors");
  const auto shape = f.shape("queries");
  const int n = (int)shape[0], dim = (int)shape[1];
  const auto q = read(f, "queries"), p = read(f, "positives"), neg = read(f, "negatives");
  struct Case {
    const char* name;
    bool in_batch, hard_negatives;
  };
  for (const Case& c : {Case{"simcse", true, false}, Case{"supervised", true, true}, Case{"no_in_batch", false, true}}) {
    SCOPED_TRACE(c.name);
    const std::string k = c.name;
    const float scale = read(f, k + ".scale")[0];
    const float* negatives = c.hard_negatives ? neg.data() : nullptr;
    double loss = 0.0;
    std::vector<float> dq(q.size()), dp(p.size()), dn(neg.size());
    cpu::contrastive_loss(&loss, dq.data(), dp.data(), c.hard_negatives ? dn.data() : nullptr, q.data(), p.data(),
                          negatives, n, dim, dim, scale, c.in_batch);
    const std::vector<float> loss_f = {(float)loss};
    EXPECT_TRUE(CloseRelMax(k + " loss", loss_f.data(), read(f, k + ".loss"), 1e-6));
    EXPECT_TRUE(CloseRelMax(k + " d_queries", dq.data(), read(f, k + ".d_queries"), 1e-5));
    EXPECT_TRUE(CloseRelMax(k + " d_positives", dp.data(), read(f, k + ".d_positives"), 1e-5));
    if (c.hard_negatives) {
      EXPECT_TRUE(CloseRelMax(k + " d_negatives", dn.data(), read(f, k + ".d_negatives"), 1e-5));
    }
    // The loss alone (no gradients asked) is the same number.
    double loss_only = 0.0;
    cpu::contrastive_loss(&loss_only, nullptr, nullptr, nullptr, q.data(), p.data(), negatives, n, dim, dim, scale,
                          c.in_batch);
    EXPECT_EQ(loss_only, loss);
    // SimCSE's layout: queries and positives interleaved in one buffer (ld = 2 dim), gradients likewise:
    // the same bits.
    if (c.hard_negatives) continue;
    std::vector<float> pairs((size_t)2 * n * dim), d_pairs(pairs.size());
    for (int i = 0; i < n; ++i) {
      std::copy_n(&q[(size_t)i * dim], dim, &pairs[(size_t)2 * i * dim]);
      std::copy_n(&p[(size_t)i * dim], dim, &pairs[(size_t)(2 * i + 1) * dim]);
    }
    double loss_pairs = 0.0;
    cpu::contrastive_loss(&loss_pairs, d_pairs.data(), d_pairs.data() + dim, nullptr, pairs.data(), pairs.data() + dim,
                          nullptr, n, dim, 2 * dim, scale, c.in_batch);
    EXPECT_EQ(loss_pairs, loss);
    for (int i = 0; i < n; ++i) {
      EXPECT_TRUE(std::equal(dq.begin() + (size_t)i * dim, dq.begin() + (size_t)(i + 1) * dim,
                             d_pairs.begin() + (size_t)2 * i * dim));
      EXPECT_TRUE(std::equal(dp.begin() + (size_t)i * dim, dp.begin() + (size_t)(i + 1) * dim,
                             d_pairs.begin() + (size_t)(2 * i + 1) * dim));
    }
  }
}

// Rows the cosine is undefined for (a zero vector) or non-finite rows give a NaN loss and NaN gradients
// (the trainer reports the loss; the optimizer's norm is then non-finite on every rank); misuse is refused.
TEST(ContrastiveLoss, InvalidRowsGiveNaNLossAndGradientsAndMisuseIsRefused) {
  const int n = 3, C = 4;
  std::vector<float> q(n * C, 0.5f), p(n * C, 0.25f);
  for (int i = 0; i < n * C; ++i) p[i] += 0.1f * i;
  for (const float bad : {0.0f, NAN, INFINITY}) {
    std::vector<float> pb = p;
    if (bad == 0.0f)
      std::fill_n(&pb[C], C, 0.0f);
    else
      pb[C + 2] = bad;
    double loss = 0.0;
    std::vector<float> dq(q.size(), 7.0f), dp(p.size(), 7.0f);
    cpu::contrastive_loss(&loss, dq.data(), dp.data(), nullptr, q.data(), pb.data(), nullptr, n, C, C, 20.0f, true);
    EXPECT_TRUE(std::isnan(loss)) << bad;
    for (const std::vector<float>* d : {&dq, &dp})
      EXPECT_TRUE(std::all_of(d->begin(), d->end(), [](float x) { return std::isnan(x); })) << bad;
  }
  double loss = 0.0;
  EXPECT_THROW(cpu::contrastive_loss(&loss, nullptr, nullptr, nullptr, q.data(), p.data(), nullptr, n, C, C, 20.0f,
                                     /*in_batch_negatives=*/false),
               std::invalid_argument);  // no candidates but the positive: the loss would be 0
  EXPECT_THROW(cpu::contrastive_loss(&loss, nullptr, nullptr, nullptr, q.data(), p.data(), nullptr, 0, C, C, 20.0f, true),
               std::invalid_argument);
  EXPECT_THROW(cpu::contrastive_loss(&loss, nullptr, nullptr, nullptr, q.data(), p.data(), nullptr, n, C, C - 1, 20.0f,
                                     true),
               std::invalid_argument);
  std::vector<float> dq(q.size());
  EXPECT_THROW(cpu::contrastive_loss(&loss, dq.data(), nullptr, nullptr, q.data(), p.data(), nullptr, n, C, C, 20.0f,
                                     true),
               std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------
// latent attention
// ---------------------------------------------------------------------------------------------

struct LatentFixture {
  SafetensorsCheckpoint f;
  LatentAttentionConfig cfg;
  int C = 0, M = 0;
  std::vector<LatentAttentionTensor> tensors;
  std::vector<float> params, x, g;
  explicit LatentFixture(const std::string& name) : f(kHeads + "latent_attention_" + name + ".safetensors") {
    const auto c = f.read_i64("config");  // (num_latents, heads, dim_head, mult, C, M)
    cfg.num_latents = (int)c[0];
    cfg.heads = (int)c[1];
    cfg.dim_head = (int)c[2];
    cfg.mult = (int)c[3];
    C = (int)c[4];
    M = (int)c[5];
    tensors = latent_attention_tensors(cfg, C);
    params.assign(latent_attention_param_count(cfg, C), 0.0f);
    for (const auto& t : tensors) f.read_f32(t.name, params.data() + t.offset, t.count);
    x = read(f, "x");
    g = read(f, "g");
  }
  // The cache of `rows` rows, for forward().
  std::vector<float> cache_for(int rows) const {
    return std::vector<float>(latent_attention_cache_floats(latent_attention_dims(cfg, C), rows), NAN);
  }
  std::vector<float> forward(const std::vector<float>& xs, int rows, std::vector<float>* cache = nullptr) const {
    std::vector<float> z((size_t)rows * C);
    latent_attention_forward(z.data(), cache ? cache->data() : nullptr, xs.data(), params.data(), cfg, rows, C);
    return z;
  }
  double objective() const {  // sum(z * g), in double
    const auto z = forward(x, M);
    return test::dot(z.data(), g.data(), z.size());
  }
};

class LatentAttention : public ::testing::TestWithParam<const char*> {};

TEST_P(LatentAttention, ParameterNamesAndShapesAreTheCheckpointStateDict) {
  LatentFixture fx(GetParam());
  std::map<std::string, std::vector<int64_t>> want;
  for (const auto& name : fx.f.names())
    if (name.rfind("latent_attention_model.", 0) == 0) want[name] = fx.f.shape(name);
  std::map<std::string, std::vector<int64_t>> got;
  size_t offset = 0;
  for (const auto& t : fx.tensors) {
    EXPECT_TRUE(got.emplace(t.name, t.shape).second) << "duplicate " << t.name;
    EXPECT_EQ(t.offset, offset) << t.name;
    EXPECT_EQ(t.count, (size_t)std::accumulate(t.shape.begin(), t.shape.end(), int64_t{1}, std::multiplies<>()))
        << t.name;
    offset += t.count;
  }
  EXPECT_EQ(got, want);
  EXPECT_EQ(latent_attention_param_count(fx.cfg, fx.C), offset);
}

TEST_P(LatentAttention, ForwardAndBackwardMatchTorch) {
  LatentFixture fx(GetParam());
  std::printf("  config %s: num_latents %d heads %d dim_head %d mult %d C %d M %d\n", GetParam(), fx.cfg.num_latents,
              fx.cfg.heads, fx.cfg.dim_head, fx.cfg.mult, fx.C, fx.M);
  const std::string tag = std::string("latent ") + GetParam() + " ";
  std::vector<float> cache = fx.cache_for(fx.M);
  const auto z = fx.forward(fx.x, fx.M, &cache);
  EXPECT_TRUE(CloseRelMax(tag + "z", z.data(), read(fx.f, "z"), 1e-5));
  EXPECT_EQ(fx.forward(fx.x, fx.M), z) << "the forward without a cache must give the same bits";

  std::vector<float> dx((size_t)fx.M * fx.C, NAN), dparams(fx.params.size(), 0.0f);
  latent_attention_backward(dx.data(), dparams.data(), fx.g.data(), cache.data(), fx.params.data(), fx.cfg, fx.M, fx.C);
  EXPECT_TRUE(CloseRelMax(tag + "grad.x", dx.data(), read(fx.f, "grad.x"), 1e-5));
  for (const auto& t : fx.tensors) {
    const std::string short_name = t.name.substr(std::string("latent_attention_model.").size());
    EXPECT_TRUE(CloseRelMax(tag + "grad." + short_name, dparams.data() + t.offset, read(fx.f, "grad." + t.name), 1e-5));
  }

  // Parameter gradients accumulate; dx is overwritten.
  std::vector<float> dx2((size_t)fx.M * fx.C, 123.0f), dparams2 = dparams;
  latent_attention_backward(dx2.data(), dparams2.data(), fx.g.data(), cache.data(), fx.params.data(), fx.cfg, fx.M,
                            fx.C);
  EXPECT_EQ(dx2, dx);
  std::vector<float> twice(dparams.size());
  for (size_t i = 0; i < twice.size(); ++i) twice[i] = 2.0f * dparams[i];
  EXPECT_TRUE(CloseRelMax(tag + "accumulated twice vs 2x once", dparams2.data(), twice, 1e-6));
}

TEST_P(LatentAttention, GradientsMatchCentralDifferencesOfOurForward) {
  LatentFixture fx(GetParam());
  std::vector<float> cache = fx.cache_for(fx.M);
  fx.forward(fx.x, fx.M, &cache);
  std::vector<float> dx((size_t)fx.M * fx.C), dparams(fx.params.size(), 0.0f);
  latent_attention_backward(dx.data(), dparams.data(), fx.g.data(), cache.data(), fx.params.data(), fx.cfg, fx.M, fx.C);
  auto loss = [&] { return fx.objective(); };
  // fp32 forward, double objective: the step trades truncation (h^2) against rounding (eps |L| / h).
  const double h = 1e-2, atol = 5e-4, rtol = 2e-3;
  const size_t checks = 6;
  auto r = test::grad_check(fx.x.data(), fx.x.size(), dx.data(), loss, h, atol, rtol, checks, 7);
  EXPECT_TRUE(test::GradOk(r)) << "x";
  std::printf("  latent %s FD x: worst err/tol %.3g over %zu entries\n", GetParam(), r.worst, r.checked);
  unsigned seed = 11;
  for (const auto& t : fx.tensors) {
    r = test::grad_check(fx.params.data() + t.offset, t.count, dparams.data() + t.offset, loss, h, atol, rtol, checks,
                         seed++);
    EXPECT_TRUE(test::GradOk(r, 1e-3)) << t.name;
    std::printf("  latent %s FD %-62s worst err/tol %.3g, max|numeric| %.3g\n", GetParam(), t.name.c_str(), r.worst,
                r.max_abs_num);
  }
}

TEST_P(LatentAttention, RowsAreIndependentOfTheBatch) {
  LatentFixture fx(GetParam());
  const int C = fx.C;
  // A larger batch than the fixture's, so the GEMMs see full and partial blocks.
  std::mt19937 rng(5);
  const int M = 37;
  const auto xs = test::randn((size_t)M * C, rng, 1.5f);
  const auto z = fx.forward(xs, M);
  std::vector<int> perm(M);
  std::iota(perm.begin(), perm.end(), 0);
  std::shuffle(perm.begin(), perm.end(), rng);
  std::vector<float> xp((size_t)M * C);
  for (int i = 0; i < M; ++i) std::copy_n(&xs[(size_t)perm[i] * C], C, &xp[(size_t)i * C]);
  const auto zp = fx.forward(xp, M);
  double worst_perm = 0.0, worst_single = 0.0;
  for (int i = 0; i < M; ++i)
    for (int c = 0; c < C; ++c)
      worst_perm = std::max(worst_perm, (double)std::fabs(zp[(size_t)i * C + c] - z[(size_t)perm[i] * C + c]));
  for (int i : {0, 17, M - 1}) {  // a row alone
    const std::vector<float> xi(xs.begin() + (size_t)i * C, xs.begin() + (size_t)(i + 1) * C);
    const auto zi = fx.forward(xi, 1);
    for (int c = 0; c < C; ++c)
      worst_single = std::max(worst_single, (double)std::fabs(zi[c] - z[(size_t)i * C + c]));
  }
  double scale = 0.0;
  for (float v : z) scale = std::max(scale, (double)std::fabs(v));
  std::printf("  latent %s: permuted rows max|diff|/max|z| %.3g, single rows %.3g\n", GetParam(), worst_perm / scale,
              worst_single / scale);
  // Not bit-exact: OpenBLAS rounds a row's dot products differently depending on where the row falls in
  // its register blocks. Any leak between rows would show at the size of z itself.
  EXPECT_LE(worst_perm, 1e-6 * scale);
  EXPECT_LE(worst_single, 1e-6 * scale);
}

TEST_P(LatentAttention, ChunkedInferenceMatchesTheCachedForward) {
  LatentFixture fx(GetParam());
  std::mt19937 rng(9);
  const int M = 2500;  // more rows than one inference chunk
  const auto xs = test::randn((size_t)M * fx.C, rng);
  std::vector<float> cache = fx.cache_for(M);
  const auto with_cache = fx.forward(xs, M, &cache);
  const auto chunked = fx.forward(xs, M);
  EXPECT_TRUE(CloseRelMax(std::string("latent ") + GetParam() + " chunked vs cached forward, 2500 rows",
                          chunked.data(), with_cache, 1e-6));
  EXPECT_TRUE(fx.forward({}, 0).empty());
}

INSTANTIATE_TEST_SUITE_P(Fixtures, LatentAttention, ::testing::Values("a", "b"));

TEST(LatentAttentionInit, TorchDefaultsDeterministicInSeed) {
  LatentAttentionConfig cfg;
  cfg.num_latents = 64;
  cfg.heads = 2;
  cfg.dim_head = 8;
  const int C = 32;
  const auto tensors = latent_attention_tensors(cfg, C);
  const size_t n = latent_attention_param_count(cfg, C);
  std::vector<float> a(n), b(n), c(n);
  latent_attention_init(a.data(), cfg, C, 1);
  latent_attention_init(b.data(), cfg, C, 1);
  latent_attention_init(c.data(), cfg, C, 2);
  EXPECT_EQ(a, b);
  EXPECT_NE(a, c);
  for (size_t k = 0; k < tensors.size(); ++k) {
    const auto& t = tensors[k];
    const float* p = a.data() + t.offset;
    const std::string& name = t.name;
    SCOPED_TRACE(name);
    auto ends_with = [&](const std::string& s) {
      return name.size() >= s.size() && name.compare(name.size() - s.size(), s.size(), s) == 0;
    };
    if (ends_with("latents")) {
      double mean = 0.0, sq = 0.0;
      for (size_t i = 0; i < t.count; ++i) {
        mean += p[i];
        sq += (double)p[i] * p[i];
      }
      mean /= (double)t.count;
      const double sd = std::sqrt(sq / (double)t.count - mean * mean);
      EXPECT_NEAR(mean, 0.0, 0.1);  // 2048 N(0, 1) draws: sd of the mean 0.022
      EXPECT_NEAR(sd, 1.0, 0.1);
    } else if (name.find(".norm") != std::string::npos) {
      const float want = ends_with(".weight") ? 1.0f : 0.0f;
      EXPECT_TRUE(std::all_of(p, p + t.count, [&](float v) { return v == want; }));
    } else {
      const int64_t fan_in = t.shape.size() == 2 ? t.shape[1] : tensors[k - 1].shape[1];
      const float bound = 1.0f / std::sqrt((float)fan_in);
      float lo = INFINITY, hi = -INFINITY;
      for (size_t i = 0; i < t.count; ++i) {
        lo = std::min(lo, p[i]);
        hi = std::max(hi, p[i]);
      }
      EXPECT_GE(lo, -bound);
      EXPECT_LE(hi, bound);
      if (t.count >= 256) {  // the draws fill the interval
        EXPECT_LT(lo, -0.9f * bound);
        EXPECT_GT(hi, 0.9f * bound);
      }
    }
  }
}

TEST(LatentAttentionInit, RefusesInvalidConfigurations) {
  LatentAttentionConfig ok;
  ok.num_latents = 4;
  ok.heads = 2;
  EXPECT_NO_THROW(latent_attention_tensors(ok, 8));
  EXPECT_THROW(latent_attention_tensors(ok, 0), std::exception);
  for (auto mutate : {+[](LatentAttentionConfig& c) { c.num_latents = 0; }, +[](LatentAttentionConfig& c) { c.heads = 0; },
                      +[](LatentAttentionConfig& c) { c.dim_head = -1; }, +[](LatentAttentionConfig& c) { c.mult = 0; }}) {
    LatentAttentionConfig bad = ok;
    mutate(bad);
    EXPECT_THROW(latent_attention_param_count(bad, 8), std::exception);
    EXPECT_THROW(latent_attention_dims(bad, 8), std::exception);
  }
  // Negative row counts are refused.
  std::vector<float> params(latent_attention_param_count(ok, 8)), x(3 * 8, 0.5f), z(3 * 8);
  std::vector<float> cache(latent_attention_cache_floats(latent_attention_dims(ok, 8), 3));
  latent_attention_init(params.data(), ok, 8, 3);
  EXPECT_THROW(latent_attention_forward(z.data(), cache.data(), x.data(), params.data(), ok, -1, 8), std::exception);
  std::vector<float> dx(3 * 8), dparams(params.size());
  EXPECT_THROW(latent_attention_backward(dx.data(), dparams.data(), z.data(), cache.data(), params.data(), ok, -1, 8),
               std::exception);
}

}  // namespace
}  // namespace l2v
