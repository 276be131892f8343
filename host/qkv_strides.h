// The row layout of attention's q, k and v (and of their gradients dq, dk, dv): the elements from one token
// to the next. Packed tensors q [N, H*D] and k, v [N, KV*D] have strides H*D and KV*D; the column blocks of
// the fused q|k|v product [N, H*D + 2*KV*D] (model/model.h: kQkvGroup) have its width as both. out and dout
// are always packed [N, H*D]. Every attention implementation (host/cpu_ops.h, host/cpu_attention_bf16.h,
// cuda/attention.cuh, cuda/attention_mma.cuh) takes one.
#pragma once

namespace l2v {

struct QkvStrides {
  int q;   // q and dq
  int kv;  // k, v, dk and dv
};

inline QkvStrides packed_qkv(int H, int KV, int D) { return {H * D, KV * D}; }

}  // namespace l2v
