#include "model/memory_plan.h"

#include <algorithm>

#include "cuda/workspace_sizes.h"
#include "model/latent_attention.h"

namespace l2v {
namespace {

// The buffers of a plan, each as its allocator sizes it.
struct Allocations {
  const PlanInputs& in;
  std::vector<MemoryItem>* items;
  size_t elem(bool tensor) const { return tensor ? in.tensor_bytes : sizeof(float); }
  // One allocation of n elements of `bytes_each` (the CPU backend rounds every buffer up to 64 bytes and
  // never allocates 0; cudaMalloc of 0 bytes allocates nothing but model.cpp always asks for >= 1).
  void add(const std::string& group, const std::string& what, size_t n, size_t bytes_each, size_t count = 1) {
    size_t bytes = std::max<size_t>(n, 1) * bytes_each;
    if (!in.cuda) bytes = (bytes + 63) / 64 * 64;
    for (MemoryItem& it : *items)
      if (it.group == group && it.what == what) {
        it.bytes += bytes * count;
        return;
      }
    items->push_back({group, what, bytes * count});
  }
  void tensor(const std::string& g, const std::string& w, size_t n, size_t count = 1) { add(g, w, n, elem(true), count); }
  void floats(const std::string& g, const std::string& w, size_t n, size_t count = 1) { add(g, w, n, sizeof(float), count); }
  void ints(const std::string& g, const std::string& w, size_t n, size_t count = 1) { add(g, w, n, sizeof(int), count); }
  // A scratch the CUDA backend sizes in bytes (DeviceScratch, cudaMalloc).
  void bytes(const std::string& g, const std::string& w, size_t b, size_t count = 1) { add(g, w, b, 1, count); }
};

}  // namespace

size_t MemoryPlan::total() const {
  size_t t = 0;
  for (const MemoryItem& it : items) t += it.bytes;
  return t;
}

size_t MemoryPlan::group_bytes(const std::string& group) const {
  size_t t = 0;
  for (const MemoryItem& it : items)
    if (it.group == group) t += it.bytes;
  return t;
}

MemoryPlan plan_memory(const ModelConfig& c, const PlanInputs& in) {
  MemoryPlan plan;
  Allocations a{in, &plan.items};
  const size_t L = c.num_hidden_layers, C = c.hidden_size, F = c.intermediate_size, V = c.vocab_size;
  const size_t H = c.num_attention_heads, D = c.head_dim;
  const size_t QD = H * D, KVD = (size_t)c.num_key_value_heads * D;
  const size_t B = in.rows, T = in.seq_len, N = B * T;
  size_t in_dims[kNumLinears], out_dims[kNumLinears];
  for (int id = 0; id < kNumLinears; ++id) {
    in_dims[id] = linear_in_features(c, id);
    out_dims[id] = linear_out_features(c, id);
  }
  const int K = std::clamp(in.recompute_layers, 0, (int)L);
  plan.recompute_layers = K;

  // load_model: embeddings, per layer two norms and the four groups of linears (one allocation of weights
  // each, + one of biases), the final norm, lm_head.
  a.tensor("weights", "embeddings", V * C);
  for (size_t l = 0; l < L; ++l) {
    a.floats("weights", "norms", C, 2);
    for (const LinearGroup& g : kLinearGroups) {
      const size_t W = group_out_features(c, g);
      a.tensor("weights", "linear layers", W * in_dims[g.ids[0]]);
      if (linear_has_bias(c, g.ids[0])) a.tensor("weights", "biases", W);
    }
  }
  a.floats("weights", "norms", C);
  if (!c.tie_word_embeddings) a.tensor("weights", "LM head", V * C);
  if (in.cpu_bf16_tiles) {
    // Packed at each weight's first GEMM, outside the backend's 64-byte rounding (aligned_alloc of whole
    // 1 KiB tiles): forward (W^T) and backward (W) tiles of the same size.
    auto tiles = [](size_t in_f, size_t out_f) { return (in_f + 31) / 32 * 32 * ((out_f + 31) / 32 * 32) * 2; };
    size_t bytes = 0;
    for (const LinearGroup& g : kLinearGroups)  // a group is one weight [W, IC]
      bytes += L * 2 * tiles(in_dims[g.ids[0]], group_out_features(c, g));
    if (in.mntp) bytes += 2 * tiles(C, V);
    plan.items.push_back({"weights", "bf16 weight tiles (cpu)", bytes});
  }

  // add_lora: A, B and their gradients per adapted linear; the pooling head's parameters and gradients;
  // AdamW's two moments per trainable tensor.
  std::vector<size_t> trainable;
  for (size_t l = 0; l < L; ++l)
    for (int id = 0; id < kNumLinears; ++id) {
      if (!in.lora.targets[id] || in.lora.r <= 0) continue;
      const size_t na = (size_t)in.lora.r * in_dims[id], nb = out_dims[id] * in.lora.r;
      a.floats("adapter", "LoRA A, B", na);
      a.floats("adapter", "LoRA A, B", nb);
      a.floats("adapter", "LoRA gradients", na);
      a.floats("adapter", "LoRA gradients", nb);
      trainable.insert(trainable.end(), {na, nb});
    }
  if (in.latent_head) {
    const size_t n = latent_attention_param_count(in.latent, (int)C);
    a.floats("adapter", "pooling head and gradients", n, 2);
    for (const LatentAttentionTensor& t : latent_attention_tensors(in.latent, (int)C)) trainable.push_back(t.count);
  }
  for (size_t n : trainable) a.floats("optimizer", "AdamW moments", n, 2);
  a.floats("optimizer", "gradient norm", 1);
  // The trainer's read-back of a step: one double loss per micro-batch and the norm (grown_bytes).
  a.bytes("optimizer", "step read-back (losses, norm)",
          grown_bytes(sizeof(double) * std::max(in.accumulation, 1) + sizeof(float)));

  // ensure_activations (model.cpp), in its order.
  const size_t R = std::max(in.lora.r, 1), widest = std::max({C, F, QD});
  a.ints("activations", "ids, masks, loss rows", N, 4);
  a.tensor("activations", "layer inputs (residual stream)", (L + 1) * N * C);
  const size_t slots = activation_slots((int)L, K);
  for (size_t s = 0; s < slots; ++s) {
    const std::string g = K > 0 && s == 0 ? "recomputation" : "activations";
    const std::string w = K > 0 && s == 0 ? "the recomputed layers' shared slot" : "stored layers";
    for (size_t n : {N * C, N * (QD + 2 * KVD), N * QD, N * C, N * C, N * 2 * F, N * F}) a.tensor(g, w, n);
    for (int id = 0; id < kNumLinears; ++id) a.tensor(g, w, N * R);
    a.floats(g, w, N, 2);      // rstd1, rstd2
    a.floats(g, w, B * H * T);  // lse
  }
  a.tensor("activations", "final hidden", N * C);
  a.floats("activations", "final hidden", N, 2);  // rstd_final, losses
  a.floats("activations", "final hidden", 2);     // the loss (one double)
  for (size_t n : {N * C, N * C, N * C, N * (QD + 2 * KVD), N * QD, N * 2 * F, N * F, N * C})
    a.tensor("backward", "gradient buffers", n);
  // The dropped LoRA inputs: the CPU reference stores them; the CUDA kernels apply the mask in registers.
  if (!in.cuda) a.tensor("backward", "LoRA dropout inputs", N * widest);
  a.floats("activations", "RoPE tables", T * D / 2, 2);
  a.floats("activations", "pooling weights", N);
  a.floats("activations", "pooled rows", B * C);

  // The contrastive stages' trainer buffers (train/trainer.cpp, each grown with a quarter spare): the
  // gradient w.r.t. the hidden states of a group, the micro-batch's pooled rows and their gradient, the
  // loss, and with gathered negatives every rank's rows and their gradient.
  if (!in.mntp) {
    a.bytes("backward", "pooled-output gradient (trainer)", grown_bytes(N * C * in.tensor_bytes));
    a.bytes("activations", "pooled rows (trainer)", grown_bytes(sizeof(float) * in.pooled_rows * C));
    a.bytes("backward", "pooled-row gradients (trainer)", grown_bytes(sizeof(float) * in.pooled_rows * C));
    if (in.gathered_rows > 0)
      a.bytes("activations", "gathered rows of every rank and their gradients",
              grown_bytes(sizeof(float) * in.gathered_rows * C), 2);
  }
  // The latent-attention head (model/pooler.cpp): the pooled positions, the block's cache and on CUDA its
  // workspace, each sized for every position of the largest forward (an upper bound of the pooled ones).
  if (in.latent_head) {
    const LatentAttentionDims ld = latent_attention_dims(in.latent, (int)C);
    a.bytes("activations", "latent-attention positions", grown_bytes(sizeof(int) * (N + B + 1)));
    a.bytes("activations", "latent-attention cache",
            grown_bytes(sizeof(float) * latent_attention_cache_floats(ld, (long)N)));
    if (in.cuda) a.bytes("scratch", "latent-attention head", cuda::latent_training_scratch_bytes(ld, (long)N));
  }

  if (in.cuda) {
    // The CUDA backend's scratch (cuda/cuda_backend.cu), each at the largest size the step asks for.
    a.bytes("scratch", "cuBLASLt workspace", cuda::kLtWorkspaceBytes);
    a.bytes("scratch", "attention backward", cuda::attention_backward_scratch_bytes((int)B, (int)T, (int)H));
    // The LoRA workspace of the largest group of adapters sharing an input (model.h: kLinearGroups).
    size_t lora_ws = 0;
    for (const LinearGroup& g : kLinearGroups) {
      int OC[kMaxLoraBranches], count = 0;
      for (int i = 0; i < g.count; ++i)
        if (in.lora.targets[g.ids[i]] && in.lora.r > 0) OC[count++] = (int)out_dims[g.ids[i]];
      if (count > 0)
        lora_ws = std::max(lora_ws, cuda::lora_branches_workspace_bytes(in.tensor_bytes, (int)N,
                                                                        (int)in_dims[g.ids[0]], OC, count, in.lora.r));
    }
    if (lora_ws) a.bytes("scratch", "LoRA workspace", lora_ws);
    if (in.mntp) a.bytes("scratch", "LM head (chunked logits)", cuda::lm_head_scratch_bytes(in.tensor_bytes, cuda::kLmHeadChunk, (int)C, (int)V));
    if (!in.mntp && in.loss_queries > 0)
      a.bytes("scratch", "contrastive loss", cuda::contrastive_scratch_bytes(in.loss_queries, (int)C, in.loss_negatives, true));
    a.bytes("scratch", "optimizer step", cuda::norm_scratch_bytes());
    a.bytes("scratch", "optimizer step", cuda::optimizer_list_bytes(trainable.size()));
    if (in.tensor_bytes != sizeof(float)) {  // fp32 <-> bf16 conversions of uploads and downloads
      const size_t largest = std::max({V * C, F * C, QD * C, N * C});
      a.bytes("scratch", "conversion staging", cuda::staging_bytes(largest));
    }
    // Outside the backend's allocations: the CUDA context, cuBLAS's workspace and the allocator's
    // rounding and fragmentation. An estimate, kept free so that a plan at the budget does not fail.
    a.bytes("runtime", "CUDA context, cuBLAS, fragmentation (estimate)", kRuntimeReserveBytes);
  }

  // FLOPs (multiply-add = 2): linear layers forward 2·N·Σ in·out and backward (input gradients only: the
  // base is frozen) the same again; LoRA's rank-r products (forward 2, backward 4 GEMMs); attention
  // 4·B·T²·H·D forward (QKᵀ and PV; half under a causal mask is still computed by the kernels' tiles only
  // where visible, counted in full here) and twice that backward; the MNTP head on the scored rows.
  double lin = 0, lora = 0;
  for (int id = 0; id < kNumLinears; ++id) {
    lin += (double)in_dims[id] * out_dims[id];
    if (in.lora.targets[id] && in.lora.r > 0) lora += (double)in.lora.r * (in_dims[id] + out_dims[id]);
  }
  const double layer_fwd = 2.0 * N * (lin + lora) + 4.0 * B * T * T * H * D;
  const double layer_bwd = 2.0 * N * lin + 4.0 * N * lora + 8.0 * B * T * T * H * D;
  const double head = in.mntp ? 4.0 * in.scored_fraction * N * V * C : 0.0;
  plan.model_flops = L * (layer_fwd + layer_bwd) + head;
  plan.recompute_flops = K * layer_fwd;
  return plan;
}

MemoryPlan plan_least_recomputation(const ModelConfig& c, PlanInputs in, size_t budget_bytes, bool* fits) {
  // Each recomputed layer frees one slot (after the first, which the shared slot costs): the total falls
  // with k except at k = 1, so the least k that fits is found by trying them in order.
  for (int k = 0; k <= c.num_hidden_layers; ++k) {
    in.recompute_layers = k;
    MemoryPlan p = plan_memory(c, in);
    if (p.total() <= budget_bytes) {
      *fits = true;
      return p;
    }
  }
  *fits = false;
  return plan_memory(c, in);
}

}  // namespace l2v
