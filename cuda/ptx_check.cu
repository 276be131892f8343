// A compile check, not a kernel anyone launches: it instantiates every wrapper of cuda/ptx.cuh so that
// the nvcc build (cuda/cuda.mk: sm_80 and sm_90, warnings as errors) assembles each inline-PTX
// instruction. Built by `make cuda`, linked into nothing; the emulated build compiles it as C++ too.
#include "cuda/ptx.cuh"

namespace l2v::ptx_check {

template <typename T>
__global__ void ptx_wrappers(const uint4* src, float* out) {
  L2V_SHARED(uint4, tile, [32]);
  const unsigned lane = threadIdx.x;
  l2v::ptx::cp_async_ca<4>(reinterpret_cast<char*>(&tile[lane]), src + lane);
  l2v::ptx::cp_async_ca<8>(reinterpret_cast<char*>(&tile[lane]) + 8, reinterpret_cast<const char*>(src + lane) + 8);
  l2v::ptx::cp_async_commit_group();
  l2v::ptx::cp_async_wait_group<0>();
  l2v::ptx::cp_async_ca<16>(&tile[lane], src + lane, 8);
  l2v::ptx::cp_async_commit_group();
  l2v::ptx::cp_async_wait_all();
  l2v::ptx::cp_async_cg(&tile[lane], src + lane);
  l2v::ptx::cp_async_wait_all();
  __syncthreads();
  uint32_t a[4], b1[1], b2[2];
  l2v::ptx::ldmatrix<4>(a, &tile[lane % 16]);
  l2v::ptx::ldmatrix<1, true>(b1, &tile[lane % 8]);
  l2v::ptx::ldmatrix<2, true>(b2, &tile[lane % 16]);
  l2v::ptx::ldmatrix<1>(b1, &tile[lane % 8]);
  l2v::ptx::ldmatrix<2>(b2, &tile[lane % 16]);
  l2v::ptx::ldmatrix<4, true>(a, &tile[lane]);
  float acc[4] = {0.0f, 0.0f, 0.0f, static_cast<float>(l2v::ptx::ld_shared(&tile[lane]).x)};
  l2v::ptx::mma_m16n8k16<T>(acc, a, b2, acc);
  for (int i = 0; i < 4; ++i) out[4 * lane + i] = acc[i] + static_cast<float>(b1[0]);
}

template __global__ void ptx_wrappers<__nv_bfloat16>(const uint4*, float*);
template __global__ void ptx_wrappers<__half>(const uint4*, float*);

}  // namespace l2v::ptx_check
