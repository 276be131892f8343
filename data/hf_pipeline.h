// The components of a tokenizer.json around its model, as tokenizers 0.19 applies them to one
// input: the normalizer, the pre-tokenizer, the post-processor (special tokens around the ids) and
// the decoder. Each is a plain tagged struct parsed from its JSON object plus a free function that
// applies it. Only the component types and options the supported families use are implemented;
// parsing anything else throws std::runtime_error naming the file, the component and the option, so
// a tokenizer is never run with a part silently ignored.
//
//   normalizers:     Sequence, NFC, Prepend, Replace
//   pre-tokenizers:  Sequence, Split, ByteLevel
//   post-processors: Sequence, TemplateProcessing, ByteLevel
//   decoders:        Sequence, ByteLevel, ByteFallback, Fuse, Strip, Replace
#pragma once
#include <cstdint>
#include <functional>
#include <map>
#include <nlohmann/json_fwd.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "data/hf_regex.h"

namespace l2v {

// ---- Normalizer: rewrites the text of each piece between added tokens.
struct Normalizer {
  enum class Type { Sequence, NFC, Prepend, Replace };
  Type type = Type::Sequence;
  std::vector<Normalizer> children;  // Sequence
  std::string text;                  // Prepend: the prefix; Replace: the replacement
  HfPattern pattern;                 // Replace
};

Normalizer parse_normalizer(const nlohmann::json& j, const std::string& where);
// Normalizes `s` (valid UTF-8) in place.
void normalize(const Normalizer& n, std::string& s);

// ---- Pre-tokenizer: cuts a normalized piece into words for the model.
enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };

struct PreTokenizer {
  enum class Type { Split, ByteLevel };
  Type type = Type::Split;
  HfPattern pattern;  // Split
  SplitBehavior behavior = SplitBehavior::Isolated;
  bool invert = false;
  bool add_prefix_space = false;  // ByteLevel
  bool use_regex = true;          // ByteLevel: split with GPT-2's regex first
};

// A Sequence is flattened into its stages (applying nested sequences in order is the same thing).
std::vector<PreTokenizer> parse_pre_tokenizer(const nlohmann::json& j, const std::string& where);
// Calls `word` for each non-empty word the stages make of `piece`, in order.
void pre_tokenize(const std::vector<PreTokenizer>& stages, std::string_view piece,
                  const std::function<void(std::string_view)>& word);

// ---- Post-processor: adds special tokens around a single sequence.
struct PostProcessor {
  enum class Type { Sequence, TemplateProcessing, ByteLevel };
  struct Piece {
    bool is_sequence = true;  // $A; otherwise the special token `special`
    std::string special;
  };
  Type type = Type::ByteLevel;
  std::vector<PostProcessor> children;                    // Sequence
  std::vector<Piece> single;                              // TemplateProcessing
  std::map<std::string, std::vector<int>> special_tokens;  // TemplateProcessing: name -> ids
};

PostProcessor parse_post_processor(const nlohmann::json& j, const std::string& where);
// The ids of a single sequence after post-processing (special tokens only if add_special_tokens).
void post_process(const PostProcessor& p, std::vector<int>& ids, bool add_special_tokens);
// Whether it adds special tokens itself (a TemplateProcessing somewhere), so that
// tokenizer_config.json's add_bos_token/add_eos_token have nothing to add.
bool adds_special_tokens(const PostProcessor& p);
// The special tokens a TemplateProcessing puts before and after $A in the single template.
void template_bos_eos(const PostProcessor& p, std::vector<int>& before, std::vector<int>& after);

// ---- Decoder: turns token strings back into text.
struct Decoder {
  enum class Type { Sequence, ByteLevel, ByteFallback, Fuse, Strip, Replace };
  Type type = Type::Fuse;
  std::vector<Decoder> children;  // Sequence
  HfPattern pattern;              // Replace
  std::string content;            // Replace: the replacement
  uint32_t strip_char = 0;        // Strip: the character removed
  size_t strip_start = 0, strip_stop = 0;
};

Decoder parse_decoder(const nlohmann::json& j, const std::string& where);
// tokenizers' Decoder::decode_chain: rewrites the list of token strings in place.
void decode_chain(const Decoder& d, std::vector<std::string>& tokens);

// ---- GPT-2's byte-level alphabet: each byte is shown as a printable character.
// The UTF-8 of the character standing for byte `b`.
const std::string& byte_level_char(unsigned char b);
// The byte a character stands for, or -1 if it is not in the alphabet.
int byte_level_byte(uint32_t cp);

}  // namespace l2v
