// Scaled dot-product attention on tensor cores (mma.sync m16n8k16), FlashAttention-2 style (Dao, 2023):
// the same contract as the SIMT kernels of cuda/attention.cuh, which stay the readable reference, and as
// l2v::cpu::attention_forward / attention_backward (host/cpu_ops.h):
//   q [N, H*D], k and v [N, KV*D] (query head h reads kv head h / (H/KV)) with their gradients, rows `ld`
//   apart (host/qkv_strides.h), out [N, H*D] packed, lse [B, H, T] fp32,
//   key_mask [B, T] or nullptr, causal or bidirectional, scale 1/sqrt(D), rows without a visible key give
//   out = 0, lse = -inf and zero gradients; attention dropout keeps probability (i, j) of batch-head bh
//   exactly when dropout_keep_attention(seed, site, bh, i, j, p) does (the mask is drawn with
//   attention_keep4, the SIMT kernels' helper, so the two implementations and the CPU agree bit for bit).
// Storage T is __nv_bfloat16 or __half (fp32 storage keeps the SIMT kernels); head dims D = 16, 64, 128
// (attention_mma_supported). Parameters travel in the SIMT kernels' AttentionParams<T>.
//
// Tiling. Every kernel has 4 warps; a warp owns 16 rows of the block's tile (queries in the forward and
// dq, keys in dk/dv) and computes with the PTX fragments of cuda/ptx.cuh (lane = 4 * groupID + tig): a
// C/D fragment of a 16 x 8 tile holds rows groupID and groupID + 8, columns 2 * tig and 2 * tig + 1.
//   attention_mma_fwd_kernel   grid (T/64, H, B): 64 query rows; Q is copied to shared memory once and
//                              kept in registers as A fragments (D/16 of them per warp); the K and V tiles
//                              (kBlockN keys: 64, 32 for D = 128) are double-buffered with cp.async, the
//                              copy of tile t+1 in flight while tile t is computed. S = Q K^T: mma with K
//                              rows read by ldmatrix (non-transposed: a K row is a column of K^T); the
//                              online softmax runs on the S fragments in registers (row max and sum over
//                              the 4 lanes of a row with two shuffles); P is packed into A fragments
//                              without going through shared memory (the C layout of two adjacent 16 x 8
//                              tiles is the A layout of one 16 x 16 tile) and O += P V reads V with
//                              ldmatrix.trans.
//   attention_bwd_dot_kernel   dsum = rowsum(dout * out), the SIMT kernel (cuda/attention.cuh).
//   attention_mma_dq_kernel    grid (T/64, H, B): 64 query rows, Q and dout in shared memory, the K/V tiles
//                              double-buffered as in the forward; S = Q K^T, dP = dout V^T, dS = P (dP - D_i)
//                              and dq += dS K, in registers. Its own pass: deterministic, no atomics.
//   attention_mma_dkdv_kernel  grid (T/64, KV, B): 64 keys, K and V in shared memory; walks the query tiles
//                              (kBlockM: 64; 16 for D = 128, where 32 spilled the 2 x 64 accumulators of
//                              dk and dv) of every query head of the GQA group with Q,
//                              dout, lse and dsum double-buffered; computes the transposed S^T = K Q^T and
//                              dP^T = V dout^T so that P^T and dS^T are A fragments: dv += P^T dout,
//                              dk += dS^T Q. One writer per dk/dv element, no atomics.
// Resources (ptxas, sm_80 / sm_90, 128 threads, 0 spills, 0 stack): registers fwd 148-196, dq 124-196,
// dkdv 182-248 (D = 16..128), so 2 blocks (8 warps) per SM; dynamic shared memory (bytes, D = 16 / 64 /
// 128): fwd 15360 / 46080 / 52224, dq 18432 / 55296 / 69632, dkdv 19456 / 56320 / 52480.
// Shared tiles are T with a row stride of D + 8 elements: the 8 rows of an ldmatrix phase then start 16
// bytes apart modulo 128 and hit distinct banks (0 bank conflicts; the tests print the count). Tails:
// rows past the end are zero-filled by cp.async (src-size 0) and masked, so no NaN from uninitialised
// memory reaches a product.
// Dropout: one Philox call yields the keep bits of 4 consecutive keys of one query (attention_keep4);
// the lanes that hold those keys share one call through shuffles instead of each repeating it.
//
// Numerics (what the tests' bounds are derived from): every product of two T values is exact in fp32;
// S and dP are fp32 sums of D products (mma in k steps of 16); the softmax (max, exp2 in base-2 units,
// row sums, lse) is fp32 in registers; P (forward, dv), dS (dq, dk) are rounded to T (to nearest even)
// before their second mma -- the one rounding beyond fp32 inside a kernel, relative 2^-8 for bf16 and
// 2^-11 for fp16; O, dq, dk, dv accumulate in fp32 and are rounded to T once, when stored. The
// normaliser l sums the unrounded fp32 P.
#pragma once

#include <cstdint>
#include <stdexcept>
#include <string>
#include <type_traits>

#include "cuda/attention.cuh"
#include "cuda/common.cuh"
#include "cuda/launch.h"
#include "cuda/ptx.cuh"

namespace l2v::cuda {

// Whether the tensor-core kernels take this case: 16-bit storage and a compiled head dim.
template <typename T>
constexpr bool attention_mma_storage() {
  return std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value;
}
template <typename T>
bool attention_mma_supported(int D) {
  return attention_mma_storage<T>() && (D == 16 || D == 64 || D == 128);
}

namespace attention_mma_detail {

using attention_detail::kLn2;
using attention_detail::kLog2e;

constexpr int kWarps = 4, kThreads = 32 * kWarps;
constexpr unsigned kFull = 0xFFFFFFFFu;

// Per head dim: the rows of a block (16 per warp) and of the tiles it walks.
template <int kD_>
struct MmaTraits {
  static constexpr int kD = kD_;
  static constexpr int kStride = kD + 8;  // elements per shared row (16 bytes of padding)
  static constexpr int kRows = 16 * kWarps;                  // query rows (fwd, dq) or keys (dk/dv) of a block
  static constexpr int kBlockN = kD <= 64 ? 64 : 32;         // keys per tile (fwd, dq)
  static constexpr int kBlockM = kD <= 64 ? 64 : 16;         // query rows per tile (dk/dv)
  static constexpr int kKSteps = kD / 16;
  static_assert(kD % 16 == 0, "the head dim is a whole number of mma k steps");
};

// Two floats rounded to T (nearest even) in one register, the lower index in the lower half.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  if constexpr (std::is_same<T, __half>::value) {
    return static_cast<uint32_t>(__half_as_ushort(__float2half_rn(lo))) |
           static_cast<uint32_t>(__half_as_ushort(__float2half_rn(hi))) << 16;
  } else {
    return static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
           static_cast<uint32_t>(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16;
  }
}

// Starts the copy of `rows` rows of kD elements (row r at src + r * src_stride) into the tile dst
// [kTileRows][kD + 8]; rows from `rows` on are zero-filled. 16 bytes per copy, consecutive threads on
// consecutive chunks of a row.
template <int kD, int kTileRows, typename T>
__device__ __forceinline__ void copy_rows_async(T* dst, const T* src, long src_stride, int rows, int tid) {
  constexpr int kChunks = kD / 8;
  for (int c = tid; c < kTileRows * kChunks; c += kThreads) {
    const int r = c / kChunks, col = c % kChunks * 8;
    const bool in = r < rows;
    ptx::cp_async_cg(dst + r * (kD + 8) + col, src + (in ? r * src_stride + col : 0), in ? 16 : 0);
  }
}

// The A fragment (16 x 16, k step kk) of the 16 rows of a shared tile starting at `rows`.
template <int kD, typename T>
__device__ __forceinline__ void load_a(uint32_t (&a)[4], const T* rows, int kk, int lane) {
  ptx::ldmatrix<4>(a, rows + (lane % 16) * (kD + 8) + 16 * kk + 8 * (lane / 16));
}

// s (16 x kN, C fragments) = A (16 x kD) B^T, B the first kN rows of the shared tile b_s [.][kD + 8]:
// score-like products (Q K^T, dout V^T, K Q^T, V dout^T). a(kk, frag) supplies the A fragment of k step
// kk (from registers or from shared memory). One ldmatrix.x4 gives the B fragments of two n tiles.
template <int kN, int kD, typename T, class AFrag>
__device__ __forceinline__ void warp_scores(float (&s)[kN / 8][4], AFrag&& a, const T* b_s, int lane) {
  static_assert(kN % 16 == 0, "n tiles in pairs");
  L2V_UNROLL
  for (int n = 0; n < kN / 8; ++n) {
    L2V_UNROLL
    for (int e = 0; e < 4; ++e) s[n][e] = 0.0f;
  }
  L2V_UNROLL
  for (int kk = 0; kk < kD / 16; ++kk) {
    uint32_t af[4];
    a(kk, af);
    L2V_UNROLL
    for (int np = 0; np < kN / 16; ++np) {
      uint32_t b[4];
      ptx::ldmatrix<4>(b, b_s + (16 * np + lane % 8 + 8 * (lane / 16)) * (kD + 8) + 16 * kk + 8 * (lane / 8 % 2));
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      ptx::mma_m16n8k16<T>(s[2 * np], af, b0, s[2 * np]);
      ptx::mma_m16n8k16<T>(s[2 * np + 1], af, b1, s[2 * np + 1]);
    }
  }
}

// acc (16 x kD, C fragments) += P B, P (16 x kK) the C fragments p rounded to T, B the first kK rows of
// the shared tile b_s [.][kD + 8] (P V, dS K, P^T dout, dS^T Q). B is k-major in shared memory:
// ldmatrix.trans.
template <int kK, int kD, typename T>
__device__ __forceinline__ void warp_accumulate(float (&acc)[kD / 8][4], const float (&p)[kK / 8][4], const T* b_s,
                                                int lane) {
  L2V_UNROLL
  for (int kk = 0; kk < kK / 16; ++kk) {
    const uint32_t a[4] = {pack2<T>(p[2 * kk][0], p[2 * kk][1]), pack2<T>(p[2 * kk][2], p[2 * kk][3]),
                           pack2<T>(p[2 * kk + 1][0], p[2 * kk + 1][1]), pack2<T>(p[2 * kk + 1][2], p[2 * kk + 1][3])};
    L2V_UNROLL
    for (int dp = 0; dp < kD / 16; ++dp) {
      uint32_t b[4];
      ptx::ldmatrix<4, true>(b, b_s + (16 * kk + lane % 8 + 8 * (lane / 8 % 2)) * (kD + 8) + 16 * dp + 8 * (lane / 16));
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      ptx::mma_m16n8k16<T>(acc[2 * dp], a, b0, acc[2 * dp]);
      ptx::mma_m16n8k16<T>(acc[2 * dp + 1], a, b1, acc[2 * dp + 1]);
    }
  }
}

// Key j of batch row b exists and is not padding.
template <typename T>
__device__ __forceinline__ bool key_ok(const AttentionParams<T>& p, int b, int j) {
  return j < p.seqlen && (p.key_mask == nullptr || __ldg(p.key_mask + (long)b * p.seqlen + j) != 0);
}

// Query-major fragments (forward, dq): rows are queries, columns keys. Returns bit 2 * r + c set when the
// probability of row r (groupID + 8 r, query i[r]) and key j0 + 2 * tig + c is kept. The two lanes tig,
// tig ^ 1 hold the two halves of one key quad: each draws the quad for one of the rows and they swap.
template <typename T>
__device__ __forceinline__ unsigned keep_bits_rows(const AttentionParams<T>& p, uint32_t bh, const int (&i)[2],
                                                   int j0, int tig) {
  const int odd = tig & 1;
  // A select, not i[odd]: a run-time index would put i in local memory.
  const unsigned mine = attention_keep4(p.seed, p.site, p.bh_offset + bh, (uint32_t)(odd ? i[1] : i[0]),
                                        (uint32_t)((j0 + 2 * tig) / 4), p.dropout_p);
  const unsigned other = __shfl_xor_sync(kFull, mine, 1);
  const unsigned row0 = odd ? other : mine, row1 = odd ? mine : other;
  return (row0 >> (2 * odd) & 3u) | (row1 >> (2 * odd) & 3u) << 2;
}

// Key-major fragments (dk/dv): rows are keys kbase + groupID + 8 r, columns queries i0 + 2 * tig + c.
// Returns bit 2 * r + c set when (query, key) is kept. The 4 lanes with the same tig and groupID / 4 hold
// keys of the same two quads for the same two queries: lane groupID % 4 = x draws call x (query c = x & 1,
// keys of row r = x >> 1), and four shuffles hand every lane its bits.
template <typename T>
__device__ __forceinline__ unsigned keep_bits_cols(const AttentionParams<T>& p, uint32_t bh, int kbase, int i0,
                                                   int lane) {
  const int g = lane / 4, tig = lane % 4, x = g % 4;
  const unsigned mine = attention_keep4(p.seed, p.site, p.bh_offset + bh, (uint32_t)(i0 + 2 * tig + (x & 1)),
                                        (uint32_t)((kbase + 8 * (x >> 1)) / 4 + g / 4), p.dropout_p);
  unsigned bits = 0;
  L2V_UNROLL
  for (int y = 0; y < 4; ++y) {
    const unsigned v = __shfl_sync(kFull, mine, (lane & ~12) | (y << 2));
    bits |= (v >> x & 1u) << (2 * (y >> 1) + (y & 1));
  }
  return bits;
}

// Sum / max over the 4 lanes of a fragment row.
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(kFull, x, 1);
  return x + __shfl_xor_sync(kFull, x, 2);
}
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(kFull, x, 1));
  return fmaxf(x, __shfl_xor_sync(kFull, x, 2));
}

// Stores the 16 x kD fragments acc * mul of a warp to rows row0 + groupID (+8) of dst (row stride
// `stride` elements), rows below `rows` only.
template <int kD, typename T>
__device__ __forceinline__ void store_rows(T* dst, long stride, const float (&acc)[kD / 8][4], const float (&mul)[2],
                                           int row0, int rows, int lane) {
  L2V_UNROLL
  for (int r = 0; r < 2; ++r) {
    const int row = row0 + lane / 4 + 8 * r;
    if (row >= rows) continue;
    L2V_UNROLL
    for (int n = 0; n < kD / 8; ++n) {
      *reinterpret_cast<uint32_t*>(dst + row * stride + 8 * n + 2 * (lane % 4)) =
          pack2<T>(acc[n][2 * r] * mul[r], acc[n][2 * r + 1] * mul[r]);
    }
  }
}

// The block of a query-major kernel (forward, dq): kRows query rows from i0 of head h in batch row b,
// walking n_tiles key tiles of kBlockN keys. Lane `lane` of warp `warp` holds, in its fragments, query
// rows i[0] (groupID) and i[1] (groupID + 8) of the warp's 16.
template <int kD>
struct QueryBlock {
  using Tr = MmaTraits<kD>;
  int tid, warp, lane, b, kvh, i0, rows, n_tiles;
  long tok0, q_off;  // the block's first token, and the offset of its first q (dq) row
  uint32_t bh;
  int i[2];
  template <typename T>
  __device__ explicit QueryBlock(const AttentionParams<T>& p)
      : tid(threadIdx.x), warp(tid / 32), lane(tid % 32), b(blockIdx.z), kvh(blockIdx.y / p.group),
        // Under the causal mask later query tiles have more keys: the grid starts with them.
        i0((int)(gridDim.x - 1 - blockIdx.x) * Tr::kRows), rows(min(Tr::kRows, p.seqlen - i0)),
        n_tiles(attention_detail::key_tiles(p.seqlen, p.causal, i0, rows, Tr::kBlockN)), tok0((long)b * p.seqlen),
        q_off((tok0 + i0) * p.q_stride + (long)blockIdx.y * kD), bh((uint32_t)(b * p.H + blockIdx.y)),
        i{i0 + 16 * warp + lane / 4, i0 + 16 * warp + lane / 4 + 8} {}
  // The offset of its first out (dout) row, computed where it is used (not kept live through the kernel).
  template <typename T>
  __device__ long o_off(const AttentionParams<T>& p) const {
    return (tok0 + i0) * p.o_stride + (long)blockIdx.y * kD;
  }
  // Starts the copies of key tile t into buffer t % 2 of k_s and v_s [2][kBlockN][kD + 8].
  template <typename T>
  __device__ void copy_kv(const AttentionParams<T>& p, T* k_s, T* v_s, int t) const {
    constexpr int kN = Tr::kBlockN;
    const int j0 = t * kN;
    const long kv_off = (tok0 + j0) * p.kv_stride + (long)kvh * kD;
    copy_rows_async<kD, kN>(k_s + t % 2 * kN * Tr::kStride, p.k + kv_off, p.kv_stride, min(kN, p.seqlen - j0), tid);
    copy_rows_async<kD, kN>(v_s + t % 2 * kN * Tr::kStride, p.v + kv_off, p.kv_stride, min(kN, p.seqlen - j0), tid);
  }
};

// One step of the double-buffered walk over tiles: starts the copy of the next tile, if `more`, into the
// buffer that the barrier ending the previous step freed, then waits until this step's tile (every older
// group) has landed and all threads can read it.
template <class CopyNext>
__device__ __forceinline__ void next_tile(bool more, CopyNext&& copy_next) {
  if (more) {
    copy_next();
    ptx::cp_async_commit_group();
    ptx::cp_async_wait_group<1>();
  } else {
    ptx::cp_async_wait_group<0>();
  }
  __syncthreads();
}

// ---- Kernels.

template <int kD, typename T>
__global__ void __launch_bounds__(kThreads, 2) attention_mma_fwd_kernel(const AttentionParams<T> p) {
  using Tr = MmaTraits<kD>;
  constexpr int kN = Tr::kBlockN, kS = Tr::kStride;
  L2V_DYNAMIC_SHARED(T, smem);
  T* q_s = smem;                       // [kRows][kS]
  T* k_s = q_s + Tr::kRows * kS;       // [2][kN][kS]
  T* v_s = k_s + 2 * kN * kS;          // [2][kN][kS]

  const QueryBlock<kD> qb(p);
  const int warp = qb.warp, lane = qb.lane, tig = lane % 4;
  const bool dropout = p.dropout_p > 0.0f;
  qb.copy_kv(p, k_s, v_s, 0);
  copy_rows_async<kD, Tr::kRows>(q_s, p.q + qb.q_off, p.q_stride, qb.rows, qb.tid);
  ptx::cp_async_commit_group();

  uint32_t qf[Tr::kKSteps][4];
  // Running max (base-2 units), this lane's share of the running sum, the output fragments.
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f}, o[kD / 8][4];
  L2V_UNROLL
  for (int n = 0; n < kD / 8; ++n) {
    L2V_UNROLL
    for (int e = 0; e < 4; ++e) o[n][e] = 0.0f;
  }

  for (int t = 0; t < qb.n_tiles; ++t) {
    next_tile(t + 1 < qb.n_tiles, [&] { qb.copy_kv(p, k_s, v_s, t + 1); });
    if (t == 0) {
      L2V_UNROLL
      for (int kk = 0; kk < Tr::kKSteps; ++kk) load_a<kD>(qf[kk], q_s + 16 * warp * kS, kk, lane);
    }
    const T* kt = k_s + t % 2 * kN * kS;
    const T* vt = v_s + t % 2 * kN * kS;
    const int j0 = t * kN;

    float s[kN / 8][4];
    warp_scores<kN, kD, T>(
        s,
        [&](int kk, uint32_t(&a)[4]) {
          L2V_UNROLL
          for (int e = 0; e < 4; ++e) a[e] = qf[kk][e];
        },
        kt, lane);

    float tile_max[2] = {-INFINITY, -INFINITY};
    L2V_UNROLL
    for (int n = 0; n < kN / 8; ++n) {
      L2V_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int j = j0 + 8 * n + 2 * tig + e % 2;
        const bool visible = key_ok(p, qb.b, j) && (!p.causal || j <= qb.i[e / 2]);
        s[n][e] = visible ? s[n][e] * p.scale_log2 : -INFINITY;
        tile_max[e / 2] = fmaxf(tile_max[e / 2], s[n][e]);
      }
    }
    float m_use[2];
    L2V_UNROLL
    for (int r = 0; r < 2; ++r) {
      const float m_new = fmaxf(m_run[r], quad_max(tile_max[r]));
      // A row that has seen no visible key yet has max -inf: exponentiate against 0 instead, so that
      // exp2(-inf - -inf) = NaN stays out (every term is exp2(-inf) = 0 then).
      m_use[r] = m_new == -INFINITY ? 0.0f : m_new;
      const float alpha = exp2f(m_run[r] - m_use[r]);
      m_run[r] = m_new;
      l_run[r] *= alpha;
      L2V_UNROLL
      for (int n = 0; n < kD / 8; ++n) {
        o[n][2 * r] *= alpha;
        o[n][2 * r + 1] *= alpha;
      }
    }
    L2V_UNROLL
    for (int n = 0; n < kN / 8; ++n) {
      const unsigned keep = dropout ? keep_bits_rows(p, qb.bh, qb.i, j0 + 8 * n, tig) : 0xFu;
      L2V_UNROLL
      for (int e = 0; e < 4; ++e) {
        const float pe = exp2f(s[n][e] - m_use[e / 2]);
        l_run[e / 2] += pe;  // the softmax denominator counts dropped probabilities too
        s[n][e] = (keep >> e & 1u) ? pe * p.keep_scale : 0.0f;
      }
    }
    warp_accumulate<kN, kD, T>(o, s, vt, lane);
    __syncthreads();  // this tile's buffers are overwritten by the copy issued next iteration
  }

  float inv_l[2];
  L2V_UNROLL
  for (int r = 0; r < 2; ++r) {
    const float l = quad_sum(l_run[r]);
    inv_l[r] = l > 0.0f ? 1.0f / l : 0.0f;
    if (tig == 0 && qb.i[r] < p.seqlen) {
      p.lse[(long)qb.bh * p.seqlen + qb.i[r]] = l > 0.0f ? (m_run[r] + log2f(l)) * kLn2 : -INFINITY;
    }
  }
  store_rows<kD>(p.out + qb.o_off(p), p.o_stride, o, inv_l, 16 * warp, qb.rows, lane);
}

template <int kD, typename T>
__global__ void __launch_bounds__(kThreads, 2) attention_mma_dq_kernel(const AttentionParams<T> p) {
  using Tr = MmaTraits<kD>;
  constexpr int kN = Tr::kBlockN, kS = Tr::kStride;
  L2V_DYNAMIC_SHARED(T, smem);
  T* q_s = smem;                   // [kRows][kS]
  T* do_s = q_s + Tr::kRows * kS;  // [kRows][kS]
  T* k_s = do_s + Tr::kRows * kS;  // [2][kN][kS]
  T* v_s = k_s + 2 * kN * kS;      // [2][kN][kS]

  const QueryBlock<kD> qb(p);
  const int warp = qb.warp, lane = qb.lane, tig = lane % 4;
  const bool dropout = p.dropout_p > 0.0f;
  qb.copy_kv(p, k_s, v_s, 0);
  copy_rows_async<kD, Tr::kRows>(q_s, p.q + qb.q_off, p.q_stride, qb.rows, qb.tid);
  copy_rows_async<kD, Tr::kRows>(do_s, p.dout + qb.o_off(p), p.o_stride, qb.rows, qb.tid);
  ptx::cp_async_commit_group();

  // lse in base-2 units; a row without a visible key (lse = -inf) or past the end takes +inf, so that
  // each of its P = exp2(s - inf) is 0 rather than exp2(-inf + inf) = NaN.
  float lse2[2], dsum[2], acc[kD / 8][4];
  L2V_UNROLL
  for (int r = 0; r < 2; ++r) {
    const long row = (long)qb.bh * p.seqlen + qb.i[r];
    const float L = qb.i[r] < p.seqlen ? p.lse[row] : -INFINITY;
    lse2[r] = L == -INFINITY ? INFINITY : L * kLog2e;
    dsum[r] = qb.i[r] < p.seqlen ? p.dsum[row] : 0.0f;
  }
  L2V_UNROLL
  for (int n = 0; n < kD / 8; ++n) {
    L2V_UNROLL
    for (int e = 0; e < 4; ++e) acc[n][e] = 0.0f;
  }
  const T* q_w = q_s + 16 * warp * kS;
  const T* do_w = do_s + 16 * warp * kS;

  for (int t = 0; t < qb.n_tiles; ++t) {
    next_tile(t + 1 < qb.n_tiles, [&] { qb.copy_kv(p, k_s, v_s, t + 1); });
    const T* kt = k_s + t % 2 * kN * kS;
    const T* vt = v_s + t % 2 * kN * kS;
    const int j0 = t * kN;

    float s[kN / 8][4], dp[kN / 8][4];
    warp_scores<kN, kD, T>(s, [&](int kk, uint32_t(&a)[4]) { load_a<kD>(a, q_w, kk, lane); }, kt, lane);
    warp_scores<kN, kD, T>(dp, [&](int kk, uint32_t(&a)[4]) { load_a<kD>(a, do_w, kk, lane); }, vt, lane);

    // dS = P (dP - D_i), where dP of a dropped probability is 0 and of a kept one dout.v / (1-p).
    L2V_UNROLL
    for (int n = 0; n < kN / 8; ++n) {
      const unsigned keep = dropout ? keep_bits_rows(p, qb.bh, qb.i, j0 + 8 * n, tig) : 0xFu;
      L2V_UNROLL
      for (int e = 0; e < 4; ++e) {
        const int j = j0 + 8 * n + 2 * tig + e % 2;
        const bool visible = key_ok(p, qb.b, j) && (!p.causal || j <= qb.i[e / 2]);
        const float P = visible ? exp2f(s[n][e] * p.scale_log2 - lse2[e / 2]) : 0.0f;
        const float dP = (keep >> e & 1u) ? dp[n][e] * p.keep_scale : 0.0f;
        s[n][e] = P * (dP - dsum[e / 2]);
      }
    }
    warp_accumulate<kN, kD, T>(acc, s, kt, lane);
    __syncthreads();
  }
  const float mul[2] = {p.scale, p.scale};
  store_rows<kD>(p.dq + qb.q_off, p.q_stride, acc, mul, 16 * warp, qb.rows, lane);
}

template <int kD, typename T>
__global__ void __launch_bounds__(kThreads, 1) attention_mma_dkdv_kernel(const AttentionParams<T> p) {
  using Tr = MmaTraits<kD>;
  constexpr int kM = Tr::kBlockM, kS = Tr::kStride;
  L2V_DYNAMIC_SHARED(T, smem);
  T* k_s = smem;                    // [kRows][kS]
  T* v_s = k_s + Tr::kRows * kS;    // [kRows][kS]
  T* q_s = v_s + Tr::kRows * kS;    // [2][kM][kS]
  T* do_s = q_s + 2 * kM * kS;      // [2][kM][kS]
  float* lse_s = reinterpret_cast<float*>(do_s + 2 * kM * kS);  // [2][kM]
  float* dsum_s = lse_s + 2 * kM;                               // [2][kM]

  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32, tig = lane % 4;
  const int b = blockIdx.z, kvh = blockIdx.y;
  const int j0 = blockIdx.x * Tr::kRows, keys = min(Tr::kRows, p.seqlen - j0);
  const long tok0 = (long)b * p.seqlen;
  const long kv_off = (tok0 + j0) * p.kv_stride + (long)kvh * kD;
  const bool dropout = p.dropout_p > 0.0f;
  const int kbase = j0 + 16 * warp;  // the warp's keys: kbase + groupID (+ 8)
  const int j[2] = {kbase + lane / 4, kbase + lane / 4 + 8};
  const bool ok[2] = {key_ok(p, b, j[0]), key_ok(p, b, j[1])};

  // The (query head, query tile) steps: under the causal mask no query before j0 sees these keys.
  const int i_start = p.causal ? j0 : 0;
  const int q_tiles = (p.seqlen - i_start + kM - 1) / kM, steps = p.group * q_tiles;
  auto copy_q = [&](int step) {
    const int h = kvh * p.group + step / q_tiles, i0 = i_start + step % q_tiles * kM;
    const int rows = min(kM, p.seqlen - i0), buf = step % 2;
    const long q_off = (tok0 + i0) * p.q_stride + (long)h * kD, o_off = (tok0 + i0) * p.o_stride + (long)h * kD;
    copy_rows_async<kD, kM>(q_s + buf * kM * kS, p.q + q_off, p.q_stride, rows, tid);
    copy_rows_async<kD, kM>(do_s + buf * kM * kS, p.dout + o_off, p.o_stride, rows, tid);
    // lse and D_i of rows past the end are zero-filled; those rows are masked below.
    const long row = ((long)b * p.H + h) * p.seqlen + i0;
    for (int il = tid; il < kM; il += kThreads) {
      const bool in = il < rows;
      ptx::cp_async_ca<4>(lse_s + buf * kM + il, p.lse + row + (in ? il : 0), in ? 4 : 0);
      ptx::cp_async_ca<4>(dsum_s + buf * kM + il, p.dsum + row + (in ? il : 0), in ? 4 : 0);
    }
  };
  copy_rows_async<kD, Tr::kRows>(k_s, p.k + kv_off, p.kv_stride, keys, tid);
  copy_rows_async<kD, Tr::kRows>(v_s, p.v + kv_off, p.kv_stride, keys, tid);
  copy_q(0);
  ptx::cp_async_commit_group();

  float dk[kD / 8][4], dv[kD / 8][4];
  L2V_UNROLL
  for (int n = 0; n < kD / 8; ++n) {
    L2V_UNROLL
    for (int e = 0; e < 4; ++e) dk[n][e] = dv[n][e] = 0.0f;
  }
  const T* k_w = k_s + 16 * warp * kS;
  const T* v_w = v_s + 16 * warp * kS;

  for (int step = 0; step < steps; ++step) {
    next_tile(step + 1 < steps, [&] { copy_q(step + 1); });
    const int h = kvh * p.group + step / q_tiles, i0 = i_start + step % q_tiles * kM;
    const uint32_t bh = (uint32_t)(b * p.H + h);
    const T* qt = q_s + step % 2 * kM * kS;
    const T* dot = do_s + step % 2 * kM * kS;
    const float* lse_t = lse_s + step % 2 * kM;
    const float* dsum_t = dsum_s + step % 2 * kM;

    float s[kM / 8][4], dp[kM / 8][4];  // transposed: rows are keys, columns queries
    warp_scores<kM, kD, T>(s, [&](int kk, uint32_t(&a)[4]) { load_a<kD>(a, k_w, kk, lane); }, qt, lane);
    warp_scores<kM, kD, T>(dp, [&](int kk, uint32_t(&a)[4]) { load_a<kD>(a, v_w, kk, lane); }, dot, lane);

    // s becomes the dropped, rescaled P^T and dp becomes dS^T.
    L2V_UNROLL
    for (int n = 0; n < kM / 8; ++n) {
      const unsigned keep = dropout ? keep_bits_cols(p, bh, kbase, i0 + 8 * n, lane) : 0xFu;
      L2V_UNROLL
      for (int c = 0; c < 2; ++c) {
        const int il = 8 * n + 2 * tig + c, i = i0 + il;
        const float L = ptx::ld_shared(lse_t + il), D = ptx::ld_shared(dsum_t + il);
        L2V_UNROLL
        for (int r = 0; r < 2; ++r) {
          const int e = 2 * r + c;
          const bool visible = i < p.seqlen && L != -INFINITY && ok[r] && (!p.causal || j[r] <= i);
          const float P = visible ? exp2f(s[n][e] * p.scale_log2 - L * kLog2e) : 0.0f;
          const bool kept = keep >> e & 1u;
          s[n][e] = kept ? P * p.keep_scale : 0.0f;
          dp[n][e] = P * ((kept ? dp[n][e] * p.keep_scale : 0.0f) - D);
        }
      }
    }
    warp_accumulate<kM, kD, T>(dv, s, dot, lane);
    warp_accumulate<kM, kD, T>(dk, dp, qt, lane);
    __syncthreads();  // this step's buffers are overwritten by the copy issued next step
  }
  const float one[2] = {1.0f, 1.0f}, scale[2] = {p.scale, p.scale};
  store_rows<kD>(p.dk + kv_off, p.kv_stride, dk, scale, 16 * warp, keys, lane);
  store_rows<kD>(p.dv + kv_off, p.kv_stride, dv, one, 16 * warp, keys, lane);
}

// ---- Launch templates.

template <int kD>
struct MmaSmem {
  using Tr = MmaTraits<kD>;
  static constexpr size_t kElem = 2;  // bytes of a T
  static constexpr size_t kFwd = kElem * Tr::kStride * (Tr::kRows + 4 * Tr::kBlockN);
  static constexpr size_t kDq = kElem * Tr::kStride * (2 * Tr::kRows + 4 * Tr::kBlockN);
  static constexpr size_t kDkdv =
      kElem * Tr::kStride * (2 * Tr::kRows + 4 * Tr::kBlockM) + 4 * sizeof(float) * Tr::kBlockM;
};

// Launches a kernel on blocks of kThreads, one per 64 rows (queries or keys) of each head of `heads` and
// each batch row.
template <typename Kernel, typename T>
void launch_blocks(const char* name, Kernel kernel, size_t smem, int heads, const AttentionParams<T>& p,
                   cudaStream_t stream) {
  attention_detail::allow_shared(kernel, smem);
  launch(name, kernel, dim3(attention_detail::host_ceil_div(p.seqlen, 16 * kWarps), heads, p.B), dim3(kThreads), smem,
         stream, p);
}

template <int D, typename T>
void run_attention_mma_fwd(const AttentionParams<T>& p, cudaStream_t stream) {
  launch_blocks("attention_mma_fwd_kernel", attention_mma_fwd_kernel<D, T>, MmaSmem<D>::kFwd, p.H, p, stream);
}

template <int D, typename T>
void run_attention_mma_dq(const AttentionParams<T>& p, cudaStream_t stream) {
  launch_blocks("attention_mma_dq_kernel", attention_mma_dq_kernel<D, T>, MmaSmem<D>::kDq, p.H, p, stream);
}

template <int D, typename T>
void run_attention_mma_dkdv(const AttentionParams<T>& p, cudaStream_t stream) {
  launch_blocks("attention_mma_dkdv_kernel", attention_mma_dkdv_kernel<D, T>, MmaSmem<D>::kDkdv, p.KV, p, stream);
}

// The backward's three passes (the tests launch them one by one to read each kernel's counters).
template <int D, typename T>
void run_attention_mma_bwd(const AttentionParams<T>& p, cudaStream_t stream) {
  attention_detail::run_attention_bwd_dot<D>(p, stream);
  run_attention_mma_dq<D>(p, stream);
  run_attention_mma_dkdv<D>(p, stream);
}

// Calls f(std::integral_constant<int, D>) for a head dim of the tensor-core kernels, throws for others.
template <typename F>
void dispatch_mma_head_dim(int D, const char* fn, F&& f) {
  switch (D) {
    case 16: f(std::integral_constant<int, 16>{}); return;
    case 64: f(std::integral_constant<int, 64>{}); return;
    case 128: f(std::integral_constant<int, 128>{}); return;
    default: break;
  }
  throw std::runtime_error(std::string("l2v::cuda::") + fn + ": head dim D=" + std::to_string(D) +
                           " is not supported by the tensor-core kernels (D = 16, 64, 128)");
}

}  // namespace attention_mma_detail

// ---- Host launchers: the signatures and semantics of attention_forward_cuda / attention_backward_cuda
// (cuda/attention.cuh), the same scratch (attention_backward_scratch_bytes), for T = __nv_bfloat16 or
// __half and D = 16, 64, 128.

template <typename T>
void attention_mma_forward_cuda(T* out, float* lse, const T* q, const T* k, const T* v, QkvStrides ld,
                                const int* key_mask, int B, int T_, int H, int KV, int D, bool causal,
                                float dropout_p, DropoutKey key, uint32_t site, cudaStream_t stream) {
  static_assert(attention_mma_storage<T>(), "the tensor-core attention stores __nv_bfloat16 or __half");
  namespace ad = attention_detail;
  namespace md = attention_mma_detail;
  const char* fn = "attention_mma_forward_cuda";
  AttentionParams<T> p = ad::make_params(fn, q, k, v, ld, key_mask, B, T_, H, KV, D, causal, dropout_p, key, site);
  ad::require_aligned(out, fn, "out");
  p.out = out;
  p.lse = lse;
  md::dispatch_mma_head_dim(D, fn, [&](auto d) { md::run_attention_mma_fwd<decltype(d)::value>(p, stream); });
}

template <typename T>
void attention_mma_backward_cuda(T* dq, T* dk, T* dv, const T* dout, const T* out, const float* lse, const T* q,
                                 const T* k, const T* v, QkvStrides ld, const int* key_mask, int B, int T_, int H,
                                 int KV, int D, bool causal, float dropout_p, DropoutKey key, uint32_t site,
                                 float* scratch, cudaStream_t stream) {
  static_assert(attention_mma_storage<T>(), "the tensor-core attention stores __nv_bfloat16 or __half");
  namespace ad = attention_detail;
  namespace md = attention_mma_detail;
  const char* fn = "attention_mma_backward_cuda";
  AttentionParams<T> p = ad::make_backward_params(fn, dq, dk, dv, dout, out, lse, q, k, v, ld, key_mask, B, T_, H,
                                                  KV, D, causal, dropout_p, key, site, scratch);
  md::dispatch_mma_head_dim(D, fn, [&](auto d) { md::run_attention_mma_bwd<decltype(d)::value>(p, stream); });
}

}  // namespace l2v::cuda

