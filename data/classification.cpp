#include "data/classification.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <numeric>
#include <stdexcept>
#include <string>

#include "host/philox.h"

namespace l2v {
namespace {

// The objective of fit_logistic_regression at theta = [weights; bias]: its value, gradient, and the
// model's probabilities (kept for Hessian-vector products at the same point). Z = X W^T + b and the
// products with X go through BLAS.
struct Objective {
  const std::vector<double>& x;  // [n, d]
  const std::vector<int>& y;
  int n, d, rows;                // rows: 1 (two classes: P(class 1)) or K
  double inv_c;
  mutable std::vector<double> prob;  // [n, rows] at the last evaluated theta

  double operator()(const std::vector<double>& theta, std::vector<double>* grad) const {
    const double* w = theta.data();
    const double* b = theta.data() + (size_t)rows * d;
    grad->assign(theta.size(), 0.0);
    double* gw = grad->data();
    double* gb = grad->data() + (size_t)rows * d;
    prob.assign((size_t)n * rows, 0.0);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, rows, d, 1.0, x.data(), d, w, d, 0.0, prob.data(), rows);
    std::vector<double> dz((size_t)n * rows);
    double f = 0.0;
    for (int i = 0; i < n; ++i) {
      double* zi = prob.data() + (size_t)i * rows;  // logits, then probabilities
      double* di = dz.data() + (size_t)i * rows;
      for (int k = 0; k < rows; ++k) zi[k] += b[k];
      if (rows == 1) {
        // log(1 + exp(-t)) with t = s z, written to stay finite for any z.
        const double t = (y[i] == 1 ? 1.0 : -1.0) * zi[0];
        f += t > 0 ? std::log1p(std::exp(-t)) : -t + std::log1p(std::exp(t));
        zi[0] = 1.0 / (1.0 + std::exp(-zi[0]));
        di[0] = zi[0] - (y[i] == 1 ? 1.0 : 0.0);
      } else {
        const double mx = *std::max_element(zi, zi + rows);
        double sum = 0.0;
        for (int k = 0; k < rows; ++k) sum += std::exp(zi[k] - mx);
        const double lse = mx + std::log(sum);
        f += lse - zi[y[i]];
        for (int k = 0; k < rows; ++k) {
          zi[k] = std::exp(zi[k] - lse);
          di[k] = zi[k] - (k == y[i] ? 1.0 : 0.0);
        }
      }
      for (int k = 0; k < rows; ++k) gb[k] += di[k];
    }
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, d, n, 1.0, dz.data(), rows, x.data(), d, 0.0, gw, d);
    for (size_t j = 0; j < (size_t)rows * d; ++j) {
      f += 0.5 * inv_c * w[j] * w[j];
      gw[j] += inv_c * w[j];
    }
    return f;
  }

  // The Hessian (at the last evaluated theta) times v = [V; vb].
  std::vector<double> hessian_times(const std::vector<double>& v) const {
    const double* vw = v.data();
    const double* vb = v.data() + (size_t)rows * d;
    std::vector<double> u((size_t)n * rows), out(v.size(), 0.0);
    cblas_dgemm(CblasRowMajor, CblasNoTrans, CblasTrans, n, rows, d, 1.0, x.data(), d, vw, d, 0.0, u.data(), rows);
    double* hb = out.data() + (size_t)rows * d;
    for (int i = 0; i < n; ++i) {
      const double* p = prob.data() + (size_t)i * rows;
      double* ui = u.data() + (size_t)i * rows;
      for (int k = 0; k < rows; ++k) ui[k] += vb[k];
      if (rows == 1) {
        ui[0] *= p[0] * (1.0 - p[0]);
      } else {  // the softmax's Jacobian: diag(p) - p p^T
        double pu = 0.0;
        for (int k = 0; k < rows; ++k) pu += p[k] * ui[k];
        for (int k = 0; k < rows; ++k) ui[k] = p[k] * (ui[k] - pu);
      }
      for (int k = 0; k < rows; ++k) hb[k] += ui[k];
    }
    cblas_dgemm(CblasRowMajor, CblasTrans, CblasNoTrans, rows, d, n, 1.0, u.data(), rows, x.data(), d, 0.0,
                out.data(), d);
    for (size_t j = 0; j < (size_t)rows * d; ++j) out[j] += inv_c * vw[j];
    return out;
  }
};

double dot(const std::vector<double>& a, const std::vector<double>& b) {
  double s = 0.0;
  for (size_t i = 0; i < a.size(); ++i) s += a[i] * b[i];
  return s;
}

double max_abs(const std::vector<double>& a) {
  double m = 0.0;
  for (double v : a) m = std::max(m, std::fabs(v));
  return m;
}

}  // namespace

int LogisticRegression::predict(const float* x) const {
  const int rows = classes == 2 ? 1 : classes;
  int best = 0;
  double best_z = -INFINITY;
  for (int k = 0; k < rows; ++k) {
    double s = bias[k];
    for (int j = 0; j < dim; ++j) s += weights[(size_t)k * dim + j] * x[j];
    if (rows == 1) return s > 0.0 ? 1 : 0;
    if (s > best_z) {
      best_z = s;
      best = k;
    }
  }
  return best;
}

LogisticRegression fit_logistic_regression(const float* x, const std::vector<int>& y, int dim, int classes,
                                           double C, int max_iter, double tol) {
  const int n = (int)y.size();
  if (n < 1 || dim < 1 || classes < 2 || C <= 0.0 || max_iter < 1)
    throw std::invalid_argument("fit_logistic_regression: needs examples, dim >= 1, >= 2 classes, C > 0");
  std::vector<int> count(classes, 0);
  for (int c : y) {
    if (c < 0 || c >= classes) throw std::invalid_argument("fit_logistic_regression: label outside [0, classes)");
    ++count[c];
  }
  for (int c = 0; c < classes; ++c)
    if (count[c] == 0)
      throw std::invalid_argument("fit_logistic_regression: class " + std::to_string(c) + " has no example");
  std::vector<double> xd((size_t)n * dim);
  for (size_t i = 0; i < xd.size(); ++i) {
    if (!std::isfinite(x[i])) throw std::invalid_argument("fit_logistic_regression: non-finite input");
    xd[i] = x[i];
  }
  const int rows = classes == 2 ? 1 : classes;
  const Objective f{xd, y, n, dim, rows, 1.0 / C, {}};
  std::vector<double> theta((size_t)rows * (dim + 1), 0.0), g, g_new, theta_new;
  double fx = f(theta, &g);
  const double stop = tol * std::max(1.0, max_abs(g));
  // Truncated Newton (Nocedal & Wright, algorithm 7.1, as sklearn's newton-cg): the Newton step by
  // conjugate gradients on Hessian-vector products, to a relative residual min(0.5, sqrt|g|), then a
  // backtracking line search. Converges in tens of iterations where L-BFGS needs hundreds on the badly
  // scaled features of LLM embeddings.
  LogisticRegression m;
  for (m.iterations = 0; m.iterations < max_iter && max_abs(g) > stop; ++m.iterations) {
    const double gnorm = std::sqrt(dot(g, g)), eta = std::min(0.5, std::sqrt(gnorm)) * gnorm;
    std::vector<double> step_dir(theta.size(), 0.0), r(g.size()), dvec;
    for (size_t i = 0; i < g.size(); ++i) r[i] = -g[i];
    dvec = r;
    double rr = dot(r, r);
    for (int cg = 0; cg < 200 && std::sqrt(rr) > eta; ++cg) {
      const std::vector<double> hd = f.hessian_times(dvec);
      const double dhd = dot(dvec, hd);
      if (dhd <= 0.0) break;  // cannot happen for this convex objective short of rounding
      const double alpha = rr / dhd;
      for (size_t i = 0; i < r.size(); ++i) {
        step_dir[i] += alpha * dvec[i];
        r[i] -= alpha * hd[i];
      }
      const double rr_new = dot(r, r);
      for (size_t i = 0; i < r.size(); ++i) dvec[i] = r[i] + rr_new / rr * dvec[i];
      rr = rr_new;
    }
    if (max_abs(step_dir) == 0.0) step_dir = r;  // the gradient direction
    const double slope = dot(g, step_dir);
    double step = 1.0, f_new = 0.0;
    bool moved = false;
    for (int tries = 0; tries < 60; ++tries, step *= 0.5) {
      theta_new = theta;
      for (size_t i = 0; i < theta.size(); ++i) theta_new[i] += step * step_dir[i];
      f_new = f(theta_new, &g_new);
      // Armijo; and near the optimum, where f changes by less than its rounding and can no longer
      // measure progress, a step that does not raise f beyond that rounding and shrinks the gradient.
      if (f_new <= fx + 1e-4 * step * slope ||
          (f_new <= fx + 1e-13 * std::fabs(fx) && max_abs(g_new) < max_abs(g))) {
        moved = true;
        break;
      }
    }
    if (!moved) {
      f(theta, &g);  // the probabilities at theta again
      break;         // no decrease left at double precision: at the optimum
    }
    theta.swap(theta_new);
    g.swap(g_new);
    fx = f_new;
  }
  m.classes = classes;
  m.dim = dim;
  m.weights.assign(theta.begin(), theta.begin() + (size_t)rows * dim);
  m.bias.assign(theta.begin() + (size_t)rows * dim, theta.end());
  return m;
}

ClassificationScores classification_scores(const std::vector<int>& truth, const std::vector<int>& pred) {
  if (truth.size() != pred.size() || truth.empty())
    throw std::invalid_argument("classification_scores: the labellings are empty or differ in size");
  std::map<int, long> tp, fp, fn;
  long correct = 0;
  for (size_t i = 0; i < truth.size(); ++i) {
    tp[truth[i]] += 0;
    tp[pred[i]] += 0;
    if (truth[i] == pred[i]) {
      ++correct;
      ++tp[truth[i]];
    } else {
      ++fp[pred[i]];
      ++fn[truth[i]];
    }
  }
  ClassificationScores s;
  s.accuracy = (double)correct / truth.size();
  for (const auto& [label, t] : tp) {
    const double denom = 2.0 * t + fp[label] + fn[label];
    s.macro_f1 += denom == 0.0 ? 0.0 : 2.0 * t / denom;
  }
  s.macro_f1 /= tp.size();
  return s;
}

std::vector<int> undersample(const std::vector<int>& labels, int per_label, uint64_t seed) {
  std::vector<int> order(labels.size());
  std::iota(order.begin(), order.end(), 0);
  // Fisher-Yates with Philox draws keyed by the seed.
  for (size_t i = order.size(); i > 1; --i) {
    const Philox4 r = philox4x32_10((uint32_t)i, (uint32_t)(i >> 32), 0x756E64u /* "und" */, 0, seed);
    const size_t j = (size_t)((((uint64_t)r.v[0] << 32) | r.v[1]) % i);
    std::swap(order[i - 1], order[j]);
  }
  std::map<int, int> taken;
  std::vector<int> out;
  for (int i : order)
    if (taken[labels[i]]++ < per_label) out.push_back(i);
  return out;
}

}  // namespace l2v
