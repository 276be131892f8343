// libFuzzer target: a .npy file through read_npy_f32; an accepted file holds rows * cols floats.
#include "data/npy.h"
#include "fuzz/fuzz_common.h"

namespace l2v::fuzz {

const char* const kInputName = "embeddings.npy";

void fuzz_input(const std::string& path, const uint8_t*, size_t) {
  size_t rows = 0, cols = 0;
  const std::vector<float> values = read_npy_f32(path, &rows, &cols);
  check(values.size() == rows * cols, path + ": read_npy_f32 returned a size other than rows * cols");
}

}  // namespace l2v::fuzz
