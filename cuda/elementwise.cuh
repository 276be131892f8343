// Element-wise kernels over activations: fp32 <-> bf16 conversions; and the small
// device helpers every row / element-wise kernel header (embedding, rmsnorm, rope, swiglu, adamw) shares:
// storage-type conversions, 128-bit packs and warp / block sums.
//
// Storage types: activations are T = float or __nv_bfloat16 in memory; every kernel computes in fp32
// and rounds once when it stores (round to nearest even, as torch's .to(torch.bfloat16)).
//
// Vectorisation: a kernel moves kVec<T> elements (16 bytes) per access when every pointer it touches is
// 16-byte aligned, and one element per access otherwise (the launchers check, see aligned16). The work
// is cut into groups of V elements; a group cut short by the end of the array is done element by element
// by its thread, so any length works with either width.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/launch.h"

namespace l2v::cuda {

// Helpers of the element-wise / row kernel headers (a namespace of their own so that they cannot clash
// with another header's helpers).
namespace ew {

constexpr int kBlock = 256;  // threads per block of the element-wise kernels
// Enough blocks to fill any current GPU several times over; a grid-stride loop covers the rest (and
// keeps the index arithmetic in 64 bits for arrays beyond 2^31 elements).
constexpr long kMaxBlocks = 8192;

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x) {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, __nv_bfloat16>, "storage is float or bf16");
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else {
    return __float2bfloat16(x);  // round to nearest even
  }
}

// Elements of T in one 128-bit access.
template <typename T>
constexpr int kVec = 16 / static_cast<int>(sizeof(T));

// V elements moved as one access (or, for V * sizeof(T) > 16, as 16-byte accesses: an fp32 norm weight
// read beside 8 bf16 activations). The alignment is what lets nvcc emit LDG.128 / STG.128.
template <typename T, int V>
struct alignas(sizeof(T) * V < 16 ? sizeof(T) * V : 16) Pack {
  T v[V];
};

template <int V, typename T>
__device__ __forceinline__ void load_floats(float (&out)[V], const T* p) {
  const Pack<T, V> x = *reinterpret_cast<const Pack<T, V>*>(p);
  for (int k = 0; k < V; ++k) out[k] = to_float(x.v[k]);
}

template <int V, typename T>
__device__ __forceinline__ void store_floats(T* p, const float (&in)[V]) {
  Pack<T, V> x;
  for (int k = 0; k < V; ++k) x.v[k] = from_float<T>(in[k]);
  *reinterpret_cast<Pack<T, V>*>(p) = x;
}

// Sum over the 32 lanes of a full warp; every lane gets the same value (a fixed butterfly order, so the
// result does not depend on scheduling). F = float or double.
template <typename F>
__device__ __forceinline__ F warp_sum(F v) {
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  return v;
}

// Sum of v over a block of kBlockSize threads (a multiple of 32), valid in thread 0. `warp_sums` is the
// caller's shared array of kBlockSize / 32 values (shared memory is declared in kernels). Warp 0 reads
// warp_sums after the barrier, so a second call must not reuse the array without another barrier.
template <int kBlockSize, typename F>
__device__ __forceinline__ F block_sum(F v, F* warp_sums) {
  static_assert(kBlockSize % 32 == 0 && kBlockSize <= 1024, "whole warps, at most 1024 threads");
  constexpr int kWarps = kBlockSize / 32;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  v = warp_sum(v);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < kWarps ? warp_sums[lane] : F(0);
    v = warp_sum(v);
  }
  return v;
}

inline bool aligned16(const void* p) { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }

// Blocks for `groups` work items of one thread each, capped (the kernels loop over the rest).
inline unsigned grid_for(long groups) {
  const long blocks = (groups + kBlock - 1) / kBlock;
  return static_cast<unsigned>(blocks < kMaxBlocks ? blocks : kMaxBlocks);
}

inline void require(bool ok, const char* fn, const std::string& what) {
  if (!ok) throw std::invalid_argument(std::string("l2v::cuda::") + fn + ": " + what);
}

}  // namespace ew

// ---- Kernels.

// out = (Dst) in. A conversion to the same type is a copy.
template <int V, typename Dst, typename Src>
__global__ void __launch_bounds__(ew::kBlock) convert_kernel(Dst* out, const Src* in, long n) {
  const long groups = (n + V - 1) / V;
  for (long g = blockIdx.x * (long)blockDim.x + threadIdx.x; g < groups; g += (long)gridDim.x * blockDim.x) {
    const long i = g * V;
    if (i + V <= n) {
      float x[V];
      ew::load_floats<V>(x, in + i);
      ew::store_floats<V>(out + i, x);
    } else {
      for (long j = i; j < n; ++j) out[j] = ew::from_float<Dst>(ew::to_float(in[j]));
    }
  }
}

// ---- Launchers (T = float or __nv_bfloat16).

// out = in converted from Src to Dst (float <-> __nv_bfloat16; to bf16 rounds to nearest even, NaN stays
// NaN). out must not overlap in unless Dst and Src are the same type and out == in.
template <typename Dst, typename Src>
void convert_cuda(Dst* out, const Src* in, long n, cudaStream_t stream) {
  ew::require(n >= 0, "convert_cuda", "n must be non-negative");
  if (n == 0) return;
  // The narrower type sets the width, so the wider side makes two 16-byte accesses per group.
  constexpr int V = (ew::kVec < Dst >> ew::kVec<Src>) ? ew::kVec<Dst> : ew::kVec<Src>;
  if (ew::aligned16(out) && ew::aligned16(in)) {
    l2v::launch("convert", convert_kernel<V, Dst, Src>, dim3(ew::grid_for((n + V - 1) / V)), dim3(ew::kBlock), 0,
                stream, out, in, n);
  } else {
    l2v::launch("convert", convert_kernel<1, Dst, Src>, dim3(ew::grid_for(n)), dim3(ew::kBlock), 0, stream, out, in, n);
  }
}

}  // namespace l2v::cuda
