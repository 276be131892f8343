// Token embedding lookup, out[n, :] = table[ids[n], :]. The fp32 CPU reference is host/cpu_ops.cpp
// (cpu::embedding_forward). The table is frozen in LoRA training, so there is no backward.
//
// A copy in the storage type T = float or __nv_bfloat16 (no conversion, bit-exact). One thread per group
// of V elements of a row: 16-byte packs when C is a multiple of the pack width and both arrays are
// 16-byte aligned, single elements otherwise.
#pragma once

#include "cuda/elementwise.cuh"

namespace l2v::cuda {

template <int V, typename T>
__global__ void __launch_bounds__(ew::kBlock)
    embedding_forward_kernel(T* out, const int* ids, const T* table, int N, int C) {
  const int groups_per_row = C / V;
  const long total = (long)N * groups_per_row;
  for (long g = blockIdx.x * (long)blockDim.x + threadIdx.x; g < total; g += (long)gridDim.x * blockDim.x) {
    const long n = g / groups_per_row;
    const long c = (g - n * groups_per_row) * V;
    *reinterpret_cast<ew::Pack<T, V>*>(out + n * C + c) =
        *reinterpret_cast<const ew::Pack<T, V>*>(table + (long)ids[n] * C + c);
  }
}

// out [N, C] = rows ids [N] of table [V, C]. ids must lie in [0, V): the caller checks them on the host
// (as for cpu::embedding_forward); the kernel does not, and an id outside would read outside the table.
template <typename T>
void embedding_forward_cuda(T* out, const int* ids, const T* table, int N, int C, cudaStream_t stream) {
  ew::require(N >= 0 && C > 0, "embedding_forward_cuda", "need N >= 0 and C > 0");
  if (N == 0) return;
  constexpr int V = ew::kVec<T>;
  if (C % V == 0 && ew::aligned16(out) && ew::aligned16(table)) {
    l2v::launch("embedding_forward", embedding_forward_kernel<V, T>, dim3(ew::grid_for((long)N * (C / V))),
                dim3(ew::kBlock), 0, stream, out, ids, table, N, C);
  } else {
    l2v::launch("embedding_forward", embedding_forward_kernel<1, T>, dim3(ew::grid_for((long)N * C)), dim3(ew::kBlock),
                0, stream, out, ids, table, N, C);
  }
}

}  // namespace l2v::cuda
