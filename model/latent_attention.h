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

// What the backward needs from the forward (host memory, reused across calls): about
// M * (2C + 2*heads*D + heads*r + 2*mult*C) floats (D = the effective dim_head) plus the latents' keys
// and values.
struct LatentAttentionCache {
  int M = 0;
  std::vector<float> data;  // implementation-defined layout
};

// out [M, C] = z for the M rows of x [M, C]. With cache != nullptr, keeps what the backward needs;
// without, the rows are processed in bounded chunks (inference). Each row's z depends on that row only
// (up to fp32 rounding: the GEMMs may round a row differently depending on its place in the batch).
void latent_attention_forward(float* out, LatentAttentionCache* cache, const float* x, const float* params,
                              const LatentAttentionConfig& cfg, int M, int C);
// dx [M, C] (overwritten) and dparams (ACCUMULATED, flat layout) from dout [M, C], for the forward that
// filled `cache` with the same params.
void latent_attention_backward(float* dx, float* dparams, const float* dout, const LatentAttentionCache& cache,
                               const float* params, const LatentAttentionConfig& cfg, int C);

}  // namespace l2v
