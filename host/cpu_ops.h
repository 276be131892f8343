// The fp32 CPU reference of every op of the LLM2Vec training step: forward and backward.
// These are plain functions on plain arrays (row-major, no strides), and the signatures are the ones
// the CUDA backend implements with kernels (cuda/), so a test can run both on the same inputs.
//
// Shape letters: B batch, T sequence, N = B*T rows, C hidden, H query heads, KV key/value heads,
// D head dim, F SwiGLU width, V vocabulary, IC/OC in/out features, R LoRA rank.
// Backward functions OVERWRITE their outputs unless the comment says "accumulates (+=)".
#pragma once
#include <cstdint>
#include <functional>

#include "host/philox.h"
#include "host/qkv_strides.h"

namespace l2v::cpu {

// out[n, :] = table[ids[n], :]. ids must lie in [0, V) (checked by the caller, on the host).
void embedding_forward(float* out, const int* ids, const float* table, int N, int C);

// Hugging Face LlamaRMSNorm: out = weight * x / sqrt(mean(x^2) + eps); saves rstd[n] = 1/sqrt(...).
void rmsnorm_forward(float* out, float* rstd, const float* inp, const float* weight, int N, int C, float eps);
// dinp accumulates (+=): the input of every norm is the residual stream, whose gradient is a sum.
void rmsnorm_backward(float* dinp, const float* dout, const float* inp, const float* weight,
                      const float* rstd, int N, int C);

// RoPE in Hugging Face's rotate_half convention on x [N, nh*D], rows ld >= nh*D apart for x and out (a
// column block of the fused q|k|v product) (row n is position n % T):
//   out[i]     = x[i] cos[t,i] - x[i+D/2] sin[t,i]
//   out[i+D/2] = x[i+D/2] cos[t,i] + x[i] sin[t,i]      for i < D/2,
// with cos/sin tables [T, D/2] (see rope_tables). out may alias x.
void rope_forward(float* out, const float* x, int ld, const float* cos, const float* sin, int N, int T, int nh, int D);
// The inverse rotation (the Jacobian is orthogonal). dx may alias dout.
void rope_backward(float* dx, const float* dout, int ld, const float* cos, const float* sin, int N, int T, int nh,
                   int D);
// cos/sin [T, D/2] at positions 0..T-1 from inverse frequencies inv_freq [D/2], in fp32 as transformers.
void rope_tables(float* cos, float* sin, const float* inv_freq, int T, int D);

// Scaled dot-product attention, flash-attention style: the T x T probabilities are never returned;
// the backward recomputes them from q, k and the saved log-sum-exp.
//   q [N, H*D], k and v [N, KV*D] (query head h reads kv head h / (H/KV)), their rows `ld` apart
//   (host/qkv_strides.h: packed, or blocks of the fused q|k|v product); out [N, H*D] packed, lse [B, H, T].
//   key_mask [B, T]: 1 = a real token, 0 = padding (never attended to); nullptr = all real.
//   causal: query i sees keys j <= i; otherwise all keys (LLM2Vec's bidirectional attention).
//   Scores are scaled by 1/sqrt(D). A query row with no visible key gets out = 0 and lse = -inf.
//   dropout_p > 0: each probability is kept with probability 1-p (dropout_keep_attention(key.seed, site,
//   key.offset + b*H+h, i, j, p)) and scaled by 1/(1-p), as torch.nn.functional.dropout on the softmax
//   output.
void attention_forward(float* out, float* lse, const float* q, const float* k, const float* v, QkvStrides ld,
                       const int* key_mask, int B, int T, int H, int KV, int D, bool causal, float dropout_p,
                       DropoutKey key, uint32_t site);
// Throws std::invalid_argument naming `fn` for shapes, strides or a dropout probability these ops refuse.
void check_attention_shape(const char* fn, int B, int T, int H, int KV, int D, float dropout_p, QkvStrides ld);
// dq, dk, dv overwritten (rows `ld` apart, as q, k, v). `out` and `lse` are the forward's outputs.
void attention_backward(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                        const float* q, const float* k, const float* v, QkvStrides ld, const int* key_mask, int B, int T,
                        int H, int KV, int D, bool causal, float dropout_p, DropoutKey key, uint32_t site);

// SwiGLU of the Llama MLP over N rows, in the layout of the fused gate|up product: row n of gate_up [N, 2F]
// holds the gate projection in columns [0, F) and the up projection in [F, 2F); out [N, F] = silu(gate) * up.
void swiglu_forward(float* out, const float* gate_up, long N, int F);
// d_gate_up [N, 2F] (overwritten, in the same layout; may be gate_up itself) from dout [N, F].
void swiglu_backward(float* d_gate_up, const float* dout, const float* gate_up, long N, int F);

// out [N, OC] = inp [N, IC] * weight[OC, IC]^T (+ bias[OC] when bias != nullptr) (nn.Linear), and with a
// residual [N, OC] (may be out itself) added: out = residual + bias + inp weight^T, the residual stream's
// addition done by the product's accumulation (the GPU's GEMM epilogue) instead of a separate pass.
void matmul_forward(float* out, const float* inp, const float* weight, const float* bias, int N, int IC, int OC,
                    const float* residual = nullptr);
// The part of matmul_forward before the product: out = residual + bias (or either alone) row by row.
// Returns false, writing nothing, when there is neither (the product then overwrites out).
bool linear_preset(float* out, const float* bias, const float* residual, int N, int OC);
// dinp [N, IC] = dout * weight, or += when accumulate. Base weights are frozen: no weight gradient.
void matmul_backward_input(float* dinp, const float* dout, const float* weight, int N, int IC, int OC,
                           bool accumulate);

// LoRA branch (PEFT semantics), added to the base layer's output:
//   out += scale * dropout(inp) A^T B^T,  A [R, IC], B [OC, R], scale = alpha / R,
// out's rows ld_out >= OC elements apart (a column block of a fused product, e.g. gate|up's [N, 2F]).
// Saves xa [N, R] = dropout(inp) A^T for the backward. Dropout on inp is element-wise with
// dropout_keep_elementwise(key.seed, site, key.offset + n*IC + c, p) and 1/(1-p) scaling; `scratch` [N, IC] holds the
// dropped input when dropout_p > 0 (unused otherwise, may be nullptr then).
void lora_forward(float* out, int ld_out, float* xa, const float* inp, const float* A, const float* B, float scale,
                  float dropout_p, DropoutKey key, uint32_t site, float* scratch, int N, int IC, int OC, int R);
// Accumulates (+=) dinp [N, IC], dA [R, IC] and dB [OC, R] (gradient accumulation over micro-batches) from
// dout [N, OC], rows ld_dout >= OC apart.
// The dropped input is regenerated from (key, site) into `scratch`: its contents on entry are not
// used, so one scratch buffer can serve every layer.
void lora_backward(float* dinp, float* dA, float* dB, const float* dout, int ld_dout, const float* inp, const float* xa,
                   const float* A, const float* B, float scale, float dropout_p, DropoutKey key, uint32_t site,
                   float* scratch, int N, int IC, int OC, int R);
// weight [OC, IC] += sign * scale * B A  (sign = +1 merges the adapter into the base weight, -1 unmerges).
void lora_merge(float* weight, const float* A, const float* B, float scale, float sign, int IC, int OC, int R);

// out = a + b over n values (the residual connection). out may alias a or b.
void residual_forward(float* out, const float* a, const float* b, long n);
// resid_out = a + b (N x C), then norm_out = rmsnorm(resid_out) with rstd saved: the residual add and the
// norm that follows it in one pass over the residual stream (on the GPU; composed here).
void residual_rmsnorm_forward(float* resid_out, float* norm_out, float* rstd, const float* a, const float* b,
                              const float* weight, int N, int C, float eps);

// Per-row cross-entropy of logits [N, V] against targets [N]; rows whose target is `ignore_index` get
// loss 0. losses [N]. Computed with a max-shifted log-sum-exp.
void crossentropy_forward(float* losses, const float* logits, const int* targets, int N, int V, int ignore_index);
// dlogits [N, V] = dloss * (softmax(logits) - onehot(target)) for rows with a target, 0 for ignored rows.
// dloss is the gradient of the total loss w.r.t. each row's loss (1 / #targets for a mean).
void crossentropy_softmax_backward(float* dlogits, const float* logits, const int* targets, float dloss, int N,
                                   int V, int ignore_index);

// The MNTP head, fused, on the labelled rows only (the CUDA version computes the LM head in chunks and
// never materialises [N, V] logits): for k < M, row n = rows[k] of hidden [N, C]:
//   losses[k] = cross-entropy(hidden[n] · lm_head^T, targets[k])   (lm_head [V, C], targets in [0, V))
// and, when d_hidden != nullptr, d_hidden [N, C] is overwritten: row rows[k] gets
//   dloss * (softmax(logits) - onehot(targets[k])) · lm_head, every other row 0.
// rows must be distinct. (The LM head weight itself is frozen: no gradient for it.)
void lm_head_crossentropy(float* losses, float* d_hidden, const float* hidden, const float* lm_head, const int* rows,
                          const int* targets, int M, int N, int C, int V, float dloss);
// The same with the LM head's two GEMMs given as callbacks (the CPU backend's bf16 GEMMs):
// forward(out [M, V], x [M, C], M) = x lm_head^T and backward_input(dx [M, C], dy [M, V], M) = dy lm_head.
struct LinearGemms {
  std::function<void(float* out, const float* x, int M)> forward;
  std::function<void(float* dx, const float* dy, int M)> backward_input;
  // Optional: the cross-entropy of the [M, V] logits into losses, and with backward its gradient in place
  // of the logits (the bf16 mode's host/cpu_fast_ops.h); unset, crossentropy_forward and
  // crossentropy_softmax_backward.
  std::function<void(float* losses, float* logits, const int* targets, float dloss, int M, int V, bool backward)>
      crossentropy;
};
void lm_head_crossentropy(const LinearGemms& lm_head, float* losses, float* d_hidden, const float* hidden,
                          const int* rows, const int* targets, int M, int N, int C, int V, float dloss);

// *loss (one double) = (losses[0] + ... + losses[n-1], in double, in that order) / normalizer: the MNTP
// loss from its rows' cross-entropies, computed where they are so the host reads one value.
void mean_loss(double* loss, const float* losses, int n, double normalizer);

// Weighted pooling of the final hidden states (model/pooling.h: every simple pooling mode is a weighted
// sum over positions): pooled [B, C] = per-row sums over t of weights[b*T+t] * hidden[b*T+t, :],
// accumulated in double in position order and rounded once. Positions of weight 0 are skipped, so
// padding never enters (even when it holds NaN).
void pool_forward(float* pooled, const float* hidden, const float* weights, int B, int T, int C);
// d_hidden [B*T, C] is overwritten: row b*T+t = weights[b*T+t] * d_pooled[b, :] (fp32 products), 0 where
// the weight is 0.
void pool_backward(float* d_hidden, const float* d_pooled, const float* weights, int B, int T, int C);

// LLM2Vec's contrastive loss (llm2vec's HardNegativeNLLLoss; SimCSE and the supervised stage) over n
// queries, their n positives and, when negatives != nullptr, n hard negatives: rows of C fp32 values,
// consecutive rows `ld` >= C values apart (SimCSE's interleaved pairs: queries = pooled, positives =
// pooled + C, ld = 2C). With the documents d = [positives; negatives] (D = n or 2n):
//   s[i, j] = scale * cos(q_i, d_j),  *loss = mean_i ( logsumexp_{j in cand(i)} s[i, j] - s[i, i] )
// where cand(i) is every document (in_batch_negatives) or only i's own positive and own hard negative
// (NV-Embed's second stage; needs negatives). *loss is one double. When d_queries != nullptr the
// gradients w.r.t. the inputs are written to d_queries / d_positives / d_negatives (same ld), which may
// interleave as the inputs do.
// Numerics: double throughout (u = x / |x|, dots over c in order, logsumexp over the candidates in
// order, gradient sums over j (queries) and i (documents) in order), each gradient rounded once to fp32.
// A non-finite value or a zero row (cosine undefined; torch's normalize would silently clamp it) makes
// *loss and every gradient NaN: the caller reports the loss when it reads it, and the NaN gradients make
// the optimizer's norm non-finite on every rank, so no parameter is updated from such a step.
void contrastive_loss(double* loss, float* d_queries, float* d_positives, float* d_negatives, const float* queries,
                      const float* positives, const float* negatives, int n, int C, int ld, float scale,
                      bool in_batch_negatives);

// AdamW as torch.optim.AdamW (decoupled weight decay, bias correction), step counted from 1:
//   p -= lr*wd*p; m = b1 m + (1-b1) g; v = b2 v + (1-b2) g^2;
//   p -= lr * (m / (1-b1^step)) / (sqrt(v / (1-b2^step)) + eps)
void adamw_update(float* param, const float* grad, float* m, float* v, long n, float lr, float beta1, float beta2,
                  float eps, float weight_decay, int step);

// One tensor of the optimizer's list: a trainable fp32 value, its gradient and its two AdamW moments, n
// values each.
struct OptimizerTensor {
  float* value;
  float* grad;
  float* m;
  float* v;
  long n;
};

// One step's settings: AdamW's hyper-parameters and step count (from 1), the factor every gradient is
// first multiplied by (the average over micro-batches and ranks), and the clipping threshold (<= 0: none).
struct AdamWStepArgs {
  float lr = 0.0f, beta1 = 0.9f, beta2 = 0.999f, eps = 1e-8f, weight_decay = 0.0f;
  int step = 1;
  float grad_scale = 1.0f;
  float max_grad_norm = 0.0f;
};

// The optimizer step of Hugging Face's Trainer over a list of tensors viewed as one vector, in fp32:
//   g = grad * grad_scale;  norm = ||g||_2 (squares summed in double, rounded to fp32 once);
//   clip_grad_norm_ when max_grad_norm > 0: coef = (1 / (norm + 1e-6)) * max_grad_norm (torch's fp32
//   reciprocal-then-multiply), and g *= coef when coef < 1;
//   grad := g, then adamw_update with it.
// Returns the norm (before clipping). When it is not finite (a NaN or infinite gradient) nothing is
// written: values, moments and gradients keep their contents. The sum of squares is cut into fixed
// pieces added in order, so the result does not depend on the thread count.
float adamw_step(const OptimizerTensor* tensors, int count, const AdamWStepArgs& args);

}  // namespace l2v::cpu
