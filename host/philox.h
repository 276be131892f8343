// Philox4x32-10 counter-based RNG (Salmon et al., SC'11). Stateless: the random bits for a given
// (key, counter) are a pure function of them, so the dropout mask of any element can be regenerated
// in the backward pass, on recomputation, and by the CUDA kernels, without storing it.
#pragma once
#include <cstdint>

#include "host/hd.h"

namespace l2v {

struct Philox4 {
  uint32_t v[4];
};

L2V_HD Philox4 philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3, uint64_t key) {
  const uint32_t M0 = 0xD2511F53u, M1 = 0xCD9E8D57u;
  const uint32_t W0 = 0x9E3779B9u, W1 = 0xBB67AE85u;
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int round = 0; round < 10; ++round) {
    uint64_t p0 = (uint64_t)M0 * c0;
    uint64_t p1 = (uint64_t)M1 * c2;
    uint32_t hi0 = (uint32_t)(p0 >> 32), lo0 = (uint32_t)p0;
    uint32_t hi1 = (uint32_t)(p1 >> 32), lo1 = (uint32_t)p1;
    uint32_t n0 = hi1 ^ c1 ^ k0, n1 = lo1, n2 = hi0 ^ c3 ^ k1, n3 = lo0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += W0; k1 += W1;
  }
  return Philox4{{c0, c1, c2, c3}};
}

// What keys the masks of one dropout op: the step's seed, and where this batch sits in the batch the
// masks are defined over. A rank of a data-parallel run (or a chunk of rows recomputed on its own)
// holds rows [row0, row0 + B) of a global batch with the same T; the model sets `offset` so that every
// element draws the bits it draws in the global batch: element-wise sites use index offset + i
// (offset = row0·T·width), attention uses batch*head offset + bh (offset = row0·H). Implicit from a
// bare seed (offset 0: the batch is the whole batch).
struct DropoutKey {
  uint64_t seed = 0;
  uint64_t offset = 0;
  L2V_HD DropoutKey(uint64_t seed_ = 0, uint64_t offset_ = 0) : seed(seed_), offset(offset_) {}
};

// Uniform in [0, 1) with 24 random bits: exactly representable in fp32 on every device.
L2V_HD float philox_to_unit(uint32_t bits) { return (float)(bits >> 8) * (1.0f / 16777216.0f); }

// Keep decision for element `index` of an element-wise dropout site. Four consecutive elements share
// one Philox call (block index >> 2, elementwise_dropout_bits). `site` names the dropout site (layer, op)
// of one step (not a CUDA stream).
L2V_HD Philox4 elementwise_dropout_bits(uint64_t seed, uint32_t site, uint64_t block) {
  return philox4x32_10((uint32_t)block, (uint32_t)(block >> 32), 0xE1E3E7u, site, seed);
}
L2V_HD bool dropout_keep_elementwise(uint64_t seed, uint32_t site, uint64_t index, float p) {
  return philox_to_unit(elementwise_dropout_bits(seed, site, index >> 2).v[index & 3]) >= p;
}

// The keep decisions of the four elements index0 .. index0 + 3 of an element-wise site: one Philox call
// when index0 is a multiple of 4 (the four share its block), else one per element. The same bits as
// dropout_keep_elementwise, element by element.
L2V_HD void dropout_keep4_elementwise(uint64_t seed, uint32_t site, uint64_t index0, float p, bool keep[4]) {
  if ((index0 & 3) == 0) {
    const Philox4 r = elementwise_dropout_bits(seed, site, index0 >> 2);
    for (int j = 0; j < 4; ++j) keep[j] = philox_to_unit(r.v[j]) >= p;
  } else {
    for (int j = 0; j < 4; ++j) keep[j] = dropout_keep_elementwise(seed, site, index0 + j, p);
  }
}

// Keep decision for attention probability (batch*head `bh`, query `i`, key `j`).
L2V_HD bool dropout_keep_attention(uint64_t seed, uint32_t site, uint32_t bh, uint32_t i, uint32_t j,
                                   float p) {
  Philox4 r = philox4x32_10(j >> 2, i, bh, site, seed);
  return philox_to_unit(r.v[j & 3]) >= p;
}

}  // namespace l2v
