// The CUDA backend: device memory and the kernels of cuda/*.cuh behind the Backend interface
// (model/backend.h). Tensors (activations, base weights) are stored in bf16 — the production precision,
// fp32 accumulation everywhere — or fp32, the mode the tests compare tightly with the CPU reference;
// norm weights, LoRA master weights, gradients and optimizer state are fp32 in both. The same source
// builds with nvcc for GPUs and with g++ -DL2V_EMULATE for the CPU emulator (host/emu/).
#pragma once
#include <memory>
#include <string>

#include "model/backend.h"

// cudaStream_t without the CUDA headers (it is this pointer type in cuda_runtime_api.h).
typedef struct CUstream_st* cudaStream_t;

namespace l2v {

enum class CudaPrecision { kFp32, kBf16 };
CudaPrecision parse_cuda_precision(const std::string& name);  // "fp32" | "bf16"

// The attention kernels (--attention_impl, the attention_impl config key). kAuto takes, for each call,
// the fastest of ours that supports the case: the tensor-core kernels (cuda/attention_mma.cuh) for bf16
// storage and head dims 16, 64 and 128, else the SIMT kernels (cuda/attention.cuh). kSimt and kMma force
// one; kMma refuses fp32 storage (at construction) and other head dims (at the call). kCudnn is cuDNN's
// fused flash attention (cuda/attention_cudnn.h: bf16, head dims up to 128, contiguous key padding only,
// its own dropout stream), only when asked for: it exists in builds with cuDNN (L2V_WITH_CUDNN), refuses
// fp32 storage at construction, and auto never takes it, since its dropout masks are not the CPU
// reference's. The backend prints its choice the first time it meets a head dim.
enum class AttentionImpl { kAuto, kSimt, kMma, kCudnn };
// "" or "auto" | "simt" | "mma" | "cudnn"; "cudnn" is refused as not built where this build lacks cuDNN
// (always in the CPU emulator's), anything else as unknown.
AttentionImpl parse_attention_impl(const std::string& name);

// Throws std::runtime_error with a clear message when there is no usable CUDA device (no driver, no
// GPU), so a CUDA binary on a CPU-only machine stops with an explanation.
std::unique_ptr<Backend> make_cuda_backend(CudaPrecision precision = CudaPrecision::kBf16,
                                           AttentionImpl attention = AttentionImpl::kAuto);

// The dense peak FLOP/s of a GPU named `device_name` (cudaDeviceProp::name) in bf16 on tensor cores or in
// fp32, from NVIDIA's datasheets (H100 SXM / H200: 989 / 67 TFLOP/s; H100 PCIe: 756 / 51; A100: 312 /
// 19.5; L40S: 362 / 91.6); 0 for a name not listed.
double gpu_peak_flops(const std::string& device_name, bool bf16);

// The stream every op of a CUDA backend runs on (cuda/comm_nccl.h orders its communication after it).
// Throws for a backend that is not the CUDA backend.
cudaStream_t cuda_stream_of(const Backend& backend);

}  // namespace l2v
