// Tests of the CUDA-on-CPU emulator (host/emu/). The kernels below are written as the project's kernels
// are (cuda/common.cuh for shared memory, cuda/launch.h to launch) and their results are compared with
// host computations; the CUDA runtime and cuBLAS calls go through the real CUDA headers' declarations.
// Bug-finding tests assert that divergent barriers, early exits before a barrier, broken warp masks,
// WMMA misuse and missing __syncthreads() are reported or visible, and (in the AddressSanitizer build,
// build/asan/test_emulator) that out-of-bounds shared and global accesses are caught.
#include <gtest/gtest.h>

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdint>
#include <cstring>
#include <functional>
#include <random>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/launch.h"
#include "test/cuda_test_util.h"
#include <cublasLt.h>
#include <cublas_v2.h>

namespace {

namespace emu = l2v::emu;
using l2v::launch;
using l2v::test::all_orders;
using l2v::test::contains;
using l2v::test::kernel_error;
using l2v::test::order_name;
using l2v::test::ScheduleScope;

// ---- Helpers.

// A cudaMalloc'ed array, freed at the end of the scope.
template <typename T>
struct DeviceArray {
  T* ptr = nullptr;
  size_t n = 0;
  explicit DeviceArray(size_t count) : n(count) { CUDA_CHECK(cudaMalloc(reinterpret_cast<void**>(&ptr), n * sizeof(T))); }
  explicit DeviceArray(const std::vector<T>& host) : DeviceArray(host.size()) { upload(host); }
  ~DeviceArray() { cudaFree(ptr); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  void upload(const std::vector<T>& host) {
    ASSERT_EQ(host.size(), n);
    CUDA_CHECK(cudaMemcpy(ptr, host.data(), n * sizeof(T), cudaMemcpyHostToDevice));
  }
  std::vector<T> download() const {
    std::vector<T> host(n);
    CUDA_CHECK(cudaMemcpy(host.data(), ptr, n * sizeof(T), cudaMemcpyDeviceToHost));
    return host;
  }
};

std::vector<float> random_floats(size_t n, uint32_t seed, float lo = -1.0f, float hi = 1.0f) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(lo, hi);
  std::vector<float> v(n);
  for (float& x : v) x = dist(rng);
  return v;
}

float round_bf16(float x) { return __bfloat162float(__float2bfloat16(x)); }

uint32_t float_bits(float x) {
  uint32_t u;
  std::memcpy(&u, &x, sizeof(u));
  return u;
}

// ---- Kernels: block reductions.

template <int kBlock>
__global__ void block_sum_tree(const float* in, float* partial, int n) {
  L2V_SHARED(float, buf, [kBlock]);
  const int i = blockIdx.x * kBlock + threadIdx.x;
  buf[threadIdx.x] = i < n ? in[i] : 0.0f;
  __syncthreads();
  for (int s = kBlock / 2; s > 0; s /= 2) {
    if (static_cast<int>(threadIdx.x) < s) buf[threadIdx.x] += buf[threadIdx.x + s];
    __syncthreads();
  }
  if (threadIdx.x == 0) partial[blockIdx.x] = buf[0];
}

// Warp shuffles, then one warp reduces the per-warp sums (blockDim.x a multiple of 32).
__global__ void block_sum_warps(const float* in, float* partial, int n) {
  L2V_SHARED(float, warp_sums, [32]);
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  float v = i < n ? in[i] : 0.0f;
  for (int off = 16; off > 0; off /= 2) v += __shfl_down_sync(0xffffffffu, v, off);
  if (lane == 0) warp_sums[warp] = v;
  __syncthreads();
  if (warp == 0) {
    v = lane < static_cast<int>(blockDim.x / 32) ? warp_sums[lane] : 0.0f;
    for (int off = 16; off > 0; off /= 2) v += __shfl_xor_sync(0xffffffffu, v, off);
    if (lane == 0) partial[blockIdx.x] = v;
  }
}

double host_sum(const std::vector<float>& v) {
  double s = 0.0;
  for (float x : v) s += x;
  return s;
}

TEST(EmulatorKernels, BlockReductionsMatchHostSumInEveryOrder) {
  for (const emu::Schedule& order : all_orders()) {
    ScheduleScope scope(order);
    for (int n : {1, 31, 1000, 4099}) {
      const std::vector<float> x = random_floats(n, 7u + n);
      const double want = host_sum(x);
      DeviceArray<float> in(x);
      struct Case {
        const char* name;
        int block;
      };
      for (const Case& c : {Case{"block_sum_tree<32>", 32}, Case{"block_sum_tree<256>", 256},
                            Case{"block_sum_warps/96", 96}, Case{"block_sum_warps/1024", 1024}}) {
        const int blocks = (n + c.block - 1) / c.block;
        DeviceArray<float> partial(blocks);
        if (c.block == 32) {
          launch(c.name, block_sum_tree<32>, dim3(blocks), dim3(32), 0, nullptr, in.ptr, partial.ptr, n);
        } else if (c.block == 256) {
          launch(c.name, block_sum_tree<256>, dim3(blocks), dim3(256), 0, nullptr, in.ptr, partial.ptr, n);
        } else {
          launch(c.name, block_sum_warps, dim3(blocks), dim3(c.block), 0, nullptr, in.ptr, partial.ptr, n);
        }
        const std::vector<float> p = partial.download();
        const double got = host_sum(p);
        EXPECT_NEAR(got, want, 1e-5 * n) << c.name << " n=" << n << " order " << order_name(order);
      }
    }
  }
}

__global__ void barrier_votes(const int* in, int* out) {
  const int v = in[threadIdx.x];
  out[0] = __syncthreads_count(v > 0);
  out[1] = __syncthreads_and(v > -5);
  out[2] = __syncthreads_or(v > 5);
}

TEST(EmulatorKernels, SyncthreadsCountAndOr) {
  std::vector<int> x(100);
  for (int i = 0; i < 100; ++i) x[i] = i % 7 - 3;  // -3..3
  DeviceArray<int> in(x), out(3);
  launch("barrier_votes", barrier_votes, dim3(1), dim3(100), 0, nullptr, in.ptr, out.ptr);
  const std::vector<int> got = out.download();
  EXPECT_EQ(got[0], static_cast<int>(std::count_if(x.begin(), x.end(), [](int v) { return v > 0; })));
  EXPECT_EQ(got[1], 1);
  EXPECT_EQ(got[2], 0);
}

// ---- Kernels: thread indexing.

__global__ void write_indices(unsigned* out) {
  const unsigned block = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
  const unsigned thread = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
  const unsigned per_block = blockDim.x * blockDim.y * blockDim.z;
  out[block * per_block + thread] = block * 100000u + threadIdx.z * 10000u + threadIdx.y * 100u + threadIdx.x;
}

TEST(EmulatorKernels, ThreeDimensionalIndices) {
  const dim3 grid(3, 2, 2), block(8, 4, 2);
  DeviceArray<unsigned> out(12 * 64);
  launch("write_indices", write_indices, grid, block, 0, nullptr, out.ptr);
  const std::vector<unsigned> got = out.download();
  for (unsigned b = 0; b < 12; ++b) {
    for (unsigned z = 0; z < 2; ++z) {
      for (unsigned y = 0; y < 4; ++y) {
        for (unsigned x = 0; x < 8; ++x) {
          ASSERT_EQ(got[b * 64 + x + 8 * (y + 4 * z)], b * 100000u + z * 10000u + y * 100u + x);
        }
      }
    }
  }
}

// ---- Kernels: warp collectives.

constexpr int kWarpOutputs = 10;

__global__ void warp_ops(const int* in, int* out) {
  const int t = threadIdx.x, lane = t % 32;
  const int v = in[t];
  int sum = v;
  for (int off = 16; off > 0; off /= 2) sum += __shfl_xor_sync(0xffffffffu, sum, off);
  int* o = out + t * kWarpOutputs;
  o[0] = sum;
  o[1] = __shfl_down_sync(0xffffffffu, v, 3);
  o[2] = __shfl_up_sync(0xffffffffu, v, 5);
  o[3] = __shfl_sync(0xffffffffu, v, 7);
  o[4] = __shfl_down_sync(0xffffffffu, v, 2, 8);  // within segments of 8 lanes
  o[5] = static_cast<int>(__ballot_sync(0xffffffffu, v > 0));
  o[6] = __any_sync(0xffffffffu, v > 40);
  o[7] = __all_sync(0xffffffffu, v > -50);
  // Half a warp, with a mask naming exactly that half.
  o[8] = lane < 16 ? __shfl_xor_sync(0x0000ffffu, v, 1) : -7;
  const float f = __shfl_sync(0xffffffffu, static_cast<float>(v) * 0.5f, 31 - lane);
  o[9] = static_cast<int>(f * 2.0f);
  __syncwarp();
}

TEST(EmulatorKernels, WarpShufflesAndVotesMatchHost) {
  std::vector<int> x(64);
  std::mt19937 rng(3);
  for (int& v : x) v = static_cast<int>(rng() % 91) - 45;  // -45..45
  x[40] = 45;  // warp 1 has a value > 40; warp 0 may not
  DeviceArray<int> in(x), out(64 * kWarpOutputs);
  launch("warp_ops", warp_ops, dim3(1), dim3(64), 0, nullptr, in.ptr, out.ptr);
  const std::vector<int> got = out.download();
  for (int t = 0; t < 64; ++t) {
    const int lane = t % 32, w = t - lane;
    int sum = 0, any = 0, all = 1;
    unsigned ballot = 0;
    for (int l = 0; l < 32; ++l) {
      sum += x[w + l];
      ballot |= (x[w + l] > 0 ? 1u : 0u) << l;
      any |= x[w + l] > 40;
      all &= x[w + l] > -50;
    }
    const int* o = &got[t * kWarpOutputs];
    EXPECT_EQ(o[0], sum) << "xor butterfly, thread " << t;
    EXPECT_EQ(o[1], lane + 3 < 32 ? x[t + 3] : x[t]) << "down, thread " << t;
    EXPECT_EQ(o[2], lane >= 5 ? x[t - 5] : x[t]) << "up, thread " << t;
    EXPECT_EQ(o[3], x[w + 7]) << "broadcast, thread " << t;
    EXPECT_EQ(o[4], lane % 8 + 2 < 8 ? x[t + 2] : x[t]) << "down within 8 lanes, thread " << t;
    EXPECT_EQ(static_cast<unsigned>(o[5]), ballot) << "ballot, thread " << t;
    EXPECT_EQ(o[6], any) << "any, thread " << t;
    EXPECT_EQ(o[7], all) << "all, thread " << t;
    EXPECT_EQ(o[8], lane < 16 ? x[t ^ 1] : -7) << "half-warp xor, thread " << t;
    EXPECT_EQ(o[9], x[w + 31 - lane]) << "float shuffle, thread " << t;
  }
}

__global__ void shuffle_outside_mask(int* out) {
  const int lane = threadIdx.x;
  if (lane < 16) out[lane] = __shfl_sync(0x0000ffffu, lane * 10, 20);  // lane 20 is not in the mask
}

TEST(EmulatorKernels, ShuffleFromLaneOutsideMaskReadsPoison) {
  DeviceArray<int> out(16);
  launch("shuffle_outside_mask", shuffle_outside_mask, dim3(1), dim3(32), 0, nullptr, out.ptr);
  for (int v : out.download()) EXPECT_EQ(v, -1);  // undefined on a GPU: all bits set here
}

__global__ void shuffle_wide_types(const double* in, double* out, __nv_bfloat16* bout) {
  const int lane = threadIdx.x;
  out[lane] = __shfl_xor_sync(0xffffffffu, in[lane], 3);
  bout[lane] = __shfl_sync(0xffffffffu, __float2bfloat16(static_cast<float>(lane)), 0);
}

TEST(EmulatorKernels, ShufflesMoveDoublesAndBf16) {
  std::vector<double> x(32);
  for (int i = 0; i < 32; ++i) x[i] = 1.0 / (i + 1);
  DeviceArray<double> in(x), out(32);
  DeviceArray<__nv_bfloat16> bout(32);
  launch("shuffle_wide_types", shuffle_wide_types, dim3(1), dim3(32), 0, nullptr, in.ptr, out.ptr, bout.ptr);
  const std::vector<double> got = out.download();
  const std::vector<__nv_bfloat16> bgot = bout.download();
  for (int i = 0; i < 32; ++i) {
    EXPECT_EQ(got[i], x[i ^ 3]);
    EXPECT_EQ(__bfloat162float(bgot[i]), 0.0f);
  }
}

// Lanes that took different paths: each branch shuffles with its own half-warp mask, and the two
// halves of a full-mask shuffle may call it from different sites (legal since Volta).
__global__ void divergent_warp(const int* in, int* out, unsigned* active) {
  const int lane = threadIdx.x;
  int v = in[lane];
  if (lane < 16) {
    v += __shfl_xor_sync(0x0000ffffu, v, 8);
  } else {
    v -= __shfl_xor_sync(0xffff0000u, v, 8);
  }
  if (lane % 2 == 0) {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  } else {
    v = __shfl_xor_sync(0xffffffffu, v, 1);
  }
  out[lane] = v;
  if (lane >= 20) return;
  active[lane] = __ballot_sync(__activemask(), 1);
}

TEST(EmulatorKernels, DivergentWarpPathsAndActiveMask) {
  std::vector<int> x(32);
  for (int i = 0; i < 32; ++i) x[i] = i * i;
  DeviceArray<int> in(x), out(32);
  DeviceArray<unsigned> active(32);
  for (const emu::Schedule& order : all_orders()) {
    ScheduleScope scope(order);
    launch("divergent_warp", divergent_warp, dim3(1), dim3(32), 0, nullptr, in.ptr, out.ptr, active.ptr);
    const std::vector<int> got = out.download();
    const std::vector<unsigned> mask = active.download();
    for (int l = 0; l < 32; ++l) {
      const int src = l ^ 1;
      const int want = src < 16 ? x[src] + x[src ^ 8] : x[src] - x[src ^ 8];
      EXPECT_EQ(got[l], want) << "lane " << l << " order " << order_name(order);
      if (l < 20) {
        EXPECT_EQ(mask[l], 0x000fffffu) << "lane " << l << " order " << order_name(order);
      }
    }
  }
}

// ---- Kernels: atomics from many blocks (which run on several OS threads).

__global__ void atomics(const float* vals, int n, int* count, float* fsum, int* vmax, int* cas_count,
                        unsigned* last) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i >= n) return;
  atomicAdd(count, 1);
  atomicAdd(fsum, vals[i]);
  atomicMax(vmax, (i * 7919) % 10007);
  int old = *cas_count, seen;
  while ((seen = atomicCAS(cas_count, old, old + 2)) != old) old = seen;
  atomicExch(last, 1u);
}

TEST(EmulatorKernels, AtomicsFromManyBlocks) {
  const int n = 8000, block = 128, blocks = (n + block - 1) / block;
  const std::vector<float> x = random_floats(n, 11, 0.0f, 1.0f);
  DeviceArray<float> vals(x), fsum(std::vector<float>{0.0f});
  DeviceArray<int> count(std::vector<int>{0}), vmax(std::vector<int>{-1}), cas_count(std::vector<int>{0});
  DeviceArray<unsigned> last(std::vector<unsigned>{0});
  launch("atomics", atomics, dim3(blocks), dim3(block), 0, nullptr, vals.ptr, n, count.ptr, fsum.ptr, vmax.ptr,
         cas_count.ptr, last.ptr);
  int want_max = 0;
  for (int i = 0; i < n; ++i) want_max = std::max(want_max, (i * 7919) % 10007);
  EXPECT_EQ(count.download()[0], n);
  EXPECT_EQ(cas_count.download()[0], 2 * n);
  EXPECT_EQ(vmax.download()[0], want_max);
  EXPECT_EQ(last.download()[0], 1u);
  EXPECT_NEAR(fsum.download()[0], host_sum(x), 1e-6 * n * n / 2);  // fp32 rounding, any order
}

// ---- Kernels: dynamic shared memory.

__global__ void reverse_in_block(const float* in, float* out) {
  L2V_DYNAMIC_SHARED(float, smem);
  const int t = threadIdx.x, base = blockIdx.x * blockDim.x;
  smem[t] = in[base + t];
  __syncthreads();
  out[base + t] = smem[blockDim.x - 1 - t];
}

__global__ void fill_dynamic(float* out, int n) {
  L2V_DYNAMIC_SHARED(float, smem);
  for (int i = threadIdx.x; i < n; i += blockDim.x) smem[i] = static_cast<float>(i);
  __syncthreads();
  if (threadIdx.x == 0) out[0] = smem[n - 1];
}

TEST(EmulatorKernels, DynamicSharedMemory) {
  const int block = 48, blocks = 5;
  const std::vector<float> x = random_floats(block * blocks, 5);
  DeviceArray<float> in(x), out(block * blocks);
  launch("reverse_in_block", reverse_in_block, dim3(blocks), dim3(block), block * sizeof(float), nullptr, in.ptr,
         out.ptr);
  const std::vector<float> got = out.download();
  for (int b = 0; b < blocks; ++b) {
    for (int t = 0; t < block; ++t) EXPECT_EQ(got[b * block + t], x[b * block + block - 1 - t]);
  }

  // Over 48 KiB needs the kernel's opt-in, as on a GPU.
  const int n = 16384;  // 64 KiB
  DeviceArray<float> last(1);
  try {
    launch("fill_dynamic", fill_dynamic, dim3(1), dim3(128), n * sizeof(float), nullptr, last.ptr, n);
    ADD_FAILURE() << "a 64 KiB dynamic shared memory launch without the attribute did not fail";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(contains(e.what(), "fill_dynamic")) << e.what();
    EXPECT_TRUE(contains(e.what(), "cudaErrorInvalidValue")) << e.what();
  }
  CUDA_CHECK(cudaFuncSetAttribute(reinterpret_cast<const void*>(fill_dynamic),
                                  cudaFuncAttributeMaxDynamicSharedMemorySize, n * sizeof(float)));
  launch("fill_dynamic", fill_dynamic, dim3(1), dim3(128), n * sizeof(float), nullptr, last.ptr, n);
  EXPECT_EQ(last.download()[0], static_cast<float>(n - 1));
}

// ---- Kernels: transpose through a padded shared tile.

constexpr int kTile = 32, kTileRows = 8;

__global__ void transpose(const float* in, float* out, int rows, int cols) {
  L2V_SHARED(float, tile, [kTile][kTile + 1]);
  int x = blockIdx.x * kTile + threadIdx.x;
  int y = blockIdx.y * kTile + threadIdx.y;
  for (int j = 0; j < kTile; j += kTileRows) {
    if (x < cols && y + j < rows) tile[threadIdx.y + j][threadIdx.x] = in[(y + j) * cols + x];
  }
  __syncthreads();
  x = blockIdx.y * kTile + threadIdx.x;
  y = blockIdx.x * kTile + threadIdx.y;
  for (int j = 0; j < kTile; j += kTileRows) {
    if (x < rows && y + j < cols) out[(y + j) * rows + x] = tile[threadIdx.x][threadIdx.y + j];
  }
}

TEST(EmulatorKernels, TransposeThroughPaddedTile) {
  const int rows = 70, cols = 45;
  const std::vector<float> x = random_floats(rows * cols, 9);
  DeviceArray<float> in(x), out(rows * cols);
  for (const emu::Schedule& order : all_orders()) {
    ScheduleScope scope(order);
    CUDA_CHECK(cudaMemset(out.ptr, 0, rows * cols * sizeof(float)));
    launch("transpose", transpose, dim3((cols + kTile - 1) / kTile, (rows + kTile - 1) / kTile), dim3(kTile, kTileRows),
           0, nullptr, in.ptr, out.ptr, rows, cols);
    const std::vector<float> got = out.download();
    for (int r = 0; r < rows; ++r) {
      for (int c = 0; c < cols; ++c) {
        ASSERT_EQ(got[c * rows + r], x[r * cols + c]) << "(" << r << "," << c << ") order " << order_name(order);
      }
    }
  }
}

// ---- Kernels: WMMA.

// One warp: C = 2 * A[16 x K] (row-major) * B[K x 16] (column-major, ldm K), A staged through shared
// memory; C is stored row-major to c and column-major to c_t.
__global__ void wmma_gemm(const __nv_bfloat16* a, const __nv_bfloat16* b, float* c, float* c_t, int k) {
  using namespace nvcuda;
  L2V_SHARED(__nv_bfloat16, a_tile, [16 * 16]);
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::fill_fragment(acc, 0.0f);
  for (int k0 = 0; k0 < k; k0 += 16) {
    for (int i = threadIdx.x; i < 256; i += 32) a_tile[i] = a[(i / 16) * k + k0 + i % 16];
    __syncwarp();
    wmma::load_matrix_sync(fa, a_tile, 16);
    wmma::load_matrix_sync(fb, b + k0, k);
    wmma::mma_sync(acc, fa, fb, acc);
    __syncwarp();
  }
  for (int i = 0; i < acc.num_elements; ++i) acc.x[i] *= 2.0f;
  wmma::store_matrix_sync(c, acc, 16, wmma::mem_row_major);
  wmma::store_matrix_sync(c_t, acc, 16, wmma::mem_col_major);
}

TEST(EmulatorKernels, WmmaBf16GemmMatchesHost) {
  const int k = 48;
  const std::vector<float> a32 = random_floats(16 * k, 21), b32 = random_floats(k * 16, 22);
  std::vector<__nv_bfloat16> a(a32.size()), b(b32.size());
  for (size_t i = 0; i < a.size(); ++i) a[i] = __float2bfloat16(a32[i]);
  for (size_t i = 0; i < b.size(); ++i) b[i] = __float2bfloat16(b32[i]);
  DeviceArray<__nv_bfloat16> da(a), db(b);
  DeviceArray<float> dc(256), dct(256);
  launch("wmma_gemm", wmma_gemm, dim3(1), dim3(32), 0, nullptr, da.ptr, db.ptr, dc.ptr, dct.ptr, k);
  const std::vector<float> c = dc.download(), ct = dct.download();
  for (int i = 0; i < 16; ++i) {
    for (int j = 0; j < 16; ++j) {
      double want = 0.0;
      for (int l = 0; l < k; ++l) want += static_cast<double>(round_bf16(a32[i * k + l])) * round_bf16(b32[j * k + l]);
      want *= 2.0;
      EXPECT_NEAR(c[i * 16 + j], want, 1e-5 * (1.0 + std::fabs(want))) << "(" << i << "," << j << ")";
      EXPECT_EQ(ct[j * 16 + i], c[i * 16 + j]);
    }
  }
}

__global__ void wmma_load(const __nv_bfloat16* a) {
  nvcuda::wmma::fragment<nvcuda::wmma::matrix_a, 16, 16, 16, __nv_bfloat16, nvcuda::wmma::row_major> fa;
  nvcuda::wmma::load_matrix_sync(fa, a, 16);
}

TEST(EmulatorBugs, WmmaMisuseIsReported) {
  DeviceArray<__nv_bfloat16> a(512);
  const std::string misaligned =
      kernel_error([&] { launch("wmma_load", wmma_load, dim3(1), dim3(32), 0, nullptr, a.ptr + 1); });
  EXPECT_TRUE(contains(misaligned, "kernel 'wmma_load'")) << misaligned;
  EXPECT_TRUE(contains(misaligned, "wmma::load_matrix_sync at ")) << misaligned;
  EXPECT_TRUE(contains(misaligned, "not 32-byte aligned")) << misaligned;
  // A warp of 16 threads cannot run a warp-wide operation.
  const std::string partial =
      kernel_error([&] { launch("wmma_load", wmma_load, dim3(1), dim3(16), 0, nullptr, a.ptr); });
  EXPECT_TRUE(contains(partial, "wmma::load_matrix_sync at ")) << partial;
  EXPECT_TRUE(contains(partial, "names lanes that do not exist")) << partial;
  launch("wmma_load", wmma_load, dim3(1), dim3(32), 0, nullptr, a.ptr);
}

// ---- CUDA runtime.

__global__ void add_one(float* x, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] += 1.0f;
}

TEST(EmulatorRuntime, DeviceProperties) {
  int count = 0;
  CUDA_CHECK(cudaGetDeviceCount(&count));
  EXPECT_EQ(count, 1);
  CUDA_CHECK(cudaSetDevice(0));
  EXPECT_EQ(cudaSetDevice(1), cudaErrorInvalidDevice);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidDevice);
  cudaDeviceProp prop;
  CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));
  EXPECT_STREQ(prop.name, "llm2vec.cu emulator");
  EXPECT_EQ(prop.major, 9);
  EXPECT_EQ(prop.minor, 0);
  EXPECT_EQ(prop.warpSize, 32);
  EXPECT_EQ(prop.sharedMemPerBlock, 48u * 1024);
  EXPECT_EQ(prop.maxThreadsPerBlock, 1024);
  EXPECT_GE(prop.multiProcessorCount, 1);
  EXPECT_GT(prop.totalGlobalMem, 0u);
  int optin = 0;
  CUDA_CHECK(cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, 0));
  EXPECT_EQ(static_cast<size_t>(optin), prop.sharedMemPerBlockOptin);
}

TEST(EmulatorRuntime, MemoryStreamsAndEvents) {
  const int n = 1000;
  cudaStream_t stream;
  CUDA_CHECK(cudaStreamCreate(&stream));
  cudaEvent_t start, stop;
  CUDA_CHECK(cudaEventCreate(&start));
  CUDA_CHECK(cudaEventCreate(&stop));
  DeviceArray<float> x(n);
  CUDA_CHECK(cudaMemsetAsync(x.ptr, 0, n * sizeof(float), stream));
  CUDA_CHECK(cudaEventRecord(start, stream));
  launch("add_one", add_one, dim3((n + 127) / 128), dim3(128), 0, stream, x.ptr, n);
  CUDA_CHECK(cudaEventRecord(stop, stream));
  CUDA_CHECK(cudaEventSynchronize(stop));
  float ms = -1.0f;
  CUDA_CHECK(cudaEventElapsedTime(&ms, start, stop));
  EXPECT_GE(ms, 0.0f);
  std::vector<float> host(n, -1.0f);
  CUDA_CHECK(cudaMemcpyAsync(host.data(), x.ptr, n * sizeof(float), cudaMemcpyDeviceToHost, stream));
  CUDA_CHECK(cudaStreamSynchronize(stream));
  for (float v : host) ASSERT_EQ(v, 1.0f);
  CUDA_CHECK(cudaMemset(x.ptr, 0xFF, n * sizeof(float)));
  EXPECT_EQ(float_bits(x.download()[n - 1]), 0xFFFFFFFFu);
  CUDA_CHECK(cudaEventDestroy(start));
  CUDA_CHECK(cudaEventDestroy(stop));
  CUDA_CHECK(cudaStreamDestroy(stream));

  // Errors: returned, kept as the last error, cleared by cudaGetLastError.
  int on_stack = 0;
  EXPECT_EQ(cudaFree(&on_stack), cudaErrorInvalidValue);
  EXPECT_EQ(cudaPeekAtLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidValue);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  try {
    CUDA_CHECK(cudaStreamSynchronize(stream));  // destroyed above
    ADD_FAILURE() << "CUDA_CHECK did not throw";
  } catch (const std::runtime_error& e) {
    EXPECT_TRUE(contains(e.what(), "cudaStreamSynchronize(stream)")) << e.what();
    EXPECT_TRUE(contains(e.what(), "invalid resource handle")) << e.what();
  }
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  l2v::NvtxRange range("emulator test");
}

TEST(EmulatorRuntime, InvalidLaunchConfigurationSetsLastError) {
  DeviceArray<float> x(std::vector<float>(64, 0.0f));
  // The emulator's raw launch leaves the error for cudaGetLastError, as kernel<<<>>>() does.
  emu::launch("add_one", add_one, dim3(1), dim3(1025), 0, nullptr, x.ptr, 64);
  EXPECT_EQ(cudaPeekAtLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaErrorInvalidConfiguration);
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_STREQ(cudaGetErrorString(cudaErrorInvalidConfiguration), "invalid configuration argument");
  // l2v::launch turns it into an exception naming the kernel.
  const std::pair<dim3, dim3> bad[] = {{dim3(0), dim3(32)}, {dim3(1), dim3(32, 32, 2)}, {dim3(1, 70000), dim3(32)},
                                       {dim3(1), dim3(1, 1, 65)}};
  for (const auto& [grid, block] : bad) {
    try {
      launch("add_one", add_one, grid, block, 0, nullptr, x.ptr, 64);
      ADD_FAILURE() << "launch did not fail";
    } catch (const std::runtime_error& e) {
      EXPECT_TRUE(contains(e.what(), "kernel 'add_one' launch failed")) << e.what();
      EXPECT_TRUE(contains(e.what(), "invalid configuration argument")) << e.what();
    }
  }
  for (float v : x.download()) EXPECT_EQ(v, 0.0f);  // nothing ran
}

// ---- Graphs (stream capture, host/emu/graph.cpp).

__global__ void axpb(float* x, float a, float b, int n) {  // x = a x + b
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] = a * x[i] + b;
}

__global__ void times_two(float* x, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) x[i] *= 2.0f;
}

// A stream and pinned host memory for the graph tests.
struct CaptureFixture {
  cudaStream_t stream = nullptr;
  float* pinned = nullptr;  // kPinned floats
  static constexpr int kPinned = 64;
  CaptureFixture() {
    CUDA_CHECK(cudaStreamCreate(&stream));
    CUDA_CHECK(cudaMallocHost(reinterpret_cast<void**>(&pinned), kPinned * sizeof(float)));
    std::fill(pinned, pinned + kPinned, 0.0f);  // pinned memory starts uninitialised, as malloc's
  }
  ~CaptureFixture() {
    cudaFreeHost(pinned);
    cudaStreamDestroy(stream);
  }
  cudaStreamCaptureStatus status() const {
    cudaStreamCaptureStatus st;
    CUDA_CHECK(cudaStreamIsCapturing(stream, &st));
    return st;
  }
  size_t nodes(cudaGraph_t g) const {
    size_t n = 0;
    CUDA_CHECK(cudaGraphGetNodes(g, nullptr, &n));
    return n;
  }
};

TEST(EmulatorGraphs, CaptureRecordsWithoutRunningAndLaunchReplaysInOrder) {
  CaptureFixture f;
  const int n = 8;
  DeviceArray<float> x(std::vector<float>(n, 0.0f)), y(std::vector<float>(n, 0.0f));
  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetStream(handle, f.stream), CUBLAS_STATUS_SUCCESS);
  for (int i = 0; i < n; ++i) f.pinned[i] = (float)i;
  float a = 3.0f, b = 1.0f, alpha = 2.0f, beta = 0.0f;
  DeviceArray<float> one(std::vector<float>{1.0f});
  CUDA_CHECK(cudaStreamBeginCapture(f.stream, cudaStreamCaptureModeGlobal));
  EXPECT_EQ(f.status(), cudaStreamCaptureStatusActive);
  CUDA_CHECK(cudaMemcpyAsync(x.ptr, f.pinned, n * sizeof(float), cudaMemcpyHostToDevice, f.stream));
  launch("axpb", axpb, dim3(1), dim3(32), 0, f.stream, x.ptr, a, b, n);  // x = 3 x + 1
  CUDA_CHECK(cudaMemsetAsync(y.ptr, 0, n * sizeof(float), f.stream));
  // y (n x 1) = alpha * x (n x 1) * [1] (1 x 1)
  ASSERT_EQ(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, n, 1, 1, &alpha, x.ptr, n, one.ptr, 1, &beta, y.ptr, n),
            CUBLAS_STATUS_SUCCESS);
  CUDA_CHECK(cudaMemcpyAsync(f.pinned + 32, y.ptr, n * sizeof(float), cudaMemcpyDeviceToHost, f.stream));
  cudaGraph_t graph = nullptr;
  CUDA_CHECK(cudaStreamEndCapture(f.stream, &graph));
  ASSERT_NE(graph, nullptr);
  EXPECT_EQ(f.status(), cudaStreamCaptureStatusNone);
  EXPECT_EQ(f.nodes(graph), 5u);
  // Nothing ran during the capture.
  for (float v : x.download()) EXPECT_EQ(v, 0.0f);
  for (int i = 0; i < n; ++i) EXPECT_EQ(f.pinned[32 + i], 0.0f);

  cudaGraphExec_t exec = nullptr;
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  // Kernel and GEMM scalars are the values at capture; the copy reads the pinned source at launch.
  a = 100.0f;
  alpha = 100.0f;
  for (int i = 0; i < n; ++i) f.pinned[i] = (float)(10 * i);
  const uint64_t launches = emu::graph_launches(), nodes = emu::graph_nodes_run();
  CUDA_CHECK(cudaGraphLaunch(exec, f.stream));
  CUDA_CHECK(cudaStreamSynchronize(f.stream));
  EXPECT_EQ(emu::graph_launches() - launches, 1u);
  EXPECT_EQ(emu::graph_nodes_run() - nodes, 5u);
  for (int i = 0; i < n; ++i) EXPECT_EQ(f.pinned[32 + i], 2.0f * (3.0f * (10 * i) + 1.0f)) << i;
  // A second launch replays the same chain (the copy resets x first).
  for (int i = 0; i < n; ++i) f.pinned[i] = 1.0f;
  CUDA_CHECK(cudaGraphLaunch(exec, f.stream));
  for (int i = 0; i < n; ++i) EXPECT_EQ(f.pinned[32 + i], 8.0f) << i;
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  cublasDestroy(handle);
}

TEST(EmulatorGraphs, CallsThatWaitOrAllocateInvalidateTheCapture) {
  CaptureFixture f;
  const int n = 4;
  DeviceArray<float> x(std::vector<float>(n, 1.0f));
  std::vector<float> pageable(n, 5.0f);
  cudaEvent_t event;
  CUDA_CHECK(cudaEventCreate(&event));
  struct Unsafe {
    const char* what;
    std::function<cudaError_t()> call;
    cudaError_t expected;
  };
  void* fresh = nullptr;
  const std::vector<Unsafe> calls = {
      {"cudaMalloc", [&] { return cudaMalloc(&fresh, 16); }, cudaErrorStreamCaptureUnsupported},
      {"cudaFree", [&] { return cudaFree(x.ptr); }, cudaErrorStreamCaptureUnsupported},
      {"cudaStreamSynchronize", [&] { return cudaStreamSynchronize(f.stream); }, cudaErrorStreamCaptureUnsupported},
      {"cudaDeviceSynchronize", [&] { return cudaDeviceSynchronize(); }, cudaErrorStreamCaptureUnsupported},
      {"cudaEventSynchronize", [&] { return cudaEventSynchronize(event); }, cudaErrorStreamCaptureUnsupported},
      {"cudaMemcpy", [&] { return cudaMemcpy(x.ptr, pageable.data(), 4, cudaMemcpyHostToDevice); },
       cudaErrorStreamCaptureUnsupported},
      {"cudaMemcpyAsync from pageable memory",
       [&] { return cudaMemcpyAsync(x.ptr, pageable.data(), 4, cudaMemcpyHostToDevice, f.stream); },
       cudaErrorStreamCaptureUnsupported},
      {"cudaMemcpyAsync to pageable memory",
       [&] { return cudaMemcpyAsync(pageable.data(), x.ptr, 4, cudaMemcpyDeviceToHost, f.stream); },
       cudaErrorStreamCaptureUnsupported},
      {"a launch on the legacy stream",
       [&] {
         emu::launch("times_two", times_two, dim3(1), dim3(32), 0, nullptr, x.ptr, n);
         return cudaGetLastError();
       },
       cudaErrorStreamCaptureImplicit},
  };
  for (const Unsafe& u : calls) {
    SCOPED_TRACE(u.what);
    CUDA_CHECK(cudaStreamBeginCapture(f.stream, cudaStreamCaptureModeGlobal));
    launch("times_two", times_two, dim3(1), dim3(32), 0, f.stream, x.ptr, n);
    EXPECT_EQ(u.call(), u.expected);
    cudaGetLastError();
    EXPECT_EQ(f.status(), cudaStreamCaptureStatusInvalidated);
    // The capturing stream refuses work until the capture ends, and ending it gives no graph.
    emu::launch("times_two", times_two, dim3(1), dim3(32), 0, f.stream, x.ptr, n);
    EXPECT_EQ(cudaGetLastError(), cudaErrorStreamCaptureInvalidated);
    cudaGraph_t graph = reinterpret_cast<cudaGraph_t>(&f);
    EXPECT_EQ(cudaStreamEndCapture(f.stream, &graph), cudaErrorStreamCaptureInvalidated);
    cudaGetLastError();
    EXPECT_EQ(graph, nullptr);
    EXPECT_EQ(f.status(), cudaStreamCaptureStatusNone);
    for (float v : x.download()) EXPECT_EQ(v, 1.0f);  // nothing ran, nothing was freed
  }
  EXPECT_EQ(fresh, nullptr);
  // The stream works again; copies through pinned memory are allowed inside a capture.
  launch("times_two", times_two, dim3(1), dim3(32), 0, f.stream, x.ptr, n);
  for (float v : x.download()) EXPECT_EQ(v, 2.0f);
  CUDA_CHECK(cudaStreamBeginCapture(f.stream, cudaStreamCaptureModeGlobal));
  CUDA_CHECK(cudaMemcpyAsync(f.pinned, x.ptr, n * sizeof(float), cudaMemcpyDeviceToHost, f.stream));
  cudaGraph_t graph = nullptr;
  CUDA_CHECK(cudaStreamEndCapture(f.stream, &graph));
  EXPECT_EQ(f.nodes(graph), 1u);
  CUDA_CHECK(cudaGraphDestroy(graph));
  // Nested begin, end without begin.
  CUDA_CHECK(cudaStreamBeginCapture(f.stream, cudaStreamCaptureModeGlobal));
  EXPECT_EQ(cudaStreamBeginCapture(f.stream, cudaStreamCaptureModeGlobal), cudaErrorIllegalState);
  CUDA_CHECK(cudaStreamEndCapture(f.stream, &graph));
  EXPECT_EQ(f.nodes(graph), 0u);
  CUDA_CHECK(cudaGraphDestroy(graph));
  EXPECT_EQ(cudaStreamEndCapture(f.stream, &graph), cudaErrorIllegalState);
  cudaGetLastError();
  CUDA_CHECK(cudaEventDestroy(event));
}

TEST(EmulatorGraphs, ExecUpdateTakesNewParametersOnlyForTheSameTopology) {
  CaptureFixture f;
  const int n = 40;
  DeviceArray<float> x(std::vector<float>(n, 1.0f));
  auto capture = [&](const std::function<void()>& work) {
    CUDA_CHECK(cudaStreamBeginCapture(f.stream, cudaStreamCaptureModeGlobal));
    work();
    cudaGraph_t g = nullptr;
    CUDA_CHECK(cudaStreamEndCapture(f.stream, &g));
    return g;
  };
  cudaGraph_t first = capture([&] { launch("axpb", axpb, dim3(1), dim3(32), 0, f.stream, x.ptr, 1.0f, 1.0f, 32); });
  cudaGraphExec_t exec = nullptr;
  CUDA_CHECK(cudaGraphInstantiate(&exec, first, 0));
  // Same kernel, other arguments and grid: updated.
  cudaGraph_t second =
      capture([&] { launch("axpb", axpb, dim3(2), dim3(32), 0, f.stream, x.ptr, 2.0f, 0.0f, n); });
  cudaGraphExecUpdateResultInfo info;
  CUDA_CHECK(cudaGraphExecUpdate(exec, second, &info));
  EXPECT_EQ(info.result, cudaGraphExecUpdateSuccess);
  CUDA_CHECK(cudaGraphLaunch(exec, f.stream));
  for (float v : x.download()) EXPECT_EQ(v, 2.0f);  // every one of the 40, doubled
  // Another kernel, or another number of nodes: refused, and the executable graph keeps its parameters.
  cudaGraph_t other_kernel = capture([&] { launch("times_two", times_two, dim3(2), dim3(32), 0, f.stream, x.ptr, n); });
  EXPECT_EQ(cudaGraphExecUpdate(exec, other_kernel, &info), cudaErrorGraphExecUpdateFailure);
  EXPECT_EQ(info.result, cudaGraphExecUpdateErrorFunctionChanged);
  EXPECT_EQ(cudaGetLastError(), cudaErrorGraphExecUpdateFailure);  // also the last error, as the runtime keeps it
  cudaGraph_t two_nodes = capture([&] {
    launch("axpb", axpb, dim3(2), dim3(32), 0, f.stream, x.ptr, 1.0f, 1.0f, n);
    launch("axpb", axpb, dim3(2), dim3(32), 0, f.stream, x.ptr, 1.0f, 1.0f, n);
  });
  EXPECT_EQ(cudaGraphExecUpdate(exec, two_nodes, &info), cudaErrorGraphExecUpdateFailure);
  EXPECT_EQ(info.result, cudaGraphExecUpdateErrorTopologyChanged);
  cudaGetLastError();
  cudaGraph_t memset_node = capture([&] { CUDA_CHECK(cudaMemsetAsync(x.ptr, 0, 4, f.stream)); });
  EXPECT_EQ(cudaGraphExecUpdate(exec, memset_node, &info), cudaErrorGraphExecUpdateFailure);
  EXPECT_EQ(info.result, cudaGraphExecUpdateErrorNodeTypeChanged);
  cudaGetLastError();
  CUDA_CHECK(cudaGraphLaunch(exec, f.stream));
  for (float v : x.download()) EXPECT_EQ(v, 4.0f);
  // A graph launch inside a capture (a child graph) is not emulated: refused.
  CUDA_CHECK(cudaStreamBeginCapture(f.stream, cudaStreamCaptureModeGlobal));
  EXPECT_EQ(cudaGraphLaunch(exec, f.stream), cudaErrorStreamCaptureUnsupported);
  cudaGraph_t none = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(f.stream, &none), cudaErrorStreamCaptureInvalidated);
  cudaGetLastError();
  for (cudaGraph_t g : {first, second, other_kernel, two_nodes, memset_node}) CUDA_CHECK(cudaGraphDestroy(g));
  CUDA_CHECK(cudaGraphExecDestroy(exec));
}

TEST(EmulatorGraphs, EventsInsideACaptureOrderOnlyTheCapturingStream) {
  CaptureFixture f;
  cudaStream_t other;
  CUDA_CHECK(cudaStreamCreate(&other));
  cudaEvent_t event;
  CUDA_CHECK(cudaEventCreate(&event));
  CUDA_CHECK(cudaStreamBeginCapture(f.stream, cudaStreamCaptureModeGlobal));
  CUDA_CHECK(cudaEventRecord(event, f.stream));
  CUDA_CHECK(cudaStreamWaitEvent(f.stream, event, 0));  // the stream itself: fine
  // Another stream joining the capture (a fork) is not emulated.
  EXPECT_EQ(cudaStreamWaitEvent(other, event, 0), cudaErrorStreamCaptureUnsupported);
  cudaGraph_t graph = nullptr;
  EXPECT_EQ(cudaStreamEndCapture(f.stream, &graph), cudaErrorStreamCaptureInvalidated);
  cudaGetLastError();
  // An event last recorded inside a capture cannot be waited for by the host.
  EXPECT_EQ(cudaEventSynchronize(event), cudaErrorStreamCaptureUnsupported);
  cudaGetLastError();
  CUDA_CHECK(cudaEventRecord(event, f.stream));  // recorded outside: usable again
  CUDA_CHECK(cudaEventSynchronize(event));
  CUDA_CHECK(cudaEventDestroy(event));
  CUDA_CHECK(cudaStreamDestroy(other));
}

// ---- cuBLAS.

// C = alpha op(A) op(B) + beta C, column-major, in double (A and B given as floats).
void host_gemm(bool ta, bool tb, int m, int n, int k, float alpha, const std::vector<float>& a, int lda,
               const std::vector<float>& b, int ldb, float beta, std::vector<double>& c, int ldc) {
  for (int j = 0; j < n; ++j) {
    for (int i = 0; i < m; ++i) {
      double s = 0.0;
      for (int l = 0; l < k; ++l) {
        const double av = ta ? a[i * lda + l] : a[l * lda + i];
        const double bv = tb ? b[l * ldb + j] : b[j * ldb + l];
        s += av * bv;
      }
      c[j * ldc + i] = alpha * s + (beta == 0.0f ? 0.0 : beta * c[j * ldc + i]);
    }
  }
}

struct GemmShape {
  bool ta, tb;
  int m, n, k, lda, ldb, ldc;
  size_t a_size() const { return static_cast<size_t>(lda) * (ta ? m : k); }
  size_t b_size() const { return static_cast<size_t>(ldb) * (tb ? k : n); }
  size_t c_size() const { return static_cast<size_t>(ldc) * n; }
};

std::vector<GemmShape> gemm_shapes() {
  std::vector<GemmShape> shapes;
  const int m = 5, n = 7, k = 3;
  for (bool ta : {false, true}) {
    for (bool tb : {false, true}) shapes.push_back({ta, tb, m, n, k, (ta ? k : m) + 2, (tb ? n : k) + 3, m + 1});
  }
  return shapes;
}

cublasOperation_t op(bool t) { return t ? CUBLAS_OP_T : CUBLAS_OP_N; }

TEST(EmulatorCublas, SgemmAllTransposesLeadingDimsAlphaBeta) {
  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  for (const GemmShape& s : gemm_shapes()) {
    const std::vector<float> a = random_floats(s.a_size(), 1), b = random_floats(s.b_size(), 2);
    const std::vector<float> c0 = random_floats(s.c_size(), 3);
    const float alpha = 1.5f, beta = -0.5f;
    std::vector<double> want(c0.begin(), c0.end());
    host_gemm(s.ta, s.tb, s.m, s.n, s.k, alpha, a, s.lda, b, s.ldb, beta, want, s.ldc);
    DeviceArray<float> da(a), db(b), dc(c0);
    ASSERT_EQ(cublasSgemm(handle, op(s.ta), op(s.tb), s.m, s.n, s.k, &alpha, da.ptr, s.lda, db.ptr, s.ldb, &beta,
                          dc.ptr, s.ldc),
              CUBLAS_STATUS_SUCCESS);
    const std::vector<float> got = dc.download();
    for (int j = 0; j < s.n; ++j) {
      for (int i = 0; i < s.ldc; ++i) {
        const size_t e = static_cast<size_t>(j) * s.ldc + i;
        if (i < s.m) {
          EXPECT_NEAR(got[e], want[e], 1e-5) << "ta=" << s.ta << " tb=" << s.tb << " (" << i << "," << j << ")";
        } else {
          EXPECT_EQ(got[e], c0[e]) << "padding rows of C must not be written";
        }
      }
    }
  }
  ASSERT_EQ(cublasDestroy(handle), CUBLAS_STATUS_SUCCESS);
}

TEST(EmulatorCublas, GemmExBf16InFp32AndBf16Out) {
  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasSetMathMode(handle, CUBLAS_DEFAULT_MATH), CUBLAS_STATUS_SUCCESS);
  for (const GemmShape& s : gemm_shapes()) {
    std::vector<float> a = random_floats(s.a_size(), 4), b = random_floats(s.b_size(), 5);
    for (float& v : a) v = round_bf16(v);
    for (float& v : b) v = round_bf16(v);
    std::vector<__nv_bfloat16> ab(a.size()), bb(b.size());
    for (size_t i = 0; i < a.size(); ++i) ab[i] = __float2bfloat16(a[i]);
    for (size_t i = 0; i < b.size(); ++i) bb[i] = __float2bfloat16(b[i]);
    std::vector<float> c0 = random_floats(s.c_size(), 6);
    for (float& v : c0) v = round_bf16(v);
    const float alpha = 0.75f, beta = 2.0f;
    std::vector<double> want(c0.begin(), c0.end());
    host_gemm(s.ta, s.tb, s.m, s.n, s.k, alpha, a, s.lda, b, s.ldb, beta, want, s.ldc);
    DeviceArray<__nv_bfloat16> da(ab), db(bb);

    DeviceArray<float> dc(c0);
    ASSERT_EQ(cublasGemmEx(handle, op(s.ta), op(s.tb), s.m, s.n, s.k, &alpha, da.ptr, CUDA_R_16BF, s.lda, db.ptr,
                           CUDA_R_16BF, s.ldb, &beta, dc.ptr, CUDA_R_32F, s.ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
              CUBLAS_STATUS_SUCCESS);
    std::vector<__nv_bfloat16> c0b(c0.size());
    for (size_t i = 0; i < c0.size(); ++i) c0b[i] = __float2bfloat16(c0[i]);
    DeviceArray<__nv_bfloat16> dcb(c0b);
    ASSERT_EQ(cublasGemmEx(handle, op(s.ta), op(s.tb), s.m, s.n, s.k, &alpha, da.ptr, CUDA_R_16BF, s.lda, db.ptr,
                           CUDA_R_16BF, s.ldb, &beta, dcb.ptr, CUDA_R_16BF, s.ldc, CUBLAS_COMPUTE_32F_FAST_TF32,
                           CUBLAS_GEMM_DEFAULT_TENSOR_OP),
              CUBLAS_STATUS_SUCCESS);
    const std::vector<float> got = dc.download();
    const std::vector<__nv_bfloat16> gotb = dcb.download();
    for (int j = 0; j < s.n; ++j) {
      for (int i = 0; i < s.m; ++i) {
        const size_t e = static_cast<size_t>(j) * s.ldc + i;
        EXPECT_NEAR(got[e], want[e], 1e-5) << "fp32 out, ta=" << s.ta << " tb=" << s.tb;
        EXPECT_NEAR(__bfloat162float(gotb[e]), want[e], std::fabs(want[e]) / 256 + 1e-6) << "bf16 out";
      }
    }
  }
  ASSERT_EQ(cublasDestroy(handle), CUBLAS_STATUS_SUCCESS);
}

TEST(EmulatorCublas, GemmExFp16In) {
  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  const GemmShape s = gemm_shapes()[1];
  std::vector<float> a = random_floats(s.a_size(), 10), b = random_floats(s.b_size(), 11);
  std::vector<__half> ah(a.size()), bh(b.size());
  for (size_t i = 0; i < a.size(); ++i) a[i] = __half2float(ah[i] = __float2half(a[i]));
  for (size_t i = 0; i < b.size(); ++i) b[i] = __half2float(bh[i] = __float2half(b[i]));
  std::vector<double> want(s.c_size(), 0.0);
  const float alpha = 1.0f, beta = 0.0f;
  host_gemm(s.ta, s.tb, s.m, s.n, s.k, alpha, a, s.lda, b, s.ldb, beta, want, s.ldc);
  DeviceArray<__half> da(ah), db(bh);
  DeviceArray<float> dc(s.c_size());
  ASSERT_EQ(cublasGemmEx(handle, op(s.ta), op(s.tb), s.m, s.n, s.k, &alpha, da.ptr, CUDA_R_16F, s.lda, db.ptr,
                         CUDA_R_16F, s.ldb, &beta, dc.ptr, CUDA_R_32F, s.ldc, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  const std::vector<float> got = dc.download();
  for (int j = 0; j < s.n; ++j) {
    for (int i = 0; i < s.m; ++i) EXPECT_NEAR(got[j * s.ldc + i], want[j * s.ldc + i], 1e-5);
  }
  ASSERT_EQ(cublasDestroy(handle), CUBLAS_STATUS_SUCCESS);
}

TEST(EmulatorCublas, StridedBatched) {
  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  const GemmShape s{true, false, 4, 6, 5, 7, 6, 5};
  const int batch = 3;
  const long long sa = s.a_size() + 3, sb = s.b_size() + 1, sc = s.c_size() + 2;
  std::vector<float> a = random_floats(sa * batch, 7), b = random_floats(sb * batch, 8);
  for (float& v : a) v = round_bf16(v);
  for (float& v : b) v = round_bf16(v);
  const std::vector<float> c0 = random_floats(sc * batch, 9);
  const float alpha = -1.25f, beta = 0.5f;
  std::vector<double> want(c0.begin(), c0.end());
  for (int i = 0; i < batch; ++i) {
    std::vector<float> ai(a.begin() + i * sa, a.begin() + i * sa + s.a_size());
    std::vector<float> bi(b.begin() + i * sb, b.begin() + i * sb + s.b_size());
    std::vector<double> ci(want.begin() + i * sc, want.begin() + i * sc + s.c_size());
    host_gemm(s.ta, s.tb, s.m, s.n, s.k, alpha, ai, s.lda, bi, s.ldb, beta, ci, s.ldc);
    std::copy(ci.begin(), ci.end(), want.begin() + i * sc);
  }
  DeviceArray<float> da(a), db(b), dc(c0);
  ASSERT_EQ(cublasSgemmStridedBatched(handle, op(s.ta), op(s.tb), s.m, s.n, s.k, &alpha, da.ptr, s.lda, sa, db.ptr,
                                      s.ldb, sb, &beta, dc.ptr, s.ldc, sc, batch),
            CUBLAS_STATUS_SUCCESS);
  std::vector<__nv_bfloat16> ab(a.size()), bb(b.size());
  for (size_t i = 0; i < a.size(); ++i) ab[i] = __float2bfloat16(a[i]);
  for (size_t i = 0; i < b.size(); ++i) bb[i] = __float2bfloat16(b[i]);
  DeviceArray<__nv_bfloat16> dab(ab), dbb(bb);
  DeviceArray<float> dc2(c0);
  ASSERT_EQ(cublasGemmStridedBatchedEx(handle, op(s.ta), op(s.tb), s.m, s.n, s.k, &alpha, dab.ptr, CUDA_R_16BF, s.lda,
                                       sa, dbb.ptr, CUDA_R_16BF, s.ldb, sb, &beta, dc2.ptr, CUDA_R_32F, s.ldc, sc, batch,
                                       CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_SUCCESS);
  const std::vector<float> got = dc.download(), got2 = dc2.download();
  for (size_t e = 0; e < got.size(); ++e) {
    const size_t within = e % sc;
    const bool in_c = within < s.c_size() && static_cast<int>(within % s.ldc) < s.m;
    if (in_c) {
      EXPECT_NEAR(got[e], want[e], 1e-5) << "Sgemm element " << e;
      EXPECT_NEAR(got2[e], want[e], 1e-5) << "GemmEx element " << e;
    } else {
      EXPECT_EQ(got[e], c0[e]) << "outside every C: element " << e;
      EXPECT_EQ(got2[e], c0[e]) << "outside every C: element " << e;
    }
  }
  ASSERT_EQ(cublasDestroy(handle), CUBLAS_STATUS_SUCCESS);
}

TEST(EmulatorCublas, BetaZeroIgnoresCAndUnsupportedCombinations) {
  cublasHandle_t handle;
  ASSERT_EQ(cublasCreate(&handle), CUBLAS_STATUS_SUCCESS);
  const int m = 3, n = 2, k = 4;
  DeviceArray<float> a(random_floats(m * k, 1)), b(random_floats(k * n, 2));
  DeviceArray<float> c(std::vector<float>(m * n, std::nanf("")));
  const float one = 1.0f, zero = 0.0f;
  ASSERT_EQ(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, a.ptr, m, b.ptr, k, &zero, c.ptr, m),
            CUBLAS_STATUS_SUCCESS);
  for (float v : c.download()) EXPECT_TRUE(std::isfinite(v));
  DeviceArray<__nv_bfloat16> cb(m * n);
  CUDA_CHECK(cudaMemset(cb.ptr, 0xFF, m * n * sizeof(__nv_bfloat16)));  // NaN
  EXPECT_EQ(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, a.ptr, CUDA_R_32F, m, b.ptr, CUDA_R_32F, k,
                         &zero, cb.ptr, CUDA_R_16BF, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_EQ(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, a.ptr, CUDA_R_32F, m, b.ptr, CUDA_R_16BF, k,
                         &zero, c.ptr, CUDA_R_32F, m, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_EQ(cublasGemmEx(handle, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, a.ptr, CUDA_R_32F, m, b.ptr, CUDA_R_32F, k,
                         &zero, c.ptr, CUDA_R_32F, m, CUBLAS_COMPUTE_64F, CUBLAS_GEMM_DEFAULT),
            CUBLAS_STATUS_NOT_SUPPORTED);
  EXPECT_EQ(cublasSgemm(handle, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, a.ptr, m - 1, b.ptr, k, &zero, c.ptr, m),
            CUBLAS_STATUS_INVALID_VALUE);
  EXPECT_EQ(cublasSgemm(nullptr, CUBLAS_OP_N, CUBLAS_OP_N, m, n, k, &one, a.ptr, m, b.ptr, k, &zero, c.ptr, m),
            CUBLAS_STATUS_NOT_INITIALIZED);
  ASSERT_EQ(cublasDestroy(handle), CUBLAS_STATUS_SUCCESS);
}

// cublasLtMatmul: D = alpha op(A) op(B) + beta C + bias[row], C != D of one layout, bf16 in and out, every
// transpose, leading dimensions above the rows (D's padding rows untouched, C only read).
struct LtDescs {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, c = nullptr, d = nullptr;
  ~LtDescs() {
    cublasLtMatmulDescDestroy(op);
    for (cublasLtMatrixLayout_t l : {a, b, c, d}) cublasLtMatrixLayoutDestroy(l);
  }
};
void lt_descs(LtDescs& x, const GemmShape& s, cudaDataType type) {
  ASSERT_EQ(cublasLtMatmulDescCreate(&x.op, CUBLAS_COMPUTE_32F, CUDA_R_32F), CUBLAS_STATUS_SUCCESS);
  const cublasOperation_t ta = op(s.ta), tb = op(s.tb);
  ASSERT_EQ(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&x.a, type, s.ta ? s.k : s.m, s.ta ? s.m : s.k, s.lda), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&x.b, type, s.tb ? s.n : s.k, s.tb ? s.k : s.n, s.ldb), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&x.c, type, s.m, s.n, s.ldc), CUBLAS_STATUS_SUCCESS);
  ASSERT_EQ(cublasLtMatrixLayoutCreate(&x.d, type, s.m, s.n, s.ldc), CUBLAS_STATUS_SUCCESS);
}
std::vector<__nv_bfloat16> to_bf16(const std::vector<float>& v) {
  std::vector<__nv_bfloat16> out(v.size());
  for (size_t i = 0; i < v.size(); ++i) out[i] = __float2bfloat16(v[i]);
  return out;
}
std::vector<float> bf16_rounded(std::vector<float> v) {
  for (float& x : v) x = round_bf16(x);
  return v;
}

TEST(EmulatorCublas, LtMatmulOutOfPlaceWithBiasEpilogue) {
  cublasLtHandle_t lt;
  ASSERT_EQ(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
  const std::vector<GemmShape> shapes = gemm_shapes();
  for (const GemmShape& s : shapes) {
    const std::vector<float> a = bf16_rounded(random_floats(s.a_size(), 7)), b = bf16_rounded(random_floats(s.b_size(), 8));
    const std::vector<float> c0 = bf16_rounded(random_floats(s.c_size(), 9)), bias = bf16_rounded(random_floats(s.m, 10));
    const std::vector<float> d0 = bf16_rounded(random_floats(s.c_size(), 11));
    const float alpha = 0.75f, beta = 1.0f;
    std::vector<double> want(c0.begin(), c0.end());
    host_gemm(s.ta, s.tb, s.m, s.n, s.k, alpha, a, s.lda, b, s.ldb, beta, want, s.ldc);
    DeviceArray<__nv_bfloat16> da(to_bf16(a)), db(to_bf16(b)), dc(to_bf16(c0)), dd(to_bf16(d0)), dbias(to_bf16(bias));
    LtDescs x;
    lt_descs(x, s, CUDA_R_16BF);
    const cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;
    // Odd shapes: the bias in fp32 (CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE); even ones: D's type, the default.
    const bool fp32_bias = (&s - shapes.data()) % 2 == 1;
    DeviceArray<float> dbias32(bias);
    const void* bias_ptr = fp32_bias ? static_cast<const void*>(dbias32.ptr) : static_cast<const void*>(dbias.ptr);
    if (fp32_bias) {
      const int32_t bias_type = CUDA_R_32F;
      ASSERT_EQ(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)),
                CUBLAS_STATUS_SUCCESS);
    }
    ASSERT_EQ(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)),
              CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof(bias_ptr)),
              CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasLtMatmul(lt, x.op, &alpha, da.ptr, x.a, db.ptr, x.b, &beta, dc.ptr, x.c, dd.ptr, x.d, nullptr,
                             nullptr, 0, nullptr),
              CUBLAS_STATUS_SUCCESS);
    const std::vector<__nv_bfloat16> got = dd.download(), c_after = dc.download();
    for (int j = 0; j < s.n; ++j) {
      for (int i = 0; i < s.ldc; ++i) {
        const size_t e = static_cast<size_t>(j) * s.ldc + i;
        EXPECT_EQ(__bfloat162float(c_after[e]), c0[e]) << "C is only read";
        if (i < s.m) {
          // One rounding of the fp32 sum (its own error ~k 2^-24 of the terms, below 1e-5 here).
          const double v = want[e] + bias[i];
          EXPECT_NEAR(__bfloat162float(got[e]), v, std::fabs(v) / 256 + 1e-5) << "ta=" << s.ta << " tb=" << s.tb;
        } else {
          EXPECT_EQ(__bfloat162float(got[e]), d0[e]) << "padding rows of D must not be written";
        }
      }
    }
  }
  ASSERT_EQ(cublasLtDestroy(lt), CUBLAS_STATUS_SUCCESS);
}

TEST(EmulatorCublas, LtMatmulRefusesWhatItDoesNotSupport) {
  cublasLtHandle_t lt;
  ASSERT_EQ(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
  const GemmShape s = gemm_shapes()[0];
  DeviceArray<float> a(random_floats(s.a_size(), 1)), b(random_floats(s.b_size(), 2)), c(random_floats(s.c_size(), 3));
  const float one = 1.0f;
  const auto run = [&](const LtDescs& x) {
    return cublasLtMatmul(lt, x.op, &one, a.ptr, x.a, b.ptr, x.b, &one, c.ptr, x.c, c.ptr, x.d, nullptr, nullptr, 0,
                          nullptr);
  };
  {
    LtDescs x;
    lt_descs(x, s, CUDA_R_32F);
    EXPECT_EQ(run(x), CUBLAS_STATUS_SUCCESS);  // in place (C == D)
    EXPECT_EQ(cublasLtMatmul(nullptr, x.op, &one, a.ptr, x.a, b.ptr, x.b, &one, c.ptr, x.c, c.ptr, x.d, nullptr,
                             nullptr, 0, nullptr),
              CUBLAS_STATUS_NOT_INITIALIZED);
    const int32_t wrong_size = 0;
    EXPECT_EQ(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &wrong_size, sizeof(wrong_size)),
              CUBLAS_STATUS_INVALID_VALUE);
    const int32_t pointer_mode = 0;
    EXPECT_EQ(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_POINTER_MODE, &pointer_mode,
                                             sizeof(pointer_mode)),
              CUBLAS_STATUS_NOT_SUPPORTED);
    cublasLtEpilogue_t epilogue = CUBLASLT_EPILOGUE_BIAS;  // without a bias pointer
    ASSERT_EQ(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)),
              CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(run(x), CUBLAS_STATUS_INVALID_VALUE);
    const void* bias_ptr = b.ptr;  // fp32 operands: a bf16 bias is neither D's type nor fp32
    const int32_t bias_type = CUDA_R_16BF;
    ASSERT_EQ(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_BIAS_POINTER, &bias_ptr, sizeof(bias_ptr)),
              CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_BIAS_DATA_TYPE, &bias_type, sizeof(bias_type)),
              CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(run(x), CUBLAS_STATUS_NOT_SUPPORTED);
    epilogue = CUBLASLT_EPILOGUE_RELU;
    ASSERT_EQ(cublasLtMatmulDescSetAttribute(x.op, CUBLASLT_MATMUL_DESC_EPILOGUE, &epilogue, sizeof(epilogue)),
              CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(run(x), CUBLAS_STATUS_NOT_SUPPORTED);
  }
  {
    LtDescs x;  // C's leading dimension unlike D's
    lt_descs(x, s, CUDA_R_32F);
    cublasLtMatrixLayoutDestroy(x.c);
    ASSERT_EQ(cublasLtMatrixLayoutCreate(&x.c, CUDA_R_32F, s.m, s.n, s.ldc + 1), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(run(x), CUBLAS_STATUS_INVALID_VALUE);
  }
  {
    LtDescs x;  // op(B) with the wrong inner dimension
    lt_descs(x, s, CUDA_R_32F);
    cublasLtMatrixLayoutDestroy(x.b);
    ASSERT_EQ(cublasLtMatrixLayoutCreate(&x.b, CUDA_R_32F, s.k + 1, s.n, s.ldb), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(run(x), CUBLAS_STATUS_INVALID_VALUE);
  }
  {
    LtDescs x;  // D in bf16 from fp32 operands
    lt_descs(x, s, CUDA_R_32F);
    cublasLtMatrixLayoutDestroy(x.c);
    cublasLtMatrixLayoutDestroy(x.d);
    ASSERT_EQ(cublasLtMatrixLayoutCreate(&x.c, CUDA_R_16BF, s.m, s.n, s.ldc), CUBLAS_STATUS_SUCCESS);
    ASSERT_EQ(cublasLtMatrixLayoutCreate(&x.d, CUDA_R_16BF, s.m, s.n, s.ldc), CUBLAS_STATUS_SUCCESS);
    EXPECT_EQ(run(x), CUBLAS_STATUS_NOT_SUPPORTED);
  }
  ASSERT_EQ(cublasLtDestroy(lt), CUBLAS_STATUS_SUCCESS);
}

TEST(EmulatorGraphs, LtMatmulIsCapturedAndReplayed) {
  CaptureFixture f;
  cublasLtHandle_t lt;
  ASSERT_EQ(cublasLtCreate(&lt), CUBLAS_STATUS_SUCCESS);
  const GemmShape s = gemm_shapes()[3];
  const std::vector<float> a = random_floats(s.a_size(), 4), b = random_floats(s.b_size(), 5);
  const std::vector<float> c0 = random_floats(s.c_size(), 6);
  DeviceArray<float> da(a), db(b), dc(c0), dd(std::vector<float>(s.c_size(), 0.0f));
  LtDescs x;
  lt_descs(x, s, CUDA_R_32F);
  float alpha = 2.0f, beta = 1.0f;
  CUDA_CHECK(cudaStreamBeginCapture(f.stream, cudaStreamCaptureModeGlobal));
  ASSERT_EQ(cublasLtMatmul(lt, x.op, &alpha, da.ptr, x.a, db.ptr, x.b, &beta, dc.ptr, x.c, dd.ptr, x.d, nullptr,
                           nullptr, 0, f.stream),
            CUBLAS_STATUS_SUCCESS);
  cudaGraph_t graph = nullptr;
  CUDA_CHECK(cudaStreamEndCapture(f.stream, &graph));
  EXPECT_EQ(f.nodes(graph), 1u);
  for (float v : dd.download()) EXPECT_EQ(v, 0.0f) << "nothing ran during the capture";
  cudaGraphExec_t exec = nullptr;
  CUDA_CHECK(cudaGraphInstantiate(&exec, graph, 0));
  alpha = 100.0f;  // the scalars as captured
  CUDA_CHECK(cudaGraphLaunch(exec, f.stream));
  CUDA_CHECK(cudaStreamSynchronize(f.stream));
  std::vector<double> want(c0.begin(), c0.end());
  host_gemm(s.ta, s.tb, s.m, s.n, s.k, 2.0f, a, s.lda, b, s.ldb, 1.0f, want, s.ldc);
  const std::vector<float> got = dd.download();
  for (int j = 0; j < s.n; ++j)
    for (int i = 0; i < s.m; ++i) EXPECT_NEAR(got[j * s.ldc + i], want[j * s.ldc + i], 1e-5) << i << "," << j;
  CUDA_CHECK(cudaGraphExecDestroy(exec));
  CUDA_CHECK(cudaGraphDestroy(graph));
  ASSERT_EQ(cublasLtDestroy(lt), CUBLAS_STATUS_SUCCESS);
}

// ---- Bug finding. The kernels' line numbers are part of what the reports must name.

std::atomic<int> g_destroyed{0};
struct CountDestruction {
  ~CountDestruction() { g_destroyed.fetch_add(1); }
};

constexpr int kDivergentLine1 = __LINE__ + 5;
constexpr int kDivergentLine2 = __LINE__ + 6;
__global__ void divergent_barrier(int* out) {
  CountDestruction guard;
  (void)guard;
  if (threadIdx.x < 16) __syncthreads();
  out[threadIdx.x] = 1;
  __syncthreads();
}

TEST(EmulatorBugs, DivergentBarrierIsReportedAndFibersUnwound) {
  DeviceArray<int> out(64);
  g_destroyed = 0;
  const std::string msg =
      kernel_error([&] { launch("divergent_barrier", divergent_barrier, dim3(2), dim3(64), 0, nullptr, out.ptr); });
  EXPECT_TRUE(contains(msg, "kernel 'divergent_barrier'")) << msg;
  EXPECT_TRUE(contains(msg, "divergent __syncthreads()")) << msg;
  const std::string file = "test_emulator.cpp:";
  EXPECT_TRUE(contains(msg, "threads 0-15: wait at __syncthreads() at ")) << msg;
  EXPECT_TRUE(contains(msg, file + std::to_string(kDivergentLine1))) << msg;
  EXPECT_TRUE(contains(msg, "threads 16-63: wait at __syncthreads() at ")) << msg;
  EXPECT_TRUE(contains(msg, file + std::to_string(kDivergentLine2))) << msg;
  // Every suspended thread of the failing block was unwound (its destructors ran); blocks that were
  // not started never ran.
  EXPECT_EQ(g_destroyed.load() % 64, 0);
  EXPECT_GE(g_destroyed.load(), 64);

  // The emulator is usable after the error.
  const std::vector<float> x = random_floats(100, 1);
  DeviceArray<float> in(x), partial(1);
  launch("block_sum_tree<128>", block_sum_tree<128>, dim3(1), dim3(128), 0, nullptr, in.ptr, partial.ptr, 100);
  EXPECT_NEAR(partial.download()[0], host_sum(x), 1e-4);
}

constexpr int kEarlyExitLine = __LINE__ + 5;
__global__ void early_exit(const int* in, int* out, int n) {
  L2V_SHARED(int, buf, [64]);
  if (static_cast<int>(threadIdx.x) >= n) return;
  buf[threadIdx.x] = in[threadIdx.x];
  __syncthreads();
  out[threadIdx.x] = buf[n - 1 - threadIdx.x];
}

TEST(EmulatorBugs, ThreadsExitingBeforeABarrierAreReported) {
  DeviceArray<int> in(std::vector<int>(64, 1)), out(64);
  const std::string msg =
      kernel_error([&] { launch("early_exit", early_exit, dim3(1), dim3(64), 0, nullptr, in.ptr, out.ptr, 40); });
  EXPECT_TRUE(contains(msg, "kernel 'early_exit'")) << msg;
  EXPECT_TRUE(contains(msg, "24 thread(s) exited while the others wait at a barrier")) << msg;
  EXPECT_TRUE(contains(msg, "threads 0-39: wait at __syncthreads() at ")) << msg;
  EXPECT_TRUE(contains(msg, "test_emulator.cpp:" + std::to_string(kEarlyExitLine))) << msg;
  EXPECT_TRUE(contains(msg, "threads 40-63: exited")) << msg;
  // With every thread inside, the same kernel is fine.
  launch("early_exit", early_exit, dim3(1), dim3(64), 0, nullptr, in.ptr, out.ptr, 64);
}

constexpr int kHalfWarpLine = __LINE__ + 3;
__global__ void half_warp_shuffle(int* out) {
  if (threadIdx.x >= 16) return;
  out[threadIdx.x] = __shfl_xor_sync(0xffffffffu, static_cast<int>(threadIdx.x), 1);
}

__global__ void mask_without_self(int* out) { out[threadIdx.x] = __shfl_sync(0x1u, 5, 0); }

__global__ void mixed_collectives(int* out) {
  if (threadIdx.x < 16) {
    out[threadIdx.x] = __shfl_sync(0xffffffffu, 1, 0);
  } else {
    __syncwarp();
  }
}

TEST(EmulatorBugs, BrokenWarpMasksAreReported) {
  ScheduleScope scope({emu::Order::kForward, 0});  // lane 0 arrives first, lane 1 is the first offender
  DeviceArray<int> out(32);
  const std::string msg =
      kernel_error([&] { launch("half_warp_shuffle", half_warp_shuffle, dim3(1), dim3(32), 0, nullptr, out.ptr); });
  EXPECT_TRUE(contains(msg, "deadlock at a warp collective")) << msg;
  EXPECT_TRUE(contains(msg, "threads 0-15: wait at __shfl_xor_sync (mask 0xffffffff) at ")) << msg;
  EXPECT_TRUE(contains(msg, "test_emulator.cpp:" + std::to_string(kHalfWarpLine))) << msg;
  EXPECT_TRUE(contains(msg, "threads 16-31: exited")) << msg;

  const std::string self =
      kernel_error([&] { launch("mask_without_self", mask_without_self, dim3(1), dim3(32), 0, nullptr, out.ptr); });
  EXPECT_TRUE(contains(self, "does not name the calling lane 1")) << self;
  EXPECT_TRUE(contains(self, "thread (1,0,0)")) << self;

  const std::string mixed =
      kernel_error([&] { launch("mixed_collectives", mixed_collectives, dim3(1), dim3(32), 0, nullptr, out.ptr); });
  EXPECT_TRUE(contains(mixed, "call different warp collectives: lane 0 __shfl_sync")) << mixed;
  EXPECT_TRUE(contains(mixed, "lane 16 __syncwarp")) << mixed;
}

// Reads another thread's element of shared memory; the barrier between write and read is optional.
__global__ void rotate_through_shared(const float* in, float* out, int sync) {
  L2V_SHARED(float, buf, [64]);
  buf[threadIdx.x] = in[threadIdx.x];
  if (sync) __syncthreads();
  out[threadIdx.x] = buf[(threadIdx.x + 1) % 64];
}

// Reuses the shared buffer in a loop; the barrier before it is overwritten is optional.
__global__ void reuse_shared(const float* in, float* out, int sync) {
  L2V_SHARED(float, buf, [64]);
  for (int it = 0; it < 2; ++it) {
    buf[threadIdx.x] = in[it * 64 + threadIdx.x];
    __syncthreads();
    out[it * 64 + threadIdx.x] = buf[63 - threadIdx.x];
    if (sync) __syncthreads();
  }
}

TEST(EmulatorBugs, MissingSyncthreadsGivesWrongResultsInSomeOrder) {
  const std::vector<float> x = random_floats(128, 17);
  DeviceArray<float> in(x), out(128);
  int rotate_wrong = 0, reuse_wrong = 0, poison_seen = 0;
  for (const emu::Schedule& order : all_orders()) {
    ScheduleScope scope(order);
    for (int sync : {1, 0}) {
      launch("rotate_through_shared", rotate_through_shared, dim3(1), dim3(64), 0, nullptr, in.ptr, out.ptr, sync);
      std::vector<float> got = out.download();
      bool wrong = false;
      for (int t = 0; t < 64; ++t) {
        wrong |= got[t] != x[(t + 1) % 64];
        poison_seen += std::isnan(got[t]);
      }
      if (sync) {
        EXPECT_FALSE(wrong) << "correct kernel, order " << order_name(order);
      } else {
        rotate_wrong += wrong;
      }
      launch("reuse_shared", reuse_shared, dim3(1), dim3(64), 0, nullptr, in.ptr, out.ptr, sync);
      got = out.download();
      wrong = false;
      for (int it = 0; it < 2; ++it) {
        for (int t = 0; t < 64; ++t) wrong |= got[it * 64 + t] != x[it * 64 + 63 - t];
      }
      if (sync) {
        EXPECT_FALSE(wrong) << "correct kernel, order " << order_name(order);
      } else {
        reuse_wrong += wrong;
      }
    }
  }
  EXPECT_GT(rotate_wrong, 0) << "a read before the write (no barrier) was never caught";
  EXPECT_GT(poison_seen, 0) << "an unwritten shared element did not read as poison";
  EXPECT_GT(reuse_wrong, 0) << "an overwrite before the read (no barrier) was never caught";
}

__global__ void read_uninitialised(float* out, int* iout, float* dout) {
  L2V_SHARED(float, f, [32]);
  L2V_SHARED(int, i, [32]);
  L2V_DYNAMIC_SHARED(float, d);
  const int t = blockIdx.x * 32 + threadIdx.x;
  out[t] = f[threadIdx.x];
  iout[t] = i[threadIdx.x];
  dout[t] = d[threadIdx.x];
  __syncthreads();
  f[threadIdx.x] = 1.0f;  // must not leak into the next block
  i[threadIdx.x] = 1;
  d[threadIdx.x] = 1.0f;
}

TEST(EmulatorBugs, UninitialisedSharedMemoryReadsPoison) {
  DeviceArray<float> out(64), dout(64);
  DeviceArray<int> iout(64);
  launch("read_uninitialised", read_uninitialised, dim3(2), dim3(32), 32 * sizeof(float), nullptr, out.ptr, iout.ptr,
         dout.ptr);
  for (float v : out.download()) EXPECT_EQ(float_bits(v), 0xFFFFFFFFu);
  for (float v : dout.download()) EXPECT_TRUE(std::isnan(v));
  for (int v : iout.download()) EXPECT_EQ(v, -1);
}

__global__ void too_much_static_shared(float* out) {
  L2V_SHARED(float, big, [13000]);  // 52000 bytes
  big[threadIdx.x] = 1.0f;
  out[threadIdx.x] = big[threadIdx.x];
}

TEST(EmulatorBugs, StaticSharedMemoryOverTheLimit) {
  DeviceArray<float> out(32);
  const std::string msg = kernel_error(
      [&] { launch("too_much_static_shared", too_much_static_shared, dim3(1), dim3(32), 0, nullptr, out.ptr); });
  EXPECT_TRUE(contains(msg, "L2V_SHARED(big)")) << msg;
  EXPECT_TRUE(contains(msg, "over the 48 KiB limit")) << msg;
}

TEST(EmulatorSchedule, ParsesOrders) {
  EXPECT_EQ(emu::parse_schedule("forward").order, emu::Order::kForward);
  EXPECT_EQ(emu::parse_schedule("reverse").order, emu::Order::kReverse);
  const emu::Schedule s = emu::parse_schedule("shuffle:42");
  EXPECT_EQ(s.order, emu::Order::kShuffle);
  EXPECT_EQ(s.seed, 42u);
  EXPECT_THROW(emu::parse_schedule("shuffle:"), std::invalid_argument);
  EXPECT_THROW(emu::parse_schedule("backwards"), std::invalid_argument);
}

// ---- AddressSanitizer: out-of-bounds accesses in kernels must be fatal.
#if defined(__SANITIZE_ADDRESS__)

__global__ void shared_out_of_bounds(float* out) {
  L2V_SHARED(float, buf, [32]);
  buf[threadIdx.x] = 1.0f;
  __syncthreads();
  out[threadIdx.x] = buf[threadIdx.x + 1];  // thread 31 reads buf[32]
}

__global__ void global_out_of_bounds(float* out) { out[threadIdx.x + 1] = 1.0f; }  // thread 31 writes out[32]

TEST(EmulatorAsanDeathTest, OutOfBoundsSharedAndGlobalAccessesAreCaught) {
  GTEST_FLAG_SET(death_test_style, "threadsafe");
  EXPECT_DEATH(
      {
        DeviceArray<float> out(32);
        launch("shared_out_of_bounds", shared_out_of_bounds, dim3(1), dim3(32), 0, nullptr, out.ptr);
      },
      "AddressSanitizer: heap-buffer-overflow");
  EXPECT_DEATH(
      {
        DeviceArray<float> out(32);
        launch("global_out_of_bounds", global_out_of_bounds, dim3(1), dim3(32), 0, nullptr, out.ptr);
      },
      "AddressSanitizer: heap-buffer-overflow");
}

#endif

}  // namespace
