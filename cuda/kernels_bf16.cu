// The bf16 instantiations of every kernel family: the production precision (bf16 weights and
// activations, fp32 accumulation), compiled on their own so that each launcher builds with -Werror for
// sm_80/sm_90 whether or not the backend (cuda/cuda_backend.cu, which stores fp32 or bf16) reaches it, and
// appears in the resource report. They are executed and checked against the CPU reference in the
// emulator tests (test/test_cuda_*.cpp). The tensor-core attention (attention_mma.cuh) is here in fp16, the
// one kernel family that stores it (the backend instantiates its bf16 kernels).
#include "cuda/attention.cuh"
#include "cuda/attention_mma.cuh"
#include "cuda/elementwise.cuh"
#include "cuda/embedding.cuh"
#include "cuda/lm_head.cuh"
#include "cuda/lora.cuh"
#include "cuda/matmul.cuh"
#include "cuda/pooling.cuh"
#include "cuda/rmsnorm.cuh"
#include "cuda/rope.cuh"
#include "cuda/swiglu.cuh"

namespace l2v::cuda {

using bf16 = __nv_bfloat16;

template void embedding_forward_cuda<bf16>(bf16*, const int*, const bf16*, int, int, cudaStream_t);
template void rmsnorm_forward_cuda<bf16>(bf16*, float*, const bf16*, const float*, int, int, float, cudaStream_t);
template void residual_rmsnorm_forward_cuda<bf16>(bf16*, bf16*, float*, const bf16*, const bf16*, const float*, int,
                                                  int, float, cudaStream_t);
template void rmsnorm_backward_cuda<bf16>(bf16*, const bf16*, const bf16*, const float*, const float*, int, int,
                                          cudaStream_t);
template void rope_forward_cuda<bf16>(bf16*, const bf16*, int, const float*, const float*, int, int, int, int,
                                      cudaStream_t);
template void rope_backward_cuda<bf16>(bf16*, const bf16*, int, const float*, const float*, int, int, int, int,
                                       cudaStream_t);
template void swiglu_forward_cuda<bf16>(bf16*, const bf16*, long, int, cudaStream_t);
template void swiglu_backward_cuda<bf16>(bf16*, const bf16*, const bf16*, long, int, cudaStream_t);
template void pool_forward_cuda<bf16>(float*, const bf16*, const float*, int, int, int, cudaStream_t);
template void pool_backward_cuda<bf16>(bf16*, const float*, const float*, int, int, int, cudaStream_t);
template void convert_cuda<bf16, float>(bf16*, const float*, long, cudaStream_t);
template void convert_cuda<float, bf16>(float*, const bf16*, long, cudaStream_t);
template void attention_forward_cuda<bf16>(bf16*, float*, const bf16*, const bf16*, const bf16*, QkvStrides,
                                           const int*, int, int, int, int, int, bool, float, DropoutKey, uint32_t,
                                           cudaStream_t);
template void attention_backward_cuda<bf16>(bf16*, bf16*, bf16*, const bf16*, const bf16*, const float*, const bf16*,
                                            const bf16*, const bf16*, QkvStrides, const int*, int, int, int, int, int,
                                            bool, float, DropoutKey, uint32_t, float*, cudaStream_t);
template void attention_mma_forward_cuda<__half>(__half*, float*, const __half*, const __half*, const __half*,
                                                 QkvStrides, const int*, int, int, int, int, int, bool, float,
                                                 DropoutKey, uint32_t, cudaStream_t);
template void attention_mma_backward_cuda<__half>(__half*, __half*, __half*, const __half*, const __half*,
                                                  const float*, const __half*, const __half*, const __half*, QkvStrides,
                                                  const int*, int, int, int, int, int, bool, float, DropoutKey,
                                                  uint32_t, float*, cudaStream_t);
template void matmul_forward_cuda<bf16>(const LtContext&, bf16*, const bf16*, const bf16*, const bf16*, int, int, int,
                                        const bf16*);
template void matmul_backward_input_cuda<bf16>(cublasHandle_t, bf16*, const bf16*, const bf16*, int, int, int, bool);
template void lora_forward_cuda<bf16>(cublasHandle_t, const LoraInput<bf16>&, const LoraForwardBranch<bf16>*, int,
                                      void*);
template void lora_backward_cuda<bf16>(cublasHandle_t, bf16*, const LoraInput<bf16>&, const LoraBackwardBranch<bf16>*,
                                       int, void*);
template void lora_merge_cuda<bf16>(cublasHandle_t, bf16*, const float*, const float*, float, float, void*, int, int,
                                    int);
template void lm_head_crossentropy_cuda<bf16>(cublasHandle_t, float*, bf16*, const bf16*, const bf16*, const int*,
                                              const int*, int, int, int, int, float, void*, int);

}  // namespace l2v::cuda
