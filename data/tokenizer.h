// The tokenizer interface the data pipeline and the trainer use, whatever the file format behind it:
// a Hugging Face tokenizer.json (byte-level BPE as Llama-3/Qwen2, SentencePiece-style BPE with byte
// fallback as Llama-2/Mistral) or a llama2.c tokenizer.bin.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace l2v {

class Tokenizer {
 public:
  virtual ~Tokenizer() = default;

  // Token ids of UTF-8 `text` exactly as the reference implementation produces them (tokenizers'
  // `encode(text, add_special_tokens=...)`; llama2.c's run.c). add_special_tokens applies the
  // tokenizer's own rule (e.g. BOS for Llama-2/Mistral, nothing for Qwen2). Special/added tokens
  // written in the text are recognised as such.
  virtual std::vector<int> encode(const std::string& text, bool add_special_tokens) const = 0;
  virtual std::string decode(const std::vector<int>& ids, bool skip_special_tokens) const = 0;

  // Number of ids, including added tokens (the largest id + 1).
  virtual int vocab_size() const = 0;
  // Id of a token given by its vocabulary string (e.g. "_", "</s>", "<|endoftext|>"); -1 if absent.
  virtual int token_to_id(const std::string& token) const = 0;
  // Special tokens (BOS, EOS, PAD, UNK and added special tokens) are never masked by MNTP.
  virtual bool is_special(int id) const = 0;
  // -1 when the tokenizer has none.
  virtual int bos_id() const = 0;
  virtual int eos_id() const = 0;
  virtual int pad_id() const = 0;
  // A stable 64-bit hash of everything that determines the ids (vocabulary, merges, normalisation,
  // special tokens). Shards record it so data tokenized with one tokenizer is never fed to a model
  // with another.
  virtual uint64_t fingerprint() const = 0;
  virtual std::string describe() const = 0;  // path, for messages
};

// FNV-1a 64-bit hash of a byte string: tokenizers fingerprint the bytes of their file with it.
uint64_t fnv1a64(const void* data, size_t size);

// Opens a tokenizer by path: a tokenizer.json, a directory holding one, or a llama2.c tokenizer .bin.
// Throws std::runtime_error naming the path for anything it cannot read.
std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path);

}  // namespace l2v
