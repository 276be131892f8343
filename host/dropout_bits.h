// Dropout keep decisions in bulk on the CPU, the same bits as host/philox.h's per-element functions (the
// masks the CUDA kernels regenerate): the element-wise dropout's and an attention row's 128 at a time
// (32 Philox4x32-10 calls in the lanes of AVX-512 registers where the CPU has them, a scalar loop
// otherwise), and an attention row's key by key with one Philox call per four keys (the fp32 reference).
#pragma once
#include <cstdint>

#include "host/philox.h"

namespace l2v {

// bits[e / 64] bit e % 64 (e = 0..127) = dropout_keep_elementwise(seed, site, 4 * block0 + e, p), p in [0, 1).
void elementwise_keep_bits128(uint64_t seed, uint32_t site, uint64_t block0, float p, uint64_t bits[2]);

// bits[e / 64] bit e % 64 = dropout_keep_attention(seed, site, bh, i, j0 + e, p): keys j0 .. j0 + 127 of
// query row (bh, i); j0 a multiple of 4.
void attention_keep_bits128(uint64_t seed, uint32_t site, uint32_t bh, uint32_t i, uint32_t j0, float p,
                            uint64_t bits[2]);

// The same through the scalar Philox only (the references the AVX-512 path is tested against).
void elementwise_keep_bits128_scalar(uint64_t seed, uint32_t site, uint64_t block0, float p, uint64_t bits[2]);
void attention_keep_bits128_scalar(uint64_t seed, uint32_t site, uint32_t bh, uint32_t i, uint32_t j0, float p,
                                   uint64_t bits[2]);

// Applying 64 keep bits to 64 consecutive floats (AVX-512 masked multiplies where the CPU has them; the
// same fp32 operations either way): dst[e] = bit e ? src[e] * scale : 0, and acc[e] += bit e ? x[e] * scale : 0.
void apply_keep_bits64(float* dst, const float* src, uint64_t keep, float scale);
void accumulate_keep_bits64(float* acc, const float* x, uint64_t keep, float scale);

// The attention dropout decisions of one query row (bh, i) for keys j in increasing order: the Philox call
// of a block of four keys is made once and reused (dropout_keep_attention draws keys 4k .. 4k+3 from one
// call), the same bits as calling dropout_keep_attention per key.
class AttentionRowDropout {
 public:
  AttentionRowDropout(DropoutKey key, uint32_t site, uint32_t bh, uint32_t i, float p)
      : seed_(key.seed), site_(site), bh_(bh), i_(i), p_(p) {}
  bool keep(uint32_t j) {
    if ((j >> 2) != block_) {
      block_ = j >> 2;
      bits_ = philox4x32_10(block_, i_, bh_, site_, seed_);
    }
    return philox_to_unit(bits_.v[j & 3]) >= p_;
  }

 private:
  uint64_t seed_;
  uint32_t site_, bh_, i_;
  float p_;
  uint32_t block_ = 0xFFFFFFFFu;
  Philox4 bits_{};
};

}  // namespace l2v
