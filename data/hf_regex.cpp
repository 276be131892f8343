#define PCRE2_CODE_UNIT_WIDTH 8
#include "data/hf_regex.h"

#include <pcre2.h>

#include <cctype>
#include <stdexcept>

namespace l2v {

namespace {

// Oniguruma's \s (Unicode, Ruby syntax): U+0009..U+000D, U+0085 and the Z categories. PCRE2's \s
// under UCP also matches U+180E (MONGOLIAN VOWEL SEPARATOR, through \h), so \s is spelled out.
constexpr const char kOnigSpaceSet[] =
    "\\x{9}-\\x{D}\\x{20}\\x{85}\\x{A0}\\x{1680}\\x{2000}-\\x{200A}\\x{2028}\\x{2029}\\x{202F}\\x{205F}\\x{3000}";

[[noreturn]] void refuse(const std::string& where, const std::string& pattern, const std::string& what) {
  throw std::runtime_error(where + ": regex \"" + pattern + "\": " + what +
                           " is not supported (Oniguruma and PCRE2 would not match the same text)");
}

std::string pcre2_error(int code) {
  PCRE2_UCHAR buf[256];
  if (pcre2_get_error_message(code, buf, sizeof buf) < 0) return "error " + std::to_string(code);
  return reinterpret_cast<const char*>(buf);
}

// Per-thread match state: PCRE2 match data must not be shared between threads, and a JIT stack
// larger than the default 32 KiB keeps long whitespace runs (\s+(?!\S)) from hitting its limit.
struct MatchScratch {
  pcre2_match_data* data = nullptr;
  pcre2_match_context* context = nullptr;
  pcre2_jit_stack* stack = nullptr;
  MatchScratch() {
    data = pcre2_match_data_create(1, nullptr);
    context = pcre2_match_context_create(nullptr);
    stack = pcre2_jit_stack_create(32 * 1024, 8 * 1024 * 1024, nullptr);
    if (!data || !context || !stack) throw std::runtime_error("data/hf_regex.cpp: cannot allocate PCRE2 match state");
    pcre2_jit_stack_assign(context, nullptr, stack);
  }
  ~MatchScratch() {
    pcre2_jit_stack_free(stack);
    pcre2_match_context_free(context);
    pcre2_match_data_free(data);
  }
};

}  // namespace

std::string onig_to_pcre2(const std::string& p, const std::string& where) {
  std::string out;
  out.reserve(p.size() * 2);
  bool in_class = false;
  size_t class_body = 0;  // index in p where the current class's members start
  for (size_t i = 0; i < p.size(); ++i) {
    const char c = p[i];
    if (c == '\\') {
      if (i + 1 >= p.size()) refuse(where, p, "a trailing backslash");
      const char d = p[++i];
      switch (d) {
        case 's':
          if (in_class) out += kOnigSpaceSet;
          else out += std::string("[") + kOnigSpaceSet + "]";
          break;
        case 'S':
          if (in_class) refuse(where, p, "\\S inside a character class");
          out += std::string("[^") + kOnigSpaceSet + "]";
          break;
        // Different meaning (\h is a hex digit in Oniguruma, \w/\b use Unicode Alphabetic and marks in
        // Oniguruma but letters/numbers in PCRE2) or Oniguruma-only escapes.
        case 'w': case 'W': case 'b': case 'B': case 'h': case 'H': case 'R': case 'X': case 'K':
        case 'G': case 'y': case 'Y': case 'O': case 'N': case 'Q': case 'E': case 'g': case 'k':
          refuse(where, p, std::string("\\") + d);
        default:
          out += '\\';
          out += d;
          // \p{..}, \x{..}: copy the braces whole so their contents are not read as pattern syntax.
          if ((d == 'p' || d == 'P' || d == 'x') && i + 1 < p.size() && p[i + 1] == '{') {
            const size_t close = p.find('}', i + 1);
            if (close == std::string::npos) refuse(where, p, std::string("an unterminated \\") + d + "{");
            out.append(p, i + 1, close - i);
            i = close;
          }
      }
      continue;
    }
    if (in_class) {
      if (c == '[') refuse(where, p, "a nested or POSIX character class");
      if (c == '&' && i + 1 < p.size() && p[i + 1] == '&') refuse(where, p, "class intersection &&");
      if (c == ']' && i > class_body) in_class = false;
      out += c;
      continue;
    }
    switch (c) {
      case '[':
        in_class = true;
        out += c;
        if (i + 1 < p.size() && p[i + 1] == '^') out += p[++i];
        class_body = i + 1;
        break;
      case '^': case '$':
        refuse(where, p, std::string("the anchor ") + c + " (a line anchor in Oniguruma)");
      case '{':
        if (i + 1 < p.size() && p[i + 1] == ',') refuse(where, p, "the quantifier {,n}");
        out += c;
        break;
      case '}':
        if (i + 1 < p.size() && p[i + 1] == '+') refuse(where, p, "the quantifier {n}+");
        out += c;
        break;
      case '(':
        out += c;
        if (i + 1 < p.size() && p[i + 1] == '?') {
          // Inline options: only i (case-insensitive) means the same; (?m) is dotall in Oniguruma.
          size_t k = i + 2;
          while (k < p.size() && (std::isalpha(static_cast<unsigned char>(p[k])) || p[k] == '-')) {
            if (p[k] != 'i' && p[k] != '-') refuse(where, p, std::string("the inline option (?") + p[k]);
            ++k;
          }
        }
        break;
      default:
        out += c;
    }
  }
  if (in_class) refuse(where, p, "an unterminated character class");
  return out;
}

HfRegex::HfRegex(const std::string& pattern, const std::string& where) : pattern_(pattern), where_(where) {
  const std::string translated = onig_to_pcre2(pattern, where);
  pcre2_compile_context* cctx = pcre2_compile_context_create(nullptr);
  if (!cctx) throw std::runtime_error(where + ": cannot allocate a PCRE2 compile context");
  // Oniguruma's '.' excludes only '\n'; pin PCRE2's newline convention to the same.
  pcre2_set_newline(cctx, PCRE2_NEWLINE_LF);
  int err = 0;
  PCRE2_SIZE err_offset = 0;
  pcre2_code* code = pcre2_compile(reinterpret_cast<PCRE2_SPTR>(translated.data()), translated.size(),
                                   PCRE2_UTF | PCRE2_UCP, &err, &err_offset, cctx);
  pcre2_compile_context_free(cctx);
  if (!code)
    throw std::runtime_error(where + ": regex \"" + pattern + "\" does not compile: " + pcre2_error(err) +
                             " (at offset " + std::to_string(err_offset) + " of \"" + translated + "\")");
  uint32_t min_length = 0;
  pcre2_pattern_info(code, PCRE2_INFO_MINLENGTH, &min_length);
  if (min_length == 0) {
    pcre2_code_free(code);
    throw std::runtime_error(where + ": regex \"" + pattern + "\" can match the empty string, which is not supported");
  }
  // JIT is an optimisation: without it (e.g. an architecture PCRE2 has no JIT for) pcre2_match
  // interprets the same pattern.
  pcre2_jit_compile(code, PCRE2_JIT_COMPLETE);
  code_ = code;
}

HfRegex::~HfRegex() { pcre2_code_free(static_cast<pcre2_code*>(code_)); }

void HfRegex::find_all(std::string_view s, std::vector<MatchSpan>& out) const {
  thread_local MatchScratch scratch;
  const pcre2_code* code = static_cast<const pcre2_code*>(code_);
  const PCRE2_SPTR subject = reinterpret_cast<PCRE2_SPTR>(s.data());
  size_t pos = 0;
  while (pos < s.size()) {
    // The caller validated the UTF-8 once; PCRE2 would otherwise re-check the whole subject per call.
    const int rc = pcre2_match(code, subject, s.size(), pos, PCRE2_NO_UTF_CHECK, scratch.data, scratch.context);
    if (rc == PCRE2_ERROR_NOMATCH) return;
    if (rc < 0) throw std::runtime_error(where_ + ": regex \"" + pattern_ + "\" failed: " + pcre2_error(rc));
    const PCRE2_SIZE* ov = pcre2_get_ovector_pointer(scratch.data);
    out.emplace_back(ov[0], ov[1]);
    pos = ov[1];  // matches are never empty (checked at compile time)
  }
}

void HfPattern::find_all(std::string_view s, std::vector<MatchSpan>& out) const {
  if (regex) {
    regex->find_all(s, out);
    return;
  }
  for (size_t pos = s.find(literal); pos != std::string_view::npos; pos = s.find(literal, pos + literal.size()))
    out.emplace_back(pos, pos + literal.size());
}

}  // namespace l2v
