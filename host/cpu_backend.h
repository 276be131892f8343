// The CPU backend: host memory and the fp32 reference ops of host/cpu_ops.h.
//
// Precision. fp32 (the default) is the bit-reproducible reference: every op is host/cpu_ops.h's, results
// independent of the thread count. bf16 changes the GEMMs with frozen base weights (matmul_forward,
// matmul_backward_input, the LM head of lm_head_crossentropy): their weights are packed once into bf16
// tiles (host/cpu_gemm_bf16.h) at their first use, the inputs rounded to bf16 per call, products
// accumulated in fp32 — on AMX-BF16 when the CPU has it, else with the portable kernel; and attention's
// four products (host/cpu_attention_bf16.h). Activations, LoRA, norms, softmax, the loss and the optimizer
// stay fp32. A packed copy belongs to the weight's address: it is
// dropped when the backend writes or frees that memory (upload, upload_tensor, copy, zero, lora_merge,
// release); host code that writes backend memory directly (the loaders) must do so before the weight's
// first GEMM. Packed bytes count in cpu_backend_memory.
#pragma once
#include <memory>

#include "model/backend.h"

namespace l2v {

enum class CpuPrecision { kFp32, kBf16 };

std::unique_ptr<Backend> make_cpu_backend(CpuPrecision precision = CpuPrecision::kFp32);

// The memory a CPU backend has allocated (alloc minus release, as rounded up to 64 bytes): now, and the
// most at any time (the memory planner's tests compare it with model/memory_plan.h). Throws for a
// backend that is not the CPU backend.
struct BackendMemory {
  size_t current = 0, peak = 0;
};
BackendMemory cpu_backend_memory(const Backend& backend);

}  // namespace l2v
