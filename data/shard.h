// Pre-tokenized shards: the files `prepare` writes once and training reads many times, in the spirit of
// llm.c's .bin shards (a fixed header, then the raw token stream), extended with a document index, the
// tokenizer's fingerprint, and the metadata of supervised triples.
//
// Byte layout (all integers little-endian; offsets in bytes from the start of the file):
//
//   [0, 256)  header
//       0   8  magic "L2VSHARD"
//       8   4  uint32 format version (1)
//      12   4  uint32 kind: 0 = documents (MNTP text), 1 = sentences (SimCSE), 2 = supervised triples
//      16   4  uint32 token width in bytes: 2 (uint16 ids, written when vocab_size <= 65536) or 4 (uint32)
//      20   4  uint32 vocab size: every stored id is < it
//      24   8  uint64 tokenizer fingerprint (Tokenizer::fingerprint())
//      32   8  uint64 num_tokens
//      40   8  uint64 num_docs
//      48   8  uint64 index_offset = 256 + num_tokens * width rounded up to a multiple of 8
//      56   8  uint64 num_datasets (kind 2; 0 for the other kinds)
//      64 184  reserved, zero
//     248   8  uint64 header checksum: fnv1a64 of bytes [0, 248)
//   [256, 256 + num_tokens * width)      the tokens of every document, back to back
//   zero padding up to index_offset       so the 64-bit index below is naturally aligned in the mapping
//   [index_offset, +8 * (num_docs + 1))  document index: uint64 token offsets, off[0] = 0,
//                                         off[num_docs] = num_tokens, non-decreasing; document i is
//                                         tokens [off[i], off[i+1]) (empty documents are allowed)
//   kinds 0 and 1: end of file.
//
//   kind 2 (supervised triples) continues with a metadata section. Example e is documents 3e (query,
//   whose first instruction_tokens tokens are the task instruction, excluded from pooling), 3e+1
//   (positive) and 3e+2 (negative); num_docs is a multiple of 3.
//     num_docs / 3 records of 8 bytes: uint32 instruction_tokens (<= query length),
//                                      uint32 dataset id (< num_datasets)
//     (num_datasets + 1) uint64 byte offsets into the name blob: names[d] = blob[o[d], o[d+1]),
//                                      o[0] = 0, strictly increasing (names are non-empty)
//     the name blob: dataset names as UTF-8, unterminated, distinct; end of file.
//   llm2vec draws every supervised batch from a single dataset, hence the per-example dataset id.
//
// The header checksum catches a damaged header (fnv1a64 detects any single changed byte: each of its
// steps is a bijection of the state). The bulk is validated structurally when a shard is opened (sizes,
// index, metadata); token values are checked when copied out (TokenView::copy_to), so a damaged token
// is an error rather than an out-of-range embedding lookup. Every size is 64-bit: shards over 4 GiB work.
#pragma once
#include <array>
#include <cstdint>
#include <cstdio>
#include <map>
#include <memory>
#include <string>
#include <vector>

namespace l2v {

class MappedFile;

enum class ShardKind : uint32_t { kDocuments = 0, kSentences = 1, kTriples = 2 };
const char* shard_kind_name(ShardKind kind);  // "documents", "sentences", "triples"

constexpr uint64_t kShardHeaderBytes = 256;
constexpr uint32_t kShardVersion = 1;
constexpr char kShardMagic[8] = {'L', '2', 'V', 'S', 'H', 'A', 'R', 'D'};

// The header fields that are not derived (the magic, version and checksum are written and checked by
// encode/parse).
struct ShardHeader {
  ShardKind kind = ShardKind::kDocuments;
  uint32_t token_width = 2;
  uint32_t vocab_size = 0;
  uint64_t fingerprint = 0;
  uint64_t num_tokens = 0;
  uint64_t num_docs = 0;
  uint64_t index_offset = 0;
  uint64_t num_datasets = 0;
};

// Where the index must start for `num_tokens` tokens of `width` bytes; throws on 64-bit overflow.
uint64_t shard_index_offset(uint64_t num_tokens, uint32_t width, const std::string& path);

// The 256 header bytes for `h`, with magic, version and checksum filled in.
std::array<uint8_t, kShardHeaderBytes> encode_shard_header(const ShardHeader& h);

// Decodes and validates the header of a file of `file_size` bytes whose first bytes are `bytes` (at
// least min(file_size, 256) of them): the size, magic, version, checksum, field ranges, and that the
// tokens and the document index fit in the file (and, for kinds 0 and 1, end it exactly). Throws
// std::runtime_error naming `path` and the problem.
ShardHeader parse_shard_header(const uint8_t* bytes, uint64_t file_size, const std::string& path);

// The tokens of one document (or any token range) inside a mapped shard: 2- or 4-byte ids read in
// place. Valid while the Shard it came from is alive.
struct TokenView {
  const uint8_t* bytes = nullptr;
  uint64_t size = 0;
  uint32_t width = 4;
  uint32_t vocab_size = 0;
  const std::string* path = nullptr;  // the shard's, for error messages

  // The stored id, unchecked against the vocabulary (for inspection; training copies with copy_to).
  int32_t operator[](uint64_t i) const {
    return width == 2 ? reinterpret_cast<const uint16_t*>(bytes)[i]
                      : static_cast<int32_t>(reinterpret_cast<const uint32_t*>(bytes)[i]);
  }
  // Copies all `size` ids as int32 into dst, throwing std::runtime_error naming the shard if an id is
  // >= vocab_size (the token data is damaged).
  void copy_to(int32_t* dst) const;
  std::vector<int32_t> to_vector() const;
  TokenView sub(uint64_t begin, uint64_t count) const;  // tokens [begin, begin + count); unchecked
};

// One supervised example of a kind-2 shard.
struct Triple {
  TokenView query, positive, negative;
  uint32_t instruction_tokens = 0;  // leading query tokens excluded from pooling
  uint32_t dataset = 0;             // index into the dataset names (of the Shard or the ShardSet)
};

// Writes one shard. Tokens stream to `path + ".tmp.<pid>"`; finish() completes the file and renames it
// to `path`, so an interrupted run never leaves a partial shard under the final name. Destroying a
// writer that was not finished removes the temporary file.
class ShardWriter {
 public:
  ShardWriter() = default;
  ~ShardWriter();
  ShardWriter(const ShardWriter&) = delete;
  ShardWriter& operator=(const ShardWriter&) = delete;

  // The token width is 2 bytes when vocab_size <= 65536, else 4. Throws if the writer is already open,
  // vocab_size is 0 or above 2^31 (ids are int32), or the temporary file cannot be created.
  void open(const std::string& path, ShardKind kind, uint32_t vocab_size, uint64_t fingerprint);
  // Appends one document (kinds 0 and 1). Every id must be in [0, vocab_size); otherwise nothing is
  // written and std::runtime_error names the document, the position and the id.
  void add_document(const int32_t* ids, size_t n);
  // Appends one supervised example (kind 2): query (whose first instruction_tokens ids are the
  // instruction), positive and negative, from the dataset called `dataset` (names are interned in
  // order of first use).
  void add_triple(const std::vector<int32_t>& query, uint32_t instruction_tokens,
                  const std::vector<int32_t>& positive, const std::vector<int32_t>& negative,
                  const std::string& dataset);
  // Writes the index (and metadata), the header, syncs and renames to the final path.
  void finish();

  uint64_t num_docs() const { return offsets_.empty() ? 0 : offsets_.size() - 1; }
  uint64_t num_tokens() const { return offsets_.empty() ? 0 : offsets_.back(); }

 private:
  void check_ids(const int32_t* ids, size_t n, const char* what) const;
  void append(const int32_t* ids, size_t n);
  void write(const void* data, size_t n);
  void discard();

  std::string path_, tmp_path_;
  std::FILE* file_ = nullptr;
  ShardHeader header_;
  std::vector<uint64_t> offsets_;  // document index, kept in memory until finish()
  std::vector<uint32_t> meta_;     // kind 2: (instruction_tokens, dataset id) per example
  std::vector<std::string> dataset_names_;
  std::map<std::string, uint32_t> dataset_ids_;
  std::vector<uint8_t> scratch_;  // one document converted to the stored width
};

// A shard opened read-only through mmap and validated (see the layout above); throws
// std::runtime_error naming the file for anything malformed.
// Not movable: TokenViews point into it (its path string included).
class Shard {
 public:
  explicit Shard(const std::string& path);
  ~Shard();
  Shard(const Shard&) = delete;
  Shard& operator=(const Shard&) = delete;

  const std::string& path() const { return path_; }
  const ShardHeader& header() const { return header_; }
  ShardKind kind() const { return header_.kind; }
  uint64_t num_docs() const { return header_.num_docs; }
  uint64_t num_tokens() const { return header_.num_tokens; }

  // Fails unless the shard was tokenized with a tokenizer of this vocabulary size and fingerprint.
  void check_tokenizer(uint32_t expected_vocab, uint64_t expected_fingerprint) const;

  uint64_t doc_offset(uint64_t i) const { return index_[i]; }  // i in [0, num_docs]; unchecked
  TokenView doc(uint64_t i) const;                              // throws std::out_of_range
  TokenView tokens(uint64_t begin, uint64_t end) const;         // the token stream [begin, end)

  // Kind 2 only (the accessors throw otherwise).
  uint64_t num_triples() const { return header_.num_docs / 3; }
  Triple triple(uint64_t e) const;
  const std::vector<std::string>& dataset_names() const { return dataset_names_; }

 private:
  void validate_index() const;
  void read_triple_metadata();

  std::string path_;
  std::unique_ptr<MappedFile> file_;
  ShardHeader header_;
  const uint8_t* tokens_ = nullptr;
  const uint64_t* index_ = nullptr;
  const uint32_t* meta_ = nullptr;  // kind 2: 2 uint32 per example
  std::vector<std::string> dataset_names_;
};

// Comma-separated list of paths and glob patterns (e.g. "data/wiki-*.bin,extra.bin"), each pattern
// expanded in sorted order; a pattern matching nothing is an error.
std::vector<std::string> expand_shard_paths(const std::string& spec);

// Several shards read as one: documents are numbered across the shards in order. All shards must agree
// on kind, vocabulary size and tokenizer fingerprint. For triples, dataset names are merged across
// shards (by name, in order of first appearance) and Triple::dataset is the merged id.
class ShardSet {
 public:
  // At least one path. Structural checks only: training opens shards through open_shard_dataset
  // (data/shard_manifest.h), which also checks them against their set's manifest.
  explicit ShardSet(const std::vector<std::string>& paths);

  size_t num_shards() const { return shards_.size(); }
  const Shard& shard(size_t s) const { return *shards_[s]; }
  ShardKind kind() const { return shards_[0]->kind(); }
  uint32_t vocab_size() const { return shards_[0]->header().vocab_size; }
  uint64_t fingerprint() const { return shards_[0]->header().fingerprint; }
  uint64_t num_docs() const { return doc_starts_.back(); }
  uint64_t num_tokens() const { return token_starts_.back(); }
  // Index of the first document / first token of shard s in the set's numbering; s in [0, num_shards].
  uint64_t doc_start(size_t s) const { return doc_starts_[s]; }
  uint64_t token_start(size_t s) const { return token_starts_[s]; }

  void check_tokenizer(uint32_t expected_vocab, uint64_t expected_fingerprint) const;

  TokenView doc(uint64_t i) const;  // throws std::out_of_range
  // Copies tokens [begin, begin + count) of the set's token stream (every shard's tokens in order, i.e.
  // all documents concatenated) into out, across shard boundaries. Throws std::out_of_range.
  void copy_tokens(uint64_t begin, uint64_t count, int32_t* out) const;
  uint64_t num_triples() const { return num_docs() / 3; }
  Triple triple(uint64_t e) const;  // kind 2; dataset ids are the merged ones
  const std::vector<std::string>& dataset_names() const { return dataset_names_; }

 private:
  std::vector<std::unique_ptr<Shard>> shards_;
  std::vector<uint64_t> doc_starts_, token_starts_;  // cumulative, num_shards + 1 entries
  std::vector<std::string> dataset_names_;
  std::vector<std::vector<uint32_t>> dataset_map_;  // per shard: local dataset id -> merged id
};

}  // namespace l2v
