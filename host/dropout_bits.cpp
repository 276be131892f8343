#include "host/dropout_bits.h"

#include <immintrin.h>

#include <cmath>

#include "host/philox.h"

namespace l2v {
namespace {

// keep <=> philox_to_unit(bits) >= p <=> (bits >> 8) * 2^-24 >= p <=> (bits >> 8) >= ceil(p * 2^24): the
// scaling by 2^24 is exact in fp32 and bits >> 8 an integer, so the integer compare decides the same.
uint32_t keep_threshold(float p) { return (uint32_t)std::ceil(p * 16777216.0f); }

// g++ 12's AVX-512 shift and set1 intrinsics pass _mm512_undefined_epi32() as their unused source, which its
// -Wuninitialized reports once they are inlined into a target("avx512f") function: silenced here only.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wuninitialized"

// hi and lo 32 bits of the 16 lane-wise products a * m.
__attribute__((target("avx512f"))) inline void mulhilo16(__m512i a, __m512i m, __m512i& hi, __m512i& lo) {
  const __m512i even = _mm512_mul_epu32(a, m);                            // lanes 0, 2, ..: 64-bit products
  const __m512i odd = _mm512_mul_epu32(_mm512_srli_epi64(a, 32), m);  // lanes 1, 3, ..
  hi = _mm512_mask_blend_epi32(0xAAAA, _mm512_srli_epi64(even, 32), odd);
  lo = _mm512_mullo_epi32(a, m);
}

// The keep bits of 32 Philox4x32-10 calls, two independent groups of sixteen lanes interleaved round by
// round (one group alone waits on its multiplies' latency): lane l of group g has the counter
// (c0[16 g + l], c1[16 g + l], word2, word3); bits[g] bit 4 l + j comes from word j.
__attribute__((target("avx512f,bmi2"))) void keep_bits128_avx512(const uint32_t* c0_words, const uint32_t* c1_words,
                                                                uint32_t word2, uint32_t word3, uint64_t seed,
                                                                float p, uint64_t bits[2]) {
  __m512i c0[2], c1[2], c2[2], c3[2];
  for (int g = 0; g < 2; ++g) {
    c0[g] = _mm512_loadu_si512(c0_words + 16 * g);
    c1[g] = _mm512_loadu_si512(c1_words + 16 * g);
    c2[g] = _mm512_set1_epi32((int)word2);
    c3[g] = _mm512_set1_epi32((int)word3);
  }
  // Every 32-bit lane holds the multiplier: vpmuludq reads the low half of each 64-bit lane, vpmulld all.
  const __m512i m0 = _mm512_set1_epi32((int)0xD2511F53u), m1 = _mm512_set1_epi32((int)0xCD9E8D57u);
  uint32_t k0 = (uint32_t)seed, k1 = (uint32_t)(seed >> 32);
  for (int round = 0; round < 10; ++round) {
    const __m512i key0 = _mm512_set1_epi32((int)k0), key1 = _mm512_set1_epi32((int)k1);
    for (int g = 0; g < 2; ++g) {
      __m512i hi0, lo0, hi1, lo1;
      mulhilo16(c0[g], m0, hi0, lo0);
      mulhilo16(c2[g], m1, hi1, lo1);
      c0[g] = _mm512_xor_si512(_mm512_xor_si512(hi1, c1[g]), key0);
      c2[g] = _mm512_xor_si512(_mm512_xor_si512(hi0, c3[g]), key1);
      c1[g] = lo1;
      c3[g] = lo0;
    }
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  const __m512i t = _mm512_set1_epi32((int)keep_threshold(p));
  for (int g = 0; g < 2; ++g) {
    const __m512i words[4] = {c0[g], c1[g], c2[g], c3[g]};
    bits[g] = 0;
    for (int j = 0; j < 4; ++j) {
      const __mmask16 keep = _mm512_cmpge_epu32_mask(_mm512_srli_epi32(words[j], 8), t);
      bits[g] |= _pdep_u64((uint64_t)keep, 0x1111111111111111ull << j);  // lane l -> bit 4 l + j
    }
  }
}

__attribute__((target("avx512f"))) void apply_avx512(float* dst, const float* src, uint64_t keep, float scale) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int q = 0; q < 4; ++q)
    _mm512_storeu_ps(dst + 16 * q, _mm512_maskz_mul_ps((__mmask16)(keep >> (16 * q)), _mm512_loadu_ps(src + 16 * q), s));
}

__attribute__((target("avx512f"))) void accumulate_avx512(float* acc, const float* x, uint64_t keep, float scale) {
  const __m512 s = _mm512_set1_ps(scale);
  for (int q = 0; q < 4; ++q) {
    const __mmask16 k = (__mmask16)(keep >> (16 * q));
    const __m512 a = _mm512_loadu_ps(acc + 16 * q);
    _mm512_storeu_ps(acc + 16 * q, _mm512_mask_add_ps(a, k, a, _mm512_mul_ps(_mm512_loadu_ps(x + 16 * q), s)));
  }
}

#pragma GCC diagnostic pop

bool has_avx512() {
  static const bool ok = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("bmi2");
  return ok;
}

}  // namespace

void elementwise_keep_bits128_scalar(uint64_t seed, uint32_t site, uint64_t block0, float p, uint64_t bits[2]) {
  bits[0] = bits[1] = 0;
  for (int l = 0; l < 32; ++l) {
    const Philox4 r = elementwise_dropout_bits(seed, site, block0 + (uint64_t)l);
    for (int j = 0; j < 4; ++j)
      if (philox_to_unit(r.v[j]) >= p) bits[l / 16] |= 1ull << (4 * (l % 16) + j);
  }
}

void attention_keep_bits128_scalar(uint64_t seed, uint32_t site, uint32_t bh, uint32_t i, uint32_t j0, float p,
                                   uint64_t bits[2]) {
  bits[0] = bits[1] = 0;
  for (int l = 0; l < 32; ++l) {
    const Philox4 r = philox4x32_10((j0 >> 2) + (uint32_t)l, i, bh, site, seed);
    for (int w = 0; w < 4; ++w)
      if (philox_to_unit(r.v[w]) >= p) bits[l / 16] |= 1ull << (4 * (l % 16) + w);
  }
}

void apply_keep_bits64(float* dst, const float* src, uint64_t keep, float scale) {
  if (has_avx512()) return apply_avx512(dst, src, keep, scale);
  for (int e = 0; e < 64; ++e) dst[e] = (keep >> e) & 1 ? src[e] * scale : 0.0f;
}

void accumulate_keep_bits64(float* acc, const float* x, uint64_t keep, float scale) {
  if (has_avx512()) return accumulate_avx512(acc, x, keep, scale);
  for (int e = 0; e < 64; ++e)
    if ((keep >> e) & 1) acc[e] += x[e] * scale;
}

void elementwise_keep_bits128(uint64_t seed, uint32_t site, uint64_t block0, float p, uint64_t bits[2]) {
  if (!has_avx512()) return elementwise_keep_bits128_scalar(seed, site, block0, p, bits);
  // Lane l: block block0 + l, counter (low 32 bits, high 32 bits, 0xE1E3E7, site) as elementwise_dropout_bits;
  // the 64-bit add carries into the high word lane by lane.
  uint32_t lo[32], hi[32];
  for (int l = 0; l < 32; ++l) {
    lo[l] = (uint32_t)(block0 + (uint64_t)l);
    hi[l] = (uint32_t)((block0 + (uint64_t)l) >> 32);
  }
  keep_bits128_avx512(lo, hi, 0xE1E3E7u, site, seed, p, bits);
}

void attention_keep_bits128(uint64_t seed, uint32_t site, uint32_t bh, uint32_t i, uint32_t j0, float p,
                            uint64_t bits[2]) {
  if (!has_avx512()) return attention_keep_bits128_scalar(seed, site, bh, i, j0, p, bits);
  // Lane l: keys j0 + 4 l .. j0 + 4 l + 3, counter (key block, i, bh, site) as dropout_keep_attention.
  uint32_t blocks[32], rows[32];
  for (int l = 0; l < 32; ++l) {
    blocks[l] = (j0 >> 2) + (uint32_t)l;
    rows[l] = i;
  }
  keep_bits128_avx512(blocks, rows, bh, site, seed, p, bits);
}

}  // namespace l2v
