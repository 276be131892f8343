#include "data/llama2c_tokenizer.h"

#include <cstdint>
#include <cstring>
#include <fstream>
#include <iterator>
#include <queue>
#include <stdexcept>

#include "data/file_io.h"

namespace l2v {

namespace {

std::runtime_error load_error(const std::string& path, const std::string& what) {
    return std::runtime_error("llama2c tokenizer '" + path + "': " + what);
}

int hex_digit(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    return -1;
}

// The byte a "<0xHH>" piece stands for, or -1 if the piece has another form.
int byte_piece_value(const std::string& piece) {
    if (piece.size() != 6 || piece.compare(0, 3, "<0x") != 0 || piece[5] != '>') return -1;
    const int hi = hex_digit(piece[3]), lo = hex_digit(piece[4]);
    return (hi < 0 || lo < 0) ? -1 : hi * 16 + lo;
}

// Cursor over the file contents that turns every short read into an error naming the file and offset.
struct Reader {
    const std::string& path;
    const std::vector<char>& data;
    size_t pos = 0;

    void need(size_t n, const std::string& what) const {
        if (data.size() - pos < n)
            throw load_error(path, "truncated at byte " + std::to_string(pos) + " while reading " + what +
                                       " (file has " + std::to_string(data.size()) + " bytes)");
    }
    // The format is little-endian; like llama2.c we read it on a little-endian host.
    int32_t i32(const std::string& what) {
        need(4, what);
        int32_t v;
        std::memcpy(&v, data.data() + pos, 4);
        pos += 4;
        return v;
    }
    float f32(const std::string& what) {
        need(4, what);
        float v;
        std::memcpy(&v, data.data() + pos, 4);
        pos += 4;
        return v;
    }
    std::string bytes(size_t n, const std::string& what) {
        need(n, what);
        std::string s(data.data() + pos, n);
        pos += n;
        return s;
    }
};

}  // namespace

Llama2cTokenizer load_llama2c_tokenizer(const std::string& path, int vocab_size) {
    // ids 0..2 are fixed control tokens that encode/decode rely on. 0 = as many as the file holds.
    if (vocab_size < 0 || (vocab_size != 0 && vocab_size < 3))
        throw load_error(path, "vocab_size must be at least 3 (<unk>, <s>, </s>), got " +
                                   std::to_string(vocab_size));

    std::ifstream in = open_input_file(path, "a llama2.c tokenizer");
    const std::vector<char> data((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    if (in.bad()) throw load_error(path, "read error");

    Reader r{path, data};
    Llama2cTokenizer tok;
    tok.max_token_length = r.i32("max_token_length");
    if (tok.max_token_length <= 0)
        throw load_error(path, "max_token_length must be positive, got " +
                                   std::to_string(tok.max_token_length));

    const bool read_all = vocab_size == 0;
    tok.pieces.reserve(vocab_size);
    tok.scores.reserve(vocab_size);
    for (int id = 0; read_all ? r.pos < data.size() : id < vocab_size; ++id) {
        const std::string entry =
            "token " + std::to_string(id) + (read_all ? std::string() : " of " + std::to_string(vocab_size));
        tok.scores.push_back(r.f32("the score of " + entry));
        const int32_t len = r.i32("the length of " + entry);
        // The exporter sets max_token_length to the longest piece, so a longer one means a corrupt file
        // (or a file that is not a llama2.c tokenizer at all).
        if (len < 0 || len > tok.max_token_length)
            throw load_error(path, "the length of " + entry + " is " + std::to_string(len) +
                                       ", outside [0, max_token_length=" +
                                       std::to_string(tok.max_token_length) + "]");
        tok.pieces.push_back(r.bytes(static_cast<size_t>(len), "the piece of " + entry));
    }
    vocab_size = tok.vocab_size();
    if (vocab_size < 3) throw load_error(path, "holds " + std::to_string(vocab_size) + " tokens, fewer than 3");
    if (r.pos != data.size())
        throw load_error(path, std::to_string(data.size() - r.pos) + " trailing bytes after " +
                                   std::to_string(vocab_size) +
                                   " tokens: the file holds more tokens than vocab_size");

    tok.byte_fallback = vocab_size >= kLlama2cByteOffset + 256;
    for (int b = 0; b < 256 && tok.byte_fallback; ++b)
        tok.byte_fallback = byte_piece_value(tok.pieces[kLlama2cByteOffset + b]) == b;

    tok.decoded.reserve(vocab_size);
    for (int id = 0; id < vocab_size; ++id) {
        const int byte = byte_piece_value(tok.pieces[id]);
        tok.decoded.push_back(byte >= 0 ? std::string(1, static_cast<char>(byte)) : tok.pieces[id]);
        // Control and byte pieces do not stand for their own spelling, so text must never match them
        // (SentencePiece treats them the same way): text "<0x41>" stays six characters.
        if (id == kLlama2cUnk || id == kLlama2cBos || id == kLlama2cEos || byte >= 0) continue;
        tok.piece_to_id.emplace(tok.pieces[id], id);  // keeps the first id if a piece repeats
    }
    return tok;
}

std::string decode_piece(const Llama2cTokenizer& tok, int prev_token, int token) {
    if (token < 0 || token >= tok.vocab_size())
        throw std::out_of_range("llama2c tokenizer: token id " + std::to_string(token) + " outside [0, " +
                                std::to_string(tok.vocab_size()) + ")");
    if (token == kLlama2cBos || token == kLlama2cEos) return "";
    const std::string& text = tok.decoded[token];
    // The leading space after BOS is SentencePiece's dummy prefix, not part of the text. Only a literal
    // space piece is stripped: a "<0x20>" byte token is a real space, as in run.c.
    if (prev_token == kLlama2cBos && !tok.pieces[token].empty() && tok.pieces[token][0] == ' ')
        return text.substr(1);
    return text;
}

std::string decode(const Llama2cTokenizer& tok, const std::vector<int>& ids) {
    std::string out;
    int prev = kLlama2cBos;
    for (int id : ids) {
        out += decode_piece(tok, prev, id);
        prev = id;
    }
    return out;
}

std::vector<int> encode(const Llama2cTokenizer& tok, const std::string& text, bool bos, bool eos) {
    // Symbols form a doubly linked list over their initial positions; a merge keeps the left symbol
    // (with the merged id) and unlinks the right one, so list order is always the text order.
    struct Symbol {
        int id, prev, next;
    };
    std::vector<Symbol> syms;
    std::string unit;
    auto push_symbol = [&](int id) {
        const int idx = static_cast<int>(syms.size());
        syms.push_back({id, idx - 1, idx + 1});
    };

    // The dummy prefix is simply a space in front of the text, split into characters like the rest
    // (run.c looks up " " separately; the outcome is the same when " " is a piece, and this also copes
    // with a vocabulary that lacks it).
    const std::string input = text.empty() ? std::string() : " " + text;
    for (size_t i = 0; i < input.size();) {
        // One character = one byte plus the UTF-8 continuation bytes (10xxxxxx) that follow it, at most
        // four bytes in all. Malformed UTF-8 is grouped the same way run.c groups it.
        size_t len = 1;
        while (len < 4 && i + len < input.size() && (static_cast<unsigned char>(input[i + len]) & 0xC0) == 0x80)
            ++len;
        unit.assign(input, i, len);
        i += len;
        const auto it = tok.piece_to_id.find(unit);
        if (it != tok.piece_to_id.end()) {
            push_symbol(it->second);
        } else if (tok.byte_fallback) {
            for (unsigned char b : unit) push_symbol(kLlama2cByteOffset + b);
        } else {
            push_symbol(kLlama2cUnk);
        }
    }
    const int n = static_cast<int>(syms.size());

    // Candidate merges in a max-heap ordered like run.c's scan: highest score first, then leftmost.
    // Entries go stale when a neighbour merges; they are recognised on pop by the recorded ids.
    struct Candidate {
        float score;
        int left, right, left_id, right_id, merged_id;
    };
    auto lower_priority = [](const Candidate& a, const Candidate& b) {
        return a.score < b.score || (a.score == b.score && a.left > b.left);
    };
    std::priority_queue<Candidate, std::vector<Candidate>, decltype(lower_priority)> heap(lower_priority);
    std::string pair;
    auto consider = [&](int left, int right) {
        if (left < 0 || right >= n) return;
        const int a = syms[left].id, b = syms[right].id;
        pair.assign(tok.pieces[a]).append(tok.pieces[b]);
        const auto it = tok.piece_to_id.find(pair);
        if (it != tok.piece_to_id.end()) heap.push({tok.scores[it->second], left, right, a, b, it->second});
    };
    for (int i = 0; i + 1 < n; ++i) consider(i, i + 1);

    while (!heap.empty()) {
        const Candidate c = heap.top();
        heap.pop();
        // Merging only lengthens pieces, so a symbol never gets back an id it had before: matching ids
        // plus adjacency prove the candidate is still current.
        if (syms[c.left].id != c.left_id || syms[c.right].id != c.right_id || syms[c.left].next != c.right)
            continue;
        syms[c.left].id = c.merged_id;
        syms[c.right].id = -1;
        syms[c.left].next = syms[c.right].next;
        if (syms[c.right].next < n) syms[syms[c.right].next].prev = c.left;
        consider(syms[c.left].prev, c.left);
        consider(c.left, syms[c.left].next);
    }

    std::vector<int> ids;
    ids.reserve(static_cast<size_t>(n) + 2);
    // BOS is added outside the merge: it is a control token and never part of a merged piece.
    if (bos) ids.push_back(kLlama2cBos);
    // Symbol 0 is never unlinked (merges remove the right symbol), so the list starts there.
    for (int i = 0; i < n; i = syms[i].next) ids.push_back(syms[i].id);
    if (eos) ids.push_back(kLlama2cEos);
    return ids;
}

}  // namespace l2v
