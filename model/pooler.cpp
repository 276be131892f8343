#include "model/pooler.h"

#include <algorithm>
#include <stdexcept>

#include "model/safetensors.h"

namespace l2v {

void add_pooling_head(Model& m, PoolingHead& head, uint64_t seed) {
  if (head.mode != PoolingMode::kLatentAttention) return;
  const int C = m.config.hidden_size;
  head.count = latent_attention_param_count(head.latent, C);
  head.params = m.alloc_floats(head.count);
  head.grads = m.alloc_floats(head.count);
  std::vector<float> init(head.count);
  latent_attention_init(init.data(), head.latent, C, seed);
  m.backend->upload(head.params, init.data(), head.count * sizeof(float));
  for (const LatentAttentionTensor& t : latent_attention_tensors(head.latent, C))
    m.trainable.push_back({t.name, head.params + t.offset, head.grads + t.offset, t.count, t.shape});
}

void load_pooling_head(Model& m, PoolingHead& head, const TensorSource& src) {
  if (head.mode != PoolingMode::kLatentAttention || !head.params)
    throw std::runtime_error("load_pooling_head: no latent-attention head to load into");
  std::vector<float> host(head.count);
  for (const LatentAttentionTensor& t : latent_attention_tensors(head.latent, m.config.hidden_size)) {
    if (!src.has(t.name)) throw std::runtime_error(src.describe() + ": missing pooling-head tensor '" + t.name + "'");
    if (src.shape(t.name) != t.shape)
      throw std::runtime_error(src.describe() + ": pooling-head tensor '" + t.name + "' has another shape");
    src.read_f32(t.name, host.data() + t.offset, t.count);
  }
  m.backend->upload(head.params, host.data(), head.count * sizeof(float));
}

void save_pooling_head(const Model& m, const PoolingHead& head, const std::string& path) {
  if (head.mode != PoolingMode::kLatentAttention || !head.params)
    throw std::runtime_error("save_pooling_head: the pooling mode has no parameters");
  const std::vector<float> host = download_floats(m, head.params, head.count);
  std::vector<SafetensorsEntry> entries;
  for (const LatentAttentionTensor& t : latent_attention_tensors(head.latent, m.config.hidden_size))
    entries.push_back({t.name, "F32", t.shape, host.data() + t.offset});
  write_safetensors(path, entries,
                    {{"format", "pt"},
                     {"num_latents", std::to_string(head.latent.num_latents)},
                     {"heads", std::to_string(head.latent.heads)},
                     {"dim_head", std::to_string(head.latent.dim_head)},
                     {"mult", std::to_string(head.latent.mult)}});
}

LatentAttentionConfig read_pooling_head_config(const std::string& path) {
  SafetensorsCheckpoint st(path);
  const nlohmann::json& meta = st.metadata();
  auto get = [&](const char* key) {
    if (!meta.contains(key) || !meta.at(key).is_string())
      throw std::runtime_error(path + ": metadata lacks '" + key + "' (not a pooling head?)");
    return std::stoi(meta.at(key).get<std::string>());
  };
  LatentAttentionConfig c;
  c.num_latents = get("num_latents");
  c.heads = get("heads");
  c.dim_head = get("dim_head");
  c.mult = get("mult");
  return c;
}

namespace {

// The latent mode's pooled positions (weight != 0, ascending) and each text's first index among them, in
// the head's backend buffer (sized for every position of the batch, so it depends on B and T only).
LatentRows upload_positions(Model& m, PoolingHead& head, const std::vector<int>& positions, int B, int T) {
  LatentRows r;
  r.B = B;
  r.T = T;
  r.M = (int)positions.size() - (B + 1);
  int* dev = static_cast<int*>(head.positions.get(*m.backend, sizeof(int) * ((size_t)B * T + B + 1)));
  m.backend->upload(dev, positions.data(), positions.size() * sizeof(int));
  r.rows = dev;
  r.text_start = dev + r.M;
  return r;
}

size_t cache_floats(const Model& m, const PoolingHead& head, int B, int T) {
  return latent_attention_cache_floats(latent_attention_dims(head.latent, m.config.hidden_size), (long)B * T);
}

}  // namespace

void pool_forward(Model& m, PoolingHead& head, const EmbedBatch& batch, int bos_id, int eos_id, float* pooled,
                  PoolCache* cache) {
  const int B = batch.B, T = batch.T, C = m.config.hidden_size;
  if (m.acts.B != B || m.acts.T != T) throw std::runtime_error("pool_forward: the last forward was another batch");
  std::vector<float> weights = pooling_weights(head.mode, batch, bos_id, eos_id);
  // On the backend: only the weights (and for the latent head the pooled positions) go up.
  m.backend->upload(m.acts.pool_weights, weights.data(), weights.size() * sizeof(float));
  std::vector<int> positions;
  if (head.mode == PoolingMode::kLatentAttention) {
    // Only pooled positions matter, and the block treats every position independently: it runs on those.
    for (int b = 0; b < B; ++b)
      for (int t = 0; t < T; ++t)
        if (weights[(size_t)b * T + t] != 0.0f) positions.push_back(b * T + t);
    const int M = (int)positions.size();
    for (int b = 0, r = 0; b <= B; ++b) {
      while (r < M && positions[r] < b * T) ++r;
      positions.push_back(r);
    }
    const LatentRows rows = upload_positions(m, head, positions, B, T);
    // The cache is sized for every position of the batch: its size depends on B and T only.
    float* latent_cache = cache ? cache->latent.floats(*m.backend, cache_floats(m, head, B, T)) : nullptr;
    m.backend->latent_pool_forward(pooled, latent_cache, m.acts.final_hidden, rows, m.acts.pool_weights, head.params,
                                   head.latent, C);
  } else {
    m.backend->pool_forward(pooled, m.acts.final_hidden, m.acts.pool_weights, B, T, C);
  }
  if (cache) {
    cache->B = B;
    cache->T = T;
    cache->weights = std::move(weights);
    cache->positions = std::move(positions);
  }
}

std::vector<float> pool_forward(Model& m, PoolingHead& head, const EmbedBatch& batch, int bos_id, int eos_id,
                                PoolCache* cache) {
  pool_forward(m, head, batch, bos_id, eos_id, m.acts.pooled, cache);
  return download_floats(m, m.acts.pooled, (size_t)batch.B * m.config.hidden_size);
}

void pool_backward(Model& m, PoolingHead& head, PoolCache& cache, const float* d_pooled, Tensor d_final_hidden) {
  const int B = cache.B, T = cache.T, C = m.config.hidden_size;
  if (m.acts.B != B || m.acts.T != T) throw std::runtime_error("pool_backward: the last forward was another batch");
  m.backend->upload(m.acts.pool_weights, cache.weights.data(), cache.weights.size() * sizeof(float));
  if (head.mode != PoolingMode::kLatentAttention) {
    m.backend->pool_backward(d_final_hidden, d_pooled, m.acts.pool_weights, B, T, C);
    return;
  }
  if (cache.positions.size() != (size_t)B + 1 + (size_t)std::count_if(cache.weights.begin(), cache.weights.end(),
                                                                        [](float w) { return w != 0.0f; }))
    throw std::runtime_error("pool_backward: the cache was not filled by a latent-attention pool_forward");
  const LatentRows rows = upload_positions(m, head, cache.positions, B, T);
  m.backend->latent_pool_backward(d_final_hidden, head.grads, d_pooled, rows, m.acts.pool_weights,
                                  cache.latent.floats(*m.backend, cache_floats(m, head, B, T)), head.params,
                                  head.latent, C);
}

void pool_backward(Model& m, PoolingHead& head, PoolCache& cache, const std::vector<float>& d_pooled,
                   Tensor d_final_hidden) {
  if (d_pooled.size() != (size_t)cache.B * m.config.hidden_size)
    throw std::runtime_error("pool_backward: d_pooled has the wrong size");
  m.backend->upload(m.acts.pooled, d_pooled.data(), d_pooled.size() * sizeof(float));
  pool_backward(m, head, cache, m.acts.pooled, d_final_hidden);
}

}  // namespace l2v
