// The element-wise dropout's keep decisions 64 at a time on the CPU: sixteen Philox4x32-10 calls in the
// lanes of AVX-512 registers where the CPU has them (a scalar loop otherwise), the same bits as
// dropout_keep_elementwise (host/philox.h) element by element — the masks the CUDA kernels regenerate.
#pragma once
#include <cstdint>

namespace l2v {

// Bit e (0..63) = dropout_keep_elementwise(seed, site, 4 * block0 + e, p), p in [0, 1).
uint64_t elementwise_keep_bits64(uint64_t seed, uint32_t site, uint64_t block0, float p);

// The same through the scalar Philox only (the reference the AVX-512 path is tested against).
uint64_t elementwise_keep_bits64_scalar(uint64_t seed, uint32_t site, uint64_t block0, float p);

}  // namespace l2v
