// libFuzzer target: the raw inputs of `llm2vec prepare` (data/text_sources.h): the same file read as
// WikiText, as one document per line and as supervised JSONL, in small batches to the end.
#include "data/text_sources.h"
#include "fuzz/fuzz_common.h"

namespace l2v::fuzz {

const char* const kInputName = "input.txt";

void fuzz_input(const std::string& path, const uint8_t*, size_t) {
  std::vector<BadLine> bad;
  for (TextLayout layout : {TextLayout::kWikiText, TextLayout::kLines}) {
    TextReader reader(path, layout);
    std::vector<TextRecord> records;
    while (reader.next_batch(records, 3, bad)) {
    }
  }
  SupervisedReader reader(path);
  std::vector<SupervisedRecord> records;
  while (reader.next_batch(records, 3, bad)) {
  }
}

}  // namespace l2v::fuzz
