// The pooling step between the model's final hidden states and a text's embedding, forward and
// backward, for every mode of model/pooling.h. The simple modes are weighted sums; the latent mode adds
// NV-Embed's latent-attention block (model/latent_attention.h) whose parameters live in the model's
// backend memory and train as TrainableParams next to the LoRA tensors (full training, not LoRA), so the
// optimizer, gradient clipping and checkpoints treat them like every other trainable tensor.
//
// The simple modes run on the backend (Backend::pool_forward / pool_backward): only the pooling weights
// go up (B*T values); the final hidden states, the pooled rows and their gradients stay in backend memory
// (the trainer's contrastive loss runs there too, Backend::contrastive_loss). So does the latent mode
// (Backend::latent_pool_forward / latent_pool_backward): the pooled positions' indices go up with the
// weights, and the block's cache stays in backend memory between the forward and the backward.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/batches.h"
#include "model/backend_buffer.h"
#include "model/latent_attention.h"
#include "model/model.h"
#include "model/pooling.h"
#include "model/tensor_source.h"

namespace l2v {

struct PoolingHead {
  PoolingMode mode = PoolingMode::kMean;
  LatentAttentionConfig latent;  // used by kLatentAttention only
  float* params = nullptr;       // backend fp32 [latent_attention_param_count], latent only
  float* grads = nullptr;
  size_t count = 0;
  BackendBuffer positions;  // latent: the pooled positions and each text's first (ints), per call
};

// For kLatentAttention: allocates the block's parameters in the model's backend memory, initialised as
// torch does (seed), and appends them to m.trainable under their NV-Embed names. Call after add_lora
// (which clears m.trainable). Nothing to do for the other modes.
void add_pooling_head(Model& m, PoolingHead& head, uint64_t seed);
// Overwrites the latent block's parameters from `src` (names and shapes as latent_attention_tensors).
void load_pooling_head(Model& m, PoolingHead& head, const TensorSource& src);
// Writes the latent block as safetensors (F32; the head's shape parameters in the metadata).
void save_pooling_head(const Model& m, const PoolingHead& head, const std::string& path);
// The latent config stored by save_pooling_head in `path`'s metadata.
LatentAttentionConfig read_pooling_head_config(const std::string& path);

// What pool_backward needs from pool_forward.
struct PoolCache {
  int B = 0, T = 0;
  std::vector<float> weights;     // [B*T]
  std::vector<int> positions;     // latent: the pooled positions b*T+t, then each text's first index (B+1)
  BackendBuffer latent;           // latent: the block's cache (latent_attention_cache_floats), backend memory
};

// Pools `batch` (whose forward pass was m's last) into `pooled` [B, C] (fp32, backend memory) without
// waiting. bos_id / eos_id are the tokens the bos_token / eos_token modes check for. With cache != nullptr,
// keeps what pool_backward needs.
void pool_forward(Model& m, PoolingHead& head, const EmbedBatch& batch, int bos_id, int eos_id, float* pooled,
                  PoolCache* cache);
// The same, returning the pooled embeddings [B, C] on the host (through m.acts.pooled).
std::vector<float> pool_forward(Model& m, PoolingHead& head, const EmbedBatch& batch, int bos_id, int eos_id,
                                PoolCache* cache);
// Writes d_final_hidden [B*T, C] (a backend tensor the caller allocated) from d_pooled [B, C] (fp32, backend
// memory), and accumulates the latent block's parameter gradients.
void pool_backward(Model& m, PoolingHead& head, PoolCache& cache, const float* d_pooled, Tensor d_final_hidden);
// The same from d_pooled on the host (uploaded to m.acts.pooled).
void pool_backward(Model& m, PoolingHead& head, PoolCache& cache, const std::vector<float>& d_pooled,
                   Tensor d_final_hidden);

}  // namespace l2v
