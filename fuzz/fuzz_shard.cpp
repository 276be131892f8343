// libFuzzer target: a pre-tokenized shard. The input goes to parse_shard_header as bytes, then, as a
// file, through Shard (header, document index, supervised metadata) and every document or triple is
// copied out (which checks each token against the vocabulary).
#include "data/shard.h"
#include "fuzz/fuzz_common.h"

namespace l2v::fuzz {

const char* const kInputName = "shard.bin";

void fuzz_input(const std::string& path, const uint8_t* data, size_t size) {
  parse_shard_header(data, size, path);
  const Shard shard(path);
  if (shard.kind() == ShardKind::kTriples) {
    for (uint64_t e = 0; e < shard.num_triples(); ++e) {
      const Triple t = shard.triple(e);
      t.query.to_vector();
      t.positive.to_vector();
      t.negative.to_vector();
      check(t.dataset < shard.dataset_names().size(), path + ": a triple's dataset id names no dataset");
    }
  } else {
    for (uint64_t i = 0; i < shard.num_docs(); ++i) shard.doc(i).to_vector();
  }
}

}  // namespace l2v::fuzz
