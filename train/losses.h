// The contrastive losses of LLM2Vec's SimCSE and supervised stages, on the host in fp32 (double
// accumulation), with their gradients w.r.t. the pooled embeddings.
//
// llm2vec's HardNegativeNLLLoss: scores = cos_sim(q, [d_pos; d_neg]) * scale, cross-entropy with the
// target of query i at column i (its own positive), averaged over the queries. Every other positive and
// every hard negative of the batch is a negative of query i (in-batch negatives). SimCSE is the special
// case q = view 1, d_pos = view 2, no hard negatives, scale 20; the supervised stage uses scale 50.
//
// Without in-batch negatives (NV-Embed's second stage), query i is scored against its own positive and
// its own hard negative only.
#pragma once
#include <vector>

namespace l2v {

struct ContrastiveInput {
  int n = 0;                    // queries = positives (= hard negatives when present)
  int dim = 0;
  const float* queries = nullptr;    // [n, dim]
  const float* positives = nullptr;  // [n, dim]
  const float* negatives = nullptr;  // [n, dim] or nullptr
};

struct ContrastiveResult {
  double loss = 0.0;
  std::vector<float> d_queries, d_positives, d_negatives;  // dloss/d(input), same shapes; empty if not asked
};

// Throws on n < 1, dim < 1, a non-finite input, a zero vector (cosine undefined; torch's normalize
// would silently clamp it) or no in-batch negatives without hard negatives (the loss would be 0).
ContrastiveResult contrastive_loss(const ContrastiveInput& in, float scale, bool in_batch_negatives, bool gradients);

}  // namespace l2v
