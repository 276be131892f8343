// Attention through cuDNN's fused flash attention (scaled dot-product attention, SDPA), built with the
// cuDNN frontend's C++ graph API: --attention_impl cudnn of the CUDA backend, in builds with cuDNN
// (cuda/cuda.mk defines L2V_WITH_CUDNN; never in the emulator's, which cannot run cuDNN).
//
// Contract: that of cuda::attention_forward_cuda / attention_backward_cuda (cuda/attention.cuh) for bf16
// storage, with these differences:
//   * head dims that cuDNN takes (multiples of 8 up to 128; the model's are 64 and 128);
//   * key_mask rows must keep one contiguous run of visible keys (left, right or no padding; under the
//     causal mask not padded on both sides), expressed to cuDNN as per-sequence lengths and ragged
//     offsets (cuda/attention_cudnn_padding.h); a row with holes or no visible key is refused. Under the
//     causal mask, the query rows of a left-padded row that see no key get out = 0, lse = -inf and dq = 0
//     here, not from cuDNN;
//   * attention dropout uses cuDNN's own Philox stream, keyed by (seed, offset, site): the same keep mask
//     in the forward, its recomputation and the backward, but not the mask of the CPU reference or of the
//     simt/mma kernels (dropout_keep_attention), so results with dropout differ from theirs — and, since
//     cuDNN's mask of a row depends on its place in the call, differ with the data-parallel world size;
//   * the backward is cuDNN's, which need not be bitwise reproducible (dQ may be accumulated in any order).
// lse is cuDNN's softmax statistics, log(sum_j exp(scale q_i.k_j)) in natural log: the project's convention,
// [B, H, T] fp32 (copied to and from cuDNN's row order when query rows are shifted, as above). A key_mask
// is read back to the host at each call (one stream synchronisation) to derive the lengths and offsets.
// Graphs are built once per case (B, T, H, KV, D, causal, padded, dropout probability, forward or
// backward) and cached with their execution plans; the workspace grows on demand.
// Errors (a case cuDNN does not support, a failed build or execution) throw std::runtime_error with
// cuDNN's message.
#pragma once

#include <cstdint>
#include <memory>

#include <cuda_bf16.h>
#include <cuda_runtime_api.h>

#include "host/philox.h"

namespace l2v::cuda {

class CudnnAttention {
 public:
  explicit CudnnAttention(cudaStream_t stream);  // all work is queued on `stream`
  ~CudnnAttention();
  CudnnAttention(const CudnnAttention&) = delete;
  CudnnAttention& operator=(const CudnnAttention&) = delete;

  // Whether head dim D is one cuDNN's SDPA takes.
  static bool supports_head_dim(int D);

  void forward(__nv_bfloat16* out, float* lse, const __nv_bfloat16* q, const __nv_bfloat16* k,
               const __nv_bfloat16* v, const int* key_mask, int B, int T, int H, int KV, int D, bool causal,
               float dropout_p, DropoutKey key, uint32_t site);
  void backward(__nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv, const __nv_bfloat16* dout,
                const __nv_bfloat16* out, const float* lse, const __nv_bfloat16* q, const __nv_bfloat16* k,
                const __nv_bfloat16* v, const int* key_mask, int B, int T, int H, int KV, int D, bool causal,
                float dropout_p, DropoutKey key, uint32_t site);

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace l2v::cuda
