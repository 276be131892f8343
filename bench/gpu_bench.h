// What the GPU benchmarks (bench/*.cu, built by nvcc: cuda/cuda.mk's `make bench`) share: the check
// that a GPU is there (without one a benchmark says so and exits 0, so scripts run it anywhere), device
// arrays filled with seeded uniform values, timing with CUDA events with the L2 cache flushed before
// every run, and one result line per measurement:
//   bench=attention impl=mma pass=fwd shape=T512_B32_H32_KV8_D128 dropout=0.3 ms=1.234 tflops=456.7
//   peak_pct=46.2 gbps=123.4
// tflops counts the useful floating-point operations (the caller's formula) per second, peak_pct is that
// against the H100 SXM's dense bf16 tensor-core peak (989 TFLOP/s), gbps the bytes that must cross DRAM
// at least once (inputs read, outputs written) per second. scripts/gpu_check.sh parses these lines.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <string>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/launch.h"
#include "host/philox.h"

namespace l2v::bench {

constexpr double kH100DenseBf16Tflops = 989.0;

// True when a CUDA device can be used; otherwise prints why, naming the program, and returns false.
inline bool gpu_present(const char* program) {
  int n = 0;
  const cudaError_t err = cudaGetDeviceCount(&n);
  if (err != cudaSuccess || n == 0) {
    std::printf("%s: no CUDA GPU on this machine (%s): nothing measured\n", program,
                err != cudaSuccess ? cudaGetErrorString(err) : "0 devices");
    return false;
  }
  cudaDeviceProp prop{};
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  std::printf("%s: %s, %d SMs, %.0f MiB L2, sm_%d%d\n", program, prop.name, prop.multiProcessorCount,
              prop.l2CacheSize / 1048576.0, prop.major, prop.minor);
  return true;
}

// One device array of n elements (freed at scope exit).
template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceArray(size_t count) : n(count) { CUDA_CHECK(cudaMalloc(&ptr, count * sizeof(T))); }
  ~DeviceArray() { cudaFree(ptr); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  size_t bytes() const { return n * sizeof(T); }
  // The array as floats on the host.
  std::vector<float> to_host() const {
    std::vector<T> raw(n);
    CUDA_CHECK(cudaMemcpy(raw.data(), ptr, bytes(), cudaMemcpyDeviceToHost));
    std::vector<float> out(n);
    for (size_t i = 0; i < n; ++i) out[i] = static_cast<float>(raw[i]);
    return out;
  }
};

template <typename T>
__global__ void __launch_bounds__(256) fill_uniform_kernel(T* x, size_t n, uint64_t seed, float lo, float hi) {
  for (size_t i = blockIdx.x * (size_t)blockDim.x + threadIdx.x; i < n; i += (size_t)gridDim.x * blockDim.x) {
    const Philox4 r = philox4x32_10((uint32_t)i, (uint32_t)(i >> 32), 0xB3C4u, 0, seed);
    x[i] = static_cast<T>(lo + (hi - lo) * philox_to_unit(r.v[0]));
  }
}

// x[i] uniform in [lo, hi), a function of (seed, i) only.
template <typename T>
void fill_uniform(DeviceArray<T>& x, uint64_t seed, float lo = -1.0f, float hi = 1.0f) {
  launch("fill_uniform", fill_uniform_kernel<T>, dim3(1024), dim3(256), 0, nullptr, x.ptr, x.n, seed, lo, hi);
}

// Times f (work enqueued on the default stream): one warm-up run, then `reps` runs, each after a write
// of twice the L2 size so that no input is still cached; returns the median run time in milliseconds.
class Timer {
 public:
  Timer() {
    cudaDeviceProp prop{};
    CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
    flush_bytes_ = 2 * static_cast<size_t>(prop.l2CacheSize);
    CUDA_CHECK(cudaMalloc(&flush_, flush_bytes_));
    CUDA_CHECK(cudaEventCreate(&start_));
    CUDA_CHECK(cudaEventCreate(&stop_));
  }
  ~Timer() {
    cudaFree(flush_);
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;

  template <typename F>
  double median_ms(F&& f, int reps = 7) {
    f();
    CUDA_CHECK(cudaDeviceSynchronize());
    std::vector<double> ms;
    for (int r = 0; r < reps; ++r) {
      CUDA_CHECK(cudaMemsetAsync(flush_, r & 0xFF, flush_bytes_));
      CUDA_CHECK(cudaEventRecord(start_));
      f();
      CUDA_CHECK(cudaEventRecord(stop_));
      CUDA_CHECK(cudaEventSynchronize(stop_));
      float t = 0;
      CUDA_CHECK(cudaEventElapsedTime(&t, start_, stop_));
      ms.push_back(t);
    }
    std::sort(ms.begin(), ms.end());
    return ms[ms.size() / 2];
  }

 private:
  void* flush_ = nullptr;
  size_t flush_bytes_ = 0;
  cudaEvent_t start_{}, stop_{};
};

// Prints one result line (format above). `fields` are the identifying key=value pairs.
inline void report(const std::string& fields, double flops, double bytes, double ms) {
  const double tflops = flops / (ms * 1e-3) / 1e12;
  std::printf("%s ms=%.3f tflops=%.1f peak_pct=%.1f gbps=%.0f\n", fields.c_str(), ms, tflops,
              100.0 * tflops / kH100DenseBf16Tflops, bytes / (ms * 1e-3) / 1e9);
  std::fflush(stdout);
}

// Prints a validation outcome ("ok" or "FAILED") with its measure; returns whether it passed.
inline bool check(const std::string& what, double measure, double bound) {
  const bool ok = std::isfinite(measure) && measure <= bound;
  std::printf("validate %s: %.3g (bound %.3g) %s\n", what.c_str(), measure, bound, ok ? "ok" : "FAILED");
  return ok;
}

}  // namespace l2v::bench
