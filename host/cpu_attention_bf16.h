// Attention for the CPU backend's --precision bf16: the contract of cpu::attention_forward / backward
// (host/cpu_ops.h: shapes, q/k/v row strides, masks, GQA, causal, lse, the same Philox dropout masks) with its products on
// bf16 GEMMs (host/cpu_gemm_bf16.h: AMX where the CPU has it), as flash attention runs on GPUs.
//
// Schedule. Query rows in blocks of 32 per (batch, head): the block's scores against every key it may see
// (causal: the keys up to its last query; [32, T] fp32 in the thread's scratch; no T x T matrix), the softmax, lse and dropout in fp32 with the
// reference's operations (its exp: host/cpu_fast_ops.h's, within 2 ulp of the C library's), then P' V. The backward runs per (batch, kv head): for each of its query heads
// and query blocks it recomputes P, forms dP = dO V^T, dS = P (dP' - D_i) in fp32, and adds dS K to dq and
// dS^T Q, P'^T dO to dk, dv (fp32 accumulators owned by the item: deterministic, thread-count independent).
//
// Numerics. q, k (scores), dout, v (dP) are rounded to bf16 for their products, and so are P' (for P' V
// and P'^T dO) and scale * dS (for dq, dk); every product is exact in fp32 and summed in fp32 (the GEMM's
// bound). The bounds against the fp32 reference are those of the tensor-core kernels
// (cuda/attention_mma.cuh), with the inputs' own rounding to bf16 on top (test/test_cpu_bf16_backend.cpp).
#pragma once
#include <cstdint>

#include "host/philox.h"
#include "host/qkv_strides.h"

namespace l2v::cpu {

void attention_forward_bf16(float* out, float* lse, const float* q, const float* k, const float* v, QkvStrides ld,
                            const int* key_mask, int B, int T, int H, int KV, int D, bool causal, float dropout_p,
                            DropoutKey key, uint32_t site);

void attention_backward_bf16(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                             const float* q, const float* k, const float* v, QkvStrides ld, const int* key_mask,
                             int B, int T,
                             int H, int KV, int D, bool causal, float dropout_p, DropoutKey key, uint32_t site);

}  // namespace l2v::cpu
