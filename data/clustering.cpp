#include "data/clustering.h"

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>

#include "host/philox.h"

namespace l2v {

namespace {

// Entropy (nats) of the label counts over n items.
double entropy(const std::map<int, long>& counts, double n) {
  double h = 0.0;
  for (const auto& [label, c] : counts) h -= (c / n) * std::log(c / n);
  return h;
}

}  // namespace

ClusterScores cluster_scores(const std::vector<int>& truth, const std::vector<int>& pred) {
  if (truth.size() != pred.size()) throw std::invalid_argument("cluster_scores: the labellings differ in size");
  if (truth.empty()) throw std::invalid_argument("cluster_scores: no items");
  std::map<int, long> a, b;
  std::map<std::pair<int, int>, long> joint;
  for (size_t i = 0; i < truth.size(); ++i) {
    if (truth[i] < 0 || pred[i] < 0) throw std::invalid_argument("cluster_scores: labels must be non-negative");
    ++a[truth[i]];
    ++b[pred[i]];
    ++joint[{truth[i], pred[i]}];
  }
  const double n = (double)truth.size();
  const double h_truth = entropy(a, n), h_pred = entropy(b, n);
  // I = sum_ij (n_ij / n) log(n n_ij / (a_i b_j)); rounding can leave it a hair below 0 (sklearn clips).
  double mi = 0.0;
  for (const auto& [ij, c] : joint) mi += (c / n) * std::log(n * c / ((double)a[ij.first] * b[ij.second]));
  mi = std::max(mi, 0.0);
  ClusterScores s;
  s.homogeneity = h_truth == 0.0 ? 1.0 : mi / h_truth;
  s.completeness = h_pred == 0.0 ? 1.0 : mi / h_pred;
  const double sum = s.homogeneity + s.completeness;
  s.v_measure = sum == 0.0 ? 0.0 : 2.0 * s.homogeneity * s.completeness / sum;
  return s;
}

namespace {

double squared_distance(const float* x, const double* c, int d) {
  double s = 0.0;
  for (int j = 0; j < d; ++j) {
    const double t = x[j] - c[j];
    s += t * t;
  }
  return s;
}

// Random doubles in [0, 1) for draw `index` of seeding `run` (Philox keyed by the seed).
double uniform(uint64_t seed, uint32_t run, uint64_t index) {
  const Philox4 r = philox4x32_10((uint32_t)index, (uint32_t)(index >> 32), run, 0x6B6D65u /* "kme" */, seed);
  return ((uint64_t)r.v[0] << 21 ^ r.v[1] >> 11) * (1.0 / 9007199254740992.0);  // 53 bits
}

// k-means++ seeding: the first center uniformly, each next one with probability proportional to the
// squared distance to the nearest center chosen so far (a row already chosen has weight 0).
std::vector<double> seed_centers(const float* x, int n, int d, int k, uint64_t seed, uint32_t run) {
  std::vector<double> centers((size_t)k * d);
  auto take = [&](int center, int row) {
    for (int j = 0; j < d; ++j) centers[(size_t)center * d + j] = x[(size_t)row * d + j];
  };
  take(0, std::min(n - 1, (int)(uniform(seed, run, 0) * n)));
  std::vector<double> nearest(n);
  for (int i = 0; i < n; ++i) nearest[i] = squared_distance(x + (size_t)i * d, centers.data(), d);
  for (int c = 1; c < k; ++c) {
    double total = 0.0;
    for (double w : nearest) total += w;
    int row = n - 1;
    if (total > 0.0) {
      const double target = uniform(seed, run, c) * total;
      double acc = 0.0;
      for (int i = 0; i < n; ++i) {
        acc += nearest[i];
        if (nearest[i] > 0.0 && acc > target) {
          row = i;
          break;
        }
      }
    } else {  // every row coincides with a center: any row will do
      row = c % n;
    }
    take(c, row);
#pragma omp parallel for schedule(static)
    for (int i = 0; i < n; ++i)
      nearest[i] = std::min(nearest[i], squared_distance(x + (size_t)i * d, centers.data() + (size_t)c * d, d));
  }
  return centers;
}

KMeansResult lloyd(const float* x, int n, int d, int k, int max_iter, std::vector<double> centers) {
  KMeansResult r;
  r.assignment.assign(n, -1);
  std::vector<double> dist(n);
  for (r.iterations = 1; r.iterations <= max_iter; ++r.iterations) {
    bool changed = false;
#pragma omp parallel for schedule(static) reduction(|| : changed)
    for (int i = 0; i < n; ++i) {
      int best = 0;
      double best_d = std::numeric_limits<double>::infinity();
      for (int c = 0; c < k; ++c) {
        const double dd = squared_distance(x + (size_t)i * d, centers.data() + (size_t)c * d, d);
        if (dd < best_d) {
          best_d = dd;
          best = c;
        }
      }
      changed = changed || r.assignment[i] != best;
      r.assignment[i] = best;
      dist[i] = best_d;
    }
    if (!changed || r.iterations == max_iter) break;
    // New centers: the means of their rows, summed in row order.
    std::vector<double> sum((size_t)k * d, 0.0);
    std::vector<long> count(k, 0);
    for (int i = 0; i < n; ++i) {
      const int c = r.assignment[i];
      ++count[c];
      for (int j = 0; j < d; ++j) sum[(size_t)c * d + j] += x[(size_t)i * d + j];
    }
    for (int c = 0; c < k; ++c) {
      if (count[c] > 0) {
        for (int j = 0; j < d; ++j) centers[(size_t)c * d + j] = sum[(size_t)c * d + j] / count[c];
        continue;
      }
      // An empty cluster takes the row farthest from its center (which then leaves its old cluster).
      const int far = (int)(std::max_element(dist.begin(), dist.end()) - dist.begin());
      for (int j = 0; j < d; ++j) centers[(size_t)c * d + j] = x[(size_t)far * d + j];
      dist[far] = 0.0;
    }
  }
  // The final assignment's inertia, against the centers it was made with.
  r.inertia = 0.0;
  for (int i = 0; i < n; ++i) r.inertia += dist[i];
  r.centers = std::move(centers);
  return r;
}

}  // namespace

KMeansResult kmeans(const float* x, int n, int d, int k, int n_init, int max_iter, uint64_t seed) {
  if (n < 1 || d < 1 || k < 1 || k > n || n_init < 1 || max_iter < 1)
    throw std::invalid_argument("kmeans: needs 1 <= k <= n rows, d >= 1, n_init >= 1 and max_iter >= 1 (n " +
                                std::to_string(n) + ", k " + std::to_string(k) + ")");
  for (size_t i = 0; i < (size_t)n * d; ++i)
    if (!std::isfinite(x[i])) throw std::invalid_argument("kmeans: non-finite value in row " + std::to_string(i / d));
  KMeansResult best;
  for (int run = 0; run < n_init; ++run) {
    KMeansResult r = lloyd(x, n, d, k, max_iter, seed_centers(x, n, d, k, seed, (uint32_t)run));
    if (run == 0 || r.inertia < best.inertia) best = std::move(r);
  }
  return best;
}

}  // namespace l2v
