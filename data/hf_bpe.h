// The BPE model of tokenizer.json ("model": {"type": "BPE", ...}), as tokenizers 0.19 runs it on one
// pre-tokenized word: split into characters (each looked up in the vocabulary, else spelled as
// "<0xHH>" byte tokens with byte_fallback, else the unk token, fused when fuse_unk), then merged
// pair by pair, always the pair of lowest merge rank first (leftmost on ties), until no adjacent
// pair has a merge. A per-word cache makes repeated words cheap; it never changes the result.
#pragma once
#include <cstdint>
#include <memory>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace l2v {

// Merge table: the pair of token ids (left, right) -> rank and the id of the merged token. Open
// addressing on a 64-bit key; it is queried several times per character, so it avoids the node
// allocations and pointer chasing of std::unordered_map.
class BpeMergeMap {
 public:
  struct Merge {
    uint32_t rank;
    int new_id;
  };
  void reserve(size_t n);
  // Inserts or overwrites (a later duplicate merge wins, as in tokenizers' HashMap).
  void set(int left, int right, Merge m);
  const Merge* find(int left, int right) const {
    if (slots_.empty()) return nullptr;
    const uint64_t key = pack(left, right);
    for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
      const Slot& s = slots_[i];
      if (s.key == key) return &s.merge;
      if (s.key == kEmpty) return nullptr;
    }
  }
  size_t size() const { return size_; }

 private:
  static constexpr uint64_t kEmpty = ~0ull;
  struct Slot {
    uint64_t key = kEmpty;
    Merge merge{0, 0};
  };
  static uint64_t pack(int left, int right) {
    return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
  }
  static size_t hash(uint64_t k) {
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdull;
    k ^= k >> 33;
    return static_cast<size_t>(k);
  }
  std::vector<Slot> slots_;
  size_t mask_ = 0;
  size_t size_ = 0;
};

struct BpeWordCache;  // defined in hf_bpe.cpp

struct BpeModel {
  std::vector<std::string> id_to_token;  // model vocabulary by id ("" for an unused id)
  std::vector<bool> id_used;
  std::unordered_map<std::string_view, int> token_to_id;  // views into id_to_token
  BpeMergeMap merges;
  std::string unk_token;  // empty: none
  bool fuse_unk = false;
  bool byte_fallback = false;
  bool ignore_merges = false;
  // Empty strings behave as absent (prepending "" changes nothing), so only non-empty ones are kept.
  std::string continuing_subword_prefix;
  std::string end_of_word_suffix;
  // Derived lookups for speed: the ids of "<0xHH>" (-1 if absent) and of every code point below
  // U+0800 as a one-character token (-1 if absent), the alphabet of byte-level vocabularies.
  int byte_token[256];
  std::vector<int> small_char_id;
  // SentencePiece-style vocabularies (no pre-tokenizer, so a whole sentence is one "word"): when no
  // merge joins a token not ending in "▁" to one starting with "▁", no merge ever crosses a "▁"
  // that follows another character, and cutting the word there gives the same ids while letting
  // the cache work on real words. Decided from the merges when loading.
  bool split_at_metaspace = false;
  std::unique_ptr<BpeWordCache> cache;
  std::string where;  // the file, for errors raised while encoding

  BpeModel();
  ~BpeModel();
  BpeModel(BpeModel&&) noexcept;
  BpeModel& operator=(BpeModel&&) noexcept;
  BpeModel(const BpeModel&) = delete;  // token_to_id points into id_to_token
  BpeModel& operator=(const BpeModel&) = delete;

  int vocab_id(std::string_view token) const {
    auto it = token_to_id.find(token);
    return it == token_to_id.end() ? -1 : it->second;
  }
};

// Builds the model from tokenizer.json's "model" object. `where` names the file in errors. Throws
// std::runtime_error for a type other than BPE, unknown options, dropout (random, so not
// reproducible), merges that are malformed or use tokens outside the vocabulary, duplicate ids, and ids
// of 65536 or more beyond the number of entries (they would size the id tables, not the file).
BpeModel parse_bpe_model(const nlohmann::json& j, const std::string& where);

// Appends the ids of `word` (one pre-tokenized piece, valid UTF-8) to `out`. Thread-safe. Throws
// std::runtime_error if the word needs the unk token and the vocabulary lacks it (as tokenizers).
void bpe_tokenize(const BpeModel& m, std::string_view word, std::vector<int>& out);

}  // namespace l2v
