// UTF-8 and Unicode helpers for the Hugging Face tokenizer port, each matching what the Rust
// `tokenizers` crate (0.19) does with the same input: validation, lossy decoding like Rust's
// String::from_utf8_lossy, the White_Space property of char::is_whitespace, and NFC as the crate's
// unicode-normalization-alignments tables (Unicode 9) compute it.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>

namespace l2v {

// True when `s` is well-formed UTF-8 (no overlongs, surrogates or code points above U+10FFFF): the
// strings Rust's &str can hold.
bool is_valid_utf8(std::string_view s);

// Byte length of the UTF-8 sequence that starts with `lead` (1 for ASCII and for stray bytes).
inline int utf8_seq_len(unsigned char lead) {
  return lead < 0xC0 ? 1 : lead < 0xE0 ? 2 : lead < 0xF0 ? 3 : 4;
}

// The code point at s[i] of valid UTF-8; advances i past it.
uint32_t next_code_point(std::string_view s, size_t& i);

void append_utf8(std::string& out, uint32_t cp);

// `bytes` as UTF-8 where each maximal ill-formed subsequence becomes one U+FFFD, exactly as Rust's
// String::from_utf8_lossy (the Unicode "best practice" for substitution).
std::string utf8_lossy(std::string_view bytes);

// Unicode White_Space (Rust's char::is_whitespace and regex `\s`).
bool is_white_space(uint32_t cp);

// NFC of valid UTF-8 text as tokenizers computes it. utf8proc provides the algorithm and its
// Unicode 15 data; characters assigned after Unicode 9 that would take part in normalisation are
// kept as they are, which is how Unicode 9 tables see them (unassigned). Returns false and leaves
// `out` untouched when a quick check shows `text` is already NFC (no code point that has a
// combining class or a canonical decomposition or can be composed onto its predecessor), so callers
// can skip the copy. Throws std::runtime_error if utf8proc fails.
bool nfc(std::string_view text, std::string& out);

}  // namespace l2v
