// The CUDA backend: device memory and the kernels of cuda/*.cuh behind the Backend interface
// (model/backend.h), in fp32 (the mode the tests compare tightly with the CPU reference). The same
// source builds with nvcc for GPUs and with g++ -DL2V_EMULATE for the CPU emulator (host/emu/).
#pragma once
#include <memory>

#include "model/backend.h"

namespace l2v {

// Throws std::runtime_error with a clear message when there is no usable CUDA device (no driver, no
// GPU), so a CUDA binary on a CPU-only machine stops with an explanation.
std::unique_ptr<Backend> make_cuda_backend();

}  // namespace l2v
