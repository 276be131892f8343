// Small, generic helpers shared by the test binaries: seeded random fills, double-accumulated dot
// products, array comparison against a double reference, a central-difference gradient checker, and
// the message of an expected exception with a check of what it names.
#pragma once
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <exception>
#include <functional>
#include <numeric>
#include <random>
#include <string>
#include <vector>

namespace l2v::test {

// The message of the exception `f` throws ("" when it throws none).
inline std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const std::exception& e) {
    return e.what();
  }
  return "";
}

// Success when `message` is non-empty and contains every one of `parts`.
inline ::testing::AssertionResult Mentions(const std::string& message, const std::vector<std::string>& parts) {
  if (message.empty()) return ::testing::AssertionFailure() << "no exception was thrown";
  for (const std::string& p : parts)
    if (message.find(p) == std::string::npos)
      return ::testing::AssertionFailure() << "message does not mention '" << p << "': " << message;
  return ::testing::AssertionSuccess();
}

// fp32 unit roundoff (half an ulp of 1.0).
constexpr double kU32 = 5.9604644775390625e-8;

// gamma_n = n u / (1 - n u) for fp32 (u = kU32): |prod (1 + e_k)^(+-1) - 1| <= gamma_n for n roundings
// |e_k| <= u (Higham, Accuracy and Stability of Numerical Algorithms, Lemma 3.1). A sum of n products
// computed in fp32, in any order and with or without FMA, is within gamma_n sum |terms| of the exact one.
inline double gamma32(double n) { return n * kU32 / (1.0 - n * kU32); }

inline std::vector<float> randn(size_t n, std::mt19937& rng, float stddev = 1.0f) {
  std::normal_distribution<float> dist(0.0f, stddev);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline std::vector<float> randu(size_t n, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (auto& x : v) x = dist(rng);
  return v;
}

inline double dot(const float* a, const float* b, size_t n) {
  double s = 0.0;
  for (size_t i = 0; i < n; ++i) s += (double)a[i] * (double)b[i];
  return s;
}

// Passes when |got[i] - want[i]| <= tol[i] for every i (NaN fails). Reports the worst element.
inline ::testing::AssertionResult AllWithin(const float* got, const double* want, const double* tol, size_t n) {
  size_t bad = 0, worst_i = 0;
  double worst = -1.0;  // worst |err| / tol
  for (size_t i = 0; i < n; ++i) {
    double err = std::fabs((double)got[i] - want[i]);
    double r = std::isnan(err) ? INFINITY : err / tol[i];
    if (!(err <= tol[i])) ++bad;
    if (r > worst || std::isnan(got[i])) { worst = r; worst_i = i; }
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  char buf[256];
  std::snprintf(buf, sizeof buf, "%zu of %zu elements out of tolerance; worst [%zu]: got %.9g want %.9g tol %.3g",
                bad, n, worst_i, (double)got[worst_i], want[worst_i], tol[worst_i]);
  return ::testing::AssertionFailure() << buf;
}

// |got - want| <= atol + rtol * |want| element-wise.
inline ::testing::AssertionResult AllClose(const float* got, const double* want, size_t n, double atol, double rtol) {
  std::vector<double> tol(n);
  for (size_t i = 0; i < n; ++i) tol[i] = atol + rtol * std::fabs(want[i]);
  return AllWithin(got, want, tol.data(), n);
}

struct GradCheckResult {
  size_t checked = 0, bad = 0;
  double worst = 0.0;        // max over checked elements of |analytic - numeric| / (atol + rtol*|numeric|)
  double max_abs_num = 0.0;  // largest |numeric| seen (a check where every gradient is 0 proves little)
  std::string detail;        // the first few failing elements
};

// Compares analytic[i] against the central difference (L(x_i + h) - L(x_i - h)) / step of `loss` for every
// element of x (or `max_checks` distinct random ones when 0 < max_checks < n). x is perturbed in place and
// restored bit-exactly. `step` is the difference of the two perturbed values as actually rounded to fp32, so
// the quotient is the exact secant slope of the function the code computes. Element i passes when
// |analytic - numeric| <= atol + rtol * |numeric|.
inline GradCheckResult grad_check(float* x, size_t n, const float* analytic, const std::function<double()>& loss,
                                  double h, double atol, double rtol, size_t max_checks = 0,
                                  unsigned seed = 1234) {
  std::vector<size_t> idx(n);
  std::iota(idx.begin(), idx.end(), size_t{0});
  if (max_checks > 0 && max_checks < n) {
    std::mt19937 rng(seed);
    std::shuffle(idx.begin(), idx.end(), rng);
    idx.resize(max_checks);
    std::sort(idx.begin(), idx.end());
  }
  GradCheckResult r;
  int reported = 0;
  for (size_t i : idx) {
    const float x0 = x[i];
    const float xp = (float)(x0 + h), xm = (float)(x0 - h);
    x[i] = xp;
    const double lp = loss();
    x[i] = xm;
    const double lm = loss();
    x[i] = x0;
    const double num = (lp - lm) / ((double)xp - (double)xm);
    const double a = analytic[i];
    const double tol = atol + rtol * std::fabs(num);
    const double err = std::fabs(a - num);
    const double ratio = std::isnan(err) ? INFINITY : err / tol;
    r.worst = std::max(r.worst, ratio);
    r.max_abs_num = std::max(r.max_abs_num, std::fabs(num));
    ++r.checked;
    if (!(err <= tol)) {
      ++r.bad;
      if (reported++ < 5) {
        char buf[160];
        std::snprintf(buf, sizeof buf, "\n  [%zu] analytic %.7g numeric %.7g |diff| %.3g tol %.3g", i, a, num, err,
                      tol);
        r.detail += buf;
      }
    }
  }
  return r;
}

// Use as EXPECT_TRUE(GradOk(res)) << "what was checked";
inline ::testing::AssertionResult GradOk(const GradCheckResult& r, double min_abs_num = 1e-2) {
  char buf[200];
  std::snprintf(buf, sizeof buf, "%zu/%zu elements failed, worst err/tol %.3g, max |numeric| %.3g", r.bad,
                r.checked, r.worst, r.max_abs_num);
  if (r.checked == 0) return ::testing::AssertionFailure() << "nothing checked";
  if (r.max_abs_num < min_abs_num)
    return ::testing::AssertionFailure() << "vacuous check: every numeric gradient is ~0; " << buf;
  if (r.bad > 0) return ::testing::AssertionFailure() << buf << r.detail;
  return ::testing::AssertionSuccess() << buf;
}

}  // namespace l2v::test
