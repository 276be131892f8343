// Tests of the emulator's PTX-level warp operations (cuda/ptx.cuh, host/emu/ptx.h). Layout tests pack
// and unpack registers with the PTX ISA's fragment formulas, written out here on their own (as the ISA
// states them, not as host/emu/ptx.cpp computes them), and compare exactly; numeric tests compare mma
// with a double-precision matmul under the fp32 rounding bound of the k-sum; a 64x64x64 GEMM kernel
// (cp.async double buffering, ldmatrix, mma) is checked against the CPU. Planted-bug tests assert that
// the KernelError names the instruction and the kernel's source line (among them the two races between
// warps that a missing __syncthreads() leaves around a cp.async); in the AddressSanitizer build
// (build/asan/test_emulator_ptx) a plain load of a pending cp.async destination must be fatal.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "cuda/launch.h"
#include "cuda/ptx.cuh"
#include "test/cuda_test_util.h"

namespace {

namespace emu = l2v::emu;
namespace ptx = l2v::ptx;
using l2v::launch;
using l2v::test::all_orders;
using l2v::test::contains;
using l2v::test::kernel_error;
using l2v::test::Raw;
using l2v::test::ScheduleScope;

// ---- Helpers.

template <typename T>
std::vector<T> download(const Raw<T>& a, size_t n) {
  std::vector<T> host(n);
  CUDA_CHECK(cudaMemcpy(host.data(), a.ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
  return host;
}

// "test/test_emulator_ptx.cpp:LINE", how the emulator names a site, for the line of this file that ends
// with the comment "// @name" (read from the source: the tests run from the repository root).
std::string site_of(const std::string& name) {
  std::ifstream in(__FILE__);
  const std::string marker = "// @" + name;
  std::string text;
  int line = 0, found = 0;
  for (int n = 1; std::getline(in, text); ++n) {
    if (text.size() >= marker.size() && text.compare(text.size() - marker.size(), marker.size(), marker) == 0) {
      line = n;
      ++found;
    }
  }
  EXPECT_EQ(found, 1) << "lines of " << __FILE__ << " ending with " << marker;
  return std::string(__FILE__) + ":" + std::to_string(line);
}

// T (__nv_bfloat16 or __half) <-> its 16 bits <-> float, rounding to nearest even.
template <typename T>
T from_bits(uint16_t u) {
  std::conditional_t<std::is_same<T, __half>::value, __half_raw, __nv_bfloat16_raw> raw;
  raw.x = u;
  return T(raw);
}

template <typename T>
uint16_t bits16(float x) {
  if constexpr (std::is_same<T, __half>::value) {
    return __half_raw(__float2half_rn(x)).x;
  } else {
    return __nv_bfloat16_raw(__float2bfloat16_rn(x)).x;
  }
}

template <typename T>
float value16(uint16_t u) {
  if constexpr (std::is_same<T, __half>::value) {
    return __half2float(from_bits<T>(u));
  } else {
    return __bfloat162float(from_bits<T>(u));
  }
}

// gamma_n = n u / (1 - n u): the bound on the relative error of an n-addition fp sum (Higham, Lemma 3.1).
double gamma(int n, double u) { return n * u / (1.0 - n * u); }
constexpr double kUFloat = 1.0 / (1 << 24);          // fp32 unit roundoff 2^-24
constexpr double kUDouble = 1.0 / 9007199254740992.0;  // 2^-53, of the double reference

// ---- The PTX ISA's fragment formulas ("Matrix Fragments for mma.m16n8k16 with floating point type"),
// with groupID = %laneid >> 2 and threadID_in_group = %laneid % 4.

struct RowCol {
  int row, col;
};

RowCol isa_a(int lane, int i) {  // a_i, i in 0..7
  const int group = lane >> 2, tig = lane % 4;
  const int row = ((0 <= i && i < 2) || (4 <= i && i < 6)) ? group : group + 8;
  const int col = i < 4 ? (tig * 2) + (i & 0x1) : (tig * 2) + (i & 0x1) + 8;
  return {row, col};
}

RowCol isa_b(int lane, int i) {  // b_i, i in 0..3
  const int group = lane >> 2, tig = lane % 4;
  const int row = i < 2 ? (tig * 2) + (i & 0x1) : (tig * 2) + (i & 0x1) + 8;
  return {row, group};
}

RowCol isa_c(int lane, int i) {  // c_i / d_i, i in 0..3
  const int group = lane >> 2, tig = lane % 4;
  return {i < 2 ? group : group + 8, (tig * 2) + (i & 0x1)};
}

// Register r of a 16-bit fragment holds elements 2r (low half) and 2r + 1 (high half) -- "low to high".
template <typename T, int kRegs>
std::vector<uint32_t> pack(const std::vector<float>& m, int cols, RowCol (*layout)(int, int)) {
  std::vector<uint32_t> regs(32 * kRegs);
  for (int lane = 0; lane < 32; ++lane) {
    for (int r = 0; r < kRegs; ++r) {
      const RowCol lo = layout(lane, 2 * r), hi = layout(lane, 2 * r + 1);
      regs[kRegs * lane + r] = bits16<T>(m[lo.row * cols + lo.col]) |
                               static_cast<uint32_t>(bits16<T>(m[hi.row * cols + hi.col])) << 16;
    }
  }
  return regs;
}

// ---- mma: one tile.

template <typename T>
__global__ void mma_tile(const uint32_t* a, const uint32_t* b, const float* c, float* d) {
  const unsigned l = threadIdx.x;
  const uint32_t ar[4] = {a[4 * l], a[4 * l + 1], a[4 * l + 2], a[4 * l + 3]};
  const uint32_t br[2] = {b[2 * l], b[2 * l + 1]};
  const float cr[4] = {c[4 * l], c[4 * l + 1], c[4 * l + 2], c[4 * l + 3]};
  float dr[4];
  ptx::mma_m16n8k16<T>(dr, ar, br, cr);
  for (int i = 0; i < 4; ++i) d[4 * l + i] = dr[i];
}

// A (16x16), B (16x8), C (16x8) row-major, of values T holds exactly; returns D (16x8) row-major, read
// from each lane's d registers with the ISA's C/D formula.
template <typename T>
std::vector<float> run_mma_tile(const std::vector<float>& a, const std::vector<float>& b, const std::vector<float>& c) {
  Raw<uint32_t> da(pack<T, 4>(a, 16, isa_a)), db(pack<T, 2>(b, 8, isa_b));
  std::vector<float> c_regs(32 * 4);
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) c_regs[4 * lane + i] = c[isa_c(lane, i).row * 8 + isa_c(lane, i).col];
  }
  Raw<float> dc(c_regs), dd(32 * 4);
  launch("mma_tile", mma_tile<T>, dim3(1), dim3(32), 0, nullptr, da.ptr, db.ptr, dc.ptr, dd.ptr);
  const std::vector<float> d_regs = download(dd, 32 * 4);
  std::vector<float> d(16 * 8);
  for (int lane = 0; lane < 32; ++lane) {
    for (int i = 0; i < 4; ++i) d[isa_c(lane, i).row * 8 + isa_c(lane, i).col] = d_regs[4 * lane + i];
  }
  return d;
}

template <typename T>
class PtxMma : public ::testing::Test {};
using MmaTypes = ::testing::Types<__nv_bfloat16, __half>;
TYPED_TEST_SUITE(PtxMma, MmaTypes);

// Small integers: every product and sum is exact, so D must equal the matmul bit for bit, and any
// element of A, B or C taken from the wrong lane, register or half shows.
TYPED_TEST(PtxMma, FragmentLayoutsFollowTheIsa) {
  std::mt19937 rng(7);
  std::uniform_int_distribution<int> small(-3, 3), acc(-50, 50);
  std::vector<float> a(16 * 16), b(16 * 8), c(16 * 8);
  for (float& x : a) x = static_cast<float>(small(rng));
  for (float& x : b) x = static_cast<float>(small(rng));
  for (float& x : c) x = static_cast<float>(acc(rng));
  const std::vector<float> d = run_mma_tile<TypeParam>(a, b, c);
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 8; ++j) {
      float want = c[i * 8 + j];
      for (int k = 0; k < 16; ++k) want += a[i * 16 + k] * b[k * 8 + j];
      EXPECT_EQ(d[i * 8 + j], want) << "D[" << i << "][" << j << "]";
    }
  }
}

// Random values: |d - exact| <= gamma_16 (|c| + sum |a b|) for the 16 fp32 additions (each product is
// exact in fp32), plus the double reference's own gamma_16 in 2^-53.
TYPED_TEST(PtxMma, TileMatchesNaiveMatmulWithinTheFp32SumBound) {
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> dist(-4.0f, 4.0f);
  std::vector<float> a(16 * 16), b(16 * 8), c(16 * 8);
  for (float& x : a) x = value16<TypeParam>(bits16<TypeParam>(dist(rng)));
  for (float& x : b) x = value16<TypeParam>(bits16<TypeParam>(dist(rng)));
  for (float& x : c) x = dist(rng) * 16.0f;
  const std::vector<float> d = run_mma_tile<TypeParam>(a, b, c);
  double worst = 0.0;
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 8; ++j) {
      double exact = c[i * 8 + j], magnitude = std::fabs(c[i * 8 + j]);
      for (int k = 0; k < 16; ++k) {
        exact += static_cast<double>(a[i * 16 + k]) * b[k * 8 + j];
        magnitude += std::fabs(static_cast<double>(a[i * 16 + k]) * b[k * 8 + j]);
      }
      const double tol = (gamma(16, kUFloat) + gamma(16, kUDouble)) * magnitude;
      EXPECT_LE(std::fabs(d[i * 8 + j] - exact), tol) << "D[" << i << "][" << j << "]";
      worst = std::max(worst, std::fabs(d[i * 8 + j] - exact) / tol);
    }
  }
  std::printf("mma tile: worst error %.3f of the bound\n", worst);
}

// ---- ldmatrix: x1, x2, x4, with and without .trans.

// 32 rows of 8 16-bit elements in shared memory (row q holds 0x100 * q + column); lane l < 8 * kNum
// passes the address of row perm[l] (rows need not be contiguous), the other lanes nullptr (ignored).
template <int kNum, bool kTrans>
__global__ void ldmatrix_probe(const uint16_t* rows, const int* perm, uint32_t* out) {
  L2V_SHARED(uint16_t, tile, [32][8]);
  const unsigned l = threadIdx.x;
  for (int e = 0; e < 8; ++e) tile[l][e] = rows[8 * l + e];
  __syncthreads();
  uint32_t r[kNum];
  ptx::ldmatrix<kNum, kTrans>(r, l < 8 * kNum ? &tile[perm[l]][0] : nullptr);
  for (int i = 0; i < kNum; ++i) out[kNum * l + i] = r[i];
}

template <int kNum, bool kTrans>
void check_ldmatrix() {
  std::vector<uint16_t> rows(32 * 8);
  for (int q = 0; q < 32; ++q) {
    for (int e = 0; e < 8; ++e) rows[8 * q + e] = static_cast<uint16_t>(0x100 * q + e);
  }
  std::vector<int> perm(32);
  for (int l = 0; l < 32; ++l) perm[l] = (l * 13 + 5) % 32;  // a permutation of 0..31
  Raw<uint16_t> drows(rows);
  Raw<int> dperm(perm);
  Raw<uint32_t> dout(32 * kNum);
  launch("ldmatrix_probe", ldmatrix_probe<kNum, kTrans>, dim3(1), dim3(32), 0, nullptr, drows.ptr, dperm.ptr, dout.ptr);
  const std::vector<uint32_t> out = download(dout, 32 * kNum);
  // The ISA: matrix i's rows are at the addresses of lanes 8i..8i+7; register i of lane l holds row l/4,
  // elements 2(l%4) and 2(l%4)+1 of matrix i (with .trans: of matrix i transposed).
  for (int l = 0; l < 32; ++l) {
    for (int i = 0; i < kNum; ++i) {
      uint16_t want[2];
      for (int h = 0; h < 2; ++h) {
        const int row = l / 4, col = 2 * (l % 4) + h;
        const int stored_row = kTrans ? col : row, stored_col = kTrans ? row : col;
        want[h] = rows[8 * perm[8 * i + stored_row] + stored_col];
      }
      EXPECT_EQ(out[kNum * l + i], want[0] | static_cast<uint32_t>(want[1]) << 16)
          << "x" << kNum << (kTrans ? ".trans" : "") << " lane " << l << " register " << i;
    }
  }
}

TEST(PtxLdmatrix, X1) { check_ldmatrix<1, false>(); }
TEST(PtxLdmatrix, X2) { check_ldmatrix<2, false>(); }
TEST(PtxLdmatrix, X4) { check_ldmatrix<4, false>(); }
TEST(PtxLdmatrix, X1Trans) { check_ldmatrix<1, true>(); }
TEST(PtxLdmatrix, X2Trans) { check_ldmatrix<2, true>(); }
TEST(PtxLdmatrix, X4Trans) { check_ldmatrix<4, true>(); }

// ---- A 64x64x64 GEMM from cp.async (double-buffered k-stages of 16), ldmatrix and mma: 4 warps, warp w
// computing rows 16w..16w+15. C = A B with A 64x64 row-major (M x K) and B 64x64 row-major (K x N), so
// A fragments load with ldmatrix.x4 and B fragments (k-major rows in shared memory) with .x4.trans.
// kWaitPending is the wait_group count before computing on a stage: 1 is right (the stage just issued
// may stay in flight); 2 is the planted bug of a pipeline that waits for one group too few.
constexpr int kN = 64, kStageK = 16, kStages = kN / kStageK;
// Rows of 24 and 72 elements (48 and 144 bytes): the 8 rows of an ldmatrix phase start 12 or 36 words
// apart, i.e. at banks {0,12,24,4,16,28,8,20} or {0,4,...,28}, each row taking 4 banks: no conflicts.
constexpr int kAStride = kStageK + 8, kBStride = kN + 8;

template <typename T, int kWaitPending>
__global__ void gemm64(const T* a, const T* b, float* c) {
  L2V_SHARED(T, as, [2][kN][kAStride]);
  L2V_SHARED(T, bs, [2][kStageK][kBStride]);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  // One group per stage: thread tid copies 16 bytes of the A stage (64 rows x 2 chunks) and of the B
  // stage (16 rows x 8 chunks).
  auto load = [&](int stage) {
    const int buf = stage % 2, ar = tid / 2, ac = 8 * (tid % 2), br = tid / 8, bc = 8 * (tid % 8);
    ptx::cp_async_cg(&as[buf][ar][ac], a + ar * kN + stage * kStageK + ac);  // @gemm_copy_a
    ptx::cp_async_cg(&bs[buf][br][bc], b + (stage * kStageK + br) * kN + bc);
    ptx::cp_async_commit_group();
  };
  float acc[8][4] = {};
  load(0);
  for (int s = 0; s < kStages; ++s) {
    if (s + 1 < kStages) {
      load(s + 1);
      ptx::cp_async_wait_group<kWaitPending>();
    } else {
      ptx::cp_async_wait_group<0>();
    }
    __syncthreads();
    const int buf = s % 2;
    // Matrix m = lane / 8 of the A tile: rows 8 (m % 2) .. +7, columns 8 (m / 2) .. +7 -> a0..a7.
    uint32_t af[4];
    ptx::ldmatrix<4>(af, &as[buf][16 * warp + lane % 16][8 * (lane / 16)]);  // @gemm_ldmatrix_a
    for (int j = 0; j < 8; j += 2) {
      // Matrices (k 0-7, n-tile j), (k 8-15, j), (k 0-7, j + 1), (k 8-15, j + 1), transposed into B
      // fragments: registers 0,1 are tile j's b0..b3, registers 2,3 tile j + 1's.
      uint32_t bf[4];
      ptx::ldmatrix<4, true>(bf, &bs[buf][lane % 16][8 * j + 8 * (lane / 16)]);
      const uint32_t b0[2] = {bf[0], bf[1]}, b1[2] = {bf[2], bf[3]};
      ptx::mma_m16n8k16<T>(acc[j], af, b0, acc[j]);
      ptx::mma_m16n8k16<T>(acc[j + 1], af, b1, acc[j + 1]);
    }
    __syncthreads();  // the next iteration's load overwrites this buffer
  }
  const int group = lane / 4, tig = lane % 4;
  for (int j = 0; j < 8; ++j) {
    for (int i = 0; i < 4; ++i) c[(16 * warp + group + 8 * (i / 2)) * kN + 8 * j + 2 * tig + i % 2] = acc[j][i];
  }
}

template <typename T>
struct GemmData {
  std::vector<float> a, b;  // the values T holds
  Raw<T> da, db;
  Raw<float> dc{kN * kN};
  static std::vector<float> values(uint32_t seed) {
    std::mt19937 rng(seed);
    std::uniform_real_distribution<float> dist(-1.0f, 1.0f);
    std::vector<float> v(kN * kN);
    for (float& x : v) x = value16<T>(bits16<T>(dist(rng)));
    return v;
  }
  static std::vector<T> stored(const std::vector<float>& v) {
    std::vector<T> t(v.size());
    for (size_t i = 0; i < v.size(); ++i) t[i] = from_bits<T>(bits16<T>(v[i]));
    return t;
  }
  explicit GemmData(uint32_t seed) : a(values(seed)), b(values(seed + 1)), da(stored(a)), db(stored(b)) {}
};

template <typename T>
class PtxGemm : public ::testing::Test {};
TYPED_TEST_SUITE(PtxGemm, MmaTypes);

// Each C element is a 64-term fp32 sum of exact products: |c - exact| <= gamma_64 sum_k |a b| whatever
// the order (so it holds for a GPU's tensor cores as long as they round each addition once).
TYPED_TEST(PtxGemm, CpAsyncLdmatrixMmaMatchesTheCpu) {
  GemmData<TypeParam> g(21);
  for (const emu::Schedule& order : all_orders()) {
    ScheduleScope scope(order);
    CUDA_CHECK(cudaMemset(g.dc.ptr, 0xFF, kN * kN * sizeof(float)));
    launch("gemm64", gemm64<TypeParam, 1>, dim3(1), dim3(128), 0, nullptr, g.da.ptr, g.db.ptr, g.dc.ptr);
    const emu::LaunchStats stats = emu::last_launch_stats();
    const std::vector<float> c = download(g.dc, kN * kN);
    double worst = 0.0;
    for (int i = 0; i < kN; ++i) {
      for (int j = 0; j < kN; ++j) {
        double exact = 0.0, magnitude = 0.0;
        for (int k = 0; k < kN; ++k) {
          exact += static_cast<double>(g.a[i * kN + k]) * g.b[k * kN + j];
          magnitude += std::fabs(static_cast<double>(g.a[i * kN + k]) * g.b[k * kN + j]);
        }
        const double tol = (gamma(kN, kUFloat) + gamma(kN, kUDouble)) * magnitude;
        ASSERT_LE(std::fabs(c[i * kN + j] - exact), tol) << "C[" << i << "][" << j << "]";
        worst = std::max(worst, std::fabs(c[i * kN + j] - exact) / tol);
      }
    }
    // Per warp and stage: one A x4 (4 phases) and four B x4.trans (16 phases); 4 stages, 4 warps. The
    // padded strides make every phase a single wavefront.
    EXPECT_EQ(stats.ldmatrix_wavefronts, 20u * kStages * 4);
    EXPECT_EQ(stats.ldmatrix_bank_conflicts, 0u);
    std::printf("gemm64 (%s): worst error %.3f of the bound; ldmatrix: %llu wavefronts, %llu bank conflicts\n",
                l2v::test::order_name(order).c_str(), worst,
                static_cast<unsigned long long>(stats.ldmatrix_wavefronts),
                static_cast<unsigned long long>(stats.ldmatrix_bank_conflicts));
  }
}

// ---- cp.async: each size, zero fill, data landing at the wait.

// Thread t copies kBytes (of which src_bytes[t] are read) from src + 16 t to slot t (16 bytes) of shared
// memory; with `peek` it first reads its slot before the wait (the poison, in the plain build).
template <int kBytes, bool kCg>
__global__ void copy_sizes(const unsigned char* src, const int* src_bytes, int peek, unsigned char* before,
                           unsigned char* after) {
  L2V_SHARED(unsigned char, slots, [32 * 16]);
  const unsigned t = threadIdx.x;
  for (int i = 0; i < 16; ++i) slots[16 * t + i] = 0xAB;  // bytes past kBytes stay 0xAB
  if constexpr (kCg) {
    ptx::cp_async_cg(&slots[16 * t], src + 16 * t, src_bytes[t]);
  } else {
    ptx::cp_async_ca<kBytes>(&slots[16 * t], src + 16 * t, src_bytes[t]);
  }
  ptx::cp_async_commit_group();
  if (peek) {
    for (int i = 0; i < kBytes; ++i) before[16 * t + i] = slots[16 * t + i];
  }
  ptx::cp_async_wait_group<0>();
  __syncthreads();
  for (int i = 0; i < 16; ++i) after[16 * t + i] = slots[16 * ((t + 1) % 32) + i];  // a neighbour's slot
}

template <int kBytes, bool kCg>
void check_copy_sizes() {
  std::vector<unsigned char> src(32 * 16);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<unsigned char>(i * 7 + 1);
  std::vector<int> src_bytes(32);
  for (int t = 0; t < 32; ++t) src_bytes[t] = t % 3 == 0 ? kBytes : t % 3 == 1 ? kBytes / 2 : 0;
  Raw<unsigned char> dsrc(src), before(32 * 16), after(32 * 16);
  Raw<int> dsrc_bytes(src_bytes);
#if defined(__SANITIZE_ADDRESS__)
  const int peek = 0;  // a plain read of a pending destination is fatal here (see the death test)
#else
  const int peek = 1;
#endif
  launch("copy_sizes", copy_sizes<kBytes, kCg>, dim3(1), dim3(32), 0, nullptr, dsrc.ptr, dsrc_bytes.ptr, peek,
         before.ptr, after.ptr);
  const std::vector<unsigned char> b = download(before, 32 * 16), a = download(after, 32 * 16);
  for (int t = 0; t < 32; ++t) {
    const int n = (t + 1) % 32;  // the slot thread t read after the barrier
    for (int i = 0; i < 16; ++i) {
      const int want = i >= kBytes ? 0xAB : i < src_bytes[n] ? src[16 * n + i] : 0;
      EXPECT_EQ(a[16 * t + i], want) << kBytes << " bytes, slot " << n << " byte " << i;
      if (peek && i < kBytes) {
        EXPECT_EQ(b[16 * t + i], 0xFF) << "before the wait: slot " << t << " byte " << i;
      }
    }
  }
}

TEST(PtxCpAsync, Ca4) { check_copy_sizes<4, false>(); }
TEST(PtxCpAsync, Ca8) { check_copy_sizes<8, false>(); }
TEST(PtxCpAsync, Ca16) { check_copy_sizes<16, false>(); }
TEST(PtxCpAsync, Cg16) { check_copy_sizes<16, true>(); }

// Thread 0 issues four copies, committing the first three as groups 0, 1, 2 and leaving the fourth
// uncommitted, then waits (wait_group kPending, or wait_all when kPending < 0) and reads the four slots in
// order with ld_shared, writing each value to out[g] (out starts at -1).
template <int kPending>
__global__ void wait_order(const int4* src, int* out) {
  L2V_SHARED(int4, slots, [4]);
  for (int g = 0; g < 4; ++g) {
    ptx::cp_async_cg(&slots[g], &src[g]);  // @wait_order_copy
    if (g < 3) ptx::cp_async_commit_group();
  }
  if constexpr (kPending < 0) {
    ptx::cp_async_wait_all();
  } else {
    ptx::cp_async_wait_group<kPending>();
  }
  for (int g = 0; g < 4; ++g) out[g] = ptx::ld_shared(&slots[g]).x;  // @wait_order_read
}

// Returns out[0..4) and the launch's error message.
template <int kPending>
std::pair<std::vector<int>, std::string> run_wait_order() {
  Raw<int4> src(std::vector<int4>{{10, 0, 0, 0}, {11, 0, 0, 0}, {12, 0, 0, 0}, {13, 0, 0, 0}});
  Raw<int> out(std::vector<int>(4, -1));
  const std::string msg = kernel_error(
      [&] { launch("wait_order", wait_order<kPending>, dim3(1), dim3(1), 0, nullptr, src.ptr, out.ptr); });
  return {download(out, 4), msg};
}

TEST(PtxCpAsync, WaitGroupLandsAllButTheNewestGroups) {
  for (const auto& [pending, run] : {std::make_pair(2, run_wait_order<2>()), std::make_pair(1, run_wait_order<1>()),
                                     std::make_pair(0, run_wait_order<0>())}) {
    const auto& [out, msg] = run;
    // Groups 0 .. 2 - pending landed; the first read of a later slot is reported, the uncommitted copy
    // included after wait_group 0.
    const int landed = 3 - pending;
    for (int g = 0; g < 4; ++g) EXPECT_EQ(out[g], g < landed ? 10 + g : -1) << "wait_group " << pending << ", slot " << g;
    EXPECT_TRUE(contains(msg, "kernel 'wait_order'")) << msg;
    EXPECT_TRUE(contains(msg, "ld_shared at " + site_of("wait_order_read"))) << msg;
    EXPECT_TRUE(contains(msg, "the pending cp.async.cg.shared.global at " + site_of("wait_order_copy"))) << msg;
    EXPECT_TRUE(contains(msg, "has not written yet")) << msg;
  }
  const auto [out, msg] = run_wait_order<-1>();  // wait_all: the uncommitted copy too
  EXPECT_EQ(msg, "");
  EXPECT_EQ(out, (std::vector<int>{10, 11, 12, 13}));
}

// ---- Planted bugs: each must be a KernelError naming the instruction and the kernel's line.

TEST(PtxBugs, ReadingACpAsyncDestinationBeforeItsWait) {
  GemmData<__nv_bfloat16> g(3);
  const std::string msg = kernel_error([&] {
    launch("gemm64_waits_too_little", gemm64<__nv_bfloat16, 2>, dim3(1), dim3(128), 0, nullptr, g.da.ptr, g.db.ptr,
           g.dc.ptr);
  });
  EXPECT_TRUE(contains(msg, "kernel 'gemm64_waits_too_little'")) << msg;
  EXPECT_TRUE(contains(msg, "ldmatrix.sync.aligned.m8n8.x4.shared.b16 at " + site_of("gemm_ldmatrix_a"))) << msg;
  EXPECT_TRUE(contains(msg, "the pending cp.async.cg.shared.global at " + site_of("gemm_copy_a"))) << msg;
  EXPECT_TRUE(contains(msg, "has not written yet")) << msg;
}

__global__ void ldmatrix_misaligned(uint32_t* out) {
  L2V_SHARED(uint16_t, tile, [16][16]);
  for (int e = 0; e < 16; ++e) tile[threadIdx.x % 16][e] = 0;
  __syncthreads();
  uint32_t r[1];
  // 8 bytes into a 32-byte row:
  ptx::ldmatrix<1>(r, &tile[threadIdx.x % 8][4]);  // @misaligned_row
  out[threadIdx.x] = r[0];
}

TEST(PtxBugs, MisalignedLdmatrixRow) {
  Raw<uint32_t> out(32);
  const std::string msg = kernel_error(
      [&] { launch("ldmatrix_misaligned", ldmatrix_misaligned, dim3(1), dim3(32), 0, nullptr, out.ptr); });
  EXPECT_TRUE(contains(msg, "ldmatrix.sync.aligned.m8n8.x1.shared.b16 at " + site_of("misaligned_row"))) << msg;
  EXPECT_TRUE(contains(msg, "is not 16-byte aligned")) << msg;
}

// dst_offset / src_offset bytes added to the 16-byte copy's destination / source.
__global__ void cp_async_misaligned(const unsigned char* src, int src_offset, int dst_offset) {
  L2V_SHARED(unsigned char, buf, [64]);
  ptx::cp_async_cg(buf + dst_offset, src + src_offset);  // @misaligned_copy
  ptx::cp_async_wait_all();
}

TEST(PtxBugs, MisalignedCpAsyncSourceOrDestination) {
  Raw<unsigned char> src(std::vector<unsigned char>(64, 1));
  for (const auto& [src_offset, dst_offset] : {std::make_pair(4, 0), std::make_pair(0, 8)}) {
    const std::string msg = kernel_error([&] {
      launch("cp_async_misaligned", cp_async_misaligned, dim3(1), dim3(1), 0, nullptr, src.ptr, src_offset, dst_offset);
    });
    EXPECT_TRUE(contains(msg, "cp.async.cg.shared.global at " + site_of("misaligned_copy") + " (16 bytes)")) << msg;
    EXPECT_TRUE(contains(msg, "must both be 16-byte aligned")) << msg;
  }
}

__device__ void zero_tile(float* out) {
  const uint32_t a[4] = {}, b[2] = {};
  float d[4] = {};
  ptx::mma_m16n8k16<__nv_bfloat16>(d, a, b, d);  // @zero_tile_mma
  out[threadIdx.x] = d[0];
}

__global__ void mma_one_tile(float* out) { zero_tile(out); }

TEST(PtxBugs, MmaFromAPartialWarp) {
  Raw<float> out(32);
  const std::string msg =
      kernel_error([&] { launch("mma_one_tile", mma_one_tile, dim3(1), dim3(16), 0, nullptr, out.ptr); });
  EXPECT_TRUE(contains(msg, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 at " + site_of("zero_tile_mma"))) << msg;
  EXPECT_TRUE(contains(msg, "names lanes that do not exist")) << msg;
}

__global__ void mma_half_warp(float* out) {
  if (threadIdx.x < 16) zero_tile(out);  // the other lanes return
}

TEST(PtxBugs, MmaWithLanesThatReturned) {
  Raw<float> out(32);
  const std::string msg =
      kernel_error([&] { launch("mma_half_warp", mma_half_warp, dim3(1), dim3(32), 0, nullptr, out.ptr); });
  EXPECT_TRUE(contains(msg, "deadlock at a warp collective")) << msg;
  EXPECT_TRUE(contains(msg, "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 (mask 0xffffffff) at " +
                                site_of("zero_tile_mma")))
      << msg;
}

__global__ void ldmatrix_divergent(uint32_t* out) {
  L2V_SHARED(uint16_t, tile, [8][8]);
  for (int e = 0; e < 8; ++e) tile[threadIdx.x % 8][e] = 0;
  __syncthreads();
  uint32_t r[1];
  if (threadIdx.x < 16) {
    ptx::ldmatrix<1>(r, &tile[threadIdx.x % 8][0]);  // @divergent_low
  } else {
    ptx::ldmatrix<1>(r, &tile[threadIdx.x % 8][0]);  // @divergent_high
  }
  out[threadIdx.x] = r[0];
}

TEST(PtxBugs, LdmatrixFromDivergentLanes) {
  Raw<uint32_t> out(32);
  const std::string msg =
      kernel_error([&] { launch("ldmatrix_divergent", ldmatrix_divergent, dim3(1), dim3(32), 0, nullptr, out.ptr); });
  EXPECT_TRUE(contains(msg, "ldmatrix.sync.aligned.m8n8.x1.shared.b16: the lanes of warp 0 are not converged")) << msg;
  EXPECT_TRUE(contains(msg, "lane 0 at " + site_of("divergent_low") + ", lane 16 at " + site_of("divergent_high"))) << msg;
}

__global__ void cp_async_never_waited(const int4* src) {
  L2V_SHARED(int4, slot, [1]);
  ptx::cp_async_cg(&slot[0], src);  // @never_waited
  ptx::cp_async_commit_group();
}

TEST(PtxBugs, ReturningWithPendingCopies) {
  Raw<int4> src(1);
  const std::string msg =
      kernel_error([&] { launch("cp_async_never_waited", cp_async_never_waited, dim3(1), dim3(1), 0, nullptr, src.ptr); });
  EXPECT_TRUE(contains(msg, "the kernel returned with 1 cp.async copy never waited for")) << msg;
  EXPECT_TRUE(contains(msg, "cp.async.cg.shared.global at " + site_of("never_waited"))) << msg;
}

// Thread 1 copies into the slot thread 0's copy is still filling.
__global__ void cp_async_overlapping(const int4* src) {
  L2V_SHARED(int4, slot, [1]);
  ptx::cp_async_cg(&slot[0], src);  // @overlapping
  __syncthreads();
  ptx::cp_async_wait_all();
}

TEST(PtxBugs, OverlappingPendingDestinations) {
  Raw<int4> src(1);
  const std::string msg =
      kernel_error([&] { launch("cp_async_overlapping", cp_async_overlapping, dim3(1), dim3(2), 0, nullptr, src.ptr); });
  EXPECT_TRUE(contains(msg, "overlaps that of the pending cp.async.cg.shared.global at " + site_of("overlapping"))) << msg;
}

// The source changes (thread 0 writes it) between the copy and its wait.
__global__ void cp_async_source_changes(int4* src) {
  L2V_SHARED(int4, slot, [1]);
  ptx::cp_async_cg(&slot[0], src);
  src->x += 1;
  ptx::cp_async_wait_all();  // @source_wait
}

TEST(PtxBugs, SourceWrittenWhileTheCopyIsPending) {
  Raw<int4> src(std::vector<int4>{{1, 2, 3, 4}});
  const std::string msg = kernel_error(
      [&] { launch("cp_async_source_changes", cp_async_source_changes, dim3(1), dim3(1), 0, nullptr, src.ptr); });
  EXPECT_TRUE(contains(msg, "cp.async.wait_all at " + site_of("source_wait"))) << msg;
  EXPECT_TRUE(contains(msg, "changed while the copy was pending")) << msg;
}

#if !defined(__SANITIZE_ADDRESS__)  // ASan stops the store itself (the destination is ASan-poisoned)
__global__ void cp_async_destination_written(const int4* src) {
  L2V_SHARED(int4, slot, [1]);
  ptx::cp_async_cg(&slot[0], src);
  slot[0].y = 7;
  ptx::cp_async_wait_all();  // @destination_wait
}

TEST(PtxBugs, DestinationWrittenWhileTheCopyIsPending) {
  Raw<int4> src(1);
  const std::string msg = kernel_error([&] {
    launch("cp_async_destination_written", cp_async_destination_written, dim3(1), dim3(1), 0, nullptr, src.ptr);
  });
  EXPECT_TRUE(contains(msg, "cp.async.wait_all at " + site_of("destination_wait"))) << msg;
  EXPECT_TRUE(contains(msg, "was written while the copy was pending (byte 4 is 0x7")) << msg;
}
#endif

// Both warps read a tile with ldmatrix; warp 0 then refills it by cp.async: the bug of a double-buffered
// loop without its trailing barrier (warp 1 may still be reading on a GPU), unless kBarrier.
template <bool kBarrier>
__global__ void cp_async_refills_a_read_tile(const uint16_t* src, uint32_t* out) {
  L2V_SHARED(uint16_t, tile, [8][8]);
  if (threadIdx.x < 8) ptx::cp_async_cg(&tile[threadIdx.x][0], src + 8 * threadIdx.x);
  ptx::cp_async_wait_all();
  __syncthreads();
  uint32_t r[1];
  ptx::ldmatrix<1>(r, &tile[threadIdx.x % 8][0]);  // @read_before_refill
  out[threadIdx.x] = r[0];
  if (kBarrier) __syncthreads();
  if (threadIdx.x < 8) ptx::cp_async_cg(&tile[threadIdx.x][0], src + 64 + 8 * threadIdx.x);  // @refill
  ptx::cp_async_wait_all();
}

TEST(PtxBugs, CpAsyncOverwritesWhatAnotherWarpReadWithoutABarrier) {
  Raw<uint16_t> src(std::vector<uint16_t>(128, 1));
  Raw<uint32_t> out(64);
  const std::string msg = kernel_error([&] {
    launch("cp_async_refills_a_read_tile", cp_async_refills_a_read_tile<false>, dim3(1), dim3(64), 0, nullptr, src.ptr,
           out.ptr);
  });
  EXPECT_TRUE(contains(msg, "cp.async.cg.shared.global at " + site_of("refill") + " (16 bytes) by warp 0")) << msg;
  EXPECT_TRUE(contains(msg, "was read since the last __syncthreads() by another warp (warps 0x3, first by "
                            "ldmatrix.sync.aligned.m8n8.x1.shared.b16 at " + site_of("read_before_refill"))) << msg;
  EXPECT_TRUE(contains(msg, "a __syncthreads() is missing")) << msg;
  EXPECT_EQ(kernel_error([&] {
              launch("cp_async_refills_a_read_tile", cp_async_refills_a_read_tile<true>, dim3(1), dim3(64), 0, nullptr,
                     src.ptr, out.ptr);
            }),
            "");
}

// Thread 0 (warp 0) copies and waits; thread 32 (warp 1) reads the copy without a barrier in between,
// unless kBarrier. (Run in forward order: in reverse order the reader runs before the copy is issued.)
template <bool kBarrier>
__global__ void cp_async_read_by_another_warp(const int4* src, int* out) {
  L2V_SHARED(int4, slot, [1]);
  if (threadIdx.x == 0) {
    ptx::cp_async_cg(&slot[0], src);  // @landed_copy
    ptx::cp_async_wait_all();
  }
  if (kBarrier) __syncthreads();
  if (threadIdx.x == 32) out[0] = ptx::ld_shared(&slot[0].y);  // @other_warp_read
}

TEST(PtxBugs, AnotherWarpReadsALandedCopyWithoutABarrier) {
  ScheduleScope forward({emu::Order::kForward, 0});
  Raw<int4> src(std::vector<int4>{{1, 2, 3, 4}});
  Raw<int> out(1);
  const std::string msg = kernel_error([&] {
    launch("cp_async_read_by_another_warp", cp_async_read_by_another_warp<false>, dim3(1), dim3(64), 0, nullptr,
           src.ptr, out.ptr);
  });
  EXPECT_TRUE(contains(msg, "ld_shared at " + site_of("other_warp_read") + " (warp 1) reads")) << msg;
  EXPECT_TRUE(contains(msg, "where the cp.async.cg.shared.global at " + site_of("landed_copy"))) << msg;
  EXPECT_TRUE(contains(msg, "(warp 0) landed since the last __syncthreads()")) << msg;
  EXPECT_EQ(kernel_error([&] {
              launch("cp_async_read_by_another_warp", cp_async_read_by_another_warp<true>, dim3(1), dim3(64), 0,
                     nullptr, src.ptr, out.ptr);
            }),
            "");
  EXPECT_EQ(out.get1(), 2);
}

// ---- Bank conflicts of ldmatrix.x4 over a 16 x kStride tile of 16-bit elements (lane l: row l % 16,
// column 8 (l / 16)), one warp.
template <int kStride>
__global__ void ldmatrix_strided(uint32_t* out) {
  L2V_SHARED(uint16_t, tile, [16][kStride]);
  for (int e = 0; e < kStride; ++e) tile[threadIdx.x % 16][e] = 0;
  __syncthreads();
  uint32_t r[4];
  ptx::ldmatrix<4>(r, &tile[threadIdx.x % 16][8 * (threadIdx.x / 16)]);
  out[threadIdx.x] = r[0];
}

template <int kStride>
emu::LaunchStats strided_stats() {
  Raw<uint32_t> out(32);
  launch("ldmatrix_strided", ldmatrix_strided<kStride>, dim3(1), dim3(32), 0, nullptr, out.ptr);
  return emu::last_launch_stats();
}

TEST(PtxBankConflicts, CountedPerLdmatrixPhase) {
  // 40 elements = 80 bytes = 20 words: the 8 rows of a phase start at banks 20 r mod 32 =
  // {0,20,8,28,16,4,24,12}, 4 banks each, all distinct: one wavefront per matrix.
  const emu::LaunchStats padded = strided_stats<40>();
  EXPECT_EQ(padded.ldmatrix_wavefronts, 4u);
  EXPECT_EQ(padded.ldmatrix_bank_conflicts, 0u);
  // 32 elements = 64 bytes = 16 words: rows r and r + 2 are 128 bytes apart, in the same 4 banks, so
  // each bank holds 4 distinct words of a phase: 4 wavefronts per matrix, 3 more than one.
  const emu::LaunchStats unpadded = strided_stats<32>();
  EXPECT_EQ(unpadded.ldmatrix_wavefronts, 4u * 4);
  EXPECT_EQ(unpadded.ldmatrix_bank_conflicts, 4u * 3);
  // 64 elements = 128 bytes: all 8 rows in the same 4 banks: 8 wavefronts, 7 extra, per matrix.
  const emu::LaunchStats worst = strided_stats<64>();
  EXPECT_EQ(worst.ldmatrix_wavefronts, 4u * 8);
  EXPECT_EQ(worst.ldmatrix_bank_conflicts, 4u * 7);
  std::printf("ldmatrix.x4 bank conflicts: stride 80 B: %llu, 64 B: %llu, 128 B: %llu\n",
              static_cast<unsigned long long>(padded.ldmatrix_bank_conflicts),
              static_cast<unsigned long long>(unpadded.ldmatrix_bank_conflicts),
              static_cast<unsigned long long>(worst.ldmatrix_bank_conflicts));
}

// ---- AddressSanitizer: a plain load of a pending cp.async destination is fatal, with the kernel's frame.
#if defined(__SANITIZE_ADDRESS__)
// copy_sizes with `peek`: every thread reads its 16-byte slot before the wait.
void peek_before_the_wait() {
  Raw<unsigned char> src(std::vector<unsigned char>(32 * 16, 1)), before(32 * 16), after(32 * 16);
  Raw<int> src_bytes(std::vector<int>(32, 16));
  launch("copy_sizes", copy_sizes<16, true>, dim3(1), dim3(32), 0, nullptr, src.ptr, src_bytes.ptr, 1, before.ptr,
         after.ptr);
}

TEST(PtxAsanDeathTest, PlainLoadOfAPendingDestination) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(peek_before_the_wait(), "AddressSanitizer: use-after-poison.*copy_sizes");
}
#endif

}  // namespace
