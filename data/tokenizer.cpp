#include "data/tokenizer.h"

#include <filesystem>
#include <fstream>
#include <iterator>
#include <stdexcept>

#include "data/file_io.h"
#include "data/llama2c_tokenizer.h"

namespace l2v {

// Defined with the Hugging Face tokenizer (data/hf_tokenizer.cpp).
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path);

uint64_t fnv1a64(const void* data, size_t size) {
  const unsigned char* p = static_cast<const unsigned char*>(data);
  uint64_t h = 0xcbf29ce484222325ull;
  for (size_t i = 0; i < size; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ull;
  }
  return h;
}

namespace {

std::string read_bytes(const std::string& path) {
  std::ifstream in = open_input_file(path, "a tokenizer file");
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// llama2.c's tokenizer.bin behind the common interface. Its only special tokens are the fixed
// <unk> (0), <s> (1, BOS) and </s> (2, EOS); it has no padding token.
class Llama2cTokenizerAdapter final : public Tokenizer {
 public:
  explicit Llama2cTokenizerAdapter(const std::string& path)
      : path_(path), tok_(load_llama2c_tokenizer(path, 0)) {
    const std::string bytes = read_bytes(path);
    fingerprint_ = fnv1a64(bytes.data(), bytes.size());
  }
  std::vector<int> encode(const std::string& text, bool add_special_tokens) const override {
    // run.c's convention: BOS only (sentences are not terminated with EOS).
    return l2v::encode(tok_, text, add_special_tokens, false);
  }
  std::string decode(const std::vector<int>& ids, bool skip_special_tokens) const override {
    std::string out;
    int prev = kLlama2cBos;
    for (int id : ids) {
      if (is_special(id) && !skip_special_tokens && id != kLlama2cBos && id != kLlama2cEos) out += tok_.pieces[id];
      else out += decode_piece(tok_, prev, id);
      prev = id;
    }
    return out;
  }
  int vocab_size() const override { return tok_.vocab_size(); }
  int token_to_id(const std::string& token) const override {
    // Vocabulary strings as stored (a leading space is SentencePiece's "▁").
    for (int id = 0; id < tok_.vocab_size(); ++id)
      if (tok_.pieces[id] == token) return id;
    return -1;
  }
  bool is_special(int id) const override { return id == kLlama2cUnk || id == kLlama2cBos || id == kLlama2cEos; }
  int bos_id() const override { return kLlama2cBos; }
  int eos_id() const override { return kLlama2cEos; }
  int pad_id() const override { return -1; }
  uint64_t fingerprint() const override { return fingerprint_; }
  std::string describe() const override { return path_; }

 private:
  std::string path_;
  Llama2cTokenizer tok_;
  uint64_t fingerprint_ = 0;
};

}  // namespace

std::unique_ptr<Tokenizer> load_tokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  if (fs::is_directory(path)) return load_hf_tokenizer((fs::path(path) / "tokenizer.json").string());
  if (!fs::exists(path)) throw std::runtime_error(path + ": no such tokenizer file or directory");
  const std::string ext = fs::path(path).extension().string();
  if (ext == ".json") return load_hf_tokenizer(path);
  if (ext == ".bin") return std::make_unique<Llama2cTokenizerAdapter>(path);
  throw std::runtime_error(path + ": unknown tokenizer format (expected tokenizer.json, a directory holding one, "
                                  "or a llama2.c tokenizer .bin)");
}

}  // namespace l2v
