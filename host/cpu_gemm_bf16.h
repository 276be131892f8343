// bf16 GEMMs of the CPU backend's --precision bf16: C (+)= A B with A fp32 (rounded to bf16 per call), B a
// frozen weight packed ONCE into bf16 tiles, and fp32 accumulation. Two kernels: AMX-BF16 tiles
// (TDPBF16PS, Sapphire Rapids and later) and a portable loop for CPUs without them.
//
// Numerics. Each product of two bf16 values is exact in fp32 (8 + 8 significant bits). The portable kernel
// adds the K products one after another in ascending k in fp32; the AMX unit adds them in its own way
// (measured here: the first pair's sum is rounded to nearest, longer sums match neither the manual's
// sequential pseudo-code nor one rounding per pair or per tile, so its results differ from the portable
// kernel's in the last bits). Both stay within the bound of a sequential fp32 sum, which with the two bf16
// roundings of the inputs (2^-8 relative each) gives |C - AB| <= (2 * 2^-8 + 2^-16 + gamma_K) sum_k |a_k b_k|
// (test/test_cpu_gemm_bf16.cpp). One thread computes each output block over the whole K in a fixed order,
// so on one CPU the results do not depend on the thread count.
#pragma once
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace l2v::cpu {

// n elements of T, uninitialised, 64-byte aligned: the tiles' operands and outputs (a tile row that straddles
// two cache lines loads and stores at half speed; std::vector's large blocks are 16-byte aligned).
template <typename T>
std::unique_ptr<T[], void (*)(void*)> aligned_array(size_t n) {
  void* mem = std::aligned_alloc(64, (n * sizeof(T) + 63) / 64 * 64);
  if (!mem) throw std::bad_alloc();
  return {static_cast<T*>(mem), std::free};
}

// Round-to-nearest-even fp32 -> bf16 (NaN stays a quiet NaN), and back (exact).
uint16_t bf16_from_float(float x);
float float_from_bf16(uint16_t b);

// A K x N matrix B in bf16, zero-padded to K % 32 == 0 and N % 32 == 0, stored as 1 KiB tiles of 32 k by
// 16 n (16 rows of k pairs, each 16 columns x 2 k: AMX's "VNNI" operand layout); tile (n16, k32) starts at
// element (n16 * k_blocks + k32) * 512.
struct PackedBf16 {
  int K = 0, N = 0, k_blocks = 0, n_blocks16 = 0;
  std::unique_ptr<uint16_t[], void (*)(void*)> tiles{nullptr, nullptr};
  size_t bytes() const { return (size_t)k_blocks * n_blocks16 * 512 * sizeof(uint16_t); }
};

// B = W^T for W [rows = N, cols = K] row-major with row stride ldw (default K) (a linear layer's forward:
// out = x W^T, K = IC, N = OC).
PackedBf16 pack_bf16_transposed(const float* W, int N, int K, long ldw = 0);
// B = W for W [rows = K, cols = N] row-major with row stride ldw (default N) (the backward to the input:
// dx = dy W, K = OC, N = IC).
PackedBf16 pack_bf16(const float* W, int K, int N, long ldw = 0);

enum class Bf16Kernel { automatic, amx, portable };

// True when the CPU has AMX-BF16 (and AVX512-BF16) and the OS lets this process use its tile registers (asked once).
bool amx_bf16_available();

// C [M, N] (row stride ldc) = A [M, K] (row stride lda) B, or += when accumulate. `automatic` takes AMX when
// available. Throws std::invalid_argument for a kernel this CPU cannot run or inconsistent shapes.
void gemm_bf16(float* C, int ldc, const float* A, int lda, int M, const PackedBf16& B, bool accumulate,
               Bf16Kernel kernel = Bf16Kernel::automatic);

// The same on B's leading part: C [M, n] (+)= A [M, k] B [:k, :n] for 0 < k <= K, 0 < n <= N (A's columns
// from k on are not read, C's from n on not written). Causal attention multiplies by the keys up to a
// block's last query only. The results equal gemm_bf16's on B's leading k x n part packed alone: B's rows
// from k to the end of k's 32-row block meet A's zeros (exact zero products, unless B holds inf or NaN there).
void gemm_bf16_part(float* C, int ldc, const float* A, int lda, int M, const PackedBf16& B, int k, int n,
                    bool accumulate, Bf16Kernel kernel = Bf16Kernel::automatic);

// One product of gemm_bf16_shared: C [M, n] (row stride ldc) (+)= A [M, k] B [:k, :n], n <= B.N.
struct Bf16Product {
  float* C;
  int ldc;
  const PackedBf16* B;
  int n;
  bool accumulate;
};
// The products of one A [M, k] with several packed matrices (a layer's q, k and v of one input; gate and
// up): A's rows are rounded to bf16 once for all of them (each product on its own would convert A again:
// a fifth of a SmolLM2 GEMM's time). Each product's bits are gemm_bf16_part's for it alone.
constexpr int kMaxSharedProducts = 8;  // count's limit
void gemm_bf16_shared(const float* A, int lda, int M, int k, const Bf16Product* products, int count,
                      Bf16Kernel kernel = Bf16Kernel::automatic);

}  // namespace l2v::cpu
