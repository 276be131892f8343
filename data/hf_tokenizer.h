// A Hugging Face tokenizer.json run exactly as the `tokenizers` library (0.19) runs it, for the
// families the project supports: SentencePiece-style BPE with byte fallback (Llama-2, Mistral) and
// byte-level BPE (Llama-3, Qwen2). encode() follows tokenizers' pipeline:
//
//   1. added tokens (special or not) written in the text are cut out first, leftmost-longest,
//      honouring their lstrip/rstrip flags; those with normalized=false match the raw text;
//   2. each remaining piece is normalized, then added tokens with normalized=true are cut out of it;
//   3. the pre-tokenizer splits the pieces into words, the BPE model turns each word into ids;
//   4. the post-processor adds the special tokens (with add_special_tokens).
//
// decode() maps ids to token strings (dropping special added tokens with skip_special_tokens) and
// runs the decoder chain. Component types or options outside what is implemented (listed in
// data/hf_pipeline.h; model: BPE only) are refused when loading, with an error naming them.
//
// tokenizer_config.json next to tokenizer.json, when present, names the BOS/EOS/PAD tokens and gives
// add_bos_token/add_eos_token; those flags are applied only when the post-processor adds no special
// tokens itself (a TemplateProcessing settles it, as in tokenizers, which ignores the config).
//
// fingerprint() is fnv1a64 of the tokenizer.json bytes; only when tokenizer_config.json's flags add
// BOS/EOS is it taken over the bytes followed by a note of those flags, since they change the ids.
#pragma once
#include <array>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "data/hf_bpe.h"
#include "data/hf_pipeline.h"
#include "data/tokenizer.h"

namespace l2v {

struct AddedToken {
  std::string content;
  int id = -1;
  bool single_word = false;
  bool lstrip = false;
  bool rstrip = false;
  bool normalized = false;
  bool special = false;
};

// Finds added tokens in text like tokenizers' Aho-Corasick automaton in LeftmostLongest mode: the
// match that starts first, the longest of those starting there.
class AddedTokenMatcher {
 public:
  void add(const std::string& pattern, int token);  // `token`: the caller's index for it
  bool empty() const { return patterns_.empty(); }
  // The leftmost-longest match starting at or after `from`; false if there is none.
  bool find(std::string_view s, size_t from, size_t& begin, size_t& end, int& token) const;

 private:
  std::vector<std::pair<std::string, int>> patterns_;
  // Pattern indices by first byte, longest first, so the first hit at a position is the longest.
  std::array<std::vector<int>, 256> by_first_byte_;
};

class HfTokenizer final : public Tokenizer {
 public:
  // Reads `json_path`, and `config_path` unless it is empty. Throws std::runtime_error naming the
  // file for anything unreadable, malformed or unsupported.
  HfTokenizer(const std::string& json_path, const std::string& config_path);

  // Throws std::runtime_error if `text` is not valid UTF-8 (tokenizers only takes Unicode strings).
  std::vector<int> encode(const std::string& text, bool add_special_tokens) const override;
  // Throws std::out_of_range for an id that names no token.
  std::string decode(const std::vector<int>& ids, bool skip_special_tokens) const override;
  int vocab_size() const override { return static_cast<int>(id_to_token_.size()); }
  int token_to_id(const std::string& token) const override;
  bool is_special(int id) const override;
  int bos_id() const override { return bos_; }
  int eos_id() const override { return eos_; }
  int pad_id() const override { return pad_; }
  uint64_t fingerprint() const override { return fingerprint_; }
  std::string describe() const override { return path_; }

  // The token string of an id as tokenizers' id_to_token gives it ("" if the id names no token).
  const std::string& id_to_token(int id) const;

 private:
  void load_config(const std::string& config_path);
  // Calls `emit(piece, token)` for the pieces of `s` around the added tokens `matcher` finds:
  // token is the index in added_ of an added token, or -1 for the text between them (never empty).
  template <class F>
  void split_added(std::string_view s, const AddedTokenMatcher& matcher, F&& emit) const;
  void encode_words(std::string_view piece, std::vector<int>& ids) const;

  std::string path_;
  uint64_t fingerprint_ = 0;
  BpeModel model_;
  std::vector<AddedToken> added_;  // in file order
  std::unordered_map<std::string, int> added_by_content_;  // content -> index in added_
  AddedTokenMatcher raw_matcher_;         // added tokens with normalized = false
  AddedTokenMatcher normalized_matcher_;  // the others, as the normalizer rewrites them
  bool has_normalizer_ = false;
  Normalizer normalizer_;
  std::vector<PreTokenizer> pre_tokenizer_;  // empty: none
  bool has_post_processor_ = false;
  PostProcessor post_processor_;
  bool has_decoder_ = false;
  Decoder decoder_;

  std::vector<std::string> id_to_token_;  // model vocabulary and added tokens
  std::vector<bool> id_used_;
  std::vector<bool> skip_on_decode_;  // content is a special added token (tokenizers' rule)
  std::vector<bool> special_;         // special added tokens, BOS, EOS, PAD, UNK
  int bos_ = -1, eos_ = -1, pad_ = -1, unk_ = -1;
  // From tokenizer_config.json, applied when the post-processor does not add special tokens.
  bool extra_bos_ = false, extra_eos_ = false;
};

// Opens a tokenizer.json (or a directory holding one) and the tokenizer_config.json beside it if
// there is one. Throws std::runtime_error naming the path.
std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path);

}  // namespace l2v
