// The tokenizer of llama2.c models (e.g. stories260K's tok512.bin): loading llama2.c's binary export
// format, encoding text with the SentencePiece-BPE merge procedure that llama2.c's run.c implements,
// and decoding token ids back to text.
//
// File format (little-endian, as written by llama2.c's tokenizer export):
//   int32 max_token_length
//   vocab_size times: float32 score, int32 length, `length` bytes of the piece (UTF-8, no terminator)
// vocab_size is not stored; it comes from the model checkpoint, so the loader takes it as an argument.
//
// Conventions of the exported pieces: SentencePiece's word-boundary marker U+2581 is already replaced
// by a plain space, the control tokens <s> (id 1) and </s> (id 2) are stored as "\n<s>\n" and
// "\n</s>\n", and (with byte fallback) ids 3..258 are the byte pieces "<0x00>".."<0xFF>".
#pragma once

#include <string>
#include <unordered_map>
#include <vector>

namespace l2v {

constexpr int kLlama2cUnk = 0;
constexpr int kLlama2cBos = 1;
constexpr int kLlama2cEos = 2;
// Byte-fallback pieces "<0xHH>" sit right after the three control tokens: id = byte + 3.
constexpr int kLlama2cByteOffset = 3;

struct Llama2cTokenizer {
    int max_token_length = 0;
    std::vector<std::string> pieces;  // raw piece text as stored in the file, indexed by id
    std::vector<float> scores;        // merge priority: a higher score merges first
    // The bytes each id stands for in decoded text: the piece itself, or the single raw byte of a
    // "<0xHH>" piece. Precomputed so decoding never parses strings.
    std::vector<std::string> decoded;
    std::unordered_map<std::string, int> piece_to_id;  // first id of each piece text
    // True when ids 3..258 are exactly "<0x00>".."<0xFF>", so unknown characters can be spelled as
    // bytes; otherwise encode falls back to <unk> like SentencePiece without byte_fallback.
    bool byte_fallback = false;

    int vocab_size() const { return static_cast<int>(pieces.size()); }
};

// Reads a llama2.c tokenizer file that must hold exactly `vocab_size` entries (vocab_size >= 3, for the
// fixed <unk>/<s>/</s> ids), or, with vocab_size = 0, every entry the file holds. Throws std::runtime_error naming the file if it cannot be opened, is
// truncated, has trailing bytes (i.e. the vocab_size does not match), or holds inconsistent lengths.
Llama2cTokenizer load_llama2c_tokenizer(const std::string& path, int vocab_size);

// The text of `token` when it follows `prev_token`, with run.c's semantics: after BOS a leading space
// of the piece is dropped (it is SentencePiece's dummy prefix), and a "<0xHH>" piece yields that raw
// byte. BOS and EOS are control tokens and yield "" (run.c never prints them; their stored text
// "\n<s>\n" is an artefact of the export). Throws std::out_of_range for an id outside the vocabulary.
std::string decode_piece(const Llama2cTokenizer& tok, int prev_token, int token);

// Concatenation of decode_piece over `ids`. The start of the sequence counts as following BOS, so the
// dummy-prefix space that encode() always adds is removed even when the ids carry no BOS (this is what
// SentencePiece's decoder does too); hence decode(encode(s, b, e)) == s for any valid UTF-8 s.
std::string decode(const Llama2cTokenizer& tok, const std::vector<int>& ids);

// Encodes `text` (UTF-8) like llama2.c's run.c: optional BOS, a dummy-prefix space when text is
// non-empty, one symbol per UTF-8 character (a character missing from the vocabulary becomes one
// "<0xHH>" byte token per byte), then repeatedly the adjacent pair whose concatenation is a piece of
// highest score is merged (the leftmost such pair on ties), until no pair forms a piece; optional EOS.
// Unlike run.c (which stops at a NUL), embedded '\0' bytes are encoded as ordinary bytes.
std::vector<int> encode(const Llama2cTokenizer& tok, const std::string& text, bool bos, bool eos);

}  // namespace l2v
