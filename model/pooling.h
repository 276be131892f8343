// How a text's embedding is read from the final hidden states: llm2vec's pooling modes and NV-Embed's
// latent-attention pooling. The weights are computed here on the host from the batch's masks (B*T
// values); the weighted sums run on the backend (Backend::pool_forward, cpu::pool_forward), see
// model/pooler.h.
//
// The simple modes are a weighted sum over positions, pooled[b] = sum_t w[b,t] * hidden[b,t], so one
// weight array describes each of them (llm2vec.LLM2Vec.get_pooling, which pads on the left):
//   mean           1/n on each of the n pooled positions (embed_mask: instruction and BOS excluded)
//   weighted_mean  the k-th pooled position (1-based, in order) weighs 2k / (n(n+1))
//   eos_token      the row's last real token, which must be the EOS (PadOptions::append_eos adds it,
//                  as llm2vec's prepare_for_tokenization appends " </s>" for this mode)
//   last_token     the row's last real token, whatever it is
//   bos_token      the row's first real token, which must be the BOS
//   latent         NV-Embed: every pooled position goes through the latent-attention block
//                  (model/latent_attention.h), then the mean as above
#pragma once
#include <string>
#include <vector>

#include "data/batches.h"

namespace l2v {

enum class PoolingMode { kMean, kWeightedMean, kEosToken, kLastToken, kBosToken, kLatentAttention };

// llm2vec's names ("mean", "weighted_mean", "eos_token", "last_token", "bos_token") plus "latent_attention";
// "eos", "bos" and "latent" are accepted as short forms. Throws listing the valid names.
PoolingMode parse_pooling_mode(const std::string& name);
const char* pooling_mode_name(PoolingMode mode);  // the llm2vec-style long name

// The weights [B*T] of the batch's rows for `mode` (latent: the mean weights its final pooling uses).
// Throws naming the row when a row has nothing to pool, or when eos_token / bos_token find another
// token than eos_id / bos_id at the pooled position.
std::vector<float> pooling_weights(PoolingMode mode, const EmbedBatch& batch, int bos_id, int eos_id);

}  // namespace l2v
