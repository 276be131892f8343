// How kernels are launched and CUDA runtime calls checked, in every build:
//   * nvcc (__CUDACC__): l2v::launch is kernel<<<grid, block, smem, stream>>>(args...) plus a launch
//     error check;
//   * g++ -DL2V_EMULATE: l2v::launch runs the kernel on the CPU emulator (host/emu/cuda_emu.h), with the
//     same error check (bugs the emulator finds in the kernel throw l2v::emu::KernelError);
//   * plain g++ (host code of the CUDA build): CUDA_CHECK and NvtxRange only.
//
//   l2v::launch("rmsnorm_forward", rmsnorm_forward<256>, dim3(N), dim3(256), 0, stream, out, inp, N);
//   CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToHost, stream));
//   l2v::NvtxRange range("forward");   // an NVTX range until the end of the scope (nothing in the emulator)
//
// Both throw std::runtime_error naming the kernel or the failing expression and the CUDA error.
#pragma once

#include <stdexcept>
#include <string>
#include <utility>

#if defined(__CUDACC__) && defined(L2V_EMULATE)
#error "cuda/launch.h: L2V_EMULATE is for g++ builds of the CPU emulator, not for nvcc"
#elif defined(__CUDACC__)
#include <cuda_runtime.h>
#elif defined(L2V_EMULATE)
#include "host/emu/cuda_emu.h"
#else
#include <cuda_runtime_api.h>
#endif

#if !defined(L2V_EMULATE)
#include <nvtx3/nvToolsExt.h>
#endif

namespace l2v {

inline void cuda_check(cudaError_t err, const char* expr, const char* file, int line) {
  if (err == cudaSuccess) return;
  // The runtime also keeps this error as the "last error"; clear it so the next launch check does not
  // blame an innocent kernel for it.
  cudaGetLastError();
  throw std::runtime_error(std::string(file) + ":" + std::to_string(line) + ": " + expr + " failed: " +
                           cudaGetErrorName(err) + " (" + cudaGetErrorString(err) + ")");
}

#define CUDA_CHECK(expr) ::l2v::cuda_check((expr), #expr, __FILE__, __LINE__)

#if defined(__CUDACC__) || defined(L2V_EMULATE)

inline void check_launch(const char* name, cudaError_t err) {
  if (err != cudaSuccess) {
    throw std::runtime_error(std::string("kernel '") + name + "' launch failed: " + cudaGetErrorName(err) + " (" +
                             cudaGetErrorString(err) + ")");
  }
}

// `name` is for error messages (and the emulator's bug reports). The arguments are converted to the
// kernel's parameter types as a <<<>>> launch does.
template <typename... KArgs, typename... Args>
void launch(const char* name, void (*kernel)(KArgs...), dim3 grid, dim3 block, size_t smem, cudaStream_t stream,
            Args&&... args) {
#if defined(__CUDACC__)
  kernel<<<grid, block, smem, stream>>>(std::forward<Args>(args)...);
#else
  emu::launch(name, kernel, grid, block, smem, stream, std::forward<Args>(args)...);
#endif
  check_launch(name, cudaGetLastError());
}

#endif

#if defined(L2V_EMULATE)
struct NvtxRange {
  explicit NvtxRange(const char*) {}
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};
#else
struct NvtxRange {
  explicit NvtxRange(const char* name) { nvtxRangePushA(name); }
  ~NvtxRange() { nvtxRangePop(); }
  NvtxRange(const NvtxRange&) = delete;
  NvtxRange& operator=(const NvtxRange&) = delete;
};
#endif

}  // namespace l2v
