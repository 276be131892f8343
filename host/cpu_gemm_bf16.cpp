#include "host/cpu_gemm_bf16.h"

#include <cpuid.h>
#include <immintrin.h>
#include <omp.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <new>
#include <stdexcept>
#include <string>
#include <vector>

#include "host/cpu_fast_ops.h"

// GCC 12 warns that the AVX-512 intrinsics' internal _mm512_undefined_*() "may be used uninitialized" (its
// own header's pass-through operand, not this file's): a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"  // the same at -O1 (the sanitizer build)

namespace l2v::cpu {

uint16_t bf16_from_float(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof u);
  if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 0x40u);  // quiet NaN, sign kept
  return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);                 // ties to even
}

float float_from_bf16(uint16_t b) {
  const uint32_t u = (uint32_t)b << 16;
  float x;
  std::memcpy(&x, &u, sizeof x);
  return x;
}

namespace {

// The output block of one work item: 32 rows x 32 columns = 2 x 2 AMX accumulator tiles (tmm0..3), fed by
// two A tiles (tmm4, 5: 16 rows x 32 k) and two B tiles (tmm6, 7: 32 k x 16 columns) per 32 k.
constexpr int kBlock = 32;
constexpr int kTileElems = 512;  // 16 rows x 64 bytes of bf16
constexpr int kChunk = 4;        // row blocks of A that sweep B's panels together (gemm_bf16)
constexpr int kKPiece = 8;       // k-blocks of one pass over a chunk on AMX (gemm_bf16)

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument("l2v::cpu::gemm_bf16: " + what);
}

PackedBf16 make_packed(int K, int N) {
  require(K > 0 && N > 0, "a packed matrix needs K > 0 and N > 0, got K=" + std::to_string(K) +
                              " N=" + std::to_string(N));
  PackedBf16 p;
  p.K = K;
  p.N = N;
  p.k_blocks = (K + kBlock - 1) / kBlock;
  p.n_blocks16 = (N + kBlock - 1) / kBlock * 2;
  p.tiles = aligned_array<uint16_t>(p.bytes() / sizeof(uint16_t));  // filled by pack, padding (zeros) included
  return p;
}

// The bf16 copy of a chunk of A's rows, padded with zeros to whole 32 x 32 blocks and stored as AMX operand
// tiles (16 rows x 32 k, 1 KiB contiguous: tile (g, kb) of the chunk's row group g = m / 16 at element
// (g * k_blocks + kb) * 512, row m % 16 at + (m % 16) * 32), so that each tile load reads one contiguous KiB:
// one per thread, kept between calls (aligned: a tile load whose rows straddle cache lines runs at half speed,
// measured 0.7 against 1.5 TFLOP/s per core from L1).
uint16_t* a_buffer(size_t elems) {
  thread_local std::unique_ptr<uint16_t[], void (*)(void*)> buf{nullptr, std::free};
  thread_local size_t capacity = 0;
  if (capacity < elems) {
    buf.reset();  // the old block first: the peak stays one buffer
    buf = aligned_array<uint16_t>(elems);
    capacity = elems;
  }
  return buf.get();
}

// One row of A into its tiles: the 32 k of k-block kb at row + kb * 512, bf16(src[k]) for k < K, zeros up to
// k_blocks * 32. With AVX512-BF16 (every AMX-BF16 CPU has it): round to nearest even like bf16_from_float,
// except that fp32 subnormals become zero — as AMX treats bf16 subnormal inputs anyway.
__attribute__((target("avx512f,avx512bf16"))) void convert_row_avx512(uint16_t* row, const float* src, int K,
                                                                    int k_blocks) {
  for (int kb = 0; kb < k_blocks; ++kb) {
    const int k = kb * kBlock, valid = std::max(0, std::min(kBlock, K - k));
    const __mmask16 lo = lanes_below(valid), hi = lanes_below(valid - 16);
    const __m512bh v = _mm512_cvtne2ps_pbh(_mm512_maskz_loadu_ps(hi, src + k + 16), _mm512_maskz_loadu_ps(lo, src + k));
    _mm512_storeu_si512(row + (size_t)kb * kTileElems, (__m512i)v);
  }
}

void convert_row_portable(uint16_t* row, const float* src, int K, int k_blocks) {
  for (int kb = 0; kb < k_blocks; ++kb)
    for (int c = 0; c < kBlock; ++c) {
      const int k = kb * kBlock + c;
      row[(size_t)kb * kTileElems + c] = k < K ? bf16_from_float(src[k]) : uint16_t(0);
    }
}

__attribute__((target("amx-tile,amx-bf16"))) void amx_configure() {
  // Palette 1, tiles 0..7 all 16 rows x 64 bytes.
  alignas(64) uint8_t cfg[64] = {};
  cfg[0] = 1;
  for (int t = 0; t < 8; ++t) {
    const uint16_t colsb = 64;
    std::memcpy(cfg + 16 + 2 * t, &colsb, sizeof colsb);
    cfg[48 + t] = 16;
  }
  // ldtilecfg by hand: g++ 12's _tile_loadconfig declares an 8-byte memory operand, so the compiler may drop
  // the stores to the rest of the 64-byte configuration (a general-protection fault at ldtilecfg).
  struct Config {
    uint8_t bytes[64];
  };
  __asm__ volatile("ldtilecfg %0" ::"m"(*reinterpret_cast<const Config*>(cfg)));
}

__attribute__((target("amx-tile,amx-bf16"))) void amx_release() { _tile_release(); }

// out [32 x 32] fp32 (row stride out_ld elements) = the A tiles of two row groups (a0, a1: 16 rows each) x
// the two B panels' 32 columns over k_blocks consecutive tiles, or += when accumulate (out's values are then
// the accumulators' start).
__attribute__((target("amx-tile,amx-bf16"))) void amx_block(float* out, size_t out_ld, bool accumulate,
                                                          const uint16_t* a, const uint16_t* a1, const uint16_t* b0,
                                                          const uint16_t* b1, int k_blocks) {
  const size_t out_stride = out_ld * sizeof(float);
  if (accumulate) {
    _tile_loadd(0, out, out_stride);
    _tile_loadd(1, out + 16, out_stride);
    _tile_loadd(2, out + 16 * out_ld, out_stride);
    _tile_loadd(3, out + 16 * out_ld + 16, out_stride);
  } else {
    _tile_zero(0);
    _tile_zero(1);
    _tile_zero(2);
    _tile_zero(3);
  }
  // Each product issued as soon as its operands are loaded (tile registers are not renamed: a load waits for
  // the products still reading its register; measured 6% faster from L1 than four loads, then four products).
  for (int kb = 0; kb < k_blocks; ++kb) {
    const size_t at = (size_t)kb * kTileElems;
    _tile_loadd(4, a + at, 64);
    _tile_loadd(6, b0 + at, 64);
    _tile_dpbf16ps(0, 4, 6);
    _tile_loadd(7, b1 + at, 64);
    _tile_dpbf16ps(1, 4, 7);
    _tile_loadd(5, a1 + at, 64);
    _tile_dpbf16ps(2, 5, 6);
    _tile_dpbf16ps(3, 5, 7);
  }
  _tile_stored(0, out, out_stride);
  _tile_stored(1, out + 16, out_stride);
  _tile_stored(2, out + 16 * out_ld, out_stride);
  _tile_stored(3, out + 16 * out_ld + 16, out_stride);
}

// The same block without AMX: the products added in ascending k, one fp32 rounding each.
void portable_block(float* out, const uint16_t* a, const uint16_t* b0, const uint16_t* b1, int k_blocks) {
  for (int m = 0; m < kBlock; ++m) {
    float acc[kBlock] = {};
    // Row m's k-block kb: tile (m / 16, kb) of the block's two row groups, its row m % 16.
    const uint16_t* row = a + (size_t)(m / 16) * k_blocks * kTileElems + (size_t)(m % 16) * kBlock;
    for (int kb = 0; kb < k_blocks; ++kb) {
      const uint16_t* t0 = b0 + (size_t)kb * kTileElems;
      const uint16_t* t1 = b1 + (size_t)kb * kTileElems;
      for (int r = 0; r < 16; ++r) {
        for (int j = 0; j < 2; ++j) {
          const float av = float_from_bf16(row[(size_t)kb * kTileElems + 2 * r + j]);
          for (int c = 0; c < 16; ++c) {
            acc[c] += av * float_from_bf16(t0[r * 32 + c * 2 + j]);
            acc[16 + c] += av * float_from_bf16(t1[r * 32 + c * 2 + j]);
          }
        }
      }
    }
    std::memcpy(out + (size_t)m * kBlock, acc, sizeof acc);
  }
}

}  // namespace

namespace {

// B[k][n] = W[k * k_stride + n * n_stride], tile by tile in the order the tiles are stored (every element,
// padding included, written once): B[k][n] sits in tile (n / 16, k / 32), row (k % 32) / 2 (a k pair),
// column n % 16, element k % 2 of the pair — the layout TDPBF16PS reads its second operand in.
// bf16_from_float on 16 lanes, each result in the low half of its 32-bit lane (the same bits: ties to even,
// subnormals kept, a NaN quieted with its sign).
__attribute__((target("avx512f"))) __m512i bf16_lanes(__m512 v) {
  const __m512i u = _mm512_castps_si512(v);
  const __m512i rounded = _mm512_srli_epi32(
      _mm512_add_epi32(_mm512_add_epi32(u, _mm512_set1_epi32(0x7fff)),
                       _mm512_and_si512(_mm512_srli_epi32(u, 16), _mm512_set1_epi32(1))),
      16);
  const __mmask16 nan = _mm512_cmpgt_epu32_mask(_mm512_and_si512(u, _mm512_set1_epi32(0x7fffffff)),
                                                _mm512_set1_epi32(0x7f800000));
  return _mm512_mask_or_epi32(rounded, nan, _mm512_srli_epi32(u, 16), _mm512_set1_epi32(0x40));
}

// v[r] lane c = v[c] lane r on entry: a 16 x 16 transpose of 32-bit lanes in registers (pairs of lanes, then
// of 64-bit lanes, then of 128-bit quarters twice), where scattering each column down the tile cost sixteen
// scattered stores per column.
__attribute__((target("avx512f"))) void transpose16x16_epi32(__m512i v[16]) {
  __m512i t[16];
  for (int i = 0; i < 16; i += 2) {  // t[i] = (v[i]0, v[i+1]0, v[i]1, v[i+1]1, ...) per 128-bit quarter
    t[i] = _mm512_unpacklo_epi32(v[i], v[i + 1]);
    t[i + 1] = _mm512_unpackhi_epi32(v[i], v[i + 1]);
  }
  for (int i = 0; i < 16; i += 4) {  // 4 x 4 blocks of lanes within each quarter
    v[i] = _mm512_unpacklo_epi64(t[i], t[i + 2]);
    v[i + 1] = _mm512_unpackhi_epi64(t[i], t[i + 2]);
    v[i + 2] = _mm512_unpacklo_epi64(t[i + 1], t[i + 3]);
    v[i + 3] = _mm512_unpackhi_epi64(t[i + 1], t[i + 3]);
  }
  for (int i = 0; i < 4; ++i) {  // quarters: rows i, i + 4 (first halves), i + 8, i + 12
    t[i] = _mm512_shuffle_i32x4(v[i], v[i + 4], 0x88);
    t[i + 4] = _mm512_shuffle_i32x4(v[i], v[i + 4], 0xdd);
    t[i + 8] = _mm512_shuffle_i32x4(v[i + 8], v[i + 12], 0x88);
    t[i + 12] = _mm512_shuffle_i32x4(v[i + 8], v[i + 12], 0xdd);
  }
  for (int i = 0; i < 4; ++i) {
    v[i] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0x88);
    v[i + 8] = _mm512_shuffle_i32x4(t[i], t[i + 8], 0xdd);
    v[i + 4] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0x88);
    v[i + 12] = _mm512_shuffle_i32x4(t[i + 4], t[i + 12], 0xdd);
  }
}

// One tile of pack() with AVX-512, for the two layouts the backend packs: W's rows are k (n_stride 1: a tile
// row is two 16-column pieces of rows 2r and 2r + 1, interleaved) or n (k_stride 1: a column of the tile is
// 32 consecutive k of one row of W, its 16 pairs scattered down the tile).
__attribute__((target("avx512f"))) void pack_tile_avx512(uint16_t* t, const float* W, int K, int N, long k_stride,
                                                         long n_stride, int kb, int nb) {
  uint32_t* t32 = reinterpret_cast<uint32_t*>(t);  // [16 k pairs][16 columns]
  const int k0 = kb * kBlock, n0 = nb * 16;
  if (n_stride == 1) {
    const __mmask16 cols = lanes_below(N - n0);
    for (int r = 0; r < 16; ++r) {
      const int k = k0 + 2 * r;
      const __m512 lo = _mm512_maskz_loadu_ps(k < K ? cols : 0, W + (size_t)k * k_stride + n0);
      const __m512 hi = _mm512_maskz_loadu_ps(k + 1 < K ? cols : 0, W + (size_t)(k + 1) * k_stride + n0);
      _mm512_storeu_si512(t32 + r * 16, _mm512_or_si512(bf16_lanes(lo), _mm512_slli_epi32(bf16_lanes(hi), 16)));
    }
    return;
  }
  // The 16 lanes of k0 .. k0 + 31 in pair order: even k from the first load's lanes, odd from the second's.
  const __m512i even = _mm512_set_epi32(30, 28, 26, 24, 22, 20, 18, 16, 14, 12, 10, 8, 6, 4, 2, 0);
  const __m512i odd = _mm512_set_epi32(31, 29, 27, 25, 23, 21, 19, 17, 15, 13, 11, 9, 7, 5, 3, 1);
  __m512i v[16];  // v[c]: column c's 16 k pairs; the tile is their 16 x 16 transpose
  for (int c = 0; c < 16; ++c) {
    const int n = n0 + c;
    v[c] = _mm512_setzero_si512();
    if (n < N) {
      const float* row = W + (size_t)n * n_stride + k0;
      const __m512i a = bf16_lanes(_mm512_maskz_loadu_ps(lanes_below(K - k0), row));
      const __m512i b = bf16_lanes(_mm512_maskz_loadu_ps(lanes_below(K - k0 - 16), row + 16));
      v[c] = _mm512_or_si512(_mm512_permutex2var_epi32(a, even, b),
                             _mm512_slli_epi32(_mm512_permutex2var_epi32(a, odd, b), 16));
    }
  }
  transpose16x16_epi32(v);
  for (int r = 0; r < 16; ++r) _mm512_storeu_si512(t32 + r * 16, v[r]);
}

PackedBf16 pack(const float* W, int K, int N, long k_stride, long n_stride) {
  PackedBf16 p = make_packed(K, N);
  uint16_t* tiles = p.tiles.get();
  const bool vector = __builtin_cpu_supports("avx512f") && (k_stride == 1 || n_stride == 1);
  auto panel = [&](int nb) {  // the tiles of 16 columns nb
    for (int kb = 0; kb < p.k_blocks; ++kb) {
      uint16_t* t = tiles + ((size_t)nb * p.k_blocks + kb) * kTileElems;
      if (vector) {
        pack_tile_avx512(t, W, K, N, k_stride, n_stride, kb, nb);
        continue;
      }
      for (int r = 0; r < 16; ++r)
        for (int c = 0; c < 16; ++c)
          for (int j = 0; j < 2; ++j) {
            const int k = kb * kBlock + 2 * r + j, n = nb * 16 + c;
            t[r * 32 + c * 2 + j] =
                k < K && n < N ? bf16_from_float(W[(size_t)k * k_stride + (size_t)n * n_stride]) : uint16_t(0);
          }
    }
  };
  // Threads for a whole weight; inside a parallel region (attention packs each head's K and V there) the
  // calling thread alone, without even an inactive nested region (it costs more than a small pack).
  if (omp_in_parallel() || (long)N * K <= 65536) {
    for (int nb = 0; nb < p.n_blocks16; ++nb) panel(nb);
  } else {
#pragma omp parallel for
    for (int nb = 0; nb < p.n_blocks16; ++nb) panel(nb);
  }
  return p;
}

}  // namespace

PackedBf16 pack_bf16_transposed(const float* W, int N, int K, long ldw) {
  if (ldw == 0) ldw = K;
  require(ldw >= K, "pack_bf16_transposed: row stride " + std::to_string(ldw) + " < K = " + std::to_string(K));
  return pack(W, K, N, 1, ldw);
}

PackedBf16 pack_bf16(const float* W, int K, int N, long ldw) {
  if (ldw == 0) ldw = N;
  require(ldw >= N, "pack_bf16: row stride " + std::to_string(ldw) + " < N = " + std::to_string(N));
  return pack(W, K, N, ldw, 1);
}

bool amx_bf16_available() {
  static const bool ok = [] {
    unsigned a = 0, b = 0, c = 0, d = 0;
    if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 27))) return false;  // OSXSAVE (xgetbv)
    if (!__get_cpuid_count(7, 0, &a, &b, &c, &d)) return false;
    if (!(d & (1u << 24)) || !(d & (1u << 22)) || !(b & (1u << 16))) return false;  // AMX-TILE, -BF16, AVX512F
    if (!__get_cpuid_count(7, 1, &a, &b, &c, &d) || !(a & (1u << 5))) return false;  // AVX512-BF16 (A's rounding)
    unsigned lo = 0, hi = 0;
    __asm__ volatile("xgetbv" : "=a"(lo), "=d"(hi) : "c"(0));
    // The OS saves the SSE/AVX/AVX-512 state (bits 1, 2, 5-7) and XTILECFG / XTILEDATA (17, 18).
    const unsigned needed = (1u << 1) | (1u << 2) | (7u << 5) | (3u << 17);
    if ((lo & needed) != needed) return false;
    // Linux hands out the 8 KiB tile state per process on request (ARCH_REQ_XCOMP_PERM, XTILEDATA).
    return syscall(SYS_arch_prctl, 0x1023, 18) == 0;
  }();
  return ok;
}

void gemm_bf16(float* C, int ldc, const float* A, int lda, int M, const PackedBf16& B, bool accumulate,
               Bf16Kernel kernel) {
  gemm_bf16_part(C, ldc, A, lda, M, B, B.K, B.N, accumulate, kernel);
}

void gemm_bf16_part(float* C, int ldc, const float* A, int lda, int M, const PackedBf16& B, int K, int N,
                    bool accumulate, Bf16Kernel kernel) {
  const Bf16Product product{C, ldc, &B, N, accumulate};
  gemm_bf16_shared(A, lda, M, K, &product, 1, kernel);
}

void gemm_bf16_shared(const float* A, int lda, int M, int K, const Bf16Product* products, int count,
                      Bf16Kernel kernel) {
  require(count > 0 && count <= kMaxSharedProducts,
          std::to_string(count) + " products (1 to " + std::to_string(kMaxSharedProducts) + ")");
  // first_panel[p]: the index of product p's first 32-column panel among all the products' panels.
  int first_panel[kMaxSharedProducts + 1] = {0};
  for (int p = 0; p < count; ++p) {
    const Bf16Product& pr = products[p];
    require(pr.B && pr.B->tiles != nullptr, "B is not a packed matrix");
    require(K > 0 && K <= pr.B->K && pr.n > 0 && pr.n <= pr.B->N,
            "the part " + std::to_string(K) + " x " + std::to_string(pr.n) + " is outside B " +
                std::to_string(pr.B->K) + " x " + std::to_string(pr.B->N));
    require(M >= 0 && lda >= K && pr.ldc >= pr.n,
            "shapes: M=" + std::to_string(M) + " lda=" + std::to_string(lda) + " ldc=" + std::to_string(pr.ldc) +
                " for B " + std::to_string(K) + " x " + std::to_string(pr.n));
    first_panel[p + 1] = first_panel[p] + (pr.n + kBlock - 1) / kBlock;
  }
  if (kernel == Bf16Kernel::automatic) kernel = amx_bf16_available() ? Bf16Kernel::amx : Bf16Kernel::portable;
  require(kernel != Bf16Kernel::amx || amx_bf16_available(), "this CPU (or OS) offers no AMX-BF16");
  if (M == 0) return;

  // B's tiles keep their places (tile (n16, kb) at (n16 * B.k_blocks + kb) * 512); a part uses the first
  // k_blocks of each panel and the first panels up to its n. A's rows are converted with zeros from K on, so
  // the last k-block's rows of B past K meet zeros.
  const int k_blocks = (K + kBlock - 1) / kBlock, m_blocks = (M + kBlock - 1) / kBlock;
  const int panels = first_panel[count];
  const size_t group_elems = (size_t)k_blocks * kTileElems;  // the tiles of 16 rows
  const bool amx = kernel == Bf16Kernel::amx;
  const long items = (long)((m_blocks + kChunk - 1) / kChunk) * panels;
  // One thread's contiguous share of the items [begin, end).
  auto run = [&](long begin, long end) {
    if (amx) amx_configure();  // tile configuration is per thread
    // The bf16 tiles of the chunk this thread works on, converted when its first item of the chunk comes (a
    // chunk split between two threads is converted by both, into their own buffers: the same bits): the
    // conversion's output is still in L2 when the tiles read it, no thread waits for the others', and the
    // products that share A share its conversion.
    uint16_t* a16 = a_buffer((size_t)kChunk * 2 * group_elems);
    int converted = -1;
    alignas(64) float blocks[kChunk * kBlock * kBlock];  // the chunk's output blocks at the ragged edges
    // An item is a chunk of kChunk row blocks of A (kChunk x 32 rows x K bf16: 147 KiB at K = 576, kept in
    // the core's L2) against one 32-column panel of a product's B, items in chunk-major order: a thread's
    // contiguous share is whole chunks, so the Bs stream through once per chunk instead of A once per panel
    // (A: M x K, larger than L2 for a training batch). On AMX the item runs K in pieces of kKPiece k-blocks,
    // each piece of the panel (kKPiece x 32 x 32 bf16: 16 KiB) against the chunk's row blocks in turn, so the
    // panel's piece and a row block's (16 KiB) stay in L1 (a whole K x 32 panel and row block, 72 KiB at
    // K = 576, do not); the output blocks carry the sums from piece to piece (in C, or in `blocks` at the
    // ragged edges).
    const int k_piece = amx ? kKPiece : k_blocks;
    int p = 0;  // the product of the current item (items come in ascending order within a thread)
    for (long item = begin; item < end; ++item) {
      const int chunk = (int)(item / panels), panel = (int)(item % panels);
      const int mb_end = std::min(m_blocks, (chunk + 1) * kChunk);
      if (chunk != converted) {
        for (int m = chunk * kChunk * kBlock; m < mb_end * kBlock; ++m) {
          const int local = m - chunk * kChunk * kBlock;
          uint16_t* row = a16 + (size_t)(local / 16) * group_elems + (size_t)(local % 16) * kBlock;
          const int valid = m < M ? K : 0;
          if (amx)
            convert_row_avx512(row, A + (size_t)m * lda, valid, k_blocks);
          else
            convert_row_portable(row, A + (size_t)m * lda, valid, k_blocks);
        }
        converted = chunk;
      }
      while (panel < first_panel[p] || panel >= first_panel[p + 1]) p = (p + 1) % count;
      const Bf16Product& pr = products[p];
      const PackedBf16& B = *pr.B;
      float* C = pr.C;
      const int nb = panel - first_panel[p], ldc = pr.ldc;
      const uint16_t* b0 = B.tiles.get() + (size_t)(2 * nb) * B.k_blocks * kTileElems;
      const uint16_t* b1 = b0 + (size_t)B.k_blocks * kTileElems;
      const int n0 = nb * kBlock, cols = std::min(kBlock, pr.n - n0);
      for (int kp = 0; kp < k_blocks; kp += k_piece) {
        const int kn = std::min(k_piece, k_blocks - kp);
        const size_t at = (size_t)kp * kTileElems;
        for (int mb = chunk * kChunk; mb < mb_end; ++mb) {
          const uint16_t* a = a16 + (size_t)(mb - chunk * kChunk) * 2 * group_elems + at;
          const int m0 = mb * kBlock, rows = std::min(kBlock, M - m0);
          float* edge = blocks + (size_t)(mb - chunk * kChunk) * kBlock * kBlock;
          if (!amx)
            portable_block(edge, a, b0, b1, kn);
          else if (rows == kBlock && cols == kBlock)  // a whole block: the tiles go straight to C
            amx_block(C + (size_t)m0 * ldc + n0, ldc, pr.accumulate || kp > 0, a, a + group_elems, b0 + at, b1 + at,
                      kn);
          else
            amx_block(edge, kBlock, kp > 0, a, a + group_elems, b0 + at, b1 + at, kn);
        }
      }
      for (int mb = chunk * kChunk; mb < mb_end; ++mb) {
        const int m0 = mb * kBlock, rows = std::min(kBlock, M - m0);
        if (amx && rows == kBlock && cols == kBlock) continue;
        const float* edge = blocks + (size_t)(mb - chunk * kChunk) * kBlock * kBlock;
        for (int r = 0; r < rows; ++r) {
          float* c = C + (size_t)(m0 + r) * ldc + n0;
          const float* s = edge + r * kBlock;
          if (pr.accumulate)
            for (int x = 0; x < cols; ++x) c[x] += s[x];
          else
            std::memcpy(c, s, sizeof(float) * cols);
        }
      }
    }
    if (amx) amx_release();
  };
  // Inside a parallel region (attention's blocks) the calling thread runs every item: no nested region.
  if (omp_in_parallel() || items == 1) return run(0, items);
#pragma omp parallel
  {
    const long t = omp_get_thread_num(), threads = omp_get_num_threads();
    run(items * t / threads, items * (t + 1) / threads);
  }
}

}  // namespace l2v::cpu
