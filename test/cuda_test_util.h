// Helpers shared by the kernel tests that run on the CUDA-on-CPU emulator (test/test_cuda_*.cpp, built
// with -DL2V_EMULATE; see host/emu/emu.mk) and, built by nvcc, on a GPU (cuda/cuda.mk's gpu-tests): the
// storage precisions under test (fp32, bf16, fp16) with their unit roundoff, float <-> T conversions,
// the values a T array holds, RAII device arrays (one filled from / read back as floats, one of plain
// values), and the table of the worst errors seen per comparison family, checked and recorded by
// CloseRecorded (and CloseStored, for results rounded once to T) and printed by a WorstReport when the
// tests end; and, for the emulator only, the message of a launch's KernelError and scheduling-order
// scopes. Generic, non-CUDA test helpers are in test/test_util.h.
#pragma once

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <map>
#include <string>
#include <type_traits>
#include <vector>

#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include "cuda/launch.h"  // CUDA_CHECK; the CUDA runtime (the emulator's under L2V_EMULATE)

namespace l2v::test {

// bf16's unit roundoff: 2^-8 (8 significant bits), the worst relative error of one rounding to bf16.
constexpr double kUBf16 = 1.0 / 256.0;
// fp16's: 2^-11 (11 significant bits), for values in fp16's normal range.
constexpr double kUF16 = 1.0 / 2048.0;

// A storage type's precision: `u`, the unit roundoff of a rounding to T on top of fp32 arithmetic, and
// `name`, the suffix of the tests' error families.
template <typename T>
struct Prec;
template <>
struct Prec<float> {
  static constexpr double u = 0.0;  // nothing is rounded beyond fp32
  static constexpr const char* name = "fp32";
};
template <>
struct Prec<__nv_bfloat16> {
  static constexpr double u = kUBf16;
  static constexpr const char* name = "bf16";
};
template <>
struct Prec<__half> {
  static constexpr double u = kUF16;
  static constexpr const char* name = "fp16";
};

inline float to_f(float x) { return x; }
inline float to_f(__nv_bfloat16 x) { return __bfloat162float(x); }
inline float to_f(__half x) { return __half2float(x); }
// float -> T, rounding to nearest even for bf16 and fp16.
template <typename T>
T from_f(float x) {
  if constexpr (std::is_same<T, float>::value) {
    return x;
  } else if constexpr (std::is_same<T, __half>::value) {
    return __float2half_rn(x);
  } else {
    return __float2bfloat16_rn(x);
  }
}

// The values a T array holds for these floats (the reference's inputs in the bf16 tests).
template <typename T>
std::vector<float> rounded(std::vector<float> v) {
  for (float& x : v) x = to_f(from_f<T>(x));
  return v;
}

// A cudaMalloc'ed array of `n` T (float, __nv_bfloat16 or __half), filled from / read back as floats. `ptr`
// starts `offset` elements into the allocation (offset 1 makes every pointer misaligned for 16-byte packs, which
// sends launchers to their element-wise kernels); the allocation ends right after the n elements (one
// element when n = 0, so the pointer is never null), so an overrun is out of bounds under ASan. Every
// byte is 0xFF (NaN for float, bf16 and fp16) until written: a launcher that reads what it should not
// shows.
template <typename T>
struct Dev {
  T* base = nullptr;  // the allocation
  T* ptr = nullptr;   // base + offset: the array
  size_t n = 0;
  explicit Dev(size_t count, size_t offset = 0) : n(count) {
    const size_t bytes = (offset + std::max<size_t>(n, 1)) * sizeof(T);
    CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&base), bytes));
    CUDA_CHECK(cudaMemset(base, 0xFF, bytes));
    ptr = base + offset;
  }
  explicit Dev(const std::vector<float>& host, size_t offset = 0) : Dev(host.size(), offset) { upload(host); }
  ~Dev() { cudaFree(base); }
  Dev(const Dev&) = delete;
  Dev& operator=(const Dev&) = delete;
  void upload(const std::vector<float>& host) {
    std::vector<T> t(host.size());
    for (size_t i = 0; i < host.size(); ++i) t[i] = from_f<T>(host[i]);
    CUDA_CHECK(cudaMemcpy(ptr, t.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<float> get() const {
    std::vector<T> t(n);
    CUDA_CHECK(cudaMemcpy(t.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = to_f(t[i]);
    return out;
  }
};

// A cudaMalloc'ed array of plain values (ints, floats, doubles) with no conversion and no fill.
template <typename T>
struct Raw {
  T* ptr = nullptr;
  explicit Raw(size_t n) { CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr), std::max<size_t>(n, 1) * sizeof(T))); }
  explicit Raw(const std::vector<T>& host) : Raw(host.size()) {
    CUDA_CHECK(cudaMemcpy(ptr, host.data(), host.size() * sizeof(T), cudaMemcpyHostToDevice));
  }
  ~Raw() { cudaFree(ptr); }
  Raw(const Raw&) = delete;
  Raw& operator=(const Raw&) = delete;
  // The first element.
  T get1() const {
    T v;
    CUDA_CHECK(cudaMemcpy(&v, ptr, sizeof(T), cudaMemcpyDeviceToHost));
    return v;
  }
};

// ---- The worst errors seen, per comparison family (e.g. "rmsnorm_forward out bf16").

struct Worst {
  double abs = 0.0;     // max |got - ref|
  double rel = 0.0;     // max |got - ref| / rel_scale (the test's own relative measure; see CloseRecorded)
  double of_tol = 0.0;  // max |got - ref| / tol
};
inline std::map<std::string, Worst>& worst_table() {
  static std::map<std::string, Worst> table;
  return table;
}

// Prints worst_table() when the tests end: a heading "Worst observed errors (<columns>):", then `row` for
// each family (each test binary picks its columns). Register one per binary:
//   const auto* const kWorstReport = ::testing::AddGlobalTestEnvironment(new WorstReport(columns, row));
class WorstReport : public ::testing::Environment {
 public:
  using Row = void (*)(const std::string& family, const Worst& w);
  WorstReport(const char* columns, Row row) : columns_(columns), row_(row) {}
  void TearDown() override {
    std::printf("\nWorst observed errors (%s):\n", columns_);
    for (const auto& [family, w] : worst_table()) row_(family, w);
  }

 private:
  const char* columns_;
  Row row_;
};

// |got - ref| <= tol[i] element-wise (NaN fails). Records under `family` the largest error within
// tolerance, its largest fraction of tol[i] (where tol[i] > 0) and its largest ratio to rel_scale[i]
// (over the elements where rel_scale[i] > 0: a test passes 0 where the relative error is not measured).
// The message names the first element out of tolerance and the largest |got - ref| / tol.
inline ::testing::AssertionResult CloseRecorded(const std::string& family, const std::vector<float>& got,
                                                const std::vector<float>& ref, const std::vector<double>& tol,
                                                const std::vector<double>& rel_scale) {
  if (got.size() != ref.size() || tol.size() != ref.size() || rel_scale.size() != ref.size())
    return ::testing::AssertionFailure() << "size mismatch";
  Worst& w = worst_table()[family];
  size_t bad = 0, first_bad = 0;
  double worst_bad = 0.0;  // the largest |got - ref| / tol out of tolerance (inf for NaN or tol 0)
  for (size_t i = 0; i < ref.size(); ++i) {
    const double err = std::fabs((double)got[i] - ref[i]);
    if (!(err <= tol[i])) {
      if (bad++ == 0) first_bad = i;
      worst_bad = std::max(worst_bad, tol[i] > 0 && !std::isnan(err) ? err / tol[i] : INFINITY);
      continue;
    }
    w.abs = std::max(w.abs, err);
    if (rel_scale[i] > 0) w.rel = std::max(w.rel, err / rel_scale[i]);
    if (tol[i] > 0) w.of_tol = std::max(w.of_tol, err / tol[i]);
  }
  if (bad == 0) return ::testing::AssertionSuccess();
  const size_t i = first_bad;
  return ::testing::AssertionFailure() << family << ": " << bad << " of " << ref.size() << " out of tolerance, up to "
                                       << worst_bad << " x tol; first [" << i << "] got " << got[i] << " want "
                                       << ref[i] << " tol " << tol[i];
}

// A result computed in fp32 and stored as T, against the fp32 reference on the same inputs:
//   |got - ref| <= f32[i] + u_T (|ref[i]| + f32[i]),
// f32[i] bounding the difference of the two fp32 computations (derived by the test from the reduction
// lengths) and the rest the one rounding to T (to nearest: u_T = Prec<T>::u, 0 for fp32) of a value
// within f32[i] of ref[i]. Records |got - ref| / mag[i] (mag: the sum of |terms| behind the element,
// 0 where nothing is measured) and the fraction of the tolerance.
template <typename T>
::testing::AssertionResult CloseStored(const std::string& family, const std::vector<float>& got,
                                       const std::vector<float>& ref, const std::vector<double>& mag,
                                       const std::vector<double>& f32) {
  if (f32.size() != ref.size()) return ::testing::AssertionFailure() << "size mismatch";
  std::vector<double> tol(ref.size());
  for (size_t i = 0; i < ref.size(); ++i) {
    const double r = std::isfinite(ref[i]) ? std::fabs((double)ref[i]) : 0.0;  // an infinite ref: tol f32[i]
    tol[i] = f32[i] + Prec<T>::u * (r + f32[i]);
  }
  return CloseRecorded(family, got, ref, tol, mag);
}

#if defined(L2V_EMULATE)
// ---- Emulator-only helpers: bug reports and scheduling orders.

// The message of the KernelError a launch throws ("" when it does not throw one).
template <typename F>
std::string kernel_error(F&& run) {
  try {
    run();
  } catch (const l2v::emu::KernelError& e) {
    return e.what();
  }
  return "";
}

inline bool contains(const std::string& text, const std::string& part) { return text.find(part) != std::string::npos; }

// Runs the scope under a scheduling order, then restores the previous one (L2V_EMU_ORDER's at first).
struct ScheduleScope {
  l2v::emu::Schedule saved = l2v::emu::current_schedule();
  explicit ScheduleScope(l2v::emu::Schedule s) { l2v::emu::set_schedule(s); }
  ~ScheduleScope() { l2v::emu::set_schedule(saved); }
};

inline std::vector<l2v::emu::Schedule> all_orders() {
  using l2v::emu::Order;
  return {{Order::kForward, 0}, {Order::kReverse, 0}, {Order::kShuffle, 1}, {Order::kShuffle, 2}};
}

inline std::string order_name(const l2v::emu::Schedule& s) {
  switch (s.order) {
    case l2v::emu::Order::kForward: return "forward";
    case l2v::emu::Order::kReverse: return "reverse";
    case l2v::emu::Order::kShuffle: return "shuffle:" + std::to_string(s.seed);
  }
  return "?";
}
#endif

}  // namespace l2v::test
