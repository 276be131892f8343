// libFuzzer target: a llama2.c checkpoint (header and size) through Llama2cCheckpoint; every tensor of an
// accepted file is read back, q/k through the RoPE row permutation.
#include <vector>

#include "fuzz/fuzz_common.h"
#include "model/llama2c.h"

namespace l2v::fuzz {

const char* const kInputName = "model.bin";

void fuzz_input(const std::string& path, const uint8_t*, size_t) {
  Llama2cCheckpoint ck(path);
  for (const std::string& name : ck.names()) {
    size_t n = 1;
    for (int64_t d : ck.shape(name)) n *= static_cast<size_t>(d);
    std::vector<float> values(n);
    ck.read_f32(name, values.data(), n);
  }
}

}  // namespace l2v::fuzz
