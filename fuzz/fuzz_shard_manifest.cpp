// libFuzzer target: a shard set's manifest (PREFIX.manifest.json) through read_shard_manifest.
#include "data/shard_manifest.h"
#include "fuzz/fuzz_common.h"

namespace l2v::fuzz {

const char* const kInputName = "set.manifest.json";

void fuzz_input(const std::string& path, const uint8_t*, size_t) { read_shard_manifest(path); }

}  // namespace l2v::fuzz
