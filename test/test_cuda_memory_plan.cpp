// The memory planner against the CUDA backend on the emulator: real training runs (the cases of
// test/memory_plan_test_util.h) reach a peak of device memory (cudaMalloc minus cudaFree, counted by the
// emulator) equal to the plan of their configuration with the CUDA backend's scratch — the attention
// backward's statistics, the LoRA workspace, cuBLASLt's workspace, the chunked LM head, the global norm's lists and the bf16
// conversion staging — byte for byte, in bf16 and in fp32 storage. (The plan's "runtime" item, the CUDA
// context and cuBLAS's own memory, is not the backend's and is left out of the comparison.)
#include <gtest/gtest.h>

#include "cuda/cuda_backend.h"
#include "test/memory_plan_test_util.h"
#if defined(L2V_EMULATE)
#include "host/emu/cuda_emu.h"
#endif

namespace l2v {
namespace {

#if defined(L2V_EMULATE)  // the emulator counts device memory; a GPU has no such counter
void expect_plans(CudaPrecision precision) {
  test::expect_plans_match_allocations(
      [precision] {
        emu::reset_peak_device_bytes();
        return make_cuda_backend(precision);
      },
      /*cuda=*/true, [](const Backend&) { return emu::peak_device_bytes(); });
}

TEST(CudaMemoryPlan, Bf16BackendAllocatesWhatThePlanSays) { expect_plans(CudaPrecision::kBf16); }
TEST(CudaMemoryPlan, Fp32BackendAllocatesWhatThePlanSays) { expect_plans(CudaPrecision::kFp32); }
#endif

}  // namespace
}  // namespace l2v
