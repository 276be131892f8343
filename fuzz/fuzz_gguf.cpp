// libFuzzer target: a GGUF file through GgufFile (header, metadata, tensor table; every tensor of an
// accepted file dequantised, touching each byte the table claims; its tokenizer metadata converted) and GgufCheckpoint (the metadata as a
// model config, every tensor read under its Hugging Face name, q/k rows de-interleaved).
#include "data/gguf.h"
#include "data/gguf_tokenizer.h"
#include "fuzz/fuzz_common.h"
#include "model/gguf_checkpoint.h"

namespace l2v::fuzz {

const char* const kInputName = "model.gguf";

void fuzz_input(const std::string& path, const uint8_t*, size_t) {
  {
    const GgufFile f(path);
    for (const GgufTensor& t : f.tensors()) f.dequantize(t);
    if (gguf_has_tokenizer(f)) gguf_tokenizer(f);
  }
  read_every_tensor(GgufCheckpoint(path));
}

}  // namespace l2v::fuzz
