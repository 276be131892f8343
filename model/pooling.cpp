#include "model/pooling.h"

#include <stdexcept>

namespace l2v {

PoolingMode parse_pooling_mode(const std::string& name) {
  if (name == "mean") return PoolingMode::kMean;
  if (name == "weighted_mean") return PoolingMode::kWeightedMean;
  if (name == "eos_token" || name == "eos") return PoolingMode::kEosToken;
  if (name == "last_token") return PoolingMode::kLastToken;
  if (name == "bos_token" || name == "bos") return PoolingMode::kBosToken;
  if (name == "latent_attention" || name == "latent") return PoolingMode::kLatentAttention;
  throw std::runtime_error("unknown pooling mode '" + name +
                           "' (mean, weighted_mean, eos_token, last_token, bos_token or latent_attention)");
}

const char* pooling_mode_name(PoolingMode mode) {
  switch (mode) {
    case PoolingMode::kMean: return "mean";
    case PoolingMode::kWeightedMean: return "weighted_mean";
    case PoolingMode::kEosToken: return "eos_token";
    case PoolingMode::kLastToken: return "last_token";
    case PoolingMode::kBosToken: return "bos_token";
    case PoolingMode::kLatentAttention: return "latent_attention";
  }
  return "?";
}

std::vector<float> pooling_weights(PoolingMode mode, const EmbedBatch& batch, int bos_id, int eos_id) {
  const int B = batch.B, T = batch.T;
  std::vector<float> w((size_t)B * T, 0.0f);
  for (int b = 0; b < B; ++b) {
    const size_t row = (size_t)b * T;
    const std::string where = "pooling (" + std::string(pooling_mode_name(mode)) + "): row " + std::to_string(b);
    int first = -1, last = -1, pooled = 0;
    for (int t = 0; t < T; ++t) {
      if (batch.key_mask[row + t]) {
        if (first < 0) first = t;
        last = t;
      }
      pooled += batch.embed_mask[row + t] ? 1 : 0;
    }
    if (first < 0) throw std::runtime_error(where + " has no tokens");
    switch (mode) {
      case PoolingMode::kMean:
      case PoolingMode::kLatentAttention:
      case PoolingMode::kWeightedMean: {
        if (pooled == 0) throw std::runtime_error(where + " has no position to pool (embed_mask all 0)");
        // llm2vec: weights 1..n over the pooled span, normalised by their sum n(n+1)/2.
        const double n = pooled, total = n * (n + 1.0) / 2.0;
        int k = 0;
        for (int t = 0; t < T; ++t)
          if (batch.embed_mask[row + t])
            w[row + t] = mode == PoolingMode::kWeightedMean ? (float)(++k / total) : (float)(1.0 / n);
        break;
      }
      case PoolingMode::kEosToken:
        if (batch.ids[row + last] != eos_id)
          throw std::runtime_error(where + ": the last token is " + std::to_string(batch.ids[row + last]) +
                                   ", not the EOS " + std::to_string(eos_id) +
                                   " (eos_token pooling needs texts ending with EOS)");
        w[row + last] = 1.0f;
        break;
      case PoolingMode::kLastToken:
        w[row + last] = 1.0f;
        break;
      case PoolingMode::kBosToken:
        if (batch.ids[row + first] != bos_id)
          throw std::runtime_error(where + ": the first token is " + std::to_string(batch.ids[row + first]) +
                                   ", not the BOS " + std::to_string(bos_id) +
                                   " (bos_token pooling needs a tokenizer that adds BOS)");
        w[row + first] = 1.0f;
        break;
    }
  }
  return w;
}

}  // namespace l2v
