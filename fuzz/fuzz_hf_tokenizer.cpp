// libFuzzer target: a Hugging Face tokenizer.json through HfTokenizer. An accepted tokenizer encodes a
// fixed text (every script class the pre-tokenizers split on, added-token look-alikes) with and without
// special tokens, and decodes the ids it produced.
#include "data/hf_tokenizer.h"
#include "fuzz/fuzz_common.h"

namespace l2v::fuzz {

const char* const kInputName = "tokenizer.json";

void fuzz_input(const std::string& path, const uint8_t*, size_t) {
  const HfTokenizer tok(path, "");
  const std::string text = "Hello world!  ab ba\n\t<s> </s> <unk> 123 4567 it's ünïcödé 漢字 😀 \xE2\x96\x81x";
  for (bool special : {false, true}) {
    const std::vector<int> ids = tok.encode(text, special);
    tok.decode(ids, false);
    tok.decode(ids, true);
  }
}

}  // namespace l2v::fuzz
