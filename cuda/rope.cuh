// Rotary position embedding in Hugging Face's rotate_half convention, forward and backward. The fp32 CPU
// reference is host/cpu_ops.cpp (cpu::rope_forward / rope_backward; tables from cpu::rope_tables).
//
// x [N, nh*D] in T = float or __nv_bfloat16, rows ld >= nh*D apart for x and out (packed, or a column block of
// the fused q|k|v product); row n is position n % seq_len; for i < D/2 each head's pair
// (x[i], x[i+D/2]) is rotated by the angle of its position:
//   out[i]     = x[i] cos[t,i] - x[i+D/2] sin[t,i]
//   out[i+D/2] = x[i+D/2] cos[t,i] + x[i] sin[t,i]
// The cos/sin tables [seq_len, D/2] are fp32 and the rotation is computed in fp32 and rounded once.
// (Hugging Face casts its tables to the activation dtype and rounds after every op of
// q*cos + rotate_half(q)*sin; a caller that wants its bf16 numbers exactly passes tables rounded to bf16.)
// The backward is the inverse rotation (sin -> -sin): the Jacobian is orthogonal.
//
// One thread per group of V pairs of one head: it reads both halves before writing either, so the
// rotation may run in place (out == x). Groups are 16-byte packs when D/2 is a multiple of the pack
// width and every pointer and row is 16-byte aligned, single pairs otherwise.
#pragma once

#include "cuda/elementwise.cuh"

namespace l2v::cuda {

// sin_sign = +1: forward; -1: backward.
template <int V, typename T>
__global__ void __launch_bounds__(ew::kBlock) rope_kernel(T* out, const T* x, int ld, const float* cos, const float* sin,
                                                          int N, int seq_len, int nh, int D, float sin_sign) {
  const int half = D / 2;
  const int groups_per_head = half / V;
  const long total = (long)N * nh * groups_per_head;
  for (long g = blockIdx.x * (long)blockDim.x + threadIdx.x; g < total; g += (long)gridDim.x * blockDim.x) {
    const long head = g / groups_per_head;  // = n * nh + h
    const int i = (int)(g - head * groups_per_head) * V;
    const long n = head / nh;
    const long t_off = (n % seq_len) * half + i;
    const long base = n * ld + (head - n * nh) * D + i;
    float x0[V], x1[V], c[V], s[V];
    ew::load_floats<V>(x0, x + base);
    ew::load_floats<V>(x1, x + base + half);
    ew::load_floats<V>(c, cos + t_off);
    ew::load_floats<V>(s, sin + t_off);
    float o0[V], o1[V];
    for (int k = 0; k < V; ++k) {
      const float si = sin_sign * s[k];
      o0[k] = x0[k] * c[k] - x1[k] * si;
      o1[k] = x1[k] * c[k] + x0[k] * si;
    }
    ew::store_floats<V>(out + base, o0);
    ew::store_floats<V>(out + base + half, o1);
  }
}

namespace ew {
template <typename T>
void rope_launch(const char* name, T* out, const T* x, int ld, const float* cos, const float* sin, int N, int seq_len,
                 int nh, int D, float sin_sign, cudaStream_t stream) {
  require(N >= 0 && seq_len > 0 && nh > 0 && D > 0 && D % 2 == 0 && ld >= nh * D, name,
          "need N >= 0, seq_len > 0, nh > 0, D even and positive, and ld >= nh*D");
  if (N == 0) return;
  const int half = D / 2;
  constexpr int V = kVec<T>;
  if (half % V == 0 && ld % V == 0 && aligned16(out) && aligned16(x) && aligned16(cos) && aligned16(sin)) {
    l2v::launch(name, rope_kernel<V, T>, dim3(grid_for((long)N * nh * (half / V))), dim3(kBlock), 0, stream, out, x,
                ld, cos, sin, N, seq_len, nh, D, sin_sign);
  } else {
    l2v::launch(name, rope_kernel<1, T>, dim3(grid_for((long)N * nh * half)), dim3(kBlock), 0, stream, out, x, ld, cos,
                sin, N, seq_len, nh, D, sin_sign);
  }
}
}  // namespace ew

// ---- Launchers (T = float or __nv_bfloat16). seq_len is T of cpu_ops.h.

// out [N, nh*D] = rope(x) (rows ld apart); out may alias x.
template <typename T>
void rope_forward_cuda(T* out, const T* x, int ld, const float* cos, const float* sin, int N, int seq_len, int nh,
                       int D, cudaStream_t stream) {
  ew::rope_launch("rope_forward", out, x, ld, cos, sin, N, seq_len, nh, D, 1.0f, stream);
}

// dx [N, nh*D] = the inverse rotation of dout (rows ld apart); dx may alias dout.
template <typename T>
void rope_backward_cuda(T* dx, const T* dout, int ld, const float* cos, const float* sin, int N, int seq_len, int nh,
                        int D, cudaStream_t stream) {
  ew::rope_launch("rope_backward", dx, dout, ld, cos, sin, N, seq_len, nh, D, -1.0f, stream);
}

}  // namespace l2v::cuda
