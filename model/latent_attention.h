// NV-Embed's latent-attention pooling block (Lee et al., 2024, "NV-Embed"), host fp32 forward and
// backward. Every pooled token's hidden state x (a query) attends to a trainable array of r latents
// (keys and values) with multi-head cross-attention, then goes through a GEGLU MLP, both residual:
//   y = x + to_out( MHA( q = to_q(LN_x(x)),  k, v = to_kv(LN_ctx(latents)) ) )      (no mask: all r latents)
//   z = y + net2( GEGLU( net0( LN_ff(y) ) ) )          GEGLU(u) = u[:, :h] * gelu_erf(u[:, h:]), h = mult*C
// The caller then mean-pools z over the text's pooled positions (model/pooling.h). The parameters are
// named and shaped as the released NV-Embed checkpoint's latent_attention_model.* tensors, so a head we
// train can be loaded by that Python module: to_q/to_kv/to_out have no bias, net0/net2 have one,
// LayerNorms have weight and bias (eps 1e-5).
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace l2v {

struct LatentAttentionConfig {
  int num_latents = 512;  // r (NV-Embed: 512)
  int heads = 8;          // NV-Embed: 8
  int dim_head = 0;       // 0: the model's hidden size (NV-Embed: 4096 = Mistral-7B's hidden size)
  int mult = 4;           // MLP expansion (NV-Embed's FeedForward default)
};

// One named parameter tensor inside the flat parameter array.
struct LatentAttentionTensor {
  std::string name;  // e.g. "latent_attention_model.cross_attend_blocks.0.fn.to_q.weight"
  std::vector<int64_t> shape;
  size_t offset = 0;  // in floats
  size_t count = 0;
};

// The tensors, in a fixed order (latents; block 0: norm, norm_context, to_q, to_kv, to_out; block 1:
// norm, net.0, net.2; weight before bias), for hidden size C; the flat array holds them back to back.
std::vector<LatentAttentionTensor> latent_attention_tensors(const LatentAttentionConfig& cfg, int C);
size_t latent_attention_param_count(const LatentAttentionConfig& cfg, int C);

// torch's initialisation: latents ~ N(0, 1); LayerNorm weight 1, bias 0; nn.Linear weight and bias
// ~ U(-1/sqrt(in), 1/sqrt(in)). Deterministic in seed.
void latent_attention_init(float* params, const LatentAttentionConfig& cfg, int C, uint64_t seed);

// The block's sizes for hidden size C (validated: every count >= 1, dim_head >= 0): H heads of D = dim_head
// (or C) channels, I = H*D, r latents, F = mult*C.
struct LatentAttentionDims {
  long C, H, D, I, r, F;
};
LatentAttentionDims latent_attention_dims(const LatentAttentionConfig& cfg, int C);

// The flat parameter array's tensors by index, in latent_attention_tensors' order.
enum LatentParam {
  kLatents, kNormW, kNormB, kCtxW, kCtxB, kToQ, kToKV, kToOut, kFfNormW, kFfNormB, kNet0W, kNet0B, kNet2W, kNet2B,
  kNumLatentParams
};

// What the backward needs from the forward, for M rows: the latents' normalised input, LN_ctx(latents) and
// their keys and values (independent of the rows), then per row the normalised inputs and reciprocal
// standard deviations of both LayerNorms, the queries, the attention probabilities (per head [M, r]), the
// attention output and net.0's output u (GEGLU's input). Every backend uses this layout.
struct LatentAttentionCacheView {
  float *lhat, *lrstd, *lc, *kv;                        // [r, C], [r], [r, C], [r, 2I] (keys, then values)
  float *xhat, *xrstd, *q, *p, *o, *yhat, *yrstd, *u;  // [M, C], [M], [M, I], [H, M, r], [M, I], [M, C], [M], [M, 2F]
};
size_t latent_attention_cache_floats(const LatentAttentionDims& d, long M);
LatentAttentionCacheView latent_attention_cache_view(float* base, const LatentAttentionDims& d, long M);
// Rows the inference forward (no cache) runs at once: its workspace is bounded by this many rows.
constexpr long kLatentInferenceChunk = 1024;

// out [M, C] = z for the M rows of x [M, C] (host memory). With cache != nullptr (latent_attention_cache_floats
// of them), keeps what the backward needs; without, the rows are processed in chunks of
// kLatentInferenceChunk. Each row's z depends on that row only (up to fp32 rounding: the GEMMs may round a
// row differently depending on its place in the batch).
void latent_attention_forward(float* out, float* cache, const float* x, const float* params,
                              const LatentAttentionConfig& cfg, int M, int C);
// dx [M, C] (overwritten) and dparams (ACCUMULATED, flat layout) from dout [M, C], for the forward of M rows
// that filled `cache` with the same params.
void latent_attention_backward(float* dx, float* dparams, const float* dout, const float* cache, const float* params,
                               const LatentAttentionConfig& cfg, int M, int C);

// Latent-attention pooling of a batch's final hidden states [B*T, C]: the block runs on the M pooled
// positions only (those of non-zero pooling weight; each position is independent of the others) and
// text b's embedding is the weighted sum of its positions' outputs. `rows` and `text_start` are in the
// backend's memory (see Backend::latent_pool_forward).
struct LatentRows {
  const int* rows = nullptr;        // [M] the pooled positions b*T + t, ascending
  const int* text_start = nullptr;  // [B + 1] text b's pooled positions are rows[text_start[b] .. text_start[b+1])
  int B = 0, T = 0, M = 0;
};

// The host reference of Backend::latent_pool_forward / latent_pool_backward (fp32, host memory):
// pooled [B, C] = sum over text b's rows of weights[row] * z_row, summed in double in row order and rounded
// once; cache as latent_attention_forward's (for M rows) or nullptr.
void latent_pool_forward(float* pooled, float* cache, const float* hidden, const LatentRows& rows,
                         const float* weights, const float* params, const LatentAttentionConfig& cfg, int C);
// d_hidden [B*T, C] (overwritten: 0 outside the pooled rows) and dparams (accumulated) from d_pooled [B, C].
void latent_pool_backward(float* d_hidden, float* dparams, const float* d_pooled, const LatentRows& rows,
                          const float* weights, const float* cache, const float* params,
                          const LatentAttentionConfig& cfg, int C);

}  // namespace l2v
