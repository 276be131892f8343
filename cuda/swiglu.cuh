// SwiGLU of the Llama MLP, out = silu(gate) * up, forward and backward over N rows in the layout of the fused
// gate|up product: row n of gate_up [N, 2F] holds the gate projection in columns [0, F) and the up projection
// in [F, 2F); out and dout are [N, F]. The fp32 CPU reference is host/cpu_ops.cpp (cpu::swiglu_forward /
// swiglu_backward), whose operation order (torch's silu and silu_backward) the kernels follow in fp32; T =
// float or __nv_bfloat16 for every array, rounded once per stored value. expf, not __expf: the kernels are
// memory-bound, and the accurate exponential keeps fp32 within a few ulps of the reference.
//
// Groups of V elements of a row per thread (16-byte packs when F is a multiple of V and every pointer is
// 16-byte aligned, so that no pack straddles two rows; see elementwise.cuh), else one element. Each thread
// reads all its inputs before it writes: d_gate_up may be gate_up itself (the backward saves a buffer).
#pragma once

#include "cuda/elementwise.cuh"

namespace l2v::cuda {

// Element i of out [N, F] reads gate_up at row(i) + col(i) (gate) and + F (up).
struct SwigluIndex {
  long row, col;
  __device__ __forceinline__ SwigluIndex(long i, int F) : row(i / F * 2 * F), col(i % F) {}
};

template <int V, typename T>
__global__ void __launch_bounds__(ew::kBlock) swiglu_forward_kernel(T* out, const T* gate_up, long N, int F) {
  const long groups = N * F / V;  // V divides F
  for (long grp = blockIdx.x * (long)blockDim.x + threadIdx.x; grp < groups; grp += (long)gridDim.x * blockDim.x) {
    const long i = grp * V;
    const SwigluIndex at(i, F);
    float g[V], u[V];
    ew::load_floats<V>(g, gate_up + at.row + at.col);
    ew::load_floats<V>(u, gate_up + at.row + F + at.col);
    for (int k = 0; k < V; ++k) g[k] = g[k] / (1.0f + expf(-g[k])) * u[k];
    ew::store_floats<V>(out + i, g);
  }
}

// dgate = dout * up * sig * (1 + g * (1 - sig)), dup = dout * silu(g), with sig = 1 / (1 + exp(-g)).
__device__ __forceinline__ void swiglu_grad(float& dgate, float& dup, float dy, float g, float u) {
  const float one_plus_e = 1.0f + expf(-g);
  const float sig = 1.0f / one_plus_e;
  dgate = dy * u * sig * (1.0f + g * (1.0f - sig));
  dup = dy * (g / one_plus_e);
}

template <int V, typename T>
__global__ void __launch_bounds__(ew::kBlock)
    swiglu_backward_kernel(T* d_gate_up, const T* dout, const T* gate_up, long N, int F) {
  const long groups = N * F / V;
  for (long grp = blockIdx.x * (long)blockDim.x + threadIdx.x; grp < groups; grp += (long)gridDim.x * blockDim.x) {
    const long i = grp * V;
    const SwigluIndex at(i, F);
    float dy[V], g[V], u[V];
    ew::load_floats<V>(dy, dout + i);
    ew::load_floats<V>(g, gate_up + at.row + at.col);
    ew::load_floats<V>(u, gate_up + at.row + F + at.col);
    float dg[V], du[V];
    for (int k = 0; k < V; ++k) swiglu_grad(dg[k], du[k], dy[k], g[k], u[k]);
    ew::store_floats<V>(d_gate_up + at.row + at.col, dg);
    ew::store_floats<V>(d_gate_up + at.row + F + at.col, du);
  }
}

// ---- Launchers (T = float or __nv_bfloat16).

inline void check_swiglu(const char* fn, long N, int F) {
  ew::require(N >= 0 && F >= 0, fn, "N and F must be non-negative");
}

// out [N, F] = silu(gate) * up from gate_up [N, 2F].
template <typename T>
void swiglu_forward_cuda(T* out, const T* gate_up, long N, int F, cudaStream_t stream) {
  check_swiglu("swiglu_forward_cuda", N, F);
  if (N == 0 || F == 0) return;
  constexpr int V = ew::kVec<T>;
  if (F % V == 0 && ew::aligned16(out) && ew::aligned16(gate_up)) {
    l2v::launch("swiglu_forward", swiglu_forward_kernel<V, T>, dim3(ew::grid_for(N * F / V)), dim3(ew::kBlock), 0,
                stream, out, gate_up, N, F);
  } else {
    l2v::launch("swiglu_forward", swiglu_forward_kernel<1, T>, dim3(ew::grid_for(N * F)), dim3(ew::kBlock), 0, stream,
                out, gate_up, N, F);
  }
}

// d_gate_up [N, 2F] (overwritten) from dout [N, F] and the forward's gate_up.
template <typename T>
void swiglu_backward_cuda(T* d_gate_up, const T* dout, const T* gate_up, long N, int F, cudaStream_t stream) {
  check_swiglu("swiglu_backward_cuda", N, F);
  if (N == 0 || F == 0) return;
  constexpr int V = ew::kVec<T>;
  if (F % V == 0 && ew::aligned16(d_gate_up) && ew::aligned16(dout) && ew::aligned16(gate_up)) {
    l2v::launch("swiglu_backward", swiglu_backward_kernel<V, T>, dim3(ew::grid_for(N * F / V)), dim3(ew::kBlock), 0,
                stream, d_gate_up, dout, gate_up, N, F);
  } else {
    l2v::launch("swiglu_backward", swiglu_backward_kernel<1, T>, dim3(ew::grid_for(N * F)), dim3(ew::kBlock), 0,
                stream, d_gate_up, dout, gate_up, N, F);
  }
}

}  // namespace l2v::cuda
