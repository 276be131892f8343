// The one header every kernel source (cuda/*.cuh) includes first. Under nvcc it is plain CUDA; compiled
// by g++ with -DL2V_EMULATE it brings in the CUDA-on-CPU emulator (host/emu/cuda_emu.h), which runs the
// same kernel text on the CPU so the tests can compare it with the fp32 reference.
//
// Kernels declare shared memory only through these two macros (the emulator needs per-block storage,
// and a bare __shared__ is a compile error there):
//   L2V_SHARED(float, tile, [32][33]);   // __shared__ float tile[32][33];  (dims may be empty: a scalar)
//   L2V_DYNAMIC_SHARED(float, smem);     // float* smem = the block's dynamic shared memory (launch size)
// Every static shared variable is 32-byte aligned in both builds (what WMMA loads and stores require),
// and so is dynamic shared memory. A type with a comma (a template) needs a typedef first. In the
// emulator, shared memory starts with every byte 0xFF (NaN floats), so reading before writing shows.
#pragma once

// Full unrolling of a loop over register arrays (nvcc keeps them in registers only when every index is a
// constant). g++ (the emulator) would warn about an unknown pragma.
#if defined(__CUDACC__)
#define L2V_UNROLL _Pragma("unroll")
#else
#define L2V_UNROLL
#endif

#if defined(__CUDACC__)

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <mma.h>

#define L2V_SHARED(T, name, dims) __shared__ __align__(32) T name dims
// One raw extern array for every kernel (typed extern __shared__ arrays of different types clash).
#define L2V_DYNAMIC_SHARED(T, name)                                  \
  extern __shared__ __align__(32) unsigned char l2v_dynamic_shared[]; \
  T* name = reinterpret_cast<T*>(l2v_dynamic_shared)

#elif defined(L2V_EMULATE)

#include "host/emu/cuda_emu.h"

// The declaration site (a function-local static) is the key of the block's storage.
#define L2V_SHARED(T, name, dims)                                                                  \
  static constexpr ::l2v::emu::SharedSite l2v_shared_site_##name{#name, __FILE__, __LINE__};      \
  T(&name) dims = *static_cast<T(*) dims>(::l2v::emu::shared_static(l2v_shared_site_##name, sizeof(T dims)))
#define L2V_DYNAMIC_SHARED(T, name) T* name = static_cast<T*>(::l2v::emu::shared_dynamic())

#else
#error "cuda/common.cuh: kernel sources compile with nvcc, or with g++ -DL2V_EMULATE for the CPU emulator (host/emu/emu.mk)"
#endif
