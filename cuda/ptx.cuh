// The PTX-level operations of tensor-core kernels (FlashAttention-2 class): mma.sync m16n8k16 with
// bf16/fp16 inputs and fp32 accumulators, ldmatrix, and cp.async with its groups. Under nvcc each
// function is one inline-PTX instruction (sm_80 and later); compiled by g++ with -DL2V_EMULATE it calls
// the CPU emulator's implementation (host/emu/ptx.h), which checks how it is used and takes the call's
// source site from defaulted arguments (never pass them). host/emu/ptx.h is the full contract: the
// fragment layouts (the PTX ISA's, with groupID = lane >> 2 and threadID_in_group = lane % 4), the
// numerics (the emulator adds the 16 products in k order in fp32; a GPU's order and rounding are
// unspecified, so compare with a 16-term fp32 rounding bound), what is detected and what is not.
//
//   uint32_t a[4], b[2];   float acc[4] = {};                  // one 16x16 A, 16x8 B, 16x8 C/D tile
//   l2v::ptx::ldmatrix<4>(a, &As[row][col]);                  // lane l: row l % 16, col 8 * (l / 16)
//   l2v::ptx::ldmatrix<2, true>(b, &Bs[k][n]);                // B stored k-major rows: .trans
//   l2v::ptx::mma_m16n8k16<__nv_bfloat16>(acc, a, b, acc);    // d may be c
//   l2v::ptx::cp_async_cg(&smem[i], &global[i]);              // 16 bytes; src_bytes < 16 zero-fills the rest
//   l2v::ptx::cp_async_commit_group();
//   l2v::ptx::cp_async_wait_group<1>();                       // all but the newest committed group landed
//   __syncthreads();                                          // then other threads may read them
//
// Every warp-collective (mma_m16n8k16, ldmatrix) must be reached by all 32 lanes of a full warp at the
// same site. Pointers: ldmatrix rows and cp.async destinations in shared memory, cp.async sources in
// global memory, aligned to 16 bytes (ldmatrix) or to the copy size (cp.async). A thread's copies land
// only at its covering wait (a read before it is a bug); wait for every copy before the kernel returns.
// ld_shared is a plain load that the emulator checks (inside shared memory, not a pending destination):
// use it for scalar reads of cp.async'd data that no ldmatrix covers.
#pragma once

#include <cstdint>
#include <type_traits>

#include "cuda/common.cuh"

#if defined(__CUDACC__)
#define L2V_PTX_SITE_ONLY
#define L2V_PTX_SITE
#else
#define L2V_PTX_SITE_ONLY const char *file = __builtin_FILE(), int line = __builtin_LINE()
#define L2V_PTX_SITE , L2V_PTX_SITE_ONLY
#endif

namespace l2v::ptx {

// D = A * B + C on one 16x8x16 tile: mma.sync.aligned.m16n8k16.row.col.f32.T.T.f32, T = __nv_bfloat16
// (.bf16) or __half (.f16). a: 4 registers of 2 T (A, 16x16 row-major), b: 2 registers of 2 T (B, 16x8
// column-major), c and d: 4 floats each.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             const float (&c)[4] L2V_PTX_SITE) {
  static_assert(std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value,
                "mma_m16n8k16<T>: T is __nv_bfloat16 or __half");
#if defined(__CUDACC__)
#define L2V_PTX_MMA(type)                                                                                   \
  asm("mma.sync.aligned.m16n8k16.row.col.f32." type "." type                                                 \
      ".f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, {%10, %11, %12, %13};"                             \
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])                                                       \
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]), \
        "f"(c[3]))
  if constexpr (std::is_same<T, __half>::value) {
    L2V_PTX_MMA("f16");
  } else {
    L2V_PTX_MMA("bf16");
  }
#undef L2V_PTX_MMA
#else
  ::l2v::emu::mma_m16n8k16(std::is_same<T, __half>::value ? ::l2v::emu::MmaInput::kF16 : ::l2v::emu::MmaInput::kBf16,
                           d, a, b, c, file, line);
#endif
}

// ldmatrix.sync.aligned.m8n8.xN{.trans}.shared.b16: kNum (1, 2, 4) 8x8 matrices of 16-bit elements into
// r[0..kNum). Lane l passes the address of row l % 8 of matrix l / 8 (lanes from 8 * kNum on: ignored).
template <int kNum, bool kTrans = false>
__device__ __forceinline__ void ldmatrix(uint32_t (&r)[kNum], const void* smem_row L2V_PTX_SITE) {
  static_assert(kNum == 1 || kNum == 2 || kNum == 4, "ldmatrix<kNum>: kNum is 1, 2 or 4");
#if defined(__CUDACC__)
  const auto row = static_cast<uint32_t>(__cvta_generic_to_shared(smem_row));
#define L2V_PTX_LDMATRIX(trans)                                                                                 \
  if constexpr (kNum == 1) {                                                                                    \
    asm volatile("ldmatrix.sync.aligned.m8n8.x1" trans ".shared.b16 {%0}, [%1];" : "=r"(r[0]) : "r"(row)        \
                 : "memory");                                                                                   \
  } else if constexpr (kNum == 2) {                                                                             \
    asm volatile("ldmatrix.sync.aligned.m8n8.x2" trans ".shared.b16 {%0, %1}, [%2];" : "=r"(r[0]), "=r"(r[1]) \
                 : "r"(row) : "memory");                                                                        \
  } else {                                                                                                      \
    asm volatile("ldmatrix.sync.aligned.m8n8.x4" trans ".shared.b16 {%0, %1, %2, %3}, [%4];"                  \
                 : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3]) : "r"(row) : "memory");                     \
  }
  if constexpr (kTrans) {
    L2V_PTX_LDMATRIX(".trans")
  } else {
    L2V_PTX_LDMATRIX("")
  }
#undef L2V_PTX_LDMATRIX
#else
  ::l2v::emu::ldmatrix(kNum, kTrans, r, smem_row, file, line);
#endif
}

// cp.async.ca.shared.global (cached in L1 too): kBytes (4, 8, 16) from global src to shared dst, of which
// src_bytes are read and the rest zero-filled (src_bytes = 0: a pure zero fill, src is not read).
template <int kBytes>
__device__ __forceinline__ void cp_async_ca(void* smem_dst, const void* global_src, int src_bytes = kBytes L2V_PTX_SITE) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async.ca copies 4, 8 or 16 bytes");
#if defined(__CUDACC__)
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;"
               :
               : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst))),
                 "l"(__cvta_generic_to_global(global_src)), "n"(kBytes), "r"(src_bytes)
               : "memory");
#else
  ::l2v::emu::cp_async(::l2v::emu::CacheOp::kCa, kBytes, smem_dst, global_src, src_bytes, file, line);
#endif
}

// cp.async.cg.shared.global (L2 only): 16 bytes, as cp_async_ca<16>.
__device__ __forceinline__ void cp_async_cg(void* smem_dst, const void* global_src, int src_bytes = 16 L2V_PTX_SITE) {
#if defined(__CUDACC__)
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;"
               :
               : "r"(static_cast<uint32_t>(__cvta_generic_to_shared(smem_dst))),
                 "l"(__cvta_generic_to_global(global_src)), "r"(src_bytes)
               : "memory");
#else
  ::l2v::emu::cp_async(::l2v::emu::CacheOp::kCg, 16, smem_dst, global_src, src_bytes, file, line);
#endif
}

// cp.async.commit_group: the thread's copies issued since its last commit become one group.
__device__ __forceinline__ void cp_async_commit_group(L2V_PTX_SITE_ONLY) {
#if defined(__CUDACC__)
  asm volatile("cp.async.commit_group;" ::: "memory");
#else
  ::l2v::emu::cp_async_commit_group(file, line);
#endif
}

// cp.async.wait_group N: waits until at most the newest kPending committed groups of the thread are
// still in flight (uncommitted copies are not waited for).
template <int kPending>
__device__ __forceinline__ void cp_async_wait_group(L2V_PTX_SITE_ONLY) {
  static_assert(kPending >= 0, "cp.async.wait_group N: N >= 0");
#if defined(__CUDACC__)
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
#else
  ::l2v::emu::cp_async_wait_group(kPending, file, line);
#endif
}

// cp.async.wait_all: commits the open group and waits for every copy of the thread.
__device__ __forceinline__ void cp_async_wait_all(L2V_PTX_SITE_ONLY) {
#if defined(__CUDACC__)
  asm volatile("cp.async.wait_all;" ::: "memory");
#else
  ::l2v::emu::cp_async_wait_all(file, line);
#endif
}

// *p, a shared-memory load the emulator checks (see above); a plain load under nvcc.
template <typename T>
__device__ __forceinline__ T ld_shared(const T* p L2V_PTX_SITE) {
#if !defined(__CUDACC__)
  ::l2v::emu::check_shared_read(p, sizeof(T), file, line);
#endif
  return *p;
}

}  // namespace l2v::ptx
