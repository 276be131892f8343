// A Hugging Face tokenizer (tokenizer.json + tokenizer_config.json) from a GGUF file's tokenizer
// metadata, so that a model converted from GGUF (`llm2vec convert --model x.gguf --out DIR`) carries its
// tokenizer: byte-level BPE (tokenizer.ggml.model "gpt2": SmolLM2, Qwen2, Llama 3, GPT-2 style) and
// SentencePiece BPE (tokenizer.ggml.model "llama": Llama 2, Mistral).
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
// SentencePiece BPE, as Llama 2's and Mistral's tokenizer.json are written (and as transformers converts
// such a GGUF):
//   vocab      the tokens (bytes as <0xXX>, used by byte fallback), merges rebuilt from the scores when the
//              file has none (every split of a piece into two pieces, by the piece's score), unk_token from
//              tokenizer.ggml.unknown_token_id;
//   normalizer "▁" prepended (unless tokenizer.ggml.add_space_prefix is false) and for every space;
//   template   the BOS added unless tokenizer.ggml.add_bos_token is false, the EOS when add_eos_token is true;
//   special    the control tokens (type 3).
// Refused, naming the file and the key: no tokenizer metadata, another tokenizer model (unigram "t5",
// WordPiece "bert", ...: give --tokenizer), an unknown pre-tokenizer name, an id outside the vocabulary, a
// SentencePiece vocabulary without merges or one score per token.
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
