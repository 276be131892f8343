// libFuzzer target: a llama2.c checkpoint (header and size) through Llama2cCheckpoint; every tensor of an
// accepted file is read back, q/k through the RoPE row permutation.
#include "fuzz/fuzz_common.h"
#include "model/llama2c.h"

namespace l2v::fuzz {

const char* const kInputName = "model.bin";

void fuzz_input(const std::string& path, const uint8_t*, size_t) {
  read_every_tensor(Llama2cCheckpoint(path));
}

}  // namespace l2v::fuzz
