// Text clustering evaluation (MTEB's clustering tasks, `llm2vec eval clustering`): labelled texts, k-means
// on their embeddings, and the V-measure of the clusters against the labels (Rosenberg & Hirschberg,
// 2007), the score MTEB reports.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "data/labelled_texts.h"

namespace l2v {

struct ClusterScores {
  double homogeneity = 0.0, completeness = 0.0, v_measure = 0.0;
};

// sklearn.metrics.homogeneity_completeness_v_measure(truth, pred) (beta = 1; natural logarithms, which
// the ratios do not depend on): with H the entropies of the two labellings and I their mutual
// information, homogeneity = I / H(truth) (1 when H(truth) = 0), completeness = I / H(pred) (1 when
// H(pred) = 0), v = 2 h c / (h + c) (0 when h + c = 0). Labels are any non-negative ints. Throws
// std::invalid_argument when the sizes differ, the labellings are empty or a label is negative.
ClusterScores cluster_scores(const std::vector<int>& truth, const std::vector<int>& pred);

struct KMeansResult {
  std::vector<int> assignment;  // [n]: the cluster of each row
  std::vector<double> centers;  // [k, d]
  double inertia = 0.0;         // sum of squared distances of the rows to their centers
  int iterations = 0;           // Lloyd iterations of the kept run
};

// k-means of the rows x [n, d] into k clusters: k-means++ seeding (Arthur & Vassilvitskii, 2007; each
// next center drawn with probability proportional to the squared distance to the nearest chosen one),
// then Lloyd's iterations (every row to its nearest center, ties to the lower index; every center to the
// mean of its rows; an emptied cluster takes the row farthest from its center) until no row changes
// cluster or max_iter; the run of lowest inertia out of n_init seedings is kept. Distances and means in
// double. Deterministic in seed and independent of the thread count. Throws std::invalid_argument unless
// 1 <= k <= n, d >= 1, n_init >= 1, max_iter >= 1, and on a non-finite value.
KMeansResult kmeans(const float* x, int n, int d, int k, int n_init, int max_iter, uint64_t seed);

}  // namespace l2v
