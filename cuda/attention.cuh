// Scaled dot-product attention on the GPU, flash-attention style (Dao et al., FlashAttention and
// FlashAttention-2): the T x T scores and probabilities live only in shared memory and registers, one
// tile at a time; the forward saves the log-sum-exp of every query row and the backward recomputes the
// probabilities from q, k and that lse. Contract, layouts and edge cases are those of
// l2v::cpu::attention_forward / attention_backward (host/cpu_ops.h), which the tests compare against:
//   q [N, H*D], k and v [N, KV*D] (query head h reads kv head h / (H/KV)) with their gradients, rows `ld`
//   apart (host/qkv_strides.h: packed, or the fused q|k|v product's blocks), out [N, H*D] packed, lse [B, H, T],
//   key_mask [B, T] or nullptr, causal or bidirectional, scale 1/sqrt(D), rows without a visible key
//   give out = 0, lse = -inf and zero gradients, attention dropout with dropout_keep_attention's mask.
//
// Storage type T is float or __nv_bfloat16; everything is computed in fp32 (tiles are converted when
// they are loaded into shared memory) and lse is fp32. The head dim is a template parameter
// (D = 8, 16, 64, 128; the launchers dispatch at run time and throw for other values).
//
// Kernels (all deterministic: no atomics, every output element has one writer):
//   attention_fwd_kernel        grid (T/kBlockM, H, B): a block owns kBlockM query rows of one head,
//                               walks the key tiles with an online softmax, writes out and lse.
//   attention_bwd_dot_kernel    dsum[b, h, i] = dout_i . out_i (the D_i of FlashAttention-2); it equals
//                               sum_j P_ij dP_ij even under dropout, since out already holds the dropped,
//                               rescaled probabilities.
//   attention_bwd_dq_kernel     grid (T/kBlockM, H, B): dq for kBlockM query rows, walking the key tiles.
//   attention_bwd_dkdv_kernel   grid (T/kBlockN, KV, B): dk, dv for kBlockN keys of one kv head, walking
//                               every query tile of every query head of the GQA group.
// GQA in the backward: dk/dv of a kv head sum over the group's query heads; one block per (kv head, key
// tile) loops over them, so dk/dv need no atomics. dq has its own pass instead of FlashAttention-2's
// fp32 atomicAdd into a dq accumulator: the scores and dP are computed twice, but the result is
// bitwise reproducible and there is no fp32 dq buffer to clear, accumulate and convert.
//
// Thread layout (the same idea in every kernel): kLanes consecutive threads of one warp share a group of
// tile rows. In the score phase each thread computes a micro-tile of rows x (quads of 4 consecutive
// keys): 4 keys because one Philox call yields the dropout decisions of 4 keys. In the accumulation
// phase (O += P V, dq += dS K, dv += P^T dO, dk += dS^T Q) each thread owns columns lane + kLanes*c of
// its rows, so the lanes of a warp read different banks of the same tile row.
// Shared memory tiles are fp32 with an odd row stride (kD + 1): a warp reading one column across rows,
// or rows 4 apart, hits distinct banks. For bf16 inputs that is twice the shared memory of bf16 tiles,
// bought so that each element is widened once, when loaded, rather than at every use in the inner loops.
#pragma once

#include <cstddef>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/common.cuh"
#include "cuda/launch.h"
#include "cuda/workspace_sizes.h"
#include "host/philox.h"
#include "host/qkv_strides.h"

// Unrolling by 4 of the long loops over the head dim and over a tile, which fully unrolled (L2V_UNROLL,
// cuda/common.cuh) would hoist so many shared loads that the accumulators spill.
#if defined(__CUDACC__)
#define L2V_ATTN_UNROLL_4 _Pragma("unroll 4")
#else
#define L2V_ATTN_UNROLL_4
#endif

namespace l2v::cuda {

// Everything a kernel needs, passed by value. The backward fields are unused by the forward.
template <typename T>
struct AttentionParams {
  const T* q;
  const T* k;
  const T* v;
  const int* key_mask;  // [B, T] or nullptr
  T* out;
  float* lse;  // written by the forward, read by the backward
  const T* dout;
  T* dq;
  T* dk;
  T* dv;
  float* dsum;  // [B, H, T] backward scratch: dout_i . out_i
  int B, seqlen, H, KV;
  int group;                 // H / KV query heads per kv head
  // Elements from one token to the next (host/qkv_strides.h): q and dq; k, v, dk and dv; out and dout (H*D).
  int q_stride, kv_stride, o_stride;
  bool causal;
  float scale;               // 1/sqrt(D)
  float scale_log2;          // scale * log2(e): scores are kept in base-2 units so that exp is one exp2
  float dropout_p, keep_scale;  // keep_scale = 1/(1-p)
  uint64_t seed;
  uint32_t bh_offset;        // DropoutKey::offset: this batch's first batch*head in the masks' batch
  uint32_t site;             // the dropout site (host/philox.h), not a CUDA stream
};

// The keep decisions of keys 4*j4 .. 4*j4+3 for query i: bit e is
// dropout_keep_attention(seed, site, bh, i, 4*j4 + e, p) (the kernels pass bh_offset + bh). dropout_keep_attention draws the four keys of a
// quad from one Philox call (counter (j >> 2, i, bh, site)); this makes that call once instead of four
// times. The tests check it against dropout_keep_attention bit for bit.
L2V_HD unsigned attention_keep4(uint64_t seed, uint32_t site, uint32_t bh, uint32_t i, uint32_t j4, float p) {
  const Philox4 r = philox4x32_10(j4, i, bh, site, seed);
  unsigned bits = 0;
  for (int e = 0; e < 4; ++e) bits |= (philox_to_unit(r.v[e]) >= p ? 1u : 0u) << e;
  return bits;
}

namespace attention_detail {

constexpr float kLog2e = 1.4426950408889634f;
constexpr float kLn2 = 0.6931471805599453f;
constexpr size_t kDefaultSharedLimit = 48 * 1024;  // above it a kernel must opt in (cudaFuncSetAttribute)

__host__ __device__ constexpr bool is_pow2(int x) { return x > 0 && (x & (x - 1)) == 0; }

// Minimum resident blocks per SM promised to ptxas (__launch_bounds__), which caps a thread at
// 65536 / (kThreads * blocks) = 128 registers: enough for the accumulators without spills, and room for
// 16 warps per SM as far as registers go. With the thread count alone, ptxas chose 96 registers for the
// D = 64 forward and spilled on sm_90.
__host__ __device__ constexpr int min_blocks_per_sm(int threads) { return 512 / threads; }

// ---- Kernel traits.

// Tiles of query rows (forward and dq): a block owns kBlockM query rows of one (batch, head) and walks the
// keys kBlockN at a time. Thread t = group * kLanes + lane owns rows group + kRowGroups * m
// (m < kRowsPerThread), output columns lane + kLanes * c (c < kCols), and in the score phase the keys
// 4 * (lane + kLanes * qd) + e (qd < kQuads, e < 4) of its rows.
template <int kD_, int kBlockM_, int kBlockN_, int kLanes_, int kRowsPerThread_>
struct QueryTileTraits {
  static constexpr int kD = kD_, kBlockM = kBlockM_, kBlockN = kBlockN_, kLanes = kLanes_;
  static constexpr int kRowsPerThread = kRowsPerThread_;
  static constexpr int kRowGroups = kBlockM / kRowsPerThread;
  static constexpr int kThreads = kRowGroups * kLanes;
  static constexpr int kCols = kD / kLanes;
  static constexpr int kQuads = kBlockN / (4 * kLanes);
  static constexpr int kStride = kD + 1;       // fp32 row stride of the q/k/v/dout tiles
  static constexpr int kPStride = kBlockN + 1;  // of the P or dS tile [kBlockM][kBlockN]
  static_assert(is_pow2(kLanes) && kLanes <= 32, "a row group is a power-of-two slice of one warp");
  static_assert(kD % kLanes == 0 && kBlockN % (4 * kLanes) == 0 && kBlockM % kRowsPerThread == 0, "tile split");
  static_assert(kThreads % 32 == 0, "whole warps: the row reductions are full-mask shuffles");
};

// Tiles of keys (dk/dv): a block owns kBlockN keys of one (batch, kv head) and walks the query rows
// kBlockM at a time. Accumulation: thread t = kgroup * kLanes + lane owns keys kgroup + kKeyGroups * n
// (n < kKeysPerThread) and columns lane + kLanes * c. Score phase: thread t computes the key quad
// t % kQuadsPerTile against the query rows t / kQuadsPerTile + kRowGroups * m (m < kRowsPerThread).
template <int kD_, int kBlockN_, int kBlockM_, int kLanes_, int kKeysPerThread_>
struct KeyTileTraits {
  static constexpr int kD = kD_, kBlockN = kBlockN_, kBlockM = kBlockM_, kLanes = kLanes_;
  static constexpr int kKeysPerThread = kKeysPerThread_;
  static constexpr int kKeyGroups = kBlockN / kKeysPerThread;
  static constexpr int kThreads = kKeyGroups * kLanes;
  static constexpr int kCols = kD / kLanes;
  static constexpr int kQuadsPerTile = kBlockN / 4;
  static constexpr int kRowGroups = kThreads / kQuadsPerTile;
  static constexpr int kRowsPerThread = kBlockM / kRowGroups;
  static constexpr int kStride = kD + 1;
  static constexpr int kPStride = kBlockM + 1;  // of the transposed P and dS tiles [kBlockN][kBlockM]
  static_assert(is_pow2(kLanes) && kLanes <= 32 && kD % kLanes == 0 && kBlockN % kKeysPerThread == 0, "tile split");
  // At most 8 quads per tile: their rows 4*quad (odd stride) then fall in distinct banks.
  static_assert(kBlockN % 4 == 0 && kQuadsPerTile <= 8, "key quads");
  static_assert(kThreads % kQuadsPerTile == 0 && kBlockM % kRowGroups == 0, "score-phase split");
  static_assert(kThreads % 32 == 0, "whole warps");
};

// Per head dim. Shared memory is kept under 48 KiB up to D = 64 (several blocks per SM); D = 128 opts in
// to 69-73 KiB (two blocks per SM on sm_80, three on sm_90) rather than halve the rows that share a K/V
// tile.
template <int D> struct FwdTraits;
template <> struct FwdTraits<8> : QueryTileTraits<8, 64, 32, 2, 1> {};      // 128 threads, 13 KiB
template <> struct FwdTraits<16> : QueryTileTraits<16, 64, 32, 2, 1> {};    // 128 threads, 17 KiB
template <> struct FwdTraits<64> : QueryTileTraits<64, 64, 32, 4, 2> {};    // 128 threads, 41 KiB
template <> struct FwdTraits<128> : QueryTileTraits<128, 64, 32, 8, 2> {};  // 256 threads, 73 KiB

template <int D> struct DqTraits;
template <> struct DqTraits<8> : QueryTileTraits<8, 32, 32, 4, 1> {};       // 128 threads, 9 KiB
template <> struct DqTraits<16> : QueryTileTraits<16, 32, 32, 4, 1> {};     // 128 threads, 13 KiB
template <> struct DqTraits<64> : QueryTileTraits<64, 32, 32, 4, 1> {};     // 128 threads, 37 KiB
template <> struct DqTraits<128> : QueryTileTraits<128, 32, 32, 8, 1> {};   // 256 threads, 69 KiB

template <int D> struct DkdvTraits;
template <> struct DkdvTraits<8> : KeyTileTraits<8, 32, 64, 4, 1> {};       // 128 threads, 24 KiB
template <> struct DkdvTraits<16> : KeyTileTraits<16, 32, 64, 4, 1> {};     // 128 threads, 30 KiB
template <> struct DkdvTraits<64> : KeyTileTraits<64, 32, 32, 8, 2> {};     // 128 threads, 41 KiB
template <> struct DkdvTraits<128> : KeyTileTraits<128, 32, 32, 8, 2> {};   // 128 threads, 73 KiB

// Dynamic shared memory layouts, in fp32 words (the key flags are ints in the last kBlockN words).
template <class Tr>
struct FwdSmem {
  static constexpr int kQ = 0;
  static constexpr int kK = kQ + Tr::kBlockM * Tr::kStride;
  static constexpr int kV = kK + Tr::kBlockN * Tr::kStride;
  static constexpr int kP = kV + Tr::kBlockN * Tr::kStride;
  static constexpr int kKeyOk = kP + Tr::kBlockM * Tr::kPStride;
  static constexpr size_t kBytes = sizeof(float) * (kKeyOk + Tr::kBlockN);
};

template <class Tr>
struct DqSmem {
  static constexpr int kQ = 0;
  static constexpr int kDo = kQ + Tr::kBlockM * Tr::kStride;
  static constexpr int kK = kDo + Tr::kBlockM * Tr::kStride;
  static constexpr int kV = kK + Tr::kBlockN * Tr::kStride;
  static constexpr int kDs = kV + Tr::kBlockN * Tr::kStride;
  static constexpr int kKeyOk = kDs + Tr::kBlockM * Tr::kPStride;
  static constexpr size_t kBytes = sizeof(float) * (kKeyOk + Tr::kBlockN);
};

template <class Tr>
struct DkdvSmem {
  static constexpr int kK = 0;
  static constexpr int kV = kK + Tr::kBlockN * Tr::kStride;
  static constexpr int kQ = kV + Tr::kBlockN * Tr::kStride;
  static constexpr int kDo = kQ + Tr::kBlockM * Tr::kStride;
  static constexpr int kPt = kDo + Tr::kBlockM * Tr::kStride;
  static constexpr int kDst = kPt + Tr::kBlockN * Tr::kPStride;
  static constexpr int kLse = kDst + Tr::kBlockN * Tr::kPStride;
  static constexpr int kDsum = kLse + Tr::kBlockM;
  static constexpr int kKeyOk = kDsum + Tr::kBlockM;
  static constexpr size_t kBytes = sizeof(float) * (kKeyOk + Tr::kBlockN);
};

// ---- Device helpers.

// 16 bytes of storage as fp32 values: one vector load or store per chunk.
template <typename T>
struct Chunk;

template <>
struct Chunk<float> {
  static constexpr int kSize = 4;
  __device__ __forceinline__ static void load(const float* src, float (&x)[4]) {
    const float4 v = *reinterpret_cast<const float4*>(src);
    x[0] = v.x, x[1] = v.y, x[2] = v.z, x[3] = v.w;
  }
  __device__ __forceinline__ static void store(float* dst, const float (&x)[4]) {
    *reinterpret_cast<float4*>(dst) = make_float4(x[0], x[1], x[2], x[3]);
  }
};

template <>
struct Chunk<__nv_bfloat16> {
  static constexpr int kSize = 8;
  // A bf16 is the high half of an fp32: widening is a shift, exact.
  __device__ __forceinline__ static void load(const __nv_bfloat16* src, float (&x)[8]) {
    const uint4 v = *reinterpret_cast<const uint4*>(src);
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
    L2V_UNROLL
    for (int i = 0; i < 4; ++i) {
      x[2 * i] = __uint_as_float(w[i] << 16);
      x[2 * i + 1] = __uint_as_float(w[i] & 0xFFFF0000u);
    }
  }
  __device__ __forceinline__ static void store(__nv_bfloat16* dst, const float (&x)[8]) {
    unsigned w[4];
    L2V_UNROLL
    for (int i = 0; i < 4; ++i) {
      w[i] = static_cast<unsigned>(__bfloat16_as_ushort(__float2bfloat16_rn(x[2 * i]))) |
             static_cast<unsigned>(__bfloat16_as_ushort(__float2bfloat16_rn(x[2 * i + 1]))) << 16;
    }
    *reinterpret_cast<uint4*>(dst) = make_uint4(w[0], w[1], w[2], w[3]);
  }
};

// fp16 storage: only the dsum pass of the tensor-core kernels (cuda/attention_mma.cuh) reads it here.
template <>
struct Chunk<__half> {
  static constexpr int kSize = 8;
  __device__ __forceinline__ static void load(const __half* src, float (&x)[8]) {
    const uint4 v = *reinterpret_cast<const uint4*>(src);
    const unsigned w[4] = {v.x, v.y, v.z, v.w};
    L2V_UNROLL
    for (int i = 0; i < 4; ++i) {
      x[2 * i] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[i] & 0xFFFFu)));
      x[2 * i + 1] = __half2float(__ushort_as_half(static_cast<unsigned short>(w[i] >> 16)));
    }
  }
};

// Copies `rows` rows of kD elements (row r at src + r * src_stride) into the fp32 tile dst
// [kTileRows][kD + 1] and zero-fills the rest of the tile. Keys and queries past the end of the sequence
// are masked (P = 0), but 0 times whatever shared memory held could be NaN. Consecutive threads move
// consecutive 16-byte chunks of a row.
template <int kD, int kTileRows, int kThreads, typename T>
__device__ __forceinline__ void load_rows(float* dst, const T* src, long src_stride, int rows, int tid) {
  using C = Chunk<T>;
  constexpr int kPerRow = kD / C::kSize;
  for (int c = tid; c < kTileRows * kPerRow; c += kThreads) {
    const int r = c / kPerRow, col = c % kPerRow * C::kSize;
    float x[C::kSize];
    if (r < rows) {
      C::load(src + r * src_stride + col, x);
    } else {
      L2V_UNROLL
      for (int e = 0; e < C::kSize; ++e) x[e] = 0.0f;
    }
    L2V_UNROLL
    for (int e = 0; e < C::kSize; ++e) dst[r * (kD + 1) + col + e] = x[e];
  }
}

// The inverse: the first `rows` rows of the fp32 tile src, converted to T, to dst.
template <int kD, int kTileRows, int kThreads, typename T>
__device__ __forceinline__ void store_rows(T* dst, const float* src, long dst_stride, int rows, int tid) {
  using C = Chunk<T>;
  constexpr int kPerRow = kD / C::kSize;
  for (int c = tid; c < rows * kPerRow; c += kThreads) {
    const int r = c / kPerRow, col = c % kPerRow * C::kSize;
    float x[C::kSize];
    L2V_UNROLL
    for (int e = 0; e < C::kSize; ++e) x[e] = src[r * (kD + 1) + col + e];
    C::store(dst + r * dst_stride + col, x);
  }
}

// key_ok[jl] = key j0 + jl exists and is not padding.
template <int kBlockN>
__device__ __forceinline__ void load_key_flags(int* key_ok, const int* key_mask, int b, int seqlen, int j0, int tid,
                                               int threads) {
  for (int jl = tid; jl < kBlockN; jl += threads) {
    const int j = j0 + jl;
    key_ok[jl] = j < seqlen && (key_mask == nullptr || key_mask[(long)b * seqlen + j] != 0);
  }
}

// Max / sum over the kWidth consecutive lanes of a row group (every lane of the warp takes part).
template <int kWidth>
__device__ __forceinline__ float group_max(float x) {
  L2V_UNROLL
  for (int off = kWidth / 2; off > 0; off /= 2) x = fmaxf(x, __shfl_xor_sync(0xFFFFFFFFu, x, off, kWidth));
  return x;
}

template <int kWidth>
__device__ __forceinline__ float group_sum(float x) {
  L2V_UNROLL
  for (int off = kWidth / 2; off > 0; off /= 2) x += __shfl_xor_sync(0xFFFFFFFFu, x, off, kWidth);
  return x;
}

// A thread's score-phase micro-tile in a query-row tile: acc[m][4*qd + e] = a_s row (group + kRowGroups*m)
// . b_s row (4*(lane + kLanes*qd) + e). Each a_s value serves all the thread's keys, each b_s value all
// its rows. (q . k for the scores, dout . v for dP.)
template <class Tr>
__device__ __forceinline__ void query_tile_dots(float (&acc)[Tr::kRowsPerThread][4 * Tr::kQuads], const float* a_s,
                                                const float* b_s, int group, int lane) {
  L2V_UNROLL
  for (int m = 0; m < Tr::kRowsPerThread; ++m) {
    L2V_UNROLL
    for (int c = 0; c < 4 * Tr::kQuads; ++c) acc[m][c] = 0.0f;
  }
  L2V_ATTN_UNROLL_4
  for (int d = 0; d < Tr::kD; ++d) {
    float a[Tr::kRowsPerThread];
    L2V_UNROLL
    for (int m = 0; m < Tr::kRowsPerThread; ++m) a[m] = a_s[(group + Tr::kRowGroups * m) * Tr::kStride + d];
    L2V_UNROLL
    for (int c = 0; c < 4 * Tr::kQuads; ++c) {
      const float bv = b_s[(4 * (lane + Tr::kLanes * (c / 4)) + c % 4) * Tr::kStride + d];
      L2V_UNROLL
      for (int m = 0; m < Tr::kRowsPerThread; ++m) acc[m][c] = fmaf(a[m], bv, acc[m][c]);
    }
  }
}

// The score-phase micro-tile of the dk/dv kernel: acc[m][e] = a_s row (rgroup + kRowGroups*m)
// . b_s row (4*quad + e).
template <class Tr>
__device__ __forceinline__ void key_tile_dots(float (&acc)[Tr::kRowsPerThread][4], const float* a_s,
                                              const float* b_s, int rgroup, int quad) {
  L2V_UNROLL
  for (int m = 0; m < Tr::kRowsPerThread; ++m) {
    L2V_UNROLL
    for (int e = 0; e < 4; ++e) acc[m][e] = 0.0f;
  }
  L2V_ATTN_UNROLL_4
  for (int d = 0; d < Tr::kD; ++d) {
    float bv[4];
    L2V_UNROLL
    for (int e = 0; e < 4; ++e) bv[e] = b_s[(4 * quad + e) * Tr::kStride + d];
    L2V_UNROLL
    for (int m = 0; m < Tr::kRowsPerThread; ++m) {
      const float a = a_s[(rgroup + Tr::kRowGroups * m) * Tr::kStride + d];
      L2V_UNROLL
      for (int e = 0; e < 4; ++e) acc[m][e] = fmaf(a, bv[e], acc[m][e]);
    }
  }
}

__device__ __forceinline__ int ceil_div(int a, int b) { return (a + b - 1) / b; }

// Key tiles a query tile [i0, i0 + rows) walks: under the causal mask, none past its last row.
__device__ __forceinline__ int key_tiles(int seqlen, bool causal, int i0, int rows, int block_n) {
  const int all = ceil_div(seqlen, block_n);
  return causal ? min(all, ceil_div(i0 + rows, block_n)) : all;
}

// ---- Kernels.

template <class Tr, typename T>
__global__ void __launch_bounds__(Tr::kThreads, min_blocks_per_sm(Tr::kThreads))
    attention_fwd_kernel(const AttentionParams<T> p) {
  using Smem = FwdSmem<Tr>;
  constexpr int M = Tr::kRowsPerThread, K = 4 * Tr::kQuads, C = Tr::kCols;
  L2V_DYNAMIC_SHARED(float, smem);
  float* q_s = smem + Smem::kQ;  // reused to stage the output
  float* k_s = smem + Smem::kK;
  float* v_s = smem + Smem::kV;
  float* p_s = smem + Smem::kP;
  int* key_ok = reinterpret_cast<int*>(smem + Smem::kKeyOk);

  const int tid = threadIdx.x, lane = tid % Tr::kLanes, group = tid / Tr::kLanes;
  const int b = blockIdx.z, h = blockIdx.y, kvh = h / p.group;
  // Under the causal mask later query tiles have more keys: the grid starts with them.
  const int i0 = (int)(gridDim.x - 1 - blockIdx.x) * Tr::kBlockM;
  const int rows = min(Tr::kBlockM, p.seqlen - i0);
  const long tok0 = (long)b * p.seqlen;
  const uint32_t bh = (uint32_t)(b * p.H + h);
  const bool dropout = p.dropout_p > 0.0f;

  load_rows<Tr::kD, Tr::kBlockM, Tr::kThreads>(q_s, p.q + (tok0 + i0) * p.q_stride + (long)h * Tr::kD, p.q_stride,
                                               rows, tid);

  // Running max (base-2 units), this thread's share of the running sum, and its output columns.
  float m_run[M], l_run[M], acc[M][C];
  L2V_UNROLL
  for (int m = 0; m < M; ++m) {
    m_run[m] = -INFINITY;
    l_run[m] = 0.0f;
    L2V_UNROLL
    for (int c = 0; c < C; ++c) acc[m][c] = 0.0f;
  }

  const int n_tiles = key_tiles(p.seqlen, p.causal, i0, rows, Tr::kBlockN);
  for (int t = 0; t < n_tiles; ++t) {
    const int j0 = t * Tr::kBlockN, keys = min(Tr::kBlockN, p.seqlen - j0);
    const long kv_off = (tok0 + j0) * p.kv_stride + (long)kvh * Tr::kD;
    load_rows<Tr::kD, Tr::kBlockN, Tr::kThreads>(k_s, p.k + kv_off, p.kv_stride, keys, tid);
    load_rows<Tr::kD, Tr::kBlockN, Tr::kThreads>(v_s, p.v + kv_off, p.kv_stride, keys, tid);
    load_key_flags<Tr::kBlockN>(key_ok, p.key_mask, b, p.seqlen, j0, tid, Tr::kThreads);
    __syncthreads();

    float s[M][K];
    query_tile_dots<Tr>(s, q_s, k_s, group, lane);

    L2V_UNROLL
    for (int m = 0; m < M; ++m) {
      const int il = group + Tr::kRowGroups * m, i = i0 + il;
      float tile_max = -INFINITY;
      L2V_UNROLL
      for (int c = 0; c < K; ++c) {
        const int jl = 4 * (lane + Tr::kLanes * (c / 4)) + c % 4;
        const bool visible = key_ok[jl] && (!p.causal || j0 + jl <= i);
        s[m][c] = visible ? s[m][c] * p.scale_log2 : -INFINITY;
        tile_max = fmaxf(tile_max, s[m][c]);
      }
      const float m_new = fmaxf(m_run[m], group_max<Tr::kLanes>(tile_max));
      // While a row has seen no visible key its max is -inf; exponentiating against 0 instead keeps
      // exp2(-inf - -inf) = NaN out (every term is exp2(-inf) = 0 then).
      const float m_use = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2f(m_run[m] - m_use);
      m_run[m] = m_new;
      l_run[m] *= alpha;
      L2V_UNROLL
      for (int c = 0; c < C; ++c) acc[m][c] *= alpha;
      L2V_UNROLL
      for (int qd = 0; qd < Tr::kQuads; ++qd) {
        const int q4 = lane + Tr::kLanes * qd;  // the thread's quad within the tile
        const unsigned keep =
            dropout ? attention_keep4(p.seed, p.site, p.bh_offset + bh, (uint32_t)i, (uint32_t)(j0 / 4 + q4), p.dropout_p) : 0xFu;
        L2V_UNROLL
        for (int e = 0; e < 4; ++e) {
          const float pe = exp2f(s[m][4 * qd + e] - m_use);
          l_run[m] += pe;  // the softmax denominator counts dropped probabilities too
          p_s[il * Tr::kPStride + 4 * q4 + e] = (keep >> e & 1u) ? pe * p.keep_scale : 0.0f;
        }
      }
    }
    // A row's P is written and read by the lanes of its group only, all in one warp.
    __syncwarp();

    L2V_ATTN_UNROLL_4
    for (int jl = 0; jl < Tr::kBlockN; ++jl) {
      float pv[M];
      L2V_UNROLL
      for (int m = 0; m < M; ++m) pv[m] = p_s[(group + Tr::kRowGroups * m) * Tr::kPStride + jl];
      L2V_UNROLL
      for (int c = 0; c < C; ++c) {
        const float vv = v_s[jl * Tr::kStride + lane + Tr::kLanes * c];
        L2V_UNROLL
        for (int m = 0; m < M; ++m) acc[m][c] = fmaf(pv[m], vv, acc[m][c]);
      }
    }
    __syncthreads();  // k_s, v_s and p_s are overwritten next
  }

  // Normalise; rows with no visible key (l == 0) get 0 and lse = -inf. The q tile is free after the
  // loop's last barrier: stage the output there for 16-byte stores.
  L2V_UNROLL
  for (int m = 0; m < M; ++m) {
    const int il = group + Tr::kRowGroups * m;
    const float l = group_sum<Tr::kLanes>(l_run[m]);
    const float inv_l = l > 0.0f ? 1.0f / l : 0.0f;
    L2V_UNROLL
    for (int c = 0; c < C; ++c) q_s[il * Tr::kStride + lane + Tr::kLanes * c] = acc[m][c] * inv_l;
    if (lane == 0 && il < rows) {
      p.lse[(long)bh * p.seqlen + i0 + il] = l > 0.0f ? (m_run[m] + log2f(l)) * kLn2 : -INFINITY;
    }
  }
  __syncthreads();
  store_rows<Tr::kD, Tr::kBlockM, Tr::kThreads>(p.out + (tok0 + i0) * p.o_stride + (long)h * Tr::kD, q_s, p.o_stride,
                                                rows, tid);
}

// dsum[(b*H + h)*T + i] = dout . out over the head dim, for every (token, head) row of [N*H, D].
// kChunks threads per row, one 16-byte chunk each.
constexpr int kDotThreads = 256;

template <int kD, typename T>
__global__ void __launch_bounds__(kDotThreads) attention_bwd_dot_kernel(const AttentionParams<T> p) {
  using Ch = Chunk<T>;
  constexpr int kChunks = kD / Ch::kSize;
  static_assert(is_pow2(kChunks) && kChunks <= 32, "a row's chunks lie in one warp");
  const long rows = (long)p.B * p.seqlen * p.H;
  const long r = ((long)blockIdx.x * kDotThreads + threadIdx.x) / kChunks;
  const int col = (int)(threadIdx.x % kChunks) * Ch::kSize;
  float acc = 0.0f;
  if (r < rows) {
    float a[Ch::kSize], o[Ch::kSize];
    Ch::load(p.dout + r * kD + col, a);
    Ch::load(p.out + r * kD + col, o);
    L2V_UNROLL
    for (int e = 0; e < Ch::kSize; ++e) acc = fmaf(a[e], o[e], acc);
  }
  acc = group_sum<kChunks>(acc);
  if (r < rows && col == 0) {
    const long n = r / p.H;
    const int h = (int)(r % p.H), b = (int)(n / p.seqlen), i = (int)(n % p.seqlen);
    p.dsum[((long)b * p.H + h) * p.seqlen + i] = acc;
  }
}

template <class Tr, typename T>
__global__ void __launch_bounds__(Tr::kThreads, min_blocks_per_sm(Tr::kThreads))
    attention_bwd_dq_kernel(const AttentionParams<T> p) {
  using Smem = DqSmem<Tr>;
  constexpr int M = Tr::kRowsPerThread, K = 4 * Tr::kQuads, C = Tr::kCols;
  L2V_DYNAMIC_SHARED(float, smem);
  float* q_s = smem + Smem::kQ;  // reused to stage dq
  float* do_s = smem + Smem::kDo;
  float* k_s = smem + Smem::kK;
  float* v_s = smem + Smem::kV;
  float* ds_s = smem + Smem::kDs;
  int* key_ok = reinterpret_cast<int*>(smem + Smem::kKeyOk);

  const int tid = threadIdx.x, lane = tid % Tr::kLanes, group = tid / Tr::kLanes;
  const int b = blockIdx.z, h = blockIdx.y, kvh = h / p.group;
  const int i0 = (int)(gridDim.x - 1 - blockIdx.x) * Tr::kBlockM;
  const int rows = min(Tr::kBlockM, p.seqlen - i0);
  const long tok0 = (long)b * p.seqlen;
  const long q_off = (tok0 + i0) * p.q_stride + (long)h * Tr::kD, o_off = (tok0 + i0) * p.o_stride + (long)h * Tr::kD;
  const uint32_t bh = (uint32_t)(b * p.H + h);
  const bool dropout = p.dropout_p > 0.0f;

  load_rows<Tr::kD, Tr::kBlockM, Tr::kThreads>(q_s, p.q + q_off, p.q_stride, rows, tid);
  load_rows<Tr::kD, Tr::kBlockM, Tr::kThreads>(do_s, p.dout + o_off, p.o_stride, rows, tid);

  // lse in base-2 units. A row with no visible key (lse = -inf) or past the end takes +inf, so that
  // every P = exp2(s - inf) of it is 0 instead of exp2(-inf + inf) = NaN.
  float lse2[M], dsum[M], acc[M][C];
  L2V_UNROLL
  for (int m = 0; m < M; ++m) {
    const int il = group + Tr::kRowGroups * m;
    const long row = (long)bh * p.seqlen + i0 + il;
    const float L = il < rows ? p.lse[row] : -INFINITY;
    lse2[m] = L == -INFINITY ? INFINITY : L * kLog2e;
    dsum[m] = il < rows ? p.dsum[row] : 0.0f;
    L2V_UNROLL
    for (int c = 0; c < C; ++c) acc[m][c] = 0.0f;
  }

  const int n_tiles = key_tiles(p.seqlen, p.causal, i0, rows, Tr::kBlockN);
  for (int t = 0; t < n_tiles; ++t) {
    const int j0 = t * Tr::kBlockN, keys = min(Tr::kBlockN, p.seqlen - j0);
    const long kv_off = (tok0 + j0) * p.kv_stride + (long)kvh * Tr::kD;
    load_rows<Tr::kD, Tr::kBlockN, Tr::kThreads>(k_s, p.k + kv_off, p.kv_stride, keys, tid);
    load_rows<Tr::kD, Tr::kBlockN, Tr::kThreads>(v_s, p.v + kv_off, p.kv_stride, keys, tid);
    load_key_flags<Tr::kBlockN>(key_ok, p.key_mask, b, p.seqlen, j0, tid, Tr::kThreads);
    __syncthreads();

    float s[M][K], dp[M][K];
    query_tile_dots<Tr>(s, q_s, k_s, group, lane);
    query_tile_dots<Tr>(dp, do_s, v_s, group, lane);

    // dS = P * (dP - D_i), where dP of a dropped probability is 0 and of a kept one dout.v / (1-p).
    L2V_UNROLL
    for (int m = 0; m < M; ++m) {
      const int il = group + Tr::kRowGroups * m, i = i0 + il;
      L2V_UNROLL
      for (int qd = 0; qd < Tr::kQuads; ++qd) {
        const int q4 = lane + Tr::kLanes * qd;
        const unsigned keep =
            dropout ? attention_keep4(p.seed, p.site, p.bh_offset + bh, (uint32_t)i, (uint32_t)(j0 / 4 + q4), p.dropout_p) : 0xFu;
        L2V_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int jl = 4 * q4 + e, c = 4 * qd + e;
          const bool visible = key_ok[jl] && (!p.causal || j0 + jl <= i);
          const float P = visible ? exp2f(s[m][c] * p.scale_log2 - lse2[m]) : 0.0f;
          const float dP = (keep >> e & 1u) ? dp[m][c] * p.keep_scale : 0.0f;
          ds_s[il * Tr::kPStride + jl] = P * (dP - dsum[m]);
        }
      }
    }
    __syncwarp();  // a row's dS is written and read by its own lanes

    L2V_ATTN_UNROLL_4
    for (int jl = 0; jl < Tr::kBlockN; ++jl) {
      float ds[M];
      L2V_UNROLL
      for (int m = 0; m < M; ++m) ds[m] = ds_s[(group + Tr::kRowGroups * m) * Tr::kPStride + jl];
      L2V_UNROLL
      for (int c = 0; c < C; ++c) {
        const float kv = k_s[jl * Tr::kStride + lane + Tr::kLanes * c];
        L2V_UNROLL
        for (int m = 0; m < M; ++m) acc[m][c] = fmaf(ds[m], kv, acc[m][c]);
      }
    }
    __syncthreads();
  }

  L2V_UNROLL
  for (int m = 0; m < M; ++m) {
    const int il = group + Tr::kRowGroups * m;
    L2V_UNROLL
    for (int c = 0; c < C; ++c) q_s[il * Tr::kStride + lane + Tr::kLanes * c] = acc[m][c] * p.scale;
  }
  __syncthreads();
  store_rows<Tr::kD, Tr::kBlockM, Tr::kThreads>(p.dq + q_off, q_s, p.q_stride, rows, tid);
}

template <class Tr, typename T>
__global__ void __launch_bounds__(Tr::kThreads, min_blocks_per_sm(Tr::kThreads))
    attention_bwd_dkdv_kernel(const AttentionParams<T> p) {
  using Smem = DkdvSmem<Tr>;
  constexpr int R = Tr::kRowsPerThread, N = Tr::kKeysPerThread, C = Tr::kCols;
  L2V_DYNAMIC_SHARED(float, smem);
  float* k_s = smem + Smem::kK;  // k_s and v_s are reused to stage dk and dv
  float* v_s = smem + Smem::kV;
  float* q_s = smem + Smem::kQ;
  float* do_s = smem + Smem::kDo;
  float* pt_s = smem + Smem::kPt;    // dropped, rescaled P, transposed: [key][query]
  float* dst_s = smem + Smem::kDst;  // dS, transposed
  float* lse_s = smem + Smem::kLse;
  float* dsum_s = smem + Smem::kDsum;
  int* key_ok = reinterpret_cast<int*>(smem + Smem::kKeyOk);

  const int tid = threadIdx.x;
  const int lane = tid % Tr::kLanes, kgroup = tid / Tr::kLanes;                // accumulation
  const int quad = tid % Tr::kQuadsPerTile, rgroup = tid / Tr::kQuadsPerTile;  // score phase
  const int b = blockIdx.z, kvh = blockIdx.y;
  const int j0 = blockIdx.x * Tr::kBlockN, keys = min(Tr::kBlockN, p.seqlen - j0);
  const long tok0 = (long)b * p.seqlen;
  const long kv_off = (tok0 + j0) * p.kv_stride + (long)kvh * Tr::kD;
  const bool dropout = p.dropout_p > 0.0f;

  load_rows<Tr::kD, Tr::kBlockN, Tr::kThreads>(k_s, p.k + kv_off, p.kv_stride, keys, tid);
  load_rows<Tr::kD, Tr::kBlockN, Tr::kThreads>(v_s, p.v + kv_off, p.kv_stride, keys, tid);
  load_key_flags<Tr::kBlockN>(key_ok, p.key_mask, b, p.seqlen, j0, tid, Tr::kThreads);

  float dk[N][C], dv[N][C];
  L2V_UNROLL
  for (int n = 0; n < N; ++n) {
    L2V_UNROLL
    for (int c = 0; c < C; ++c) dk[n][c] = dv[n][c] = 0.0f;
  }

  // Under the causal mask no query before j0 sees this tile's keys.
  const int i_start = p.causal ? j0 : 0;
  for (int h = kvh * p.group; h < (kvh + 1) * p.group; ++h) {
    const uint32_t bh = (uint32_t)(b * p.H + h);
    for (int i0 = i_start; i0 < p.seqlen; i0 += Tr::kBlockM) {
      const int rows = min(Tr::kBlockM, p.seqlen - i0);
      const long q_off = (tok0 + i0) * p.q_stride + (long)h * Tr::kD;
      const long o_off = (tok0 + i0) * p.o_stride + (long)h * Tr::kD;
      load_rows<Tr::kD, Tr::kBlockM, Tr::kThreads>(q_s, p.q + q_off, p.q_stride, rows, tid);
      load_rows<Tr::kD, Tr::kBlockM, Tr::kThreads>(do_s, p.dout + o_off, p.o_stride, rows, tid);
      for (int il = tid; il < Tr::kBlockM; il += Tr::kThreads) {
        // As in the dq kernel: +inf for rows without a visible key and rows past the end (P = 0).
        const long row = (long)bh * p.seqlen + i0 + il;
        const float L = il < rows ? p.lse[row] : -INFINITY;
        lse_s[il] = L == -INFINITY ? INFINITY : L * kLog2e;
        dsum_s[il] = il < rows ? p.dsum[row] : 0.0f;
      }
      __syncthreads();

      float s[R][4], dp[R][4];
      key_tile_dots<Tr>(s, q_s, k_s, rgroup, quad);
      key_tile_dots<Tr>(dp, do_s, v_s, rgroup, quad);
      L2V_UNROLL
      for (int m = 0; m < R; ++m) {
        const int il = rgroup + Tr::kRowGroups * m, i = i0 + il;
        const unsigned keep =
            dropout ? attention_keep4(p.seed, p.site, p.bh_offset + bh, (uint32_t)i, (uint32_t)(j0 / 4 + quad), p.dropout_p) : 0xFu;
        L2V_UNROLL
        for (int e = 0; e < 4; ++e) {
          const int jl = 4 * quad + e;
          const bool visible = key_ok[jl] && (!p.causal || j0 + jl <= i);
          const float P = visible ? exp2f(s[m][e] * p.scale_log2 - lse_s[il]) : 0.0f;
          const bool kept = keep >> e & 1u;
          pt_s[jl * Tr::kPStride + il] = kept ? P * p.keep_scale : 0.0f;
          dst_s[jl * Tr::kPStride + il] = P * ((kept ? dp[m][e] * p.keep_scale : 0.0f) - dsum_s[il]);
        }
      }
      __syncthreads();

      L2V_ATTN_UNROLL_4
      for (int il = 0; il < Tr::kBlockM; ++il) {
        float pk[N], dsk[N];
        L2V_UNROLL
        for (int n = 0; n < N; ++n) {
          pk[n] = pt_s[(kgroup + Tr::kKeyGroups * n) * Tr::kPStride + il];
          dsk[n] = dst_s[(kgroup + Tr::kKeyGroups * n) * Tr::kPStride + il];
        }
        L2V_UNROLL
        for (int c = 0; c < C; ++c) {
          const float dov = do_s[il * Tr::kStride + lane + Tr::kLanes * c];
          const float qv = q_s[il * Tr::kStride + lane + Tr::kLanes * c];
          L2V_UNROLL
          for (int n = 0; n < N; ++n) {
            dv[n][c] = fmaf(pk[n], dov, dv[n][c]);
            dk[n][c] = fmaf(dsk[n], qv, dk[n][c]);
          }
        }
      }
      __syncthreads();  // q_s, do_s, pt_s, dst_s, lse_s and dsum_s are overwritten next
    }
  }

  // The loops ran at least once (j0 < T), so the last barrier is behind every read of k_s and v_s.
  L2V_UNROLL
  for (int n = 0; n < N; ++n) {
    const int jl = kgroup + Tr::kKeyGroups * n;
    L2V_UNROLL
    for (int c = 0; c < C; ++c) {
      k_s[jl * Tr::kStride + lane + Tr::kLanes * c] = dk[n][c] * p.scale;
      v_s[jl * Tr::kStride + lane + Tr::kLanes * c] = dv[n][c];
    }
  }
  __syncthreads();
  store_rows<Tr::kD, Tr::kBlockN, Tr::kThreads>(p.dk + kv_off, k_s, p.kv_stride, keys, tid);
  store_rows<Tr::kD, Tr::kBlockN, Tr::kThreads>(p.dv + kv_off, v_s, p.kv_stride, keys, tid);
}

// ---- Launch templates.

// Kernels above 48 KiB of dynamic shared memory must say so before every launch (the attribute is per
// device, and a process may drive several).
template <typename Kernel>
void allow_shared(Kernel kernel, size_t bytes) {
  if (bytes > kDefaultSharedLimit) {
    CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(kernel), cudaFuncAttributeMaxDynamicSharedMemorySize,
                                    static_cast<int>(bytes)));
  }
}

inline int host_ceil_div(long a, long b) { return static_cast<int>((a + b - 1) / b); }

template <int D, typename T>
void run_attention_fwd(const AttentionParams<T>& p, cudaStream_t stream) {
  using Tr = FwdTraits<D>;
  constexpr size_t kSmem = FwdSmem<Tr>::kBytes;
  auto kernel = attention_fwd_kernel<Tr, T>;
  allow_shared(kernel, kSmem);
  launch("attention_fwd_kernel", kernel, dim3(host_ceil_div(p.seqlen, Tr::kBlockM), p.H, p.B), dim3(Tr::kThreads),
         kSmem, stream, p);
}

// The dsum pass, shared with the tensor-core backward (cuda/attention_mma.cuh).
template <int D, typename T>
void run_attention_bwd_dot(const AttentionParams<T>& p, cudaStream_t stream) {
  constexpr int kRowsPerDotBlock = kDotThreads / (D / Chunk<T>::kSize);
  launch("attention_bwd_dot_kernel", attention_bwd_dot_kernel<D, T>,
         dim3(host_ceil_div((long)p.B * p.seqlen * p.H, kRowsPerDotBlock)), dim3(kDotThreads), 0, stream, p);
}

template <int D, typename T>
void run_attention_bwd(const AttentionParams<T>& p, cudaStream_t stream) {
  run_attention_bwd_dot<D>(p, stream);

  using Dq = DqTraits<D>;
  constexpr size_t kDqSmem = DqSmem<Dq>::kBytes;
  auto dq_kernel = attention_bwd_dq_kernel<Dq, T>;
  allow_shared(dq_kernel, kDqSmem);
  launch("attention_bwd_dq_kernel", dq_kernel, dim3(host_ceil_div(p.seqlen, Dq::kBlockM), p.H, p.B),
         dim3(Dq::kThreads), kDqSmem, stream, p);

  using Kv = DkdvTraits<D>;
  constexpr size_t kKvSmem = DkdvSmem<Kv>::kBytes;
  auto dkdv_kernel = attention_bwd_dkdv_kernel<Kv, T>;
  allow_shared(dkdv_kernel, kKvSmem);
  launch("attention_bwd_dkdv_kernel", dkdv_kernel, dim3(host_ceil_div(p.seqlen, Kv::kBlockN), p.KV, p.B),
         dim3(Kv::kThreads), kKvSmem, stream, p);
}

// Calls f(std::integral_constant<int, D>) for a compiled head dim, throws for any other.
template <typename F>
void dispatch_head_dim(int D, const char* fn, F&& f) {
  switch (D) {
    case 8: f(std::integral_constant<int, 8>{}); return;
    case 16: f(std::integral_constant<int, 16>{}); return;
    case 64: f(std::integral_constant<int, 64>{}); return;
    case 128: f(std::integral_constant<int, 128>{}); return;
    default: break;
  }
  throw std::runtime_error(std::string("l2v::cuda::") + fn + ": head dim D=" + std::to_string(D) +
                           " is not supported (kernels are compiled for D = 8, 16, 64, 128)");
}

inline void require(bool ok, const char* fn, const std::string& what) {
  if (!ok) throw std::runtime_error(std::string("l2v::cuda::") + fn + ": " + what);
}

inline void require_aligned(const void* ptr, const char* fn, const char* name) {
  require(reinterpret_cast<uintptr_t>(ptr) % 16 == 0, fn,
          std::string(name) + " must be 16-byte aligned (the kernels move 16-byte vectors)");
}

// Checks the shape (as l2v::cpu does, plus the grid limits) and fills the shared fields.
template <typename T>
AttentionParams<T> make_params(const char* fn, const T* q, const T* k, const T* v, QkvStrides ld,
                               const int* key_mask, int B, int T_, int H, int KV, int D, bool causal, float dropout_p,
                               DropoutKey key, uint32_t site) {
  static_assert(std::is_same<T, float>::value || std::is_same<T, __nv_bfloat16>::value ||
                    std::is_same<T, __half>::value,
                "attention kernels store float or __nv_bfloat16 (and __half: the tensor-core kernels only)");
  require(B > 0 && T_ > 0 && H > 0 && KV > 0 && D > 0, fn, "B, T, H, KV and D must be positive");
  require(H % KV == 0, fn, "H (" + std::to_string(H) + ") must be a multiple of KV (" + std::to_string(KV) + ")");
  // p == 1 would need a 1/(1-p) = inf scale (as in l2v::cpu, which rejects it too).
  require(dropout_p >= 0.0f && dropout_p < 1.0f, fn,
          "dropout probability must lie in [0, 1), got " + std::to_string(dropout_p));
  require(H <= 65535 && B <= 65535, fn, "H and B must be at most 65535 (grid y and z)");
  require(ld.q >= H * D && ld.kv >= KV * D, fn,
          "row strides q " + std::to_string(ld.q) + ", kv " + std::to_string(ld.kv) + " below H*D, KV*D");
  // Every row of q, k and v starts 16-byte aligned, as the first does.
  require((ld.q * sizeof(T)) % 16 == 0 && (ld.kv * sizeof(T)) % 16 == 0, fn,
          "row strides must be multiples of 16 bytes (the kernels move 16-byte vectors)");
  require_aligned(q, fn, "q");
  require_aligned(k, fn, "k");
  require_aligned(v, fn, "v");
  AttentionParams<T> p{};
  p.q = q;
  p.k = k;
  p.v = v;
  p.key_mask = key_mask;
  p.B = B;
  p.seqlen = T_;
  p.H = H;
  p.KV = KV;
  p.group = H / KV;
  p.q_stride = ld.q;
  p.kv_stride = ld.kv;
  p.o_stride = H * D;
  p.causal = causal;
  p.scale = 1.0f / sqrtf(static_cast<float>(D));
  p.scale_log2 = p.scale * kLog2e;
  p.dropout_p = dropout_p;
  p.keep_scale = dropout_p > 0.0f ? 1.0f / (1.0f - dropout_p) : 1.0f;
  p.seed = key.seed;
  require(key.offset + (uint64_t)B * H <= UINT32_MAX, fn, "the dropout key offset exceeds 32 bits");
  p.bh_offset = (uint32_t)key.offset;
  p.site = site;
  return p;
}

// make_params plus the backward's buffers, checked.
template <typename T>
AttentionParams<T> make_backward_params(const char* fn, T* dq, T* dk, T* dv, const T* dout, const T* out,
                                        const float* lse, const T* q, const T* k, const T* v, QkvStrides ld,
                                        const int* key_mask, int B, int T_, int H, int KV, int D, bool causal,
                                        float dropout_p, DropoutKey key, uint32_t site, float* scratch) {
  AttentionParams<T> p = make_params(fn, q, k, v, ld, key_mask, B, T_, H, KV, D, causal, dropout_p, key, site);
  require(scratch != nullptr, fn, "scratch must hold attention_backward_scratch_bytes(B, T, H, KV, D) bytes");
  for (const void* ptr : {static_cast<const void*>(dq), static_cast<const void*>(dk), static_cast<const void*>(dv),
                          static_cast<const void*>(dout), static_cast<const void*>(out)}) {
    require_aligned(ptr, fn, "dq, dk, dv, dout and out");
  }
  p.dq = dq;
  p.dk = dk;
  p.dv = dv;
  p.dout = dout;
  // Read only here: the backward shares the forward's params struct, whose out and lse are outputs.
  p.out = const_cast<T*>(out);
  p.lse = const_cast<float*>(lse);
  p.dsum = scratch;
  return p;
}

}  // namespace attention_detail

// ---- Host launchers (asynchronous on `stream`; they throw std::runtime_error on bad arguments and
// failed launches).

// out [N, H*D] and lse [B, H, T] are overwritten; q, k, v rows are `ld` apart (host/qkv_strides.h). site
// selects the dropout site as in l2v::cpu.
template <typename T>
void attention_forward_cuda(T* out, float* lse, const T* q, const T* k, const T* v, QkvStrides ld,
                            const int* key_mask, int B, int T_, int H, int KV, int D, bool causal, float dropout_p,
                            DropoutKey key, uint32_t site, cudaStream_t stream) {
  namespace ad = attention_detail;
  const char* fn = "attention_forward_cuda";
  AttentionParams<T> p =
      ad::make_params(fn, q, k, v, ld, key_mask, B, T_, H, KV, D, causal, dropout_p, key, site);
  ad::require_aligned(out, fn, "out");
  p.out = out;
  p.lse = lse;
  ad::dispatch_head_dim(D, fn, [&](auto d) { ad::run_attention_fwd<decltype(d)::value>(p, stream); });
}

// The scratch buffer of attention_backward_cuda: one fp32 D_i per query row. KV and D do not change it;
// the backend sizes it from the same full shape it passes to the launcher.
inline size_t attention_backward_scratch_bytes(int B, int T_, int H, int /*KV*/, int /*D*/) {
  return attention_backward_scratch_bytes(B, T_, H);  // cuda/workspace_sizes.h
}

// dq [N, H*D], dk and dv [N, KV*D] (rows `ld` apart, as q, k, v) are overwritten. out and lse are the
// forward's outputs; scratch holds attention_backward_scratch_bytes(B, T, H, KV, D) bytes (contents on entry
// unused).
template <typename T>
void attention_backward_cuda(T* dq, T* dk, T* dv, const T* dout, const T* out, const float* lse, const T* q,
                             const T* k, const T* v, QkvStrides ld, const int* key_mask, int B, int T_, int H, int KV,
                             int D, bool causal, float dropout_p, DropoutKey key, uint32_t site, float* scratch,
                             cudaStream_t stream) {
  namespace ad = attention_detail;
  const char* fn = "attention_backward_cuda";
  const AttentionParams<T> p = ad::make_backward_params(fn, dq, dk, dv, dout, out, lse, q, k, v, ld, key_mask, B, T_,
                                                        H, KV, D, causal, dropout_p, key, site, scratch);
  ad::dispatch_head_dim(D, fn, [&](auto d) { ad::run_attention_bwd<decltype(d)::value>(p, stream); });
}

}  // namespace l2v::cuda

#undef L2V_ATTN_UNROLL_4
