// The PTX-level warp operations of tensor-core kernels, emulated: what cuda/ptx.cuh calls under
// L2V_EMULATE (kernels use cuda/ptx.cuh, never these functions directly). Included by
// host/emu/cuda_emu.h; defined in host/emu/ptx.cpp. `file`/`line` are the kernel's call site (the
// wrappers' defaulted __builtin_FILE/__builtin_LINE), named in every error.
//
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 and ldmatrix.sync.aligned.m8n8.
// {x1,x2,x4}{,.trans}.shared.b16 are warp collectives: the 32 lanes of a full warp must reach the same
// call site (a partial warp, lanes at different sites, lanes that exited or wait elsewhere: KernelError
// or the scheduler's deadlock report, both naming the instruction and its site). The operation runs when
// the last lane arrives. Register fragments follow the PTX ISA ("Matrix Fragments for mma.m16n8k16 with
// floating point type", "ldmatrix"), with groupID = lane >> 2 and threadID_in_group = lane % 4; the lower
// 16 bits of a register hold the element with the lower index:
//   A (16x16, row-major, 4 registers a0..a7): row groupID (+8 for a2,a3,a6,a7),
//                                            col 2*threadID_in_group + (i & 1) (+8 for a4..a7)
//   B (16x8, "col": 2 registers b0..b3):     row (k) 2*threadID_in_group + (i & 1) (+8 for b2,b3), col groupID
//   C, D (16x8 fp32, 4 registers c0..c3):    row groupID (+8 for c2,c3), col 2*threadID_in_group + (i & 1)
//   ldmatrix: lanes 8*m .. 8*m+7 give the addresses of rows 0..7 of matrix m (m < 1, 2 or 4; other lanes'
//   addresses are ignored); every row is 16 bytes (8 b16 elements) and 16-byte aligned. Register m of
//   lane l holds row l/4, elements 2*(l%4) and 2*(l%4)+1 of matrix m; with .trans, of its transpose
//   (stored rows 2*(l%4) and 2*(l%4)+1, element l/4).
//
// mma numerics: every product of two bf16 or two fp16 values is exact in fp32 (at most 8 x 8 or 11 x 11
// significant bits, and fp32's range holds them but for bf16 products that under- or overflow); the
// emulator adds them to c in fp32, one rounding per addition, in k order 0..15:
//   d[i][j] = (((c[i][j] + a[i][0]*b[0][j]) + a[i][1]*b[1][j]) + ...) + a[i][15]*b[15][j].
// The PTX ISA does not specify the order or the rounding of a tensor core's k-sum (hardware adds
// groups of products at once, with its own alignment and rounding, and its handling of fp32 subnormals is
// not documented either): results agree with a GPU's only to within the rounding bound of a 16-term fp32
// sum, |d - exact| <= gamma_16 * (|c| + sum_k |a*b|), gamma_n = n*u/(1 - n*u), u = 2^-24 -- and tests must
// compare with such a bound, never bit for bit.
//
// cp.async.{ca,cg}.shared.global: one thread's asynchronous copy of 4, 8 or 16 bytes (.cg: 16) from
// global to shared memory, src_bytes of them read from the source and the rest zero-filled (PTX's
// src-size). The emulator reads the source at issue and writes the destination only when a wait of the
// issuing thread covers the copy (cp.async.wait_group N: every copy of that thread's groups but the
// newest N committed ones; cp.async.wait_all: every copy, committed or not). Until then the destination
// is poisoned: every byte 0xFF (NaN as float, bf16 and fp16), and under AddressSanitizer poisoned for
// ASan too. Reported as KernelError, naming the kernel, the copy's site and issuing thread, and the site
// that found it:
//   * a source or destination not aligned to the copy size; a destination outside the block's shared
//     memory; a source inside it; src_bytes outside [0, cp-size];
//   * a copy whose destination overlaps another pending copy's (PTX orders no two cp.async operations);
//   * ldmatrix or ld_shared (cuda/ptx.cuh) reading bytes whose copy has not landed;
//   * a destination written while its copy was pending, or a source that changed meanwhile (found when
//     the copy lands: the destination no longer holds the poison / the source differs from what was read
//     at issue -- a write of exactly 0xFF bytes, or one undone before the wait, goes unnoticed);
//   * a thread whose kernel body returns with copies it never waited for;
//   * the two races a missing __syncthreads() leaves between warps, in 16-byte chunks of shared memory,
//     between two block barriers: a cp.async into a chunk that another warp read (ldmatrix, ld_shared)
//     -- the double-buffered loop without its trailing barrier -- and an ldmatrix / ld_shared of a chunk
//     that another warp's copy landed in (its wait makes the bytes visible to the issuing thread only).
//     Warps advance here in lockstep from collective to collective, so these races would never show as
//     wrong values; they are found from the order of the operations instead.
// Not detected: a plain C++ load of a pending destination cannot be intercepted; it reads the poison
// (NaNs), and the AddressSanitizer build (build/asan/) reports it as a use-after-poison with the kernel's
// stack -- where ASan's 8-byte shadow granules can express it: a 4-byte copy sharing a granule with bytes
// that are not pending is not ASan-poisoned. Plain C++ loads and stores take no part in the race checks
// above, and neither do lanes of one warp (a reader in the issuing thread's warp needs a __syncwarp(),
// which is not checked).
//
// Bank conflicts (reported, not errors): each matrix of an ldmatrix is one phase of 8 lanes reading 8
// rows of 16 bytes; a phase needs as many shared-memory wavefronts as the largest number of distinct
// 4-byte words that fall into one of the 32 banks (bank = byte address / 4 % 32; lanes reading the same
// word share it). Per launch, ldmatrix_wavefronts counts them all and ldmatrix_bank_conflicts the
// wavefronts beyond one per phase. Rows in different shared arrays are counted with the emulator's
// placement of those arrays, which is not the GPU's; rows within one array are counted exactly.
#pragma once

#include <cstddef>
#include <cstdint>

namespace l2v::emu {

enum class MmaInput { kBf16, kF16 };
void mma_m16n8k16(MmaInput type, float d[4], const uint32_t a[4], const uint32_t b[2], const float c[4],
                  const char* file, int line);

// num: 1, 2 or 4 matrices; r: num registers.
void ldmatrix(int num, bool trans, uint32_t* r, const void* row, const char* file, int line);

enum class CacheOp { kCa, kCg };
// bytes: 4, 8 or 16 (the wrappers check it at compile time).
void cp_async(CacheOp op, int bytes, void* dst, const void* src, int src_bytes, const char* file, int line);
void cp_async_commit_group(const char* file, int line);
void cp_async_wait_group(int n, const char* file, int line);
void cp_async_wait_all(const char* file, int line);

// Checks a plain read of `bytes` shared bytes at p (cuda/ptx.cuh's ld_shared): inside the block's
// shared memory and not the destination of a pending cp.async.
void check_shared_read(const void* p, size_t bytes, const char* file, int line);

struct LaunchStats {
  uint64_t ldmatrix_wavefronts = 0;
  uint64_t ldmatrix_bank_conflicts = 0;
};
// The counters of the last kernel launched by this host thread (also when it threw KernelError: what
// its blocks counted until then).
LaunchStats last_launch_stats();

}  // namespace l2v::emu
