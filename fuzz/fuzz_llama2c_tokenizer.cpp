// libFuzzer target: a llama2.c tokenizer file (tok512.bin format) through load_llama2c_tokenizer, with
// the vocabulary size taken from the file; an accepted tokenizer encodes a fixed text and decodes it.
#include "data/llama2c_tokenizer.h"
#include "fuzz/fuzz_common.h"

namespace l2v::fuzz {

const char* const kInputName = "tokenizer.bin";

void fuzz_input(const std::string& path, const uint8_t*, size_t) {
  const Llama2cTokenizer tok = load_llama2c_tokenizer(path, 0);
  const std::string text = "Once upon a time, Lily saw 3 <0x41> \xC3\xA9t\xC3\xA9 \xF0\x9F\x98\x80!";
  decode(tok, encode(tok, text, true, true));
}

}  // namespace l2v::fuzz
