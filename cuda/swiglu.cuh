// SwiGLU of the Llama MLP, out = silu(gate) * up, forward and backward, element-wise over n values. The
// fp32 CPU reference is host/cpu_ops.cpp (cpu::swiglu_forward / swiglu_backward), whose operation order
// (torch's silu and silu_backward) the kernels follow in fp32; T = float or __nv_bfloat16 for every
// array, rounded once per stored value. expf, not __expf: the kernels are memory-bound, and the accurate
// exponential keeps fp32 within a few ulps of the reference.
//
// Groups of V elements per thread (16-byte packs when every pointer is 16-byte aligned; see
// elementwise.cuh). Each thread reads all its inputs before it writes: outputs may alias inputs
// element for element (e.g. dgate over gate and dup over up, to save the backward two buffers).
#pragma once

#include "cuda/elementwise.cuh"

namespace l2v::cuda {

template <int V, typename T>
__global__ void __launch_bounds__(ew::kBlock) swiglu_forward_kernel(T* out, const T* gate, const T* up, long n) {
  const long groups = (n + V - 1) / V;
  for (long grp = blockIdx.x * (long)blockDim.x + threadIdx.x; grp < groups; grp += (long)gridDim.x * blockDim.x) {
    const long i = grp * V;
    if (i + V <= n) {
      float g[V], u[V];
      ew::load_floats<V>(g, gate + i);
      ew::load_floats<V>(u, up + i);
      for (int k = 0; k < V; ++k) g[k] = g[k] / (1.0f + expf(-g[k])) * u[k];
      ew::store_floats<V>(out + i, g);
    } else {
      for (long j = i; j < n; ++j) {
        const float g = ew::to_float(gate[j]);
        out[j] = ew::from_float<T>(g / (1.0f + expf(-g)) * ew::to_float(up[j]));
      }
    }
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
    swiglu_backward_kernel(T* dgate, T* dup, const T* dout, const T* gate, const T* up, long n) {
  const long groups = (n + V - 1) / V;
  for (long grp = blockIdx.x * (long)blockDim.x + threadIdx.x; grp < groups; grp += (long)gridDim.x * blockDim.x) {
    const long i = grp * V;
    if (i + V <= n) {
      float dy[V], g[V], u[V];
      ew::load_floats<V>(dy, dout + i);
      ew::load_floats<V>(g, gate + i);
      ew::load_floats<V>(u, up + i);
      float dg[V], du[V];
      for (int k = 0; k < V; ++k) swiglu_grad(dg[k], du[k], dy[k], g[k], u[k]);
      ew::store_floats<V>(dgate + i, dg);
      ew::store_floats<V>(dup + i, du);
    } else {
      for (long j = i; j < n; ++j) {
        float dg, du;
        swiglu_grad(dg, du, ew::to_float(dout[j]), ew::to_float(gate[j]), ew::to_float(up[j]));
        dgate[j] = ew::from_float<T>(dg);
        dup[j] = ew::from_float<T>(du);
      }
    }
  }
}

// ---- Launchers (T = float or __nv_bfloat16).

// out = silu(gate) * up over n values.
template <typename T>
void swiglu_forward_cuda(T* out, const T* gate, const T* up, long n, cudaStream_t stream) {
  ew::require(n >= 0, "swiglu_forward_cuda", "n must be non-negative");
  if (n == 0) return;
  constexpr int V = ew::kVec<T>;
  if (ew::aligned16(out) && ew::aligned16(gate) && ew::aligned16(up)) {
    l2v::launch("swiglu_forward", swiglu_forward_kernel<V, T>, dim3(ew::grid_for((n + V - 1) / V)), dim3(ew::kBlock), 0,
                stream, out, gate, up, n);
  } else {
    l2v::launch("swiglu_forward", swiglu_forward_kernel<1, T>, dim3(ew::grid_for(n)), dim3(ew::kBlock), 0, stream, out,
                gate, up, n);
  }
}

// dgate and dup (overwritten) from dout and the forward's inputs.
template <typename T>
void swiglu_backward_cuda(T* dgate, T* dup, const T* dout, const T* gate, const T* up, long n, cudaStream_t stream) {
  ew::require(n >= 0, "swiglu_backward_cuda", "n must be non-negative");
  if (n == 0) return;
  constexpr int V = ew::kVec<T>;
  if (ew::aligned16(dgate) && ew::aligned16(dup) && ew::aligned16(dout) && ew::aligned16(gate) && ew::aligned16(up)) {
    l2v::launch("swiglu_backward", swiglu_backward_kernel<V, T>, dim3(ew::grid_for((n + V - 1) / V)), dim3(ew::kBlock),
                0, stream, dgate, dup, dout, gate, up, n);
  } else {
    l2v::launch("swiglu_backward", swiglu_backward_kernel<1, T>, dim3(ew::grid_for(n)), dim3(ew::kBlock), 0, stream,
                dgate, dup, dout, gate, up, n);
  }
}

}  // namespace l2v::cuda
