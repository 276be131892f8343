// libFuzzer target: a safetensors file, header and layout, through SafetensorsCheckpoint. Every tensor of
// an accepted file is read back (as fp32 or int64 where its dtype allows), touching each byte the header
// claims.
#include <vector>

#include "fuzz/fuzz_common.h"
#include "model/safetensors.h"

namespace l2v::fuzz {

const char* const kInputName = "model.safetensors";

void fuzz_input(const std::string& path, const uint8_t*, size_t) {
  SafetensorsCheckpoint ck(path);
  for (const std::string& name : ck.names()) {
    const std::string dtype = ck.dtype(name);
    if (dtype == "I64" || dtype == "I32") {
      ck.read_i64(name);
    } else if (dtype == "F32" || dtype == "BF16" || dtype == "F16") {
      size_t n = 1;
      for (int64_t d : ck.shape(name)) n *= static_cast<size_t>(d);
      std::vector<float> values(n);
      ck.read_f32(name, values.data(), n);
    }
  }
}

}  // namespace l2v::fuzz
