// libFuzzer target: a GGUF file through GgufFile (header, metadata, tensor table; every tensor of an
// accepted file dequantised, touching each byte the table claims) and GgufCheckpoint (the metadata as a
// model config, every tensor read under its Hugging Face name, q/k rows de-interleaved).
#include <vector>

#include "data/gguf.h"
#include "fuzz/fuzz_common.h"
#include "model/gguf_checkpoint.h"

namespace l2v::fuzz {

const char* const kInputName = "model.gguf";

void fuzz_input(const std::string& path, const uint8_t*, size_t) {
  {
    const GgufFile f(path);
    for (const GgufTensor& t : f.tensors()) f.dequantize(t);
  }
  const GgufCheckpoint ck(path);
  for (const std::string& name : ck.names()) {
    size_t n = 1;
    for (int64_t d : ck.shape(name)) n *= static_cast<size_t>(d);
    std::vector<float> values(n);
    ck.read_f32(name, values.data(), n);
  }
}

}  // namespace l2v::fuzz
