// The whole training step through the CUDA backend (kernels + cuBLAS, executed by the CPU emulator)
// against the fp32 CPU backend: forward, MNTP loss, backward into the LoRA gradients, gradient clipping
// and AdamW, with attention and LoRA dropout on; recomputation; and the Hugging Face / llm2vec / PEFT
// fixtures through the CUDA backend directly.
#include <gtest/gtest.h>

#include <numeric>

#include "cuda/cuda_backend.h"
#include "cuda/upload_arena.h"
#include "cuda/workspace_sizes.h"
#include "model/pooler.h"
#include "model/checkpoint.h"
#include "model/peft.h"
#include "model/safetensors.h"
#include "test/cuda_test_util.h"
#include "test/tiny_model.h"
#include "train/optimizer.h"

namespace l2v {
namespace {

using test::Batch;

// max |a - b| / max |b|: fp32 on both sides, so differences are summation order only.
double rel_err(const std::vector<float>& a, const std::vector<float>& b) {
  EXPECT_EQ(a.size(), b.size());
  double err = 0.0, scale = 0.0;
  for (size_t i = 0; i < std::min(a.size(), b.size()); ++i) {
    err = std::max(err, (double)std::fabs(a[i] - b[i]));
    scale = std::max(scale, (double)std::fabs(b[i]));
  }
  return scale > 0 ? err / scale : err;
}


struct StepResult {
  std::vector<float> hidden, grads, params;
  std::vector<float> lm_head;  // [V, C], as the backend holds it
  float loss = 0.0f, norm = 0.0f;
};

// bf16_weights: the base weights rounded to bf16 first, so that the fp32 CPU reference of a bf16 run
// sees the weights bf16 storage holds and the comparison measures the bf16 run's own roundings.
StepResult train_steps(std::unique_ptr<Backend> backend, bool causal, bool recompute, int steps,
                       bool bf16_weights = false) {
  test::TinyModel tm(/*qkv_bias=*/true, /*seed=*/21, std::move(backend), /*hidden_size=*/32,
                     bf16_weights ? test::rounded<__nv_bfloat16> : nullptr);
  Model& m = tm.model;
  test::add_random_lora(m, 4, 8.0f, 0.1f, 5);
  Batch b = test::padded_batch(m.config.vocab_size, 9);
  AdamWState st = adamw_init(m);
  AdamWConfig cfg;
  cfg.max_grad_norm = 0.5f;  // small enough that clipping acts
  cfg.weight_decay = 0.01f;
  ForwardOptions opt;
  opt.causal = causal;
  opt.training = true;
  opt.attn_dropout = 0.2f;
  opt.recompute_layers = recompute ? 1000 : 0;
  StepResult r;
  for (int s = 0; s < steps; ++s) {
    opt.seed = 100 + s;
    r.loss = test::loss_and_grads(m, b, opt);
    r.hidden = test::hidden(m);
    r.grads = test::all_grads(m);
    r.norm = adamw_step(m, st, cfg, 1e-2f);
  }
  r.params = test::all_values(m);
  for (const NamedWeight& w : model_weights(m))
    if (w.name == "lm_head.weight") r.lm_head = download_weight(m, w);
  return r;
}

class CudaTrainingStep : public ::testing::TestWithParam<std::tuple<bool, bool>> {};

TEST_P(CudaTrainingStep, MatchesTheCpuBackend) {
  const auto [causal, recompute] = GetParam();
  StepResult cpu = train_steps(make_cpu_backend(), causal, recompute, 3);
  StepResult gpu = train_steps(make_cuda_backend(CudaPrecision::kFp32), causal, recompute, 3);
  // fp32 everywhere; three steps of forward, backward and AdamW: only summation order differs.
  EXPECT_LT(rel_err(gpu.hidden, cpu.hidden), 1e-5);
  EXPECT_NEAR(gpu.loss, cpu.loss, 1e-5 * std::fabs(cpu.loss));
  EXPECT_LT(rel_err(gpu.grads, cpu.grads), 1e-4);
  EXPECT_NEAR(gpu.norm, cpu.norm, 1e-5 * cpu.norm);
  EXPECT_LT(rel_err(gpu.params, cpu.params), 1e-5);
  std::printf("causal=%d recompute=%d: hidden %.2e, loss %.2e, grads %.2e, params %.2e (relative to max)\n", causal,
              recompute, rel_err(gpu.hidden, cpu.hidden), std::fabs(gpu.loss - cpu.loss) / std::fabs(cpu.loss),
              rel_err(gpu.grads, cpu.grads), rel_err(gpu.params, cpu.params));
}

// The MNTP loss of final hidden states h [B*T, C] under lm_head W [V, C], in double (logits at t
// predict labels[t+1]), and `bound`: twice the largest fp32 accumulation error a backend's logit can
// have, gamma_C sum_c |h_c W_vc| (the loss, a mean of logsumexp(logits) - logit_label, moves by at most
// twice the largest logit error: logsumexp is 1-Lipschitz in the max norm).
double host_mntp_loss(const std::vector<float>& h, const std::vector<float>& W, const Batch& b, size_t C,
                      double* bound) {
  const size_t V = W.size() / C;
  double sum = 0.0, worst = 0.0;
  int n = 0;
  for (int r = 0; r < b.B; ++r)
    for (int t = 0; t + 1 < b.T; ++t) {
      const int label = b.labels[(size_t)r * b.T + t + 1];
      if (label < 0) continue;
      const float* x = &h[((size_t)r * b.T + t) * C];
      std::vector<double> logit(V);
      double mx = -INFINITY;
      for (size_t v = 0; v < V; ++v) {
        double dot = 0.0, mag = 0.0;
        for (size_t c = 0; c < C; ++c) {
          dot += (double)x[c] * W[v * C + c];
          mag += std::fabs((double)x[c] * W[v * C + c]);
        }
        logit[v] = dot;
        mx = std::max(mx, dot);
        worst = std::max(worst, mag);
      }
      double se = 0.0;
      for (double l : logit) se += std::exp(l - mx);
      sum += mx + std::log(se) - logit[label];
      ++n;
    }
  *bound = 2.0 * test::gamma32((double)C) * worst;
  return sum / n;
}

// The production precision: bf16 activations and base weights, fp32 accumulation, fp32 LoRA master
// weights, gradients and AdamW, against the fp32 CPU backend on the same (bf16-rounded) base weights, so
// that the differences are the bf16 run's own roundings of activations (2^-8 relative each) accumulated
// through 2 layers, forward and backward: a few percent of the largest hidden value and gradient, and
// the gradient direction must agree (cosine > 0.995); wiring bugs (a missing residual, a wrong scale)
// are O(1). Each side's loss is checked against the loss of its own final hidden states computed here
// in double, to the fp32 accumulation bound of the logits: what the hidden states' differences do to
// the loss is then the hidden check's business, and the loss head is held to its own arithmetic.
TEST(CudaBf16TrainingStep, MatchesTheCpuBackendWithinBf16Tolerances) {
  StepResult cpu = train_steps(make_cpu_backend(), false, false, 1, true);
  StepResult gpu = train_steps(make_cuda_backend(CudaPrecision::kBf16), false, false, 1, true);
  ASSERT_EQ(cpu.lm_head, gpu.lm_head) << "both sides must hold the same bf16 weights";
  const Batch b = test::padded_batch((int)(cpu.lm_head.size() / 32), 9);
  double cpu_bound = 0.0, gpu_bound = 0.0;
  const double cpu_want = host_mntp_loss(cpu.hidden, cpu.lm_head, b, 32, &cpu_bound);
  const double gpu_want = host_mntp_loss(gpu.hidden, gpu.lm_head, b, 32, &gpu_bound);
  EXPECT_NEAR(cpu.loss, cpu_want, cpu_bound + std::fabs(cpu_want) * 0x1p-24);
  EXPECT_NEAR(gpu.loss, gpu_want, gpu_bound + std::fabs(gpu_want) * 0x1p-24);
  std::printf("loss against its own hidden states: cpu %.2e (bound %.2e), bf16 %.2e (bound %.2e)\n",
              std::fabs(cpu.loss - cpu_want), cpu_bound, std::fabs(gpu.loss - gpu_want), gpu_bound);
  double dot = 0.0, na = 0.0, nb = 0.0;
  for (size_t i = 0; i < cpu.grads.size(); ++i) {
    dot += (double)gpu.grads[i] * cpu.grads[i];
    na += (double)gpu.grads[i] * gpu.grads[i];
    nb += (double)cpu.grads[i] * cpu.grads[i];
  }
  const double cosine = dot / std::sqrt(na * nb);
  EXPECT_LT(rel_err(gpu.hidden, cpu.hidden), 3e-2);
  EXPECT_LT(rel_err(gpu.grads, cpu.grads), 5e-2);
  EXPECT_GT(cosine, 0.995);
  // Adam's first step moves every parameter by about lr * sign(g) (m / sqrt(v) = g / |g|): where bf16
  // rounding flips the sign of a tiny gradient, the two runs differ by 2 lr; elsewhere they agree.
  const double lr = 1e-2;
  size_t flipped = 0;
  double worst = 0.0;
  for (size_t i = 0; i < cpu.params.size(); ++i) {
    const double d = std::fabs((double)gpu.params[i] - cpu.params[i]);
    worst = std::max(worst, d);
    if (d > 0.1 * lr) ++flipped;
  }
  EXPECT_LE(worst, 2.0 * lr * 1.01);
  EXPECT_LT(flipped, cpu.params.size() / 50) << "more than 2% of the parameters moved the other way";
  std::printf("bf16: hidden %.2e, loss %.2e, grads %.2e (cosine %.6f) relative to max; %zu of %zu parameters "
              "stepped the other way\n",
              rel_err(gpu.hidden, cpu.hidden), std::fabs(gpu.loss - cpu.loss) / std::fabs(cpu.loss),
              rel_err(gpu.grads, cpu.grads), cosine, flipped, cpu.params.size());
}

INSTANTIATE_TEST_SUITE_P(Modes, CudaTrainingStep,
                         ::testing::Values(std::make_tuple(false, false), std::make_tuple(true, false),
                                           std::make_tuple(false, true)));

// The reference fixtures (transformers, llm2vec's bidirectional classes, PEFT) through the CUDA backend.
TEST(CudaFixtures, BidirectionalLoraForwardAndGradientsMatchPeft) {
  for (const char* name : {"stories260k", "qwen2_tiny"}) {
    const std::string dir = std::string("test/fixtures/") + name + "/";
    std::unique_ptr<Backend> backend = make_cuda_backend(CudaPrecision::kFp32);
    Checkpoint ck = open_checkpoint(dir + "model");
    Model m;
    load_model(m, ck.config, *ck.tensors, *backend);
    load_peft_adapter(m, dir + "adapter");
    SafetensorsCheckpoint ref(dir + "reference.safetensors");
    auto ints = [&](const char* n) {
      std::vector<int64_t> v = ref.read_i64(n);
      return std::vector<int>(v.begin(), v.end());
    };
    auto floats = [&](const std::string& n) {
      std::vector<int64_t> shape = ref.shape(n);
      size_t count = 1;
      for (int64_t d : shape) count *= (size_t)d;
      std::vector<float> v(count);
      ref.read_f32(n, v.data(), count);
      return v;
    };
    std::vector<int> ids = ints("input_ids"), mask = ints("attention_mask"), labels = ints("labels");
    const int B = (int)ref.shape("input_ids")[0], T = (int)ref.shape("input_ids")[1], C = ck.config.hidden_size;
    ForwardOptions opt;
    opt.training = true;
    zero_grads(m);
    model_forward(m, ids.data(), mask.data(), B, T, opt);
    const float loss = mntp_loss(m, labels.data(), true);
    std::vector<float> h = download_tensor(m, m.acts.final_hidden, (size_t)B * T * C), want_h = floats("bidir.lora.hidden");
    double err = 0.0, scale = 0.0;
    for (size_t i = 0; i < h.size(); ++i) {
      if (!mask[i / C]) continue;
      err = std::max(err, (double)std::fabs(h[i] - want_h[i]));
      scale = std::max(scale, (double)std::fabs(want_h[i]));
    }
    EXPECT_LT(err, 2e-5 * scale) << name;
    const float want_loss = floats("bidir.lora.loss")[0];
    EXPECT_NEAR(loss, want_loss, 2e-5 * want_loss) << name;
    double worst = 0.0;
    for (const TrainableParam& p : m.trainable) {
      std::vector<float> g = download_floats(m, p.grad, p.count), want = floats("bidir.grad." + p.name);
      double e = 0.0, s = 0.0;
      for (size_t i = 0; i < g.size(); ++i) {
        e = std::max(e, (double)std::fabs(g[i] - want[i]));
        s = std::max(s, (double)std::fabs(want[i]));
      }
      EXPECT_LE(e, 1e-4 * s) << name << " " << p.name;
      worst = std::max(worst, s > 0 ? e / s : e);
    }
    std::printf("%s through the CUDA backend: hidden %.2e, loss %.7f vs %.7f, grads %.2e (relative)\n", name,
                err / scale, loss, want_loss, worst);
  }
}

}  // namespace
}  // namespace l2v

namespace l2v {
namespace {

// Tensors larger than the staging buffer (cuda/workspace_sizes.h kStagingFloats) convert in pieces:
// every element arrives rounded to bf16 as torch rounds it (nearest even), and comes back unchanged.
TEST(CudaBackendStaging, TensorsLargerThanTheStagingBufferConvertInPieces) {
  std::unique_ptr<Backend> be = make_cuda_backend(CudaPrecision::kBf16);
  const size_t n = cuda::kStagingFloats + 1000;  // two pieces, the second short
  std::vector<float> host(n);
  for (size_t i = 0; i < n; ++i) host[i] = 1.0f + (float)(i % 4096) / 4096.0f + (float)(i / 4096) * 1e-3f;
  Tensor dev = static_cast<Tensor>(be->alloc(n * be->tensor_element_bytes()));
  be->upload_tensor(dev, host.data(), n);
  std::vector<float> back(n);
  be->download_tensor(back.data(), dev, n);
  EXPECT_EQ(reinterpret_cast<char*>(tensor_offset(*be, dev, 3)) - reinterpret_cast<char*>(dev), 6)
      << "tensor_offset steps by bf16 elements";
  be->release(dev);
  for (size_t i : {size_t{0}, cuda::kStagingFloats - 1, cuda::kStagingFloats, n - 1}) {
    EXPECT_EQ(back[i], test::rounded<__nv_bfloat16>({host[i]})[0]) << i;
  }
  size_t wrong = 0;
  const std::vector<float> want = test::rounded<__nv_bfloat16>(host);
  for (size_t i = 0; i < n; ++i) wrong += back[i] != want[i];
  EXPECT_EQ(0u, wrong);
}

// The MFU of the progress line divides by these: the datasheet peaks, the PCIe H100 told apart from the
// SXM one (whose name it contains), unknown GPUs (the emulator's device among them) without a figure.
#if defined(L2V_EMULATE)
// "No host synchronisation inside a step except reading the loss": the emulator counts every call that
// makes the host wait for the device (emu::host_waits). After a first step (which sizes the scratch
// buffers and builds the optimizer's device list), an MNTP step — batch upload, forward, LM-head loss,
// backward, optimizer — waits exactly twice: for the losses, once the backward is queued, and for the
// gradient norm after the optimizer; a contrastive step (mean pooling and the contrastive loss on the
// device) waits for its loss, read after the backward is queued, and for the norm, with mean pooling
// and with the latent-attention head. A sync upload, a pooled-row or hidden-state download, a host-side
// loss or a per-tensor norm read would each add waits.
TEST(CudaBackendHostWaits, ATrainingStepWaitsOnlyForItsLossAndItsNorm) {
  for (CudaPrecision precision : {CudaPrecision::kBf16, CudaPrecision::kFp32})
  for (PoolingMode mode : {PoolingMode::kMean, PoolingMode::kLatentAttention}) {
    test::TinyModel tm(/*qkv_bias=*/false, /*seed=*/3, make_cuda_backend(precision), /*hidden_size=*/32);
    Model& m = tm.model;
    test::add_random_lora(m, 4, 8.0f, 0.1f, 5);
    PoolingHead head;
    head.mode = mode;
    head.latent.num_latents = 6;
    head.latent.heads = 2;
    head.latent.dim_head = 8;
    add_pooling_head(m, head, 9);
    AdamWState st = adamw_init(m);
    const Batch b = test::padded_batch(m.config.vocab_size, 9);
    ForwardOptions opt;
    opt.training = true;
    opt.attn_dropout = 0.1f;
    auto mntp_step = [&] {
      test::loss_and_grads(m, b, opt);
      adamw_step(m, st, AdamWConfig{}, 1e-3f);
    };
    mntp_step();
    uint64_t before = emu::host_waits();
    mntp_step();
    EXPECT_EQ(emu::host_waits() - before, 2u) << "MNTP step, " << m.backend->name();

    EmbedBatch eb;
    eb.B = b.B;
    eb.T = b.T;
    eb.ids = b.ids;
    eb.key_mask = b.mask;
    eb.embed_mask = b.mask;
    const int C = m.config.hidden_size;
    Tensor d_hidden = m.alloc_tensor((size_t)b.B * b.T * C);
    // The three rows as a supervised triple (query, positive, hard negative), the loss in device memory.
    ASSERT_EQ(b.B, 3);
    float* pooled = m.alloc_floats((size_t)b.B * C);
    float* d_pooled = m.alloc_floats((size_t)b.B * C);
    double* loss = reinterpret_cast<double*>(m.alloc_floats(2));
    PoolCache cache;  // kept across steps, as the trainer keeps it (its latent buffer is allocated once)
    auto contrastive_step = [&] {
      zero_grads(m);
      model_forward(m, eb.ids.data(), eb.key_mask.data(), eb.B, eb.T, opt);
      pool_forward(m, head, eb, 1, 2, pooled, &cache);
      m.backend->contrastive_loss(loss, d_pooled, d_pooled + C, d_pooled + 2 * C, pooled, pooled + C, pooled + 2 * C,
                                  1, C, C, 50.0f, true);
      pool_backward(m, head, cache, d_pooled, d_hidden);
      model_backward(m, d_hidden);
      double value;
      m.backend->download(&value, loss, sizeof(double));  // the trainer reads the loss here
      EXPECT_TRUE(std::isfinite(value));
      adamw_step(m, st, AdamWConfig{}, 1e-3f);
    };
    contrastive_step();
    before = emu::host_waits();
    contrastive_step();
    EXPECT_EQ(emu::host_waits() - before, 2u)
        << "contrastive step, " << pooling_mode_name(mode) << " pooling, " << m.backend->name();
  }
}
#endif

// Backend::latent_pool_forward / latent_pool_backward on the CUDA backend against the CPU backend (the
// host reference, model/latent_attention.h) on the same inputs, every parameter perturbed from its
// initialisation (LayerNorm weights away from 1 and biases away from 0, so a swapped or missing affine
// term shows). Shapes: heads of D != C (I = 24 != C) and of D = C; more latents than a warp's lanes; a
// text with no pooled position (pooled row 0, no gradient); pooled positions a strict subset of the
// batch; an inference batch of more rows than one inference chunk. Both sides are fp32 and run the same
// operations; only summation orders differ (cuBLAS vs OpenBLAS, the double row reductions over a warp vs a
// loop). On a GPU, a dot product of length K then differs by at most gamma_K sum|x y| ~ K u sum|x y|
// (u = 2^-24); each output passes through at most kChain = 8 such reductions of length <= K_max (the
// longest: the parameter gradients' sums over the M rows, or net.0's 2F columns), so, relative to the
// largest value, |cuda - cpu| <= kChain K_max u. Under the emulator the products are OpenBLAS's on both
// sides and the results must be equal. A wiring bug (a wrong head offset, a dropped bias, a wrong row) is
// O(1). bf16 storage: the hidden states are the rounded ones on both sides; d_hidden is the reference's
// rounded to bf16.
TEST(CudaLatentPooling, ForwardAndBackwardFollowTheHostReference) {
  struct Case {
    const char* name;
    LatentAttentionConfig cfg;
    int C, B, T;
    CudaPrecision precision;
  };
  auto cfg = [](int r, int heads, int dim_head, int mult) {
    LatentAttentionConfig c;
    c.num_latents = r;
    c.heads = heads;
    c.dim_head = dim_head;
    c.mult = mult;
    return c;
  };
  const Case cases[] = {{"I != C", cfg(10, 3, 8, 2), 16, 4, 7, CudaPrecision::kFp32},
                        {"D = C, 40 latents", cfg(40, 2, 0, 3), 12, 3, 5, CudaPrecision::kFp32},
                        {"bf16 storage", cfg(10, 3, 8, 2), 16, 4, 7, CudaPrecision::kBf16}};
  for (const Case& c : cases) {
    std::mt19937 rng(31);
    const int C = c.C, B = c.B, T = c.T, N = B * T;
    const LatentAttentionDims d = latent_attention_dims(c.cfg, C);
    std::vector<float> params(latent_attention_param_count(c.cfg, C));
    latent_attention_init(params.data(), c.cfg, C, 7);
    for (float& p : params) p += 0.3f * std::normal_distribution<float>()(rng);
    std::vector<float> hidden = test::randn((size_t)N * C, rng, 1.5f);
    if (c.precision == CudaPrecision::kBf16) hidden = test::rounded<__nv_bfloat16>(hidden);
    // Pooled positions: text 1 has none; the others a random subset (mean-like weights).
    std::vector<float> weights(N, 0.0f);
    std::vector<int> positions;
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        if (b != 1 && (rng() % 3 != 0 || t == 0)) weights[b * T + t] = 0.2f + 0.1f * (float)(rng() % 5);
    for (int i = 0; i < N; ++i)
      if (weights[i] != 0.0f) positions.push_back(i);
    const int M = (int)positions.size();
    for (int b = 0, r = 0; b <= B; ++b) {
      while (r < M && positions[r] < b * T) ++r;
      positions.push_back(r);
    }
    const std::vector<float> d_pooled = test::randn((size_t)B * C, rng);
    const std::vector<float> dparams0 = test::randn(params.size(), rng, 0.1f);  // gradients accumulate onto it

    struct Out {
      std::vector<float> pooled, d_hidden, dparams;
    };
    auto run = [&](Backend& be) {
      auto floats = [&](const std::vector<float>& v) {
        float* p = static_cast<float*>(be.alloc(std::max<size_t>(v.size(), 1) * sizeof(float)));
        be.upload(p, v.data(), v.size() * sizeof(float));
        return p;
      };
      Tensor dev_hidden = static_cast<Tensor>(be.alloc((size_t)N * C * be.tensor_element_bytes()));
      Tensor dev_dh = static_cast<Tensor>(be.alloc((size_t)N * C * be.tensor_element_bytes()));
      be.upload_tensor(dev_hidden, hidden.data(), hidden.size());
      int* dev_pos = static_cast<int*>(be.alloc(positions.size() * sizeof(int)));
      be.upload(dev_pos, positions.data(), positions.size() * sizeof(int));
      float *dev_w = floats(weights), *dev_params = floats(params), *dev_dparams = floats(dparams0),
            *dev_dpooled = floats(d_pooled), *dev_pooled = floats(std::vector<float>((size_t)B * C, NAN)),
            *dev_cache = floats(std::vector<float>(latent_attention_cache_floats(d, M), NAN));
      const LatentRows rows{dev_pos, dev_pos + M, B, T, M};
      be.latent_pool_forward(dev_pooled, dev_cache, dev_hidden, rows, dev_w, dev_params, c.cfg, C);
      be.latent_pool_backward(dev_dh, dev_dparams, dev_dpooled, rows, dev_w, dev_cache, dev_params, c.cfg, C);
      Out o;
      o.pooled.resize((size_t)B * C);
      o.d_hidden.resize((size_t)N * C);
      o.dparams.resize(params.size());
      be.download(o.pooled.data(), dev_pooled, o.pooled.size() * sizeof(float));
      be.download_tensor(o.d_hidden.data(), dev_dh, o.d_hidden.size());
      be.download(o.dparams.data(), dev_dparams, o.dparams.size() * sizeof(float));
      // Inference (no cache) gives the cached forward's pooled rows.
      std::vector<float> again((size_t)B * C);
      be.latent_pool_forward(dev_pooled, nullptr, dev_hidden, rows, dev_w, dev_params, c.cfg, C);
      be.download(again.data(), dev_pooled, again.size() * sizeof(float));
      EXPECT_EQ(again, o.pooled) << c.name << " on " << be.name() << ": inference vs cached forward";
      for (void* p : std::initializer_list<void*>{dev_hidden, dev_dh, dev_pos, dev_w, dev_params, dev_dparams,
                                                  dev_dpooled, dev_pooled, dev_cache})
        be.release(p);
      return o;
    };
    std::unique_ptr<Backend> cpu = make_cpu_backend(), gpu = make_cuda_backend(c.precision);
    const Out want = run(*cpu), got = run(*gpu);

#if defined(L2V_EMULATE)
    // The emulator's cuBLAS is OpenBLAS, called with the reference's shapes: the products are the same
    // bits, and so (on these inputs) are the double row reductions once rounded to fp32. Exact.
    const double tol = 0.0;
#else
    constexpr double kChain = 8;
    const double k_max = std::max({(double)d.C, (double)d.I, (double)d.r, 2.0 * d.F, (double)M});
    const double tol = kChain * k_max * test::gamma32(1.0);
#endif
    const bool bf16 = c.precision == CudaPrecision::kBf16;
    const std::vector<float> want_dh = bf16 ? test::rounded<__nv_bfloat16>(want.d_hidden) : want.d_hidden;
    const double e_pooled = rel_err(got.pooled, want.pooled), e_dh = rel_err(got.d_hidden, want_dh),
                 e_dp = rel_err(got.dparams, want.dparams);
    std::printf("  latent pooling %s: pooled %.2e, d_hidden %.2e, dparams %.2e (bound %.2e%s)\n", c.name, e_pooled,
                e_dh, e_dp, tol, bf16 && tol > 0 ? " + u_bf16 for d_hidden" : "");
    EXPECT_LE(e_pooled, tol) << c.name;
    EXPECT_LE(e_dh, tol + (bf16 && tol > 0 ? test::kUBf16 : 0.0)) << c.name;
    EXPECT_LE(e_dp, tol) << c.name;
    for (int col = 0; col < C; ++col) EXPECT_EQ(got.pooled[1 * C + col], 0.0f) << c.name << ": text 1 pools nothing";
    for (int i = 0; i < N; ++i) {
      if (weights[i] != 0.0f) continue;
      for (int col = 0; col < C; ++col)
        ASSERT_EQ(got.d_hidden[(size_t)i * C + col], 0.0f) << c.name << ": position " << i << " is not pooled";
    }
  }
}

// More rows than one inference chunk (kLatentInferenceChunk): the chunked inference forward on the CUDA
// backend gives the same pooled rows as the cached forward, and follows the CPU backend's.
TEST(CudaLatentPooling, InferenceInChunksEqualsTheWholeBatch) {
  LatentAttentionConfig cfg;
  cfg.num_latents = 5;
  cfg.heads = 2;
  cfg.dim_head = 4;
  cfg.mult = 2;
  const int C = 8, B = 2, T = 600, N = B * T;  // 1,200 pooled positions
  ASSERT_GT(N, kLatentInferenceChunk);
  std::mt19937 rng(3);
  std::vector<float> params(latent_attention_param_count(cfg, C));
  latent_attention_init(params.data(), cfg, C, 2);
  const std::vector<float> hidden = test::randn((size_t)N * C, rng);
  const std::vector<float> weights(N, 1.0f / T);
  std::vector<int> positions(N);
  std::iota(positions.begin(), positions.end(), 0);
  positions.insert(positions.end(), {0, T, N});
  auto run = [&](Backend& be, bool cached) {
    auto up = [&](const void* host, size_t bytes) {
      void* p = be.alloc(bytes);
      be.upload(p, host, bytes);
      return p;
    };
    Tensor h = static_cast<Tensor>(be.alloc((size_t)N * C * be.tensor_element_bytes()));
    be.upload_tensor(h, hidden.data(), hidden.size());
    int* pos = static_cast<int*>(up(positions.data(), positions.size() * sizeof(int)));
    float* w = static_cast<float*>(up(weights.data(), weights.size() * sizeof(float)));
    float* p = static_cast<float*>(up(params.data(), params.size() * sizeof(float)));
    float* pooled = static_cast<float*>(be.alloc((size_t)B * C * sizeof(float)));
    float* cache = cached ? static_cast<float*>(be.alloc(
                                sizeof(float) * latent_attention_cache_floats(latent_attention_dims(cfg, C), N)))
                          : nullptr;
    be.latent_pool_forward(pooled, cache, h, LatentRows{pos, pos + N, B, T, N}, w, p, cfg, C);
    std::vector<float> out((size_t)B * C);
    be.download(out.data(), pooled, out.size() * sizeof(float));
    for (void* q : std::initializer_list<void*>{h, pos, w, p, pooled, cache})
      if (q) be.release(q);
    return out;
  };
  std::unique_ptr<Backend> cpu = make_cpu_backend(), gpu = make_cuda_backend(CudaPrecision::kFp32);
  const std::vector<float> chunked = run(*gpu, false);
#if defined(L2V_EMULATE)
  const double tol = 0.0;  // as above: the same products and, on these inputs, the same reductions
#else
  // The pooled sum over 600 rows adds gamma_600 to the 8-reduction chain of the test above (K_max 16).
  const double tol = (8 * 16 + 600) * test::gamma32(1.0);
#endif
  const double e_whole = rel_err(chunked, run(*gpu, true)), e_cpu = rel_err(chunked, run(*cpu, false));
  std::printf("  chunked inference: vs the whole batch %.2e, vs the CPU backend %.2e (bound %.2e)\n", e_whole, e_cpu,
              tol);
  EXPECT_LE(e_whole, tol);
  EXPECT_LE(e_cpu, tol);
}

// An inference-only forward (one slot, two residual buffers, no backward or LoRA-dropout buffers) on the
// CUDA backend gives the full forward's hidden states bit for bit, with an unmerged adapter, bf16 and fp32.
TEST(CudaBackendInference, InferenceForwardEqualsTheFullForward) {
  for (CudaPrecision precision : {CudaPrecision::kBf16, CudaPrecision::kFp32}) {
    test::TinyModel tm(/*qkv_bias=*/true, /*seed=*/4, make_cuda_backend(precision), /*hidden_size=*/32);
    Model& m = tm.model;
    test::add_random_lora(m, 4, 8.0f, 0.1f, 5);
    const Batch b = test::padded_batch(m.config.vocab_size, 11);
    model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, ForwardOptions{});
    const std::vector<float> want = test::hidden(m);
    m.release_activations();
    ForwardOptions inference;
    inference.inference = true;
    model_forward(m, b.ids.data(), b.mask.data(), b.B, b.T, inference);
    EXPECT_EQ(test::hidden(m), want) << m.backend->name();
  }
}

// The pinned upload arena: pieces in order, each copy right; an upload that does not fit in what is left
// waits once and starts again at the front; one larger than the whole arena is refused (the backend then
// copies synchronously).
TEST(CudaUploadArena, QueuesCopiesAndWaitsOnlyWhenFull) {
  cuda::UploadArena arena(1024);
  test::Raw<int> dev(3 * 100);
  std::vector<int> a(100, 7), b(100, 8), c(100, 9);
  ASSERT_TRUE(arena.upload(dev.ptr, a.data(), 400, nullptr));
  ASSERT_TRUE(arena.upload(dev.ptr + 100, b.data(), 400, nullptr));  // at 512 (pieces are 256-aligned)
#if defined(L2V_EMULATE)
  const uint64_t before = emu::host_waits();
#endif
  ASSERT_TRUE(arena.upload(dev.ptr + 200, c.data(), 400, nullptr));  // 1024 is full: waits, then at 0
#if defined(L2V_EMULATE)
  EXPECT_EQ(emu::host_waits() - before, 1u);
#endif
  a[0] = b[0] = c[0] = -1;  // the host buffers may be reused at once
  std::vector<int> got(300);
  CUDA_CHECK(cudaMemcpy(got.data(), dev.ptr, got.size() * sizeof(int), cudaMemcpyDeviceToHost));
  for (int i = 0; i < 300; ++i) ASSERT_EQ(got[i], 7 + i / 100) << i;
  EXPECT_FALSE(arena.upload(dev.ptr, got.data(), 1025, nullptr));
}

TEST(CudaBackendPeak, DeviceNamesMapToTheirDatasheetPeaks) {
  EXPECT_EQ(989e12, gpu_peak_flops("NVIDIA H100 80GB HBM3", true));
  EXPECT_EQ(67e12, gpu_peak_flops("NVIDIA H100 80GB HBM3", false));
  EXPECT_EQ(756e12, gpu_peak_flops("NVIDIA H100 PCIe", true));
  EXPECT_EQ(989e12, gpu_peak_flops("NVIDIA H200", true));
  EXPECT_EQ(19.5e12, gpu_peak_flops("NVIDIA A100-SXM4-80GB", false));
  EXPECT_EQ(0.0, gpu_peak_flops("NVIDIA GeForce GTX 1080", true));
#if defined(L2V_EMULATE)
  EXPECT_EQ(0.0, make_cuda_backend(CudaPrecision::kBf16)->peak_flops()) << "the emulator is no listed GPU";
#endif
}

}  // namespace
}  // namespace l2v
