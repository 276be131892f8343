#include "data/shard.h"

#include <glob.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <set>
#include <stdexcept>

#include "data/tokenizer.h"
#include "model/safetensors.h"

namespace l2v {

// The header fields and the token/index arrays are read and written as native integers.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "shard I/O assumes a little-endian host");

namespace {

// Byte positions of the header fields (see shard.h).
constexpr size_t kOffVersion = 8, kOffKind = 12, kOffWidth = 16, kOffVocab = 20, kOffFingerprint = 24,
                 kOffNumTokens = 32, kOffNumDocs = 40, kOffIndex = 48, kOffNumDatasets = 56,
                 kOffChecksum = 248;
// Ids are handed to the model as int32.
constexpr uint64_t kMaxVocab = uint64_t{1} << 31;

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

std::string hex(uint64_t v) {
  char buf[32];
  std::snprintf(buf, sizeof buf, "0x%016llx", static_cast<unsigned long long>(v));
  return buf;
}

template <typename T>
T load(const uint8_t* p) {
  T v;
  std::memcpy(&v, p, sizeof v);
  return v;
}

template <typename T>
void store(uint8_t* p, T v) {
  std::memcpy(p, &v, sizeof v);
}

uint64_t mul(uint64_t a, uint64_t b, const std::string& path, const char* what) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) fail(path + ": " + what + " overflows 64 bits (corrupt header)");
  return r;
}

uint64_t add(uint64_t a, uint64_t b, const std::string& path, const char* what) {
  uint64_t r;
  if (__builtin_add_overflow(a, b, &r)) fail(path + ": " + what + " overflows 64 bits (corrupt header)");
  return r;
}

uint64_t kind_triples_meta_bytes(uint64_t num_docs, uint64_t num_datasets, const std::string& path) {
  uint64_t records = mul(num_docs / 3, 8, path, "the example records' size");
  uint64_t offsets = mul(add(num_datasets, 1, path, "the dataset count"), 8, path, "the dataset table's size");
  return add(records, offsets, path, "the metadata size");
}

}  // namespace

const char* shard_kind_name(ShardKind kind) {
  switch (kind) {
    case ShardKind::kDocuments: return "documents";
    case ShardKind::kSentences: return "sentences";
    case ShardKind::kTriples: return "triples";
  }
  return "unknown";
}

uint64_t shard_index_offset(uint64_t num_tokens, uint32_t width, const std::string& path) {
  uint64_t end = add(kShardHeaderBytes, mul(num_tokens, width, path, "the token data size"), path,
                     "the token data end");
  return add(end, 7, path, "the index offset") & ~uint64_t{7};
}

std::array<uint8_t, kShardHeaderBytes> encode_shard_header(const ShardHeader& h) {
  std::array<uint8_t, kShardHeaderBytes> b{};
  std::memcpy(b.data(), kShardMagic, sizeof kShardMagic);
  store<uint32_t>(&b[kOffVersion], kShardVersion);
  store<uint32_t>(&b[kOffKind], static_cast<uint32_t>(h.kind));
  store<uint32_t>(&b[kOffWidth], h.token_width);
  store<uint32_t>(&b[kOffVocab], h.vocab_size);
  store<uint64_t>(&b[kOffFingerprint], h.fingerprint);
  store<uint64_t>(&b[kOffNumTokens], h.num_tokens);
  store<uint64_t>(&b[kOffNumDocs], h.num_docs);
  store<uint64_t>(&b[kOffIndex], h.index_offset);
  store<uint64_t>(&b[kOffNumDatasets], h.num_datasets);
  store<uint64_t>(&b[kOffChecksum], fnv1a64(b.data(), kOffChecksum));
  return b;
}

ShardHeader parse_shard_header(const uint8_t* b, uint64_t file_size, const std::string& path) {
  if (file_size < kShardHeaderBytes)
    fail(path + ": " + std::to_string(file_size) + " bytes, shorter than the " +
         std::to_string(kShardHeaderBytes) + "-byte shard header (not a shard, or truncated)");
  if (std::memcmp(b, kShardMagic, sizeof kShardMagic) != 0)
    fail(path + ": not a shard (bad magic: expected \"L2VSHARD\")");
  uint32_t version = load<uint32_t>(b + kOffVersion);
  if (version != kShardVersion)
    fail(path + ": shard format version " + std::to_string(version) + " is not supported (this build reads version " +
         std::to_string(kShardVersion) + "; re-run prepare)");
  uint64_t stored = load<uint64_t>(b + kOffChecksum), computed = fnv1a64(b, kOffChecksum);
  if (stored != computed)
    fail(path + ": header checksum mismatch (stored " + hex(stored) + ", computed " + hex(computed) +
         "): the header is damaged");

  ShardHeader h;
  uint32_t kind = load<uint32_t>(b + kOffKind);
  if (kind > static_cast<uint32_t>(ShardKind::kTriples)) fail(path + ": unknown shard kind " + std::to_string(kind));
  h.kind = static_cast<ShardKind>(kind);
  h.token_width = load<uint32_t>(b + kOffWidth);
  h.vocab_size = load<uint32_t>(b + kOffVocab);
  h.fingerprint = load<uint64_t>(b + kOffFingerprint);
  h.num_tokens = load<uint64_t>(b + kOffNumTokens);
  h.num_docs = load<uint64_t>(b + kOffNumDocs);
  h.index_offset = load<uint64_t>(b + kOffIndex);
  h.num_datasets = load<uint64_t>(b + kOffNumDatasets);

  if (h.token_width != 2 && h.token_width != 4)
    fail(path + ": token width " + std::to_string(h.token_width) + " bytes (expected 2 or 4)");
  if (h.vocab_size == 0 || h.vocab_size > kMaxVocab ||
      (h.token_width == 2 && h.vocab_size > 65536))
    fail(path + ": vocabulary size " + std::to_string(h.vocab_size) + " is impossible for " +
         std::to_string(h.token_width) + "-byte tokens");
  uint64_t want_index = shard_index_offset(h.num_tokens, h.token_width, path);
  if (h.index_offset != want_index)
    fail(path + ": document index offset " + std::to_string(h.index_offset) + " does not follow the " +
         std::to_string(h.num_tokens) + " tokens (expected " + std::to_string(want_index) + ")");
  uint64_t index_bytes = mul(add(h.num_docs, 1, path, "the document count"), 8, path, "the document index size");
  uint64_t end = add(h.index_offset, index_bytes, path, "the document index end");
  if (h.kind == ShardKind::kTriples) {
    if (h.num_docs % 3 != 0)
      fail(path + ": a triples shard holds " + std::to_string(h.num_docs) + " documents, not a multiple of 3");
    end = add(end, kind_triples_meta_bytes(h.num_docs, h.num_datasets, path), path, "the metadata end");
  } else if (h.num_datasets != 0) {
    fail(path + ": a " + shard_kind_name(h.kind) + " shard declares " + std::to_string(h.num_datasets) +
         " datasets (only triples shards have any)");
  }
  if (end > file_size)
    fail(path + ": truncated: " + std::to_string(h.num_tokens) + " tokens of " + std::to_string(h.token_width) +
         " bytes and " + std::to_string(h.num_docs) + " documents need " + std::to_string(end) +
         " bytes (before any dataset names) but the file has " + std::to_string(file_size));
  // A triples shard ends with its name blob, whose length only the mapped table gives (Shard checks it).
  if (h.kind != ShardKind::kTriples && end < file_size)
    fail(path + ": " + std::to_string(file_size - end) + " bytes of trailing garbage after the document index " +
         "(the file should end at byte " + std::to_string(end) + ")");
  return h;
}

// ---------------------------------------------------------------------------------------------------
// TokenView

void TokenView::copy_to(int32_t* dst) const {
  uint32_t bad = 0;
  if (width == 2) {
    const uint16_t* p = reinterpret_cast<const uint16_t*>(bytes);
    for (uint64_t i = 0; i < size; ++i) {
      dst[i] = p[i];
      bad |= p[i] >= vocab_size;
    }
  } else {
    const uint32_t* p = reinterpret_cast<const uint32_t*>(bytes);
    for (uint64_t i = 0; i < size; ++i) {
      dst[i] = static_cast<int32_t>(p[i]);
      bad |= p[i] >= vocab_size;
    }
  }
  // The check is folded into the copy loop; the position is only looked for once it failed.
  if (bad) {
    for (uint64_t i = 0; i < size; ++i) {
      if (static_cast<uint32_t>((*this)[i]) >= vocab_size)
        fail((path ? *path : std::string("shard")) + ": token id " + std::to_string(static_cast<uint32_t>((*this)[i])) +
             " (position " + std::to_string(i) + " of a " + std::to_string(size) +
             "-token range) is outside the vocabulary of " + std::to_string(vocab_size) +
             ": the token data is damaged");
    }
  }
}

std::vector<int32_t> TokenView::to_vector() const {
  std::vector<int32_t> v(size);
  copy_to(v.data());
  return v;
}

TokenView TokenView::sub(uint64_t begin, uint64_t count) const {
  TokenView v = *this;
  v.bytes = bytes + begin * width;
  v.size = count;
  return v;
}

// ---------------------------------------------------------------------------------------------------
// ShardWriter

ShardWriter::~ShardWriter() { discard(); }

void ShardWriter::discard() {
  if (!file_) return;
  std::fclose(file_);
  file_ = nullptr;
  std::remove(tmp_path_.c_str());
}

void ShardWriter::open(const std::string& path, ShardKind kind, uint32_t vocab_size, uint64_t fingerprint) {
  if (file_) fail(path + ": ShardWriter::open while " + path_ + " is still being written");
  if (vocab_size == 0 || vocab_size > kMaxVocab)
    fail(path + ": vocabulary size " + std::to_string(vocab_size) + " out of range [1, 2^31]");
  path_ = path;
  tmp_path_ = path + ".tmp." + std::to_string(::getpid());
  file_ = std::fopen(tmp_path_.c_str(), "wb");
  if (!file_) fail(tmp_path_ + ": cannot create: " + std::strerror(errno));
  header_ = ShardHeader{};
  header_.kind = kind;
  header_.token_width = vocab_size <= 65536 ? 2 : 4;
  header_.vocab_size = vocab_size;
  header_.fingerprint = fingerprint;
  offsets_.assign(1, 0);
  meta_.clear();
  dataset_names_.clear();
  dataset_ids_.clear();
  // The header is written last, once the counts are known; reserve its place.
  std::array<uint8_t, kShardHeaderBytes> zeros{};
  write(zeros.data(), zeros.size());
}

void ShardWriter::write(const void* data, size_t n) {
  if (n == 0) return;  // an empty document's data may be a null pointer, which fwrite must not get either
  if (std::fwrite(data, 1, n, file_) != n) {
    std::string e = std::strerror(errno);
    discard();  // a partial write leaves nothing worth finishing
    fail(tmp_path_ + ": write failed: " + e);
  }
}

void ShardWriter::check_ids(const int32_t* ids, size_t n, const char* what) const {
  for (size_t i = 0; i < n; ++i) {
    if (ids[i] < 0 || static_cast<uint32_t>(ids[i]) >= header_.vocab_size)
      fail(path_ + ": document " + std::to_string(num_docs()) + what + ": id " + std::to_string(ids[i]) +
           " at position " + std::to_string(i) + " is outside the vocabulary [0, " +
           std::to_string(header_.vocab_size) + ")");
  }
}

void ShardWriter::append(const int32_t* ids, size_t n) {
  scratch_.resize(n * header_.token_width);
  if (header_.token_width == 2) {
    for (size_t i = 0; i < n; ++i) store<uint16_t>(&scratch_[2 * i], static_cast<uint16_t>(ids[i]));
  } else if (n > 0) {  // memcpy must not get the null pointer an empty document may have
    std::memcpy(scratch_.data(), ids, n * 4);
  }
  write(scratch_.data(), scratch_.size());
  offsets_.push_back(offsets_.back() + n);
}

void ShardWriter::add_document(const int32_t* ids, size_t n) {
  if (!file_) fail("ShardWriter::add_document: no shard is open (open() first; a failed write closes it)");
  if (header_.kind == ShardKind::kTriples) fail(path_ + ": a triples shard takes add_triple, not add_document");
  check_ids(ids, n, "");
  append(ids, n);
}

void ShardWriter::add_triple(const std::vector<int32_t>& query, uint32_t instruction_tokens,
                             const std::vector<int32_t>& positive, const std::vector<int32_t>& negative,
                             const std::string& dataset) {
  if (!file_) fail("ShardWriter::add_triple: no shard is open (open() first; a failed write closes it)");
  if (header_.kind != ShardKind::kTriples)
    fail(path_ + ": a " + std::string(shard_kind_name(header_.kind)) + " shard takes add_document, not add_triple");
  if (instruction_tokens > query.size())
    fail(path_ + ": example " + std::to_string(meta_.size() / 2) + ": " + std::to_string(instruction_tokens) +
         " instruction tokens in a query of " + std::to_string(query.size()));
  if (dataset.empty()) fail(path_ + ": example " + std::to_string(meta_.size() / 2) + ": empty dataset name");
  check_ids(query.data(), query.size(), " (query)");
  check_ids(positive.data(), positive.size(), " (positive)");
  check_ids(negative.data(), negative.size(), " (negative)");
  auto it = dataset_ids_.find(dataset);
  if (it == dataset_ids_.end()) {
    it = dataset_ids_.emplace(dataset, static_cast<uint32_t>(dataset_names_.size())).first;
    dataset_names_.push_back(dataset);
  }
  append(query.data(), query.size());
  append(positive.data(), positive.size());
  append(negative.data(), negative.size());
  meta_.push_back(instruction_tokens);
  meta_.push_back(it->second);
}

void ShardWriter::finish() {
  if (!file_) fail("ShardWriter::finish: no shard is open");
  header_.num_tokens = offsets_.back();
  header_.num_docs = offsets_.size() - 1;
  header_.index_offset = shard_index_offset(header_.num_tokens, header_.token_width, path_);
  uint64_t written = kShardHeaderBytes + header_.num_tokens * header_.token_width;
  std::array<uint8_t, 8> zeros{};
  write(zeros.data(), header_.index_offset - written);
  write(offsets_.data(), offsets_.size() * sizeof(uint64_t));
  if (header_.kind == ShardKind::kTriples) {
    header_.num_datasets = dataset_names_.size();
    write(meta_.data(), meta_.size() * sizeof(uint32_t));
    std::vector<uint64_t> name_offsets(1, 0);
    for (const auto& n : dataset_names_) name_offsets.push_back(name_offsets.back() + n.size());
    write(name_offsets.data(), name_offsets.size() * sizeof(uint64_t));
    for (const auto& n : dataset_names_) write(n.data(), n.size());
  }
  auto header = encode_shard_header(header_);
  if (std::fseek(file_, 0, SEEK_SET) != 0) {
    std::string e = std::strerror(errno);
    discard();
    fail(tmp_path_ + ": cannot seek to the header: " + e);
  }
  write(header.data(), header.size());
  // Data reaches the disk before the rename makes it visible, so a crash cannot leave a shard under the
  // final name whose blocks were never written.
  int err = 0;
  if (std::fflush(file_) != 0 || ::fsync(::fileno(file_)) != 0) err = errno;
  if (std::fclose(file_) != 0 && err == 0) err = errno;
  file_ = nullptr;
  if (err == 0 && std::rename(tmp_path_.c_str(), path_.c_str()) == 0) return;
  if (err == 0) err = errno;
  std::remove(tmp_path_.c_str());
  fail(tmp_path_ + ": cannot complete the shard as " + path_ + ": " + std::strerror(err));
}

// ---------------------------------------------------------------------------------------------------
// Shard

Shard::~Shard() = default;

Shard::Shard(const std::string& path) : path_(path), file_(std::make_unique<MappedFile>(path)) {
  const uint8_t* base = file_->data();
  header_ = parse_shard_header(base, file_->size(), path_);
  tokens_ = base + kShardHeaderBytes;
  uint64_t token_end = kShardHeaderBytes + header_.num_tokens * header_.token_width;
  for (uint64_t p = token_end; p < header_.index_offset; ++p)
    if (base[p] != 0) fail(path_ + ": non-zero padding byte at " + std::to_string(p) + " before the document index");
  // The mapping is page-aligned and index_offset a multiple of 8, so the index is read in place.
  index_ = reinterpret_cast<const uint64_t*>(base + header_.index_offset);
  validate_index();
  if (header_.kind == ShardKind::kTriples) read_triple_metadata();
}

void Shard::validate_index() const {
  const uint64_t n = header_.num_docs;
  if (index_[0] != 0) fail(path_ + ": document index starts at " + std::to_string(index_[0]) + ", not 0");
  for (uint64_t i = 0; i < n; ++i) {
    if (index_[i + 1] < index_[i])
      fail(path_ + ": document index is not monotonic: offset[" + std::to_string(i + 1) + "] = " +
           std::to_string(index_[i + 1]) + " < offset[" + std::to_string(i) + "] = " + std::to_string(index_[i]));
    if (index_[i + 1] > header_.num_tokens)
      fail(path_ + ": document index out of range: offset[" + std::to_string(i + 1) + "] = " +
           std::to_string(index_[i + 1]) + " > " + std::to_string(header_.num_tokens) + " tokens");
  }
  if (index_[n] != header_.num_tokens)
    fail(path_ + ": document index ends at " + std::to_string(index_[n]) + " but the shard holds " +
         std::to_string(header_.num_tokens) + " tokens");
}

void Shard::read_triple_metadata() {
  const uint8_t* base = file_->data();
  const uint64_t size = file_->size();
  uint64_t meta_offset = header_.index_offset + (header_.num_docs + 1) * 8;
  meta_ = reinterpret_cast<const uint32_t*>(base + meta_offset);
  for (uint64_t e = 0; e < num_triples(); ++e) {
    uint32_t instr = meta_[2 * e], dataset = meta_[2 * e + 1];
    uint64_t query_len = index_[3 * e + 1] - index_[3 * e];
    if (instr > query_len)
      fail(path_ + ": example " + std::to_string(e) + " has " + std::to_string(instr) +
           " instruction tokens in a query of " + std::to_string(query_len));
    if (dataset >= header_.num_datasets)
      fail(path_ + ": example " + std::to_string(e) + " has dataset id " + std::to_string(dataset) + " but only " +
           std::to_string(header_.num_datasets) + " datasets are named");
  }
  // parse_shard_header checked that the records and the name offsets fit in the file.
  uint64_t names_offset = meta_offset + num_triples() * 8;
  const uint64_t* name_off = reinterpret_cast<const uint64_t*>(base + names_offset);
  uint64_t blob = names_offset + (header_.num_datasets + 1) * 8;
  uint64_t blob_size = size - blob;
  if (name_off[0] != 0) fail(path_ + ": dataset name table starts at " + std::to_string(name_off[0]) + ", not 0");
  std::set<std::string> seen;
  for (uint64_t d = 0; d < header_.num_datasets; ++d) {
    if (name_off[d + 1] <= name_off[d] || name_off[d + 1] > blob_size)
      fail(path_ + ": dataset name table entry " + std::to_string(d + 1) + " = " + std::to_string(name_off[d + 1]) +
           " is not increasing within the " + std::to_string(blob_size) + "-byte name blob");
    std::string name(reinterpret_cast<const char*>(base + blob + name_off[d]), name_off[d + 1] - name_off[d]);
    if (!seen.insert(name).second) fail(path_ + ": dataset name \"" + name + "\" appears twice");
    dataset_names_.push_back(std::move(name));
  }
  uint64_t names_end = name_off[header_.num_datasets];
  if (names_end != blob_size)
    fail(path_ + ": " + std::to_string(blob_size - names_end) + " bytes of trailing garbage after the dataset names");
}

void Shard::check_tokenizer(uint32_t expected_vocab, uint64_t expected_fingerprint) const {
  if (header_.vocab_size != expected_vocab || header_.fingerprint != expected_fingerprint)
    fail(path_ + ": tokenized with another tokenizer (shard: fingerprint " + hex(header_.fingerprint) + ", vocab " +
         std::to_string(header_.vocab_size) + "; expected: fingerprint " + hex(expected_fingerprint) + ", vocab " +
         std::to_string(expected_vocab) + "); re-run prepare with the model's tokenizer");
}

TokenView Shard::tokens(uint64_t begin, uint64_t end) const {
  if (begin > end || end > header_.num_tokens)
    throw std::out_of_range(path_ + ": token range [" + std::to_string(begin) + ", " + std::to_string(end) +
                            ") outside the " + std::to_string(header_.num_tokens) + " tokens");
  return TokenView{tokens_ + begin * header_.token_width, end - begin, header_.token_width, header_.vocab_size,
                   &path_};
}

TokenView Shard::doc(uint64_t i) const {
  if (i >= header_.num_docs)
    throw std::out_of_range(path_ + ": document " + std::to_string(i) + " of " + std::to_string(header_.num_docs));
  return tokens(index_[i], index_[i + 1]);
}

Triple Shard::triple(uint64_t e) const {
  if (header_.kind != ShardKind::kTriples)
    fail(path_ + ": a " + std::string(shard_kind_name(header_.kind)) + " shard holds no triples");
  if (e >= num_triples())
    throw std::out_of_range(path_ + ": example " + std::to_string(e) + " of " + std::to_string(num_triples()));
  return Triple{doc(3 * e), doc(3 * e + 1), doc(3 * e + 2), meta_[2 * e], meta_[2 * e + 1]};
}

// ---------------------------------------------------------------------------------------------------
// ShardSet

std::vector<std::string> expand_shard_paths(const std::string& spec) {
  std::vector<std::string> paths;
  size_t start = 0;
  while (start <= spec.size()) {
    size_t comma = std::min(spec.find(',', start), spec.size());
    std::string part = spec.substr(start, comma - start);
    start = comma + 1;
    if (part.empty()) continue;
    if (part.find_first_of("*?[") == std::string::npos) {
      paths.push_back(part);  // a plain path; opening it reports a missing file
      continue;
    }
    glob_t g;
    int rc = ::glob(part.c_str(), 0, nullptr, &g);
    if (rc == 0) {
      for (size_t i = 0; i < g.gl_pathc; ++i) paths.emplace_back(g.gl_pathv[i]);  // sorted by glob
    }
    ::globfree(&g);
    if (rc == GLOB_NOMATCH) fail("shard pattern '" + part + "' matches no file");
    if (rc != 0) fail("shard pattern '" + part + "': glob failed (error " + std::to_string(rc) + ")");
  }
  if (paths.empty()) fail("no shard files given ('" + spec + "')");
  return paths;
}

ShardSet::ShardSet(const std::vector<std::string>& paths) {
  if (paths.empty()) fail("ShardSet: no shard files given");
  doc_starts_.assign(1, 0);
  token_starts_.assign(1, 0);
  std::map<std::string, uint32_t> merged;
  for (const auto& p : paths) {
    shards_.push_back(std::make_unique<Shard>(p));
    const Shard& s = *shards_.back();
    const Shard& first = *shards_.front();
    if (s.kind() != first.kind())
      fail(p + ": holds " + shard_kind_name(s.kind()) + " but " + first.path() + " holds " +
           shard_kind_name(first.kind()) + " (all shards of a set must have the same kind)");
    if (s.header().vocab_size != first.header().vocab_size || s.header().fingerprint != first.header().fingerprint)
      fail(p + ": tokenizer (fingerprint " + hex(s.header().fingerprint) + ", vocab " +
           std::to_string(s.header().vocab_size) + ") differs from " + first.path() + "'s (fingerprint " +
           hex(first.header().fingerprint) + ", vocab " + std::to_string(first.header().vocab_size) + ")");
    doc_starts_.push_back(doc_starts_.back() + s.num_docs());
    token_starts_.push_back(token_starts_.back() + s.num_tokens());
    std::vector<uint32_t> map;
    for (const auto& name : s.dataset_names()) {
      auto it = merged.emplace(name, static_cast<uint32_t>(dataset_names_.size())).first;
      if (it->second == dataset_names_.size()) dataset_names_.push_back(name);
      map.push_back(it->second);
    }
    dataset_map_.push_back(std::move(map));
  }
}

void ShardSet::check_tokenizer(uint32_t expected_vocab, uint64_t expected_fingerprint) const {
  // The constructor made every shard agree with the first.
  shards_[0]->check_tokenizer(expected_vocab, expected_fingerprint);
}

TokenView ShardSet::doc(uint64_t i) const {
  if (i >= num_docs())
    throw std::out_of_range("ShardSet: document " + std::to_string(i) + " of " + std::to_string(num_docs()));
  // The last shard starting at or before i; empty shards before it are skipped by upper_bound.
  size_t s = std::upper_bound(doc_starts_.begin(), doc_starts_.end(), i) - doc_starts_.begin() - 1;
  return shards_[s]->doc(i - doc_starts_[s]);
}

void ShardSet::copy_tokens(uint64_t begin, uint64_t count, int32_t* out) const {
  if (count > num_tokens() || begin > num_tokens() - count)
    throw std::out_of_range("ShardSet: token range [" + std::to_string(begin) + ", +" + std::to_string(count) +
                            ") outside the " + std::to_string(num_tokens()) + " tokens");
  while (count > 0) {
    size_t s = std::upper_bound(token_starts_.begin(), token_starts_.end(), begin) - token_starts_.begin() - 1;
    uint64_t local = begin - token_starts_[s];
    uint64_t take = std::min(count, token_starts_[s + 1] - begin);
    shards_[s]->tokens(local, local + take).copy_to(out);
    out += take;
    begin += take;
    count -= take;
  }
}

Triple ShardSet::triple(uint64_t e) const {
  if (kind() != ShardKind::kTriples)
    fail(shards_[0]->path() + ": a " + std::string(shard_kind_name(kind())) + " shard set holds no triples");
  if (e >= num_triples())
    throw std::out_of_range("ShardSet: example " + std::to_string(e) + " of " + std::to_string(num_triples()));
  // Every shard holds whole triples, so the shard of document 3e holds the whole example.
  size_t s = std::upper_bound(doc_starts_.begin(), doc_starts_.end(), 3 * e) - doc_starts_.begin() - 1;
  Triple t = shards_[s]->triple(e - doc_starts_[s] / 3);
  t.dataset = dataset_map_[s][t.dataset];
  return t;
}

}  // namespace l2v
