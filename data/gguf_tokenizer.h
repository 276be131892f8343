// A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) from a GGUF file's tokenizer
// metadata, so that a model converted from GGUF (`llm2vec convert --model x.gguf --out DIR`) carries its
// tokenizer: byte-level BPE (tokenizer.ggml.model "gpt2": SmolLM2, Qwen2, Llama 3, GPT-2 style).
//
//   vocab      tokenizer.ggml.tokens (id = position), merges tokenizer.ggml.merges in rank order;
//   pre        by tokenizer.ggml.pre, as llama.cpp names the pre-tokenizers and as the models' own
//              tokenizer.json files define them: "smollm" (digits one by one, then GPT-2's ByteLevel
//              regex), "qwen2" (Qwen2's regex, ByteLevel without its own), "llama-bpe" (Llama 3's regex),
//              "gpt-2" / "default" (ByteLevel with GPT-2's regex);
//   special    tokens of tokenizer.ggml.token_type 3 (control) as special added tokens, 4 (user-defined)
//              as non-special ones;
//   config     bos / eos / padding tokens from their *_token_id, add_bos_token / add_eos_token (false
//              when absent).
// Refused, naming the file and the key: no tokenizer metadata, another tokenizer model (SentencePiece
// "llama": give --tokenizer), an unknown pre-tokenizer name, an id outside the vocabulary.
#pragma once
#include <nlohmann/json.hpp>

#include "data/gguf.h"

namespace l2v {

struct HfTokenizerFiles {
  nlohmann::json tokenizer;  // tokenizer.json
  nlohmann::json config;     // tokenizer_config.json
};

bool gguf_has_tokenizer(const GgufFile& f);
HfTokenizerFiles gguf_tokenizer(const GgufFile& f);

}  // namespace l2v
