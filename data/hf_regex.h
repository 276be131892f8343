// The patterns of tokenizer.json components (Split pre-tokenizer, Replace normalizer/decoder):
// a literal string or an Oniguruma regex, which tokenizers compiles with Oniguruma and this port with
// PCRE2 (UTF + UCP, JIT). The two engines agree on what tokenizer files use (\p{..} classes,
// lookahead, (?i:...) groups, alternation order); where their syntax or Unicode classes differ the
// pattern is translated (\s, \S: Oniguruma's White_Space set, which lacks PCRE2's U+180E) or refused
// with an error naming the construct (\w, \b, \h, ^, $, (?m), nested classes, ...).
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

namespace l2v {

// [start, end) byte offsets of one match.
using MatchSpan = std::pair<size_t, size_t>;

class HfRegex {
 public:
  // `where` names the component (file and path) in error messages. Throws std::runtime_error for a
  // pattern PCRE2 cannot compile, an Oniguruma construct that would not mean the same in PCRE2, or a
  // pattern that can match the empty string (tokenizers' handling of empty matches is not ported).
  HfRegex(const std::string& pattern, const std::string& where);
  ~HfRegex();
  HfRegex(const HfRegex&) = delete;
  HfRegex& operator=(const HfRegex&) = delete;

  // Appends the leftmost non-overlapping matches in `s` (valid UTF-8, not re-checked) to `out`.
  // Thread-safe.
  void find_all(std::string_view s, std::vector<MatchSpan>& out) const;

 private:
  std::string pattern_;  // as written in tokenizer.json
  std::string where_;
  void* code_ = nullptr;  // pcre2_code_8
};

// Rewrites an Oniguruma pattern (Ruby syntax, as tokenizers uses it) into an equivalent PCRE2 one,
// or throws std::runtime_error naming `where` and the construct it cannot carry over.
std::string onig_to_pcre2(const std::string& pattern, const std::string& where);

// A tokenizer.json pattern: {"String": "..."} matches that text literally, {"Regex": "..."} is an
// Oniguruma regex.
struct HfPattern {
  std::string literal;            // when regex is null
  std::shared_ptr<HfRegex> regex;  // shared so components holding patterns stay copyable

  // Appends the leftmost non-overlapping matches in `s` to `out`.
  void find_all(std::string_view s, std::vector<MatchSpan>& out) const;
};

}  // namespace l2v
