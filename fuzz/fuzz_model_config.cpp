// libFuzzer target: a model's config.json through load_hf_config. An accepted config must survive the
// round trip through the config.json we write (to_hf_config_json), as `convert` and every export rely on.
#include <nlohmann/json.hpp>

#include "fuzz/fuzz_common.h"
#include "model/config.h"

namespace l2v::fuzz {

const char* const kInputName = "config.json";

void fuzz_input(const std::string& path, const uint8_t*, size_t) {
  const nlohmann::json written = to_hf_config_json(load_hf_config(path));
  const nlohmann::json again = to_hf_config_json(parse_hf_config(written, path + " (as written back)"));
  check(again == written, path + ": config.json written back reads as another config: " + written.dump() +
                              " then " + again.dump());
}

}  // namespace l2v::fuzz
