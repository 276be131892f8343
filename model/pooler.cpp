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

void pool_forward(Model& m, const PoolingHead& head, const EmbedBatch& batch, int bos_id, int eos_id, float* pooled,
                  PoolCache* cache) {
  const int B = batch.B, T = batch.T, C = m.config.hidden_size;
  if (m.acts.B != B || m.acts.T != T) throw std::runtime_error("pool_forward: the last forward was another batch");
  std::vector<float> weights = pooling_weights(head.mode, batch, bos_id, eos_id);
  std::vector<int> rows;
  LatentAttentionCache* latent_cache = cache ? &cache->latent : nullptr;
  if (head.mode == PoolingMode::kLatentAttention) {
    const std::vector<float> hidden = download_tensor(m, m.acts.final_hidden, (size_t)B * T * C);
    // Only pooled positions matter, and the block treats every position independently: run it on those.
    for (int i = 0; i < B * T; ++i)
      if (weights[i] != 0.0f) rows.push_back(i);
    const int M = (int)rows.size();
    std::vector<float> x((size_t)M * C), z((size_t)M * C);
    for (int r = 0; r < M; ++r) std::copy_n(&hidden[(size_t)rows[r] * C], C, &x[(size_t)r * C]);
    const std::vector<float> params = download_floats(m, head.params, head.count);
    latent_attention_forward(z.data(), latent_cache, x.data(), params.data(), head.latent, M, C);
    std::vector<float> host((size_t)B * C, 0.0f);
    for (int r = 0; r < M; ++r) {
      const float w = weights[rows[r]];
      float* out = &host[(size_t)(rows[r] / T) * C];
      for (int c = 0; c < C; ++c) out[c] += w * z[(size_t)r * C + c];
    }
    m.backend->upload(pooled, host.data(), host.size() * sizeof(float));
  } else {
    // On the backend: only the weights go up.
    m.backend->upload(m.acts.pool_weights, weights.data(), weights.size() * sizeof(float));
    m.backend->pool_forward(pooled, m.acts.final_hidden, m.acts.pool_weights, B, T, C);
  }
  if (cache) {
    cache->B = B;
    cache->T = T;
    cache->weights = std::move(weights);
    cache->rows = std::move(rows);
  }
}

std::vector<float> pool_forward(Model& m, const PoolingHead& head, const EmbedBatch& batch, int bos_id, int eos_id,
                                PoolCache* cache) {
  pool_forward(m, head, batch, bos_id, eos_id, m.acts.pooled, cache);
  return download_floats(m, m.acts.pooled, (size_t)batch.B * m.config.hidden_size);
}

void pool_backward(Model& m, const PoolingHead& head, const PoolCache& cache, const float* d_pooled,
                   Tensor d_final_hidden) {
  const int B = cache.B, T = cache.T, C = m.config.hidden_size;
  if (head.mode != PoolingMode::kLatentAttention) {
    if (m.acts.B != B || m.acts.T != T) throw std::runtime_error("pool_backward: the last forward was another batch");
    m.backend->upload(m.acts.pool_weights, cache.weights.data(), cache.weights.size() * sizeof(float));
    m.backend->pool_backward(d_final_hidden, d_pooled, m.acts.pool_weights, B, T, C);
    return;
  }
  // The latent block runs on the host (its input rows came down in pool_forward).
  const std::vector<float> d_pooled_host = download_floats(m, d_pooled, (size_t)B * C);
  std::vector<float> d_hidden((size_t)B * T * C, 0.0f);
  const int M = (int)cache.rows.size();
  std::vector<float> dz((size_t)M * C), dx((size_t)M * C);
  for (int r = 0; r < M; ++r) {
    const float w = cache.weights[cache.rows[r]];
    const float* g = &d_pooled_host[(size_t)(cache.rows[r] / T) * C];
    for (int c = 0; c < C; ++c) dz[(size_t)r * C + c] = w * g[c];
  }
  const std::vector<float> params = download_floats(m, head.params, head.count);
  std::vector<float> dparams = download_floats(m, head.grads, head.count);
  latent_attention_backward(dx.data(), dparams.data(), dz.data(), cache.latent, params.data(), head.latent, C);
  m.backend->upload(head.grads, dparams.data(), head.count * sizeof(float));
  for (int r = 0; r < M; ++r) std::copy_n(&dx[(size_t)r * C], C, &d_hidden[(size_t)cache.rows[r] * C]);
  m.backend->upload_tensor(d_final_hidden, d_hidden.data(), d_hidden.size());
}

void pool_backward(Model& m, const PoolingHead& head, const PoolCache& cache, const std::vector<float>& d_pooled,
                   Tensor d_final_hidden) {
  if (d_pooled.size() != (size_t)cache.B * m.config.hidden_size)
    throw std::runtime_error("pool_backward: d_pooled has the wrong size");
  m.backend->upload(m.acts.pooled, d_pooled.data(), d_pooled.size() * sizeof(float));
  pool_backward(m, head, cache, m.acts.pooled, d_final_hidden);
}

}  // namespace l2v
