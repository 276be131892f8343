// L2V_HD marks a function shared by host code and CUDA kernels (host/philox.h, host/gelu.h): __host__
// __device__ under nvcc, a plain inline function elsewhere (the host build and the emulator's).
#pragma once

#if defined(__CUDACC__)
#define L2V_HD __host__ __device__ __forceinline__
#else
#define L2V_HD inline
#endif
