// libFuzzer target: a training configuration file (llm2vec's train_configs/*.json keys) through
// load_train_config, without command-line overrides.
#include "fuzz/fuzz_common.h"
#include "train/train_config.h"

namespace l2v::fuzz {

const char* const kInputName = "train_config.json";

void fuzz_input(const std::string& path, const uint8_t*, size_t) {
  std::vector<std::string> notes;
  load_train_config(path, {}, &notes);
}

}  // namespace l2v::fuzz
