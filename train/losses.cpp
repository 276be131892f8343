#include "train/losses.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace l2v {
namespace {

// Unit vectors of x [n, dim] and the norms they were divided by.
std::vector<double> normalize_rows(const float* x, int n, int dim, std::vector<double>* norms, const char* what) {
  std::vector<double> u((size_t)n * dim);
  norms->assign(n, 0.0);
  for (int i = 0; i < n; ++i) {
    double s = 0.0;
    for (int c = 0; c < dim; ++c) {
      const double v = x[(size_t)i * dim + c];
      if (!std::isfinite(v))
        throw std::runtime_error(std::string("contrastive loss: non-finite value in ") + what + " " + std::to_string(i));
      s += v * v;
    }
    if (s == 0.0)
      throw std::runtime_error(std::string("contrastive loss: ") + what + " " + std::to_string(i) +
                               " is the zero vector (cosine similarity undefined)");
    (*norms)[i] = std::sqrt(s);
    for (int c = 0; c < dim; ++c) u[(size_t)i * dim + c] = x[(size_t)i * dim + c] / (*norms)[i];
  }
  return u;
}

// d/dx of (x / |x|) applied to the gradient g w.r.t. the unit vector u: (g - (g.u) u) / |x|.
void unit_backward(float* dx, const double* g, const double* u, double norm, int dim) {
  double gu = 0.0;
  for (int c = 0; c < dim; ++c) gu += g[c] * u[c];
  for (int c = 0; c < dim; ++c) dx[c] = (float)((g[c] - gu * u[c]) / norm);
}

}  // namespace

ContrastiveResult contrastive_loss(const ContrastiveInput& in, float scale, bool in_batch_negatives, bool gradients) {
  const int n = in.n, dim = in.dim;
  if (n < 1 || dim < 1) throw std::runtime_error("contrastive loss: empty batch");
  if (!in.queries || !in.positives) throw std::runtime_error("contrastive loss: missing queries or positives");
  const bool has_neg = in.negatives != nullptr;
  if (!in_batch_negatives && !has_neg)
    throw std::runtime_error("contrastive loss: without in-batch negatives a hard negative per query is required");
  std::vector<double> nq, np, nn;
  const std::vector<double> q = normalize_rows(in.queries, n, dim, &nq, "query");
  const std::vector<double> p = normalize_rows(in.positives, n, dim, &np, "positive");
  std::vector<double> ng;
  if (has_neg) ng = normalize_rows(in.negatives, n, dim, &nn, "negative");

  // Document j in [0, D): positives first, then negatives (llm2vec's torch.cat([pos, neg])).
  const int D = has_neg ? 2 * n : n;
  auto doc = [&](int j) { return j < n ? &p[(size_t)j * dim] : &ng[(size_t)(j - n) * dim]; };
  // The candidates of query i: every document, or only its own positive and negative.
  auto candidate = [&](int i, int k) { return in_batch_negatives ? k : (k == 0 ? i : n + i); };
  const int K = in_batch_negatives ? D : 2;
  auto target = [&](int i) { return in_batch_negatives ? i : 0; };

  ContrastiveResult r;
  std::vector<double> gq, gd;  // gradients w.r.t. the unit vectors
  if (gradients) {
    gq.assign((size_t)n * dim, 0.0);
    gd.assign((size_t)D * dim, 0.0);
  }
  double total = 0.0;
  std::vector<double> logits(K);
  for (int i = 0; i < n; ++i) {
    const double* qi = &q[(size_t)i * dim];
    double mx = -INFINITY;
    for (int k = 0; k < K; ++k) {
      const double* d = doc(candidate(i, k));
      double s = 0.0;
      for (int c = 0; c < dim; ++c) s += qi[c] * d[c];
      logits[k] = s * scale;
      mx = std::max(mx, logits[k]);
    }
    double z = 0.0;
    for (int k = 0; k < K; ++k) z += std::exp(logits[k] - mx);
    const double lse = mx + std::log(z);
    total += lse - logits[target(i)];
    if (!gradients) continue;
    // d(loss_i)/d(logit_k) = softmax_k - [k == target], each loss weighted 1/n; d(logit)/d(cos) = scale.
    for (int k = 0; k < K; ++k) {
      const double g = (std::exp(logits[k] - lse) - (k == target(i) ? 1.0 : 0.0)) * scale / n;
      const int j = candidate(i, k);
      const double* d = doc(j);
      for (int c = 0; c < dim; ++c) {
        gq[(size_t)i * dim + c] += g * d[c];
        gd[(size_t)j * dim + c] += g * qi[c];
      }
    }
  }
  r.loss = total / n;
  if (gradients) {
    r.d_queries.resize((size_t)n * dim);
    r.d_positives.resize((size_t)n * dim);
    for (int i = 0; i < n; ++i) {
      unit_backward(&r.d_queries[(size_t)i * dim], &gq[(size_t)i * dim], &q[(size_t)i * dim], nq[i], dim);
      unit_backward(&r.d_positives[(size_t)i * dim], &gd[(size_t)i * dim], &p[(size_t)i * dim], np[i], dim);
    }
    if (has_neg) {
      r.d_negatives.resize((size_t)n * dim);
      for (int i = 0; i < n; ++i)
        unit_backward(&r.d_negatives[(size_t)i * dim], &gd[(size_t)(n + i) * dim], &ng[(size_t)i * dim], nn[i], dim);
    }
  }
  return r;
}

}  // namespace l2v
