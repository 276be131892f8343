// What the emulator's own .cpp files share (kernels and tests use host/emu/cuda_emu.h instead).
#pragma once
#include <cuda_runtime_api.h>

#include <cstddef>

namespace l2v::emu {

// The emulated device: an sm_90-like GPU (also what cudaGetDeviceProperties reports).
constexpr size_t kSharedPerBlock = 48 * 1024;         // without opting in
constexpr size_t kSharedPerBlockOptin = 227 * 1024;   // with cudaFuncAttributeMaxDynamicSharedMemorySize
constexpr int kMaxThreadsPerBlock = 1024;
constexpr int kMaxBlockDim[3] = {1024, 1024, 64};
constexpr long long kMaxGridDim[3] = {2147483647LL, 65535, 65535};

// Records err (unless cudaSuccess) as this host thread's last error, for cudaGetLastError; returns it.
cudaError_t record_error(cudaError_t err);
// nullptr (the default stream) or a stream from cudaStreamCreate not yet destroyed.
bool stream_is_valid(cudaStream_t stream);
// The kernel's cudaFuncAttributeMaxDynamicSharedMemorySize if it was set (true), else false.
bool dynamic_shared_attribute(const void* kernel, size_t* bytes);

}  // namespace l2v::emu
