#include "host/cpu_attention_bf16.h"

#include <immintrin.h>
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <vector>

#include "host/cpu_fast_ops.h"
#include "host/cpu_gemm_bf16.h"
#include "host/cpu_ops.h"
#include "host/dropout_bits.h"

// GCC 12 warns that the AVX-512 intrinsics' internal _mm512_undefined_*() "may be used uninitialized" (its
// own header's pass-through operand, not this file's): a false positive.
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#pragma GCC diagnostic ignored "-Wuninitialized"  // the same at -O1 (the sanitizer build)

namespace l2v::cpu {
namespace {

constexpr int kRows = 32;  // query rows per block: one row of the GEMMs' 32 x 32 output blocks

// The shapes and strides of one call.
struct Layout {
  int B, T, H, KV, D, group, blocks;
  long q_stride, kv_stride, o_stride;  // q and dq; k, v, dk and dv; out and dout (packed)
  float sm_scale, keep_scale;
  bool dropout;
  Layout(int B_, int T_, int H_, int KV_, int D_, float p, QkvStrides ld)
      : B(B_), T(T_), H(H_), KV(KV_), D(D_), group(H_ / KV_), blocks((T_ + kRows - 1) / kRows), q_stride(ld.q),
        kv_stride(ld.kv), o_stride((long)H_ * D_), sm_scale(1.0f / std::sqrt((float)D_)),
        keep_scale(p > 0.0f ? 1.0f / (1.0f - p) : 1.0f), dropout(p > 0.0f) {}
  long q_offset(int b, int i, int h) const { return ((long)b * T + i) * q_stride + (long)h * D; }
  long o_offset(int b, int i, int h) const { return ((long)b * T + i) * o_stride + (long)h * D; }
  long kv_offset(int b, int j, int g) const { return ((long)b * T + j) * kv_stride + (long)g * D; }
};

// The forward's softmax and dropout of one query row, the reference's operations on 16 lanes where the CPU
// has AVX-512F (the scalar loop below otherwise): p [keys] holds the row's scores on entry and its dropped
// probabilities P' on return (0 past jend and at masked keys); returns the row's lse (-inf, and p all 0,
// when no key is visible). keep_bits(j0, bits) gives the dropout bits of keys j0 .. j0 + 127.
template <typename KeepBits>
__attribute__((target("avx512f"))) float softmax_row_avx512(float* p, const int* km, int jend, int keys,
                                                            const Layout& L, KeepBits keep_bits) {
  const __m512 neg_inf = _mm512_set1_ps(-INFINITY), scale = _mm512_set1_ps(L.sm_scale);
  __m512 vmax = neg_inf;
  bool any = false;
  for (int j = 0; j < jend; j += 16) {
    __mmask16 valid = lanes_below(jend - j);
    if (km) valid = _mm512_mask_cmpneq_epi32_mask(valid, _mm512_maskz_loadu_epi32(valid, km + j), _mm512_setzero_si512());
    const __m512 v = _mm512_mask_mul_ps(neg_inf, valid, _mm512_maskz_loadu_ps(valid, p + j), scale);
    _mm512_mask_storeu_ps(p + j, lanes_below(jend - j), v);
    vmax = _mm512_max_ps(vmax, v);
    any |= valid != 0;
  }
  std::fill(p + jend, p + keys, 0.0f);
  if (!any) {
    std::fill(p, p + jend, 0.0f);
    return -INFINITY;
  }
  const float mx = _mm512_reduce_max_ps(vmax);
  const float sum = exp_shifted_sum(p, jend, mx);  // masked keys: exp(-inf) = 0
  const __m512 inv_sum = _mm512_set1_ps(1.0f / sum), keep_scale = _mm512_set1_ps(L.keep_scale);
  for (int j0 = 0; j0 < jend; j0 += 128) {
    uint64_t keep[2] = {~0ull, ~0ull};
    if (L.dropout) keep_bits(j0, keep);
    for (int j = j0; j < std::min(jend, j0 + 128); j += 16) {
      const __mmask16 m = lanes_below(jend - j);
      __m512 w = _mm512_mul_ps(_mm512_maskz_loadu_ps(m, p + j), inv_sum);
      if (L.dropout) {
        const __mmask16 kept = (__mmask16)(keep[(j - j0) / 64] >> ((j - j0) % 64));
        w = _mm512_maskz_mul_ps(kept, w, keep_scale);
      }
      _mm512_mask_storeu_ps(p + j, m, w);
    }
  }
  return mx + std::log(sum);
}

// The backward's row: P [keys] holds the scores on entry, P' on return; dS [keys] holds dP on entry, scale * dS
// on return (the reference's operations, 16 lanes at a time; both 0 past jend and at masked keys).
template <typename KeepBits>
__attribute__((target("avx512f"))) void backward_row_avx512(float* P, float* dS, const int* km, int jend, int keys,
                                                            float lse_i, float Di, const Layout& L,
                                                            KeepBits keep_bits) {
  for (int j = 0; j < keys; ++j) P[j] = j >= jend || (km && km[j] == 0) ? -INFINITY : P[j] * L.sm_scale - lse_i;
  exp_inplace(P, keys);
  const __m512 keep_scale = _mm512_set1_ps(L.keep_scale), scale = _mm512_set1_ps(L.sm_scale), d = _mm512_set1_ps(Di);
  for (int j0 = 0; j0 < keys; j0 += 128) {
    uint64_t keep[2] = {~0ull, ~0ull};
    if (L.dropout) keep_bits(j0, keep);
    for (int j = j0; j < std::min(keys, j0 + 128); j += 16) {
      const __mmask16 m = lanes_below(keys - j);
      __mmask16 valid = lanes_below(jend - j) & m;
      if (km) valid = _mm512_mask_cmpneq_epi32_mask(valid, _mm512_maskz_loadu_epi32(valid, km + j), _mm512_setzero_si512());
      const __mmask16 kept = valid & (__mmask16)(keep[(j - j0) / 64] >> ((j - j0) % 64));
      const __m512 pij = _mm512_maskz_loadu_ps(m, P + j), dp = _mm512_maskz_loadu_ps(m, dS + j);
      // A dropped probability receives no gradient through the output.
      const __m512 dpij = _mm512_maskz_mul_ps(kept, dp, keep_scale);
      _mm512_mask_storeu_ps(P + j, m, _mm512_maskz_mul_ps(kept, pij, keep_scale));
      _mm512_mask_storeu_ps(dS + j, m, _mm512_maskz_mul_ps(valid, _mm512_mul_ps(pij, _mm512_sub_ps(dpij, d)), scale));
    }
  }
}

// dst [cols, rows] = src [rows, cols]^T (row strides src_ld and rows).
void transpose(float* dst, const float* src, int rows, int cols, int src_ld) {
  for (int r = 0; r < rows; ++r)
    for (int c = 0; c < cols; ++c) dst[(size_t)c * rows + r] = src[(size_t)r * src_ld + c];
}

}  // namespace

void attention_forward_bf16(float* out, float* lse, const float* q, const float* k, const float* v, QkvStrides ld,
                            const int* key_mask, int B, int T, int H, int KV, int D, bool causal, float dropout_p,
                            DropoutKey key, uint32_t site) {
  check_attention_shape("attention_forward_bf16", B, T, H, KV, D, dropout_p, ld);
  const Layout L(B, T, H, KV, D, dropout_p, ld);
  const bool avx512 = __builtin_cpu_supports("avx512f");
  // K^T (for the scores) and V (for P' V) of every (batch, kv head), packed once for all its query heads.
  std::vector<PackedBf16> kt((size_t)B * KV), vp((size_t)B * KV);
#pragma omp parallel for
  for (int bg = 0; bg < B * KV; ++bg) {
    const int b = bg / KV, g = bg % KV;
    kt[bg] = pack_bf16_transposed(k + L.kv_offset(b, 0, g), T, D, L.kv_stride);
    vp[bg] = pack_bf16(v + L.kv_offset(b, 0, g), T, D, L.kv_stride);
  }
  const long items = (long)B * H * L.blocks;
#pragma omp parallel
  {
    // This block's scores, then its dropped probabilities P' (aligned: the tiles store the scores).
    const auto s = aligned_array<float>((size_t)kRows * T);
#pragma omp for schedule(dynamic, 1)
    for (long it = 0; it < items; ++it) {
      const int blk = (int)(it % L.blocks), bh = (int)(it / L.blocks);
      const int h = bh % H, b = bh / H, g = h / L.group;
      const int i0 = blk * kRows, rows = std::min(kRows, T - i0);
      const int keys = causal ? i0 + rows : T;  // the keys the block's rows see: the scores and P' V stop there
      gemm_bf16_part(s.get(), T, q + L.q_offset(b, i0, h), L.q_stride, rows, kt[(size_t)b * KV + g], D, keys, false);
      const int* km = key_mask ? key_mask + (long)b * T : nullptr;
      for (int r = 0; r < rows; ++r) {
        const int i = i0 + r, jend = causal ? i + 1 : T;
        float* p = s.get() + (size_t)r * T;
        float* lse_i = lse + (long)bh * T + i;
        if (avx512) {
          *lse_i = softmax_row_avx512(p, km, jend, keys, L, [&](int j0, uint64_t bits[2]) {
            attention_keep_bits128(key.seed, site, (uint32_t)(key.offset + bh), (uint32_t)i, (uint32_t)j0, dropout_p,
                                   bits);
          });
          continue;
        }
        // The reference's softmax (cpu::attention_forward) on this row's scores.
        float mx = -INFINITY;
        bool any = false;
        for (int j = 0; j < jend; ++j) {
          if (km && km[j] == 0) {
            p[j] = -INFINITY;
            continue;
          }
          p[j] *= L.sm_scale;
          mx = std::max(mx, p[j]);
          any = true;
        }
        std::fill(p + jend, p + keys, 0.0f);
        if (!any) {
          *lse_i = -INFINITY;
          std::fill(p, p + jend, 0.0f);
          continue;
        }
        for (int j = 0; j < jend; ++j) p[j] -= mx;
        exp_inplace(p, jend);  // masked keys: exp(-inf) = 0
        float sum = 0.0f;
        for (int j = 0; j < jend; ++j) sum += p[j];
        *lse_i = mx + std::log(sum);
        const float inv_sum = 1.0f / sum;
        for (int j0 = 0; j0 < jend; j0 += 128) {
          uint64_t keep[2] = {~0ull, ~0ull};
          if (L.dropout)
            attention_keep_bits128(key.seed, site, (uint32_t)(key.offset + bh), (uint32_t)i, (uint32_t)j0, dropout_p,
                                   keep);
          for (int j = j0; j < std::min(jend, j0 + 128); ++j) {
            if (p[j] == 0.0f) continue;
            const float w = p[j] * inv_sum;
            p[j] = !L.dropout ? w : (keep[(j - j0) / 64] >> ((j - j0) % 64)) & 1 ? w * L.keep_scale : 0.0f;
          }
        }
      }
      gemm_bf16_part(out + L.o_offset(b, i0, h), (int)L.o_stride, s.get(), T, rows, vp[(size_t)b * KV + g], keys, D,
                     false);
    }
  }
}

void attention_backward_bf16(float* dq, float* dk, float* dv, const float* dout, const float* out, const float* lse,
                             const float* q, const float* k, const float* v, QkvStrides ld, const int* key_mask,
                             int B, int T, int H, int KV, int D, bool causal, float dropout_p, DropoutKey key,
                             uint32_t site) {
  check_attention_shape("attention_backward_bf16", B, T, H, KV, D, dropout_p, ld);
  const Layout L(B, T, H, KV, D, dropout_p, ld);
  const bool avx512 = __builtin_cpu_supports("avx512f");
#pragma omp parallel
  {
    // One block's P then P', and dP then scale * dS ([rows, T]); their transposes ([T, rows]).
    const auto p = aligned_array<float>((size_t)kRows * T), ds = aligned_array<float>((size_t)kRows * T),
               t = aligned_array<float>((size_t)T * kRows);
#pragma omp for schedule(dynamic, 1)
    for (int bg = 0; bg < B * KV; ++bg) {
      const int b = bg / KV, g = bg % KV;
      const float* kb = k + L.kv_offset(b, 0, g);
      const float* vb = v + L.kv_offset(b, 0, g);
      float* dkb = dk + L.kv_offset(b, 0, g);
      float* dvb = dv + L.kv_offset(b, 0, g);
      const PackedBf16 kt = pack_bf16_transposed(kb, T, D, L.kv_stride);  // S = Q K^T
      const PackedBf16 vt = pack_bf16_transposed(vb, T, D, L.kv_stride);  // dP = dO V^T
      const PackedBf16 kk = pack_bf16(kb, T, D, L.kv_stride);             // dQ = dS K
      for (int j = 0; j < T; ++j) {
        std::fill(dkb + (long)j * L.kv_stride, dkb + (long)j * L.kv_stride + D, 0.0f);
        std::fill(dvb + (long)j * L.kv_stride, dvb + (long)j * L.kv_stride + D, 0.0f);
      }
      const int* km = key_mask ? key_mask + (long)b * T : nullptr;
      for (int h = g * L.group; h < (g + 1) * L.group; ++h) {
        const int bh = b * H + h;
        for (int blk = 0; blk < L.blocks; ++blk) {
          const int i0 = blk * kRows, rows = std::min(kRows, T - i0);
          const int keys = causal ? i0 + rows : T;  // the keys the block's rows see (as in the forward)
          const long qo = L.q_offset(b, i0, h), oo = L.o_offset(b, i0, h);
          gemm_bf16_part(p.get(), T, q + qo, L.q_stride, rows, kt, D, keys, false);
          gemm_bf16_part(ds.get(), T, dout + oo, L.o_stride, rows, vt, D, keys, false);
          for (int r = 0; r < rows; ++r) {
            const int i = i0 + r, jend = causal ? i + 1 : T;
            float* P = p.get() + (size_t)r * T;
            float* dS = ds.get() + (size_t)r * T;
            const float lse_i = lse[(long)bh * T + i];
            if (lse_i == -INFINITY) {  // no visible key: the output was a constant 0
              std::fill(P, P + keys, 0.0f);
              std::fill(dS, dS + keys, 0.0f);
              continue;
            }
            const float* do_i = dout + L.o_offset(b, i, h);
            const float* o_i = out + L.o_offset(b, i, h);
            float Di = 0.0f;  // dout_i . out_i = sum_j P_ij dP_ij
            for (int d = 0; d < D; ++d) Di += do_i[d] * o_i[d];
            if (avx512) {
              backward_row_avx512(P, dS, km, jend, keys, lse_i, Di, L, [&](int j0, uint64_t bits[2]) {
                attention_keep_bits128(key.seed, site, (uint32_t)(key.offset + bh), (uint32_t)i, (uint32_t)j0,
                                       dropout_p, bits);
              });
              continue;
            }
            // The forward's probabilities, recomputed: exp(s * scale - lse), 0 for masked and future keys.
            for (int j = 0; j < keys; ++j)
              P[j] = j >= jend || (km && km[j] == 0) ? -INFINITY : P[j] * L.sm_scale - lse_i;
            exp_inplace(P, keys);
            uint64_t keep[2] = {~0ull, ~0ull};
            for (int j = 0; j < keys; ++j) {
              if (L.dropout && j % 128 == 0)
                attention_keep_bits128(key.seed, site, (uint32_t)(key.offset + bh), (uint32_t)i, (uint32_t)j,
                                       dropout_p, keep);
              if (j >= jend || (km && km[j] == 0)) {
                P[j] = dS[j] = 0.0f;
                continue;
              }
              const float Pij = P[j];
              const bool kept = (keep[(j % 128) / 64] >> (j % 64)) & 1;
              // A dropped probability receives no gradient through the output.
              const float dPij = kept ? dS[j] * L.keep_scale : 0.0f;
              P[j] = kept ? Pij * L.keep_scale : 0.0f;
              dS[j] = Pij * (dPij - Di) * L.sm_scale;
            }
          }
          gemm_bf16_part(dq + qo, (int)L.q_stride, ds.get(), T, rows, kk, keys, D, false);
          // dk += (scale dS)^T Q, dv += P'^T dO over this block's rows (keys past `keys` receive nothing).
          transpose(t.get(), ds.get(), rows, keys, T);
          gemm_bf16(dkb, (int)L.kv_stride, t.get(), rows, keys, pack_bf16(q + qo, rows, D, L.q_stride), true);
          transpose(t.get(), p.get(), rows, keys, T);
          gemm_bf16(dvb, (int)L.kv_stride, t.get(), rows, keys, pack_bf16(dout + oo, rows, D, L.o_stride), true);
        }
      }
    }
  }
}

}  // namespace l2v::cpu
