// The sizes of the CUDA backend's scratch buffers, as functions of the shapes alone: plain C++ (no CUDA
// types), so that the kernels' launchers (cuda/lora.cuh, cuda/lm_head.cuh, cuda/attention.cuh), the
// backend (cuda/cuda_backend.cu) and the memory planner (model/memory_plan.h, which runs without a GPU
// or CUDA headers) share one formula each. `elem` is the bytes of one stored tensor element: 4 (fp32)
// or 2 (bf16, fp16).
#pragma once
#include <algorithm>
#include <cstddef>

#include "model/latent_attention.h"

namespace l2v::cuda {

// Every workspace part starts where cuBLAS's fastest kernels want it.
constexpr size_t kWorkspaceAlign = 256;
inline size_t workspace_align_up(size_t bytes) { return (bytes + kWorkspaceAlign - 1) / kWorkspaceAlign * kWorkspaceAlign; }

// LoRA (cuda/lora.cuh): the 16-bit copies of A [R, IC] and B [OC, R] (none for fp32), then dxa [N, R], then
// the dropout backward's partial sums of dA over slices of the rows, fp32 [slices, R, IC].
inline size_t lora_weight_copy_bytes(size_t elem, int IC, int OC, int R) {
  return elem == 4 ? 0 : workspace_align_up(elem * (size_t)R * IC) + workspace_align_up(elem * (size_t)OC * R);
}
// The slices of N rows that dA's partial sums run over: rows of at least 1,024 (multiples of 16), at most
// 16 slices. A function of N only, so a shape's reduction order never changes.
constexpr int kLoraMaxSlices = 16;
inline int lora_slice_rows(int N) {
  const int rows = std::max(1024, (N + kLoraMaxSlices - 1) / kLoraMaxSlices);
  return (rows + 15) / 16 * 16;
}
inline int lora_slices(int N) { return N <= 0 ? 0 : (N + lora_slice_rows(N) - 1) / lora_slice_rows(N); }
inline size_t lora_partials_offset(size_t elem, int N, int IC, int OC, int R) {
  return lora_weight_copy_bytes(elem, IC, OC, R) + workspace_align_up(elem * (size_t)N * R);
}
inline size_t lora_workspace_bytes(size_t elem, int N, int IC, int OC, int R) {
  return lora_partials_offset(elem, N, IC, OC, R) + sizeof(float) * (size_t)lora_slices(N) * R * IC;
}
// Adapters sharing an input (cuda/lora.cuh's launchers): one region per branch, each as above.
inline size_t lora_branch_region_bytes(size_t elem, int N, int IC, int OC, int R) {
  return workspace_align_up(lora_workspace_bytes(elem, N, IC, OC, R));
}
inline size_t lora_branches_workspace_bytes(size_t elem, int N, int IC, const int* OC, int count, int R) {
  size_t bytes = 0;
  for (int i = 0; i < count; ++i) bytes += lora_branch_region_bytes(elem, N, IC, OC[i], R);
  return bytes;
}

// cuBLASLt's workspace (cuda/matmul.cuh): what NVIDIA's cuBLAS documentation recommends for Hopper (32 MiB;
// 4 MiB would do before it), so that the heuristic may pick kernels that split K or stage through it.
constexpr size_t kLtWorkspaceBytes = size_t{32} << 20;

// The MNTP head (cuda/lm_head.cuh) over `chunk` rows: the gathered hidden rows, fp32 logits, and (16-bit
// storage) separate dlogits.
inline size_t lm_head_scratch_bytes(size_t elem, int chunk, int C, int V) {
  const size_t cv = (size_t)chunk * V;
  return workspace_align_up(elem * (size_t)chunk * C) + workspace_align_up(sizeof(float) * cv) +
         (elem == 4 ? 0 : workspace_align_up(elem * cv));
}
// Rows of the MNTP head per chunk: bounds its scratch to kLmHeadChunk x V fp32 logits.
constexpr int kLmHeadChunk = 1024;

// The attention backward (cuda/attention.cuh): one fp32 D_i per query row.
inline size_t attention_backward_scratch_bytes(int B, int T, int H) { return sizeof(float) * (size_t)B * T * H; }

// The optimizer step's per-block partials of the global norm, and its list of tensors in device memory
// (cuda/adamw.cuh; the list's entries are cpu::OptimizerTensor: four pointers and a long).
constexpr int kNormMaxBlocks = 1024;
inline size_t norm_scratch_bytes() { return sizeof(double) * kNormMaxBlocks; }
inline size_t optimizer_list_bytes(size_t tensors) { return tensors * (4 * sizeof(float*) + sizeof(long)); }

// The contrastive loss (cuda/contrastive.cuh), in doubles: the R = n + D rows' norms, the logits (then
// their gradient) [n, D], the per-query losses, a validity flag, and with gradients the per-row
// gradients w.r.t. the unit vectors [R, C]. D = 2n with hard negatives, n without. Offsets in bytes.
struct ContrastiveScratch {
  size_t norm = 0, logits = 0, losses = 0, valid = 0, grads = 0, bytes = 0;
};
inline ContrastiveScratch contrastive_scratch_layout(int n, int C, bool negatives, bool grads) {
  const size_t D = negatives ? 2 * (size_t)n : (size_t)n, R = n + D;
  ContrastiveScratch s;
  s.logits = s.norm + workspace_align_up(sizeof(double) * R);
  s.losses = s.logits + workspace_align_up(sizeof(double) * n * D);
  s.valid = s.losses + workspace_align_up(sizeof(double) * n);
  s.grads = s.valid + workspace_align_up(sizeof(double));
  s.bytes = s.grads + (grads ? workspace_align_up(sizeof(double) * R * C) : 0);
  return s;
}
inline size_t contrastive_scratch_bytes(int n, int C, bool negatives, bool grads) {
  return contrastive_scratch_layout(n, C, negatives, grads).bytes;
}

// The latent-attention head (cuda/latent_attention.cuh) for M rows, fp32, offsets in bytes. The forward:
// the gathered rows x and the block's outputs z [M, C], a row buffer [Mc, max(C, F)] and, without a cache
// (inference), the cache of Mc rows, where Mc = M with a cache and min(M, kLatentInferenceChunk) without.
struct LatentForwardScratch {
  size_t x = 0, z = 0, tmp = 0, cache = 0, bytes = 0;
};
inline size_t latent_float_bytes(long n) { return workspace_align_up(sizeof(float) * (size_t)n); }
inline LatentForwardScratch latent_forward_scratch_layout(const LatentAttentionDims& d, long M, bool cached) {
  const long Mc = cached ? M : std::min(M, kLatentInferenceChunk);
  LatentForwardScratch s;
  s.z = s.x + latent_float_bytes(M * d.C);
  s.tmp = s.z + latent_float_bytes(M * d.C);
  s.cache = s.tmp + latent_float_bytes(Mc * std::max(d.C, d.F));
  s.bytes = s.cache + (cached ? 0 : latent_float_bytes((long)latent_attention_cache_floats(d, Mc)));
  return s;
}
// The backward: dz, dx, a LayerNorm's output and the gradient w.r.t. it [M, C] each; the feed-forward
// block's GEGLU output gradient [M, F] and net.0's output gradient [M, 2F], whose space the attention block
// then reuses for the attention output's and the queries' gradients [M, I] and the scores' [M, r]; the
// latents' keys' and values' gradient [r, 2I] and LN_ctx's output gradient [r, C].
struct LatentBackwardScratch {
  size_t dz = 0, dx = 0, rowc = 0, drowc = 0, big = 0, du = 0, dout_att = 0, dq = 0, ds = 0, dkv = 0, dlc = 0,
         bytes = 0;
};
inline LatentBackwardScratch latent_backward_scratch_layout(const LatentAttentionDims& d, long M) {
  LatentBackwardScratch s;
  s.dx = s.dz + latent_float_bytes(M * d.C);
  s.rowc = s.dx + latent_float_bytes(M * d.C);
  s.drowc = s.rowc + latent_float_bytes(M * d.C);
  s.big = s.drowc + latent_float_bytes(M * d.C);
  s.du = s.big + latent_float_bytes(M * d.F);
  s.dout_att = s.big;
  s.dq = s.dout_att + latent_float_bytes(M * d.I);
  s.ds = s.dq + latent_float_bytes(M * d.I);
  s.dkv = std::max(s.du + latent_float_bytes(M * 2 * d.F), s.ds + latent_float_bytes(M * d.r));
  s.dlc = s.dkv + latent_float_bytes(d.r * 2 * d.I);
  s.bytes = s.dlc + latent_float_bytes(d.r * d.C);
  return s;
}
// The most a training step of at most M rows asks for: its forwards run with a cache (the chunk whose
// backward follows) and without (the other chunks' first forward), then the backward.
inline size_t latent_training_scratch_bytes(const LatentAttentionDims& d, long M) {
  return std::max({latent_forward_scratch_layout(d, M, true).bytes, latent_forward_scratch_layout(d, M, false).bytes,
                   latent_backward_scratch_layout(d, M).bytes});
}

// fp32 <-> 16-bit conversions of uploads and downloads go through a staging buffer of at most this many
// floats, in pieces (64 MiB: loading an embedding table of 128k x 4096 does not keep 2 GiB of staging).
constexpr size_t kStagingFloats = size_t{16} << 20;
inline size_t staging_bytes(size_t largest_tensor) { return sizeof(float) * std::min(largest_tensor, kStagingFloats); }

}  // namespace l2v::cuda
