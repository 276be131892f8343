// Per-element error bounds of an attention implementation against the fp32 CPU reference
// (l2v::cpu::attention_forward / attention_backward) on the same inputs, for implementations that round
// the probabilities and dS to a storage type T before their second products (the tensor-core kernels,
// cuda/attention_mma.cuh: test_cuda_attention_mma; the CPU backend's bf16 attention,
// host/cpu_attention_bf16.h: test_cpu_bf16_backend), and the plain structs of one case. No CUDA here.
//
// Tolerances are per element, derived from the arithmetic (the numerics paragraph of attention_mma.cuh),
// not picked. u_T is the storage type's unit roundoff (2^-8 bf16, 2^-11 fp16), u = 2^-24 fp32's, and
// gamma_n = n u / (1 - n u) bounds the relative error of an n-term fp32 sum of products in any order.
// fp16 values below 2^-14 are subnormal: one rounding to fp16 then errs by up to tiny = 2^-25 absolute
// (0 for bf16, which has fp32's range). Both sides of a comparison err from the exact value; the bound
// is the kernel's error plus the reference's (fp32 terms counted twice; the reference rounds nothing to T).
// Exact quantities (x_ij = scale q_i.k_j, P_ij, dP_ij, D_i, dS_ij) are computed here in double.
//   Scores: |fl(x_ij) - x_ij| <= gamma_D a_ij, a_ij = scale sum_d |q_id k_jd|. With the roundings of the
//     softmax's few fp32 operations (scale, base change, max subtraction, exp2, lse), each of at most u
//     relative to operands bounded by |x_ij| + |lse_i| + 1, a logit errs by at most
//     delta_i = max_j [gamma_D a_ij + 4u (|x_ij| + |lse_i| + 1)]. Shifting every logit of a softmax by at
//     most delta changes each probability by a factor within exp(+-2 delta): relative expm1(2 delta_i).
//   out_id = sum_j P'_ij v_jd (P' the dropped, 1/(1-p)-scaled probabilities; the kernel normalises by the
//     unrounded fp32 row sum l, relative gamma_n). The kernel rounds P' to T once (u_T |P'_ij| + tiny each):
//       pre = u_T pv_id + tiny sv_d + 2 (expm1(2 delta_i) + gamma_{n+4}) pv_id + tiny,
//     pv_id = sum_j |P'_ij v_jd|, sv_d = sum_j |v_jd|, n the visible keys of row i; the last tiny is the
//     store's. Then out is rounded to T once: tol = pre + u_T (|ref| + pre) (CloseStored).
//   lse_i (fp32, not rounded): tol = 2 (delta_i + gamma_{n+4} + 4u |lse_i|): every logit shifts lse by at
//     most delta, the row sum's relative error shifts its log by at most gamma, then two roundings.
//   Backward, row i (lse_i and out_i given, the same values on both sides): the recomputed P_ij errs by
//     rho_ij = expm1(gamma_D a_ij + 4u (|x_ij| + |lse_i| + 1)) relative; dP_ij = keep_ij/(1-p) dout_i.v_j by
//     gamma_{D+1} b_ij/(1-p), b_ij = sum_d |dout_id v_jd|; D_i = dout_i.out_i by gamma_D c_i,
//     c_i = sum_d |dout_id out_id|. dS_ij = P_ij (dP_ij - D_i) then errs by
//       sigma_ij = rho_ij |dS_ij| + P_ij (gamma_{D+1} b_ij/(1-p) [kept] + gamma_D c_i) + 2u |dS_ij|,
//     and the kernel rounds dS (dq, dk) and P' (dv) to T once before their second product:
//       dq_id: pre = scale sum_j (2 sigma_ij + (u_T + 2 gamma_{n+2}) |dS_ij| + tiny) |k_jd| + tiny,
//       dk_jd: pre = scale sum_{h,i} (2 sigma_ij + (u_T + 2 gamma_{m+2}) |dS_ij| + tiny) |q_id| + tiny,
//       dv_jd: pre = sum_{h,i} ((2 rho_ij + u_T + 2 gamma_{m+2}) |P'_ij| + tiny) |dout_id| + tiny,
//     m = the group's query rows (H/KV times T); each is rounded to T once when stored, as out.
#pragma once
#include <cmath>
#include <cstdint>
#include <utility>
#include <vector>

#include "host/philox.h"
#include "test/test_util.h"

namespace l2v::test {

struct AttentionDims {
  int B, T, H, KV, D;
  bool causal;
  float p;  // attention dropout
};

struct AttentionInputs {
  std::vector<float> q, k, v, dout;
  std::vector<int> mask;  // key mask [B, T]
};

struct AttentionResults {
  std::vector<float> out, lse, dq, dk, dv;
};

// sum_d a_d b_d and sum_d |a_d b_d| over n elements, in double.
inline std::pair<double, double> dot_and_abs(const float* a, const float* b, int n) {
  double dot = 0.0, mag = 0.0;
  for (int d = 0; d < n; ++d) {
    dot += (double)a[d] * b[d];
    mag += std::fabs((double)a[d] * b[d]);
  }
  return {dot, mag};
}

// Per element of a result: the sum of |terms| behind it (mag) and the bound on |kernel - reference|
// before the kernel's final rounding to T (pre: both sides' fp32 arithmetic, the kernel's rounding of P'
// or dS to T, and tiny for the store); CloseStored adds the store's u_T (|ref| + pre).
struct Bound {
  std::vector<double> mag, pre;
  explicit Bound(size_t n) : mag(n, 0.0), pre(n, 0.0) {}
};

struct AttentionBounds {
  Bound out, lse, dq, dk, dv;
};

// The bounds of the header comment for one case, from the inputs and the implementation's out and lse
// (`got`), with its dropout key and site.
inline AttentionBounds derive_attention_bounds(const AttentionDims& c, const AttentionInputs& in,
                                               const AttentionResults& got, DropoutKey key, uint32_t site,
                                               double uT, double tiny) {
  const int D = c.D, T = c.T, group = c.H / c.KV;
  const long qs = (long)c.H * D, ks = (long)c.KV * D;
  const double scale = 1.0 / std::sqrt((double)D), keep_scale = c.p > 0 ? 1.0 / (1.0 - c.p) : 1.0;
  const double m_terms = (double)group * T;
  AttentionBounds bd{Bound(got.out.size()), Bound(got.lse.size()), Bound(got.dq.size()), Bound(got.dk.size()),
            Bound(got.dv.size())};
  std::vector<double> x(T), a(T), P(T);
  std::vector<char> vis(T);
  for (int b = 0; b < c.B; ++b) {
    for (int h = 0; h < c.H; ++h) {
      const int g = h / group;
      const long row0 = ((long)b * c.H + h) * T;
      for (int i = 0; i < T; ++i) {
        const long qo = ((long)b * T + i) * qs + (long)h * D;
        int n = 0;
        double mx = -INFINITY;
        for (int j = 0; j < T; ++j) {
          vis[j] = in.mask[(size_t)b * T + j] != 0 && (!c.causal || j <= i);
          if (!vis[j]) continue;
          const auto [dot, mag] = dot_and_abs(&in.q[qo], &in.k[((long)b * T + j) * ks + (long)g * D], D);
          x[j] = scale * dot;
          a[j] = scale * mag;
          mx = std::max(mx, x[j]);
          ++n;
        }
        if (n == 0) continue;  // out, lse, dq are exact (0, -inf, 0): bound 0
        double sum = 0.0;
        for (int j = 0; j < T; ++j)
          if (vis[j]) sum += std::exp(x[j] - mx);
        const double lse = mx + std::log(sum);
        double delta = 0.0;
        for (int j = 0; j < T; ++j) {
          if (!vis[j]) continue;
          P[j] = std::exp(x[j] - lse);
          delta = std::max(delta, gamma32(D) * a[j] + 4 * kU32 * (std::fabs(x[j]) + std::fabs(lse) + 1));
        }
        auto keep = [&](int j) {
          return c.p == 0.0f || dropout_keep_attention(key.seed, site, (uint32_t)(key.offset + b * c.H + h),
                                                       (uint32_t)i, (uint32_t)j, c.p);
        };
        // Forward.
        bd.lse.pre[row0 + i] = 2 * (delta + gamma32(n + 4) + 4 * kU32 * std::fabs(lse));
        const double soft = 2 * (std::expm1(2 * delta) + gamma32(n + 4));
        for (int d = 0; d < D; ++d) {
          double pv = 0.0, sv = 0.0;
          for (int j = 0; j < T; ++j) {
            if (!vis[j]) continue;
            const double vj = std::fabs((double)in.v[((long)b * T + j) * ks + (long)g * D + d]);
            if (keep(j)) pv += keep_scale * P[j] * vj;
            sv += vj;
          }
          bd.out.mag[qo + d] = pv;
          bd.out.pre[qo + d] = (uT + soft) * pv + tiny * sv + tiny;
        }
        // Backward of row i on the kernels' out_i and lse_i.
        const double L = got.lse[row0 + i];
        const auto [Di, ci] = dot_and_abs(&in.dout[qo], &got.out[qo], D);
        for (int j = 0; j < T; ++j) {
          if (!vis[j]) continue;
          const long ko = ((long)b * T + j) * ks + (long)g * D;
          const auto [dpv, bij] = dot_and_abs(&in.dout[qo], &in.v[ko], D);
          const bool kept = keep(j);
          const double Pb = std::exp(x[j] - L);
          const double rho = std::expm1(gamma32(D) * a[j] + 4 * kU32 * (std::fabs(x[j]) + std::fabs(L) + 1));
          const double dP = kept ? keep_scale * dpv : 0.0;
          const double dS = std::fabs(Pb * (dP - Di)), Pk = kept ? keep_scale * Pb : 0.0;
          const double dP_err = (kept ? gamma32(D + 1) * bij * keep_scale : 0.0) + gamma32(D) * ci;
          const double sigma = rho * dS + Pb * dP_err + 2 * kU32 * dS;
          const double wq = 2 * sigma + (uT + 2 * gamma32(T + 2)) * dS;
          const double wk = 2 * sigma + (uT + 2 * gamma32(m_terms + 2)) * dS;
          const double wv = (2 * rho + uT + 2 * gamma32(m_terms + 2)) * Pk;
          for (int d = 0; d < D; ++d) {
            const double kd = std::fabs((double)in.k[ko + d]), qd = std::fabs((double)in.q[qo + d]);
            const double dod = std::fabs((double)in.dout[qo + d]);
            bd.dq.mag[qo + d] += scale * dS * kd;
            bd.dq.pre[qo + d] += scale * (wq + tiny) * kd;
            bd.dk.mag[ko + d] += scale * dS * qd;
            bd.dk.pre[ko + d] += scale * (wk + tiny) * qd;
            bd.dv.mag[ko + d] += Pk * dod;
            bd.dv.pre[ko + d] += (wv + tiny) * dod;
          }
        }
      }
    }
  }
  for (Bound* bound : {&bd.dq, &bd.dk, &bd.dv})
    for (double& e : bound->pre) e += tiny;  // a subnormal store
  return bd;
}

}  // namespace l2v::test
