// The CUDA backend: device memory and the kernels of cuda/*.cuh behind the Backend interface
// (model/backend.h). Tensors (activations, base weights) are stored in bf16 — the production precision,
// fp32 accumulation everywhere — or fp32, the mode the tests compare tightly with the CPU reference;
// norm weights, LoRA master weights, gradients and optimizer state are fp32 in both. The same source
// builds with nvcc for GPUs and with g++ -DL2V_EMULATE for the CPU emulator (host/emu/).
#pragma once
#include <memory>
#include <string>

#include "model/backend.h"

namespace l2v {

// Throws std::runtime_error with a clear message when there is no usable CUDA device (no driver, no
// GPU), so a CUDA binary on a CPU-only machine stops with an explanation.
enum class CudaPrecision { kFp32, kBf16 };
CudaPrecision parse_cuda_precision(const std::string& name);  // "fp32" | "bf16"

std::unique_ptr<Backend> make_cuda_backend(CudaPrecision precision = CudaPrecision::kBf16);

}  // namespace l2v
