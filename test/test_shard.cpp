// Pre-tokenized shards and the sampler: write/read round trips (2- and 4-byte tokens, empty documents,
// supervised triples), rejection of damaged files with a message naming the problem, 64-bit sizes (a
// sparse file over 8 GiB and header arithmetic near 2^64), the atomic writer, ShardSet consistency, the
// sampler (permutations, full batches, determinism, resume) and MNTP blocks against a naive
// concatenate-and-cut reference.
#include <fcntl.h>
#include <gtest/gtest.h>

#include "test/temp_dir.h"
#include "test/test_util.h"
#include <unistd.h>

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <set>
#include <string>
#include <vector>

#include "data/sampler.h"
#include "data/shard.h"

namespace fs = std::filesystem;
using namespace l2v;

namespace {

constexpr uint64_t kFingerprint = 0x1234abcd5678ef00ull;
using Docs = std::vector<std::vector<int32_t>>;

class ShardTest : public ::testing::Test {
 protected:
  std::string path(const std::string& name) const { return tmp_ / name; }
  l2v::test::TempDir tmp_{"test_shard"};
  const fs::path& dir_ = tmp_.path;
};

// Random documents of 0..max_len ids below vocab; every third one is empty, the first and last included.
Docs random_docs(std::mt19937& rng, size_t n, uint32_t vocab, size_t max_len) {
  std::uniform_int_distribution<int32_t> id(0, static_cast<int32_t>(vocab - 1));
  std::uniform_int_distribution<size_t> len(1, max_len);
  Docs docs(n);
  for (size_t d = 0; d < n; ++d) {
    if (d % 3 == 0 || d + 1 == n) continue;
    docs[d].resize(len(rng));
    for (auto& x : docs[d]) x = id(rng);
  }
  // The extremes of the id range must survive the width conversion.
  if (n > 1) docs[1] = {0, static_cast<int32_t>(vocab - 1)};
  return docs;
}

void write_shard(const std::string& path, ShardKind kind, uint32_t vocab, const Docs& docs,
                 uint64_t fingerprint = kFingerprint) {
  ShardWriter w;
  w.open(path, kind, vocab, fingerprint);
  for (const auto& d : docs) w.add_document(d.data(), d.size());
  w.finish();
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), {});
}

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

template <typename T>
void poke(std::string& bytes, size_t offset, T value) {
  std::memcpy(&bytes[offset], &value, sizeof value);
}

// The header fields of a shard file, to rewrite some of them with a valid checksum.
ShardHeader header_of(const std::string& bytes, const std::string& path) {
  return parse_shard_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size(), path);
}

void put_header(std::string& bytes, const ShardHeader& h) {
  auto b = encode_shard_header(h);
  std::memcpy(&bytes[0], b.data(), b.size());
}

// Opening `path` throws std::runtime_error whose message names the file and contains `what`.
void expect_rejected(const std::string& path, const std::string& what) {
  try {
    Shard s(path);
    ADD_FAILURE() << path << ": opened, expected an error containing '" << what << "'";
  } catch (const std::runtime_error& e) {
    std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    EXPECT_NE(msg.find(what), std::string::npos) << "expected '" << what << "' in: " << msg;
  }
}

using l2v::test::error_of;

void expect_docs(const Shard& s, const Docs& docs) {
  ASSERT_EQ(s.num_docs(), docs.size());
  uint64_t total = 0;
  for (size_t d = 0; d < docs.size(); ++d) {
    EXPECT_EQ(s.doc_offset(d), total);
    TokenView v = s.doc(d);
    ASSERT_EQ(v.size, docs[d].size()) << "document " << d;
    EXPECT_EQ(v.to_vector(), docs[d]) << "document " << d;
    for (size_t i = 0; i < docs[d].size(); ++i) ASSERT_EQ(v[i], docs[d][i]);
    total += docs[d].size();
  }
  EXPECT_EQ(s.num_tokens(), total);
  EXPECT_EQ(s.doc_offset(docs.size()), total);
}

// ---------------------------------------------------------------------------------------------------
// Round trips

TEST_F(ShardTest, RoundTripUint16) {
  std::mt19937 rng(1);
  Docs docs = random_docs(rng, 50, 512, 40);
  write_shard(path("a.bin"), ShardKind::kDocuments, 512, docs);
  Shard s(path("a.bin"));
  EXPECT_EQ(s.header().token_width, 2u);
  EXPECT_EQ(s.header().vocab_size, 512u);
  EXPECT_EQ(s.header().fingerprint, kFingerprint);
  EXPECT_EQ(s.kind(), ShardKind::kDocuments);
  expect_docs(s, docs);
  // Header, tokens, padding to 8, index: nothing else.
  EXPECT_EQ(fs::file_size(path("a.bin")), (256 + 2 * s.num_tokens() + 7) / 8 * 8 + 8 * (docs.size() + 1));
}

TEST_F(ShardTest, RoundTripUint32) {
  std::mt19937 rng(2);
  Docs docs = random_docs(rng, 40, 128256, 30);  // Llama-3's vocabulary needs 4-byte ids
  write_shard(path("a.bin"), ShardKind::kSentences, 128256, docs);
  Shard s(path("a.bin"));
  EXPECT_EQ(s.header().token_width, 4u);
  EXPECT_EQ(s.kind(), ShardKind::kSentences);
  expect_docs(s, docs);
}

TEST_F(ShardTest, WidthBoundaryAndEmptyShard) {
  write_shard(path("b.bin"), ShardKind::kDocuments, 65536, {{65535, 0, 1}});
  Shard b(path("b.bin"));
  EXPECT_EQ(b.header().token_width, 2u);
  expect_docs(b, {{65535, 0, 1}});
  write_shard(path("c.bin"), ShardKind::kDocuments, 65537, {{65536}});
  EXPECT_EQ(Shard(path("c.bin")).header().token_width, 4u);
  write_shard(path("empty.bin"), ShardKind::kDocuments, 100, {});
  Shard e(path("empty.bin"));
  EXPECT_EQ(e.num_docs(), 0u);
  EXPECT_EQ(e.num_tokens(), 0u);
  EXPECT_THROW(e.doc(0), std::out_of_range);
}

TEST_F(ShardTest, TriplesRoundTrip) {
  struct Ex {
    std::vector<int32_t> q, p, n;
    uint32_t instr;
    std::string dataset;
  };
  std::vector<Ex> ex = {{{5, 6, 7, 8}, {1, 2}, {3}, 2, "msmarco"},
                        {{9}, {}, {4, 4}, 0, "nli"},
                        {{1, 2, 3}, {7}, {}, 3, "msmarco"},
                        {{}, {8}, {9}, 0, "eli5 (é)"}};
  ShardWriter w;
  w.open(path("t.bin"), ShardKind::kTriples, 32000, kFingerprint);
  for (const auto& e : ex) w.add_triple(e.q, e.instr, e.p, e.n, e.dataset);
  w.finish();
  Shard s(path("t.bin"));
  EXPECT_EQ(s.kind(), ShardKind::kTriples);
  ASSERT_EQ(s.num_triples(), ex.size());
  EXPECT_EQ(s.num_docs(), 3 * ex.size());
  EXPECT_EQ(s.dataset_names(), (std::vector<std::string>{"msmarco", "nli", "eli5 (é)"}));
  for (size_t i = 0; i < ex.size(); ++i) {
    Triple t = s.triple(i);
    EXPECT_EQ(t.query.to_vector(), ex[i].q);
    EXPECT_EQ(t.positive.to_vector(), ex[i].p);
    EXPECT_EQ(t.negative.to_vector(), ex[i].n);
    EXPECT_EQ(t.instruction_tokens, ex[i].instr);
    EXPECT_EQ(s.dataset_names()[t.dataset], ex[i].dataset);
  }
  EXPECT_THROW(s.triple(ex.size()), std::out_of_range);
}

TEST_F(ShardTest, WriterRejectsBadInput) {
  ShardWriter w;
  w.open(path("a.bin"), ShardKind::kDocuments, 100, kFingerprint);
  std::vector<int32_t> good = {1, 2}, too_big = {3, 100, 4}, negative = {-1};
  w.add_document(good.data(), good.size());
  std::string msg = error_of([&] { w.add_document(too_big.data(), too_big.size()); });
  EXPECT_NE(msg.find(path("a.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("document 1"), std::string::npos) << msg;
  EXPECT_NE(msg.find("id 100 at position 1"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { w.add_document(negative.data(), 1); }).find("id -1"), std::string::npos);
  EXPECT_NE(error_of([&] { w.add_triple(good, 0, good, good, "x"); }).find("add_document"), std::string::npos);
  EXPECT_NE(error_of([&] { w.open(path("b.bin"), ShardKind::kDocuments, 100, 0); }).find("still being written"),
            std::string::npos);
  // A rejected document is not written: the shard holds the accepted ones only.
  w.add_document(good.data(), good.size());
  w.finish();
  expect_docs(Shard(path("a.bin")), {good, good});

  ShardWriter t;
  t.open(path("t.bin"), ShardKind::kTriples, 100, kFingerprint);
  EXPECT_NE(error_of([&] { t.add_triple(good, 3, good, good, "x"); }).find("3 instruction tokens in a query of 2"),
            std::string::npos);
  EXPECT_NE(error_of([&] { t.add_triple(good, 0, good, too_big, "x"); }).find("(negative): id 100"),
            std::string::npos);
  EXPECT_NE(error_of([&] { t.add_triple(good, 0, good, good, ""); }).find("empty dataset name"), std::string::npos);
  EXPECT_NE(error_of([&] { t.add_document(good.data(), 2); }).find("add_triple"), std::string::npos);
  EXPECT_NE(error_of([] { ShardWriter x; x.open("/nonexistent-dir/x.bin", ShardKind::kDocuments, 10, 0); })
                .find("cannot create"),
            std::string::npos);
  EXPECT_NE(error_of([&] { ShardWriter x; x.open(path("x.bin"), ShardKind::kDocuments, 0, 0); }).find("vocabulary"),
            std::string::npos);
}

TEST_F(ShardTest, InterruptedWriterLeavesNoShard) {
  std::string final_path = path("wiki-000.bin");
  std::string tmp = final_path + ".tmp." + std::to_string(::getpid());
  std::vector<int32_t> doc = {1, 2, 3};
  {
    ShardWriter w;
    w.open(final_path, ShardKind::kDocuments, 10, kFingerprint);
    w.add_document(doc.data(), doc.size());
    EXPECT_TRUE(fs::exists(tmp));
    EXPECT_FALSE(fs::exists(final_path));
  }  // destroyed without finish(), as when prepare fails half-way
  EXPECT_FALSE(fs::exists(final_path));
  EXPECT_FALSE(fs::exists(tmp));

  // Rewriting an existing shard replaces it only at finish(): until then the old one stays readable.
  write_shard(final_path, ShardKind::kDocuments, 10, {{1}});
  {
    ShardWriter w;
    w.open(final_path, ShardKind::kDocuments, 10, kFingerprint);
    w.add_document(doc.data(), doc.size());
    expect_docs(Shard(final_path), {{1}});
  }
  expect_docs(Shard(final_path), {{1}});
  EXPECT_FALSE(fs::exists(tmp));
}

// ---------------------------------------------------------------------------------------------------
// Damaged files

class DamagedShard : public ShardTest {
 protected:
  void SetUp() override {
    ShardTest::SetUp();
    // 3 + 4 + 0 + 2 = 9 tokens of 2 bytes: the tokens end at 274, the index starts at 280.
    write_shard(path("good.bin"), ShardKind::kDocuments, 50, {{1, 2, 3}, {4, 5, 6, 7}, {}, {8, 9}});
    good_ = read_bytes(path("good.bin"));
  }
  // Writes `bytes` as bad.bin and returns its path.
  std::string bad(const std::string& bytes) {
    write_bytes(path("bad.bin"), bytes);
    return path("bad.bin");
  }
  static constexpr size_t kIndex = 280;
  std::string good_;
};

TEST_F(DamagedShard, ShortFiles) {
  expect_rejected(bad(""), "0 bytes, shorter than the 256-byte shard header");
  expect_rejected(bad(good_.substr(0, 255)), "255 bytes, shorter than the 256-byte shard header");
  EXPECT_NE(error_of([&] { Shard s(path("missing.bin")); }).find("missing.bin: cannot open"), std::string::npos);
}

TEST_F(DamagedShard, BadMagicAndVersion) {
  std::string b = good_;
  b[0] = 'X';
  expect_rejected(bad(b), "bad magic");
  b = good_;
  poke<uint32_t>(b, 8, 2);
  expect_rejected(bad(b), "format version 2 is not supported");
}

TEST_F(DamagedShard, HeaderChecksum) {
  for (size_t at : {12, 20, 33, 40, 48, 100, 250}) {
    std::string b = good_;
    b[at] ^= 0x04;
    expect_rejected(bad(b), "header checksum mismatch");
  }
}

TEST_F(DamagedShard, TruncatedTokensAndIndex) {
  expect_rejected(bad(good_.substr(0, 260)), "truncated");    // inside the tokens
  expect_rejected(bad(good_.substr(0, kIndex + 16)), "truncated");  // inside the index
  expect_rejected(bad(good_.substr(0, good_.size() - 1)), "need 320 bytes");
  expect_rejected(bad(good_ + '\0'), "1 bytes of trailing garbage");
}

TEST_F(DamagedShard, IndexContents) {
  std::string b = good_;
  poke<uint64_t>(b, kIndex + 8, 5);  // offsets 0 3 7 7 9 become 0 5 4 7 9
  poke<uint64_t>(b, kIndex + 16, 4);
  expect_rejected(bad(b), "not monotonic: offset[2] = 4 < offset[1] = 5");
  b = good_;
  poke<uint64_t>(b, kIndex + 8, 100);
  expect_rejected(bad(b), "out of range: offset[1] = 100 > 9 tokens");
  b = good_;
  poke<uint64_t>(b, kIndex, 1);
  expect_rejected(bad(b), "starts at 1, not 0");
  b = good_;
  poke<uint64_t>(b, kIndex + 32, 8);
  expect_rejected(bad(b), "ends at 8 but the shard holds 9 tokens");
  b = good_;
  b[274] = 1;  // padding between the tokens and the index
  expect_rejected(bad(b), "non-zero padding byte at 274");
}

TEST_F(DamagedShard, InconsistentHeaderFields) {
  // Headers with a valid checksum whose fields disagree with each other or with the file.
  auto rewrite = [&](auto change) {
    std::string b = good_;
    ShardHeader h = header_of(b, "good");
    change(h);
    put_header(b, h);
    return bad(b);
  };
  expect_rejected(rewrite([](ShardHeader& h) { h.index_offset += 8; }), "document index offset 288");
  expect_rejected(rewrite([](ShardHeader& h) { h.num_tokens += 4; }), "does not follow the 13 tokens");
  expect_rejected(rewrite([](ShardHeader& h) { h.token_width = 3; }), "token width 3");
  expect_rejected(rewrite([](ShardHeader& h) { h.vocab_size = 70000; }), "impossible for 2-byte tokens");
  expect_rejected(rewrite([](ShardHeader& h) { h.num_datasets = 1; }), "declares 1 datasets");
  expect_rejected(rewrite([](ShardHeader& h) { h.kind = static_cast<ShardKind>(7); }), "unknown shard kind 7");
  expect_rejected(rewrite([](ShardHeader& h) { h.num_docs = 5; }), "truncated");
}

TEST_F(DamagedShard, DamagedTokenIsCaughtWhenCopied) {
  std::string b = good_;
  poke<uint16_t>(b, 256 + 2 * 4, 60000);  // document 1, position 1; the vocabulary has 50 ids
  Shard s(bad(b));
  EXPECT_EQ(s.doc(1)[1], 60000);  // operator[] shows the raw value
  std::string msg = error_of([&] { s.doc(1).to_vector(); });
  EXPECT_NE(msg.find(path("bad.bin") + ": token id 60000 (position 1"), std::string::npos) << msg;
  EXPECT_EQ(s.doc(0).to_vector(), (std::vector<int32_t>{1, 2, 3}));
}

TEST_F(ShardTest, DamagedTripleMetadata) {
  ShardWriter w;
  w.open(path("t.bin"), ShardKind::kTriples, 100, kFingerprint);
  w.add_triple({1, 2}, 1, {3}, {4}, "a");
  w.add_triple({5}, 0, {6}, {7}, "b");
  w.finish();
  const std::string good = read_bytes(path("t.bin"));
  // 7 tokens end at 270; index 7 * 8 bytes at 272; records at 328; name offsets at 344; names at 368.
  ASSERT_EQ(good.size(), 370u);
  auto bad = [&](size_t at, auto value) {
    std::string b = good;
    poke(b, at, value);
    write_bytes(path("bad.bin"), b);
    return path("bad.bin");
  };
  expect_rejected(bad(328, uint32_t{3}), "example 0 has 3 instruction tokens in a query of 2");
  expect_rejected(bad(340, uint32_t{2}), "example 1 has dataset id 2 but only 2 datasets");
  expect_rejected(bad(369, 'a'), "dataset name \"a\" appears twice");
  expect_rejected(bad(352, uint64_t{0}), "entry 1 = 0 is not increasing");
  write_bytes(path("bad.bin"), good + "zz");
  expect_rejected(path("bad.bin"), "2 bytes of trailing garbage after the dataset names");
  write_bytes(path("bad.bin"), good.substr(0, 360));
  expect_rejected(path("bad.bin"), "truncated");
  std::string b = good;
  ShardHeader h = header_of(b, "t");
  h.num_docs = 4;
  put_header(b, h);
  write_bytes(path("bad.bin"), b);
  expect_rejected(path("bad.bin"), "4 documents, not a multiple of 3");
}

TEST_F(ShardTest, CheckTokenizer) {
  write_shard(path("a.bin"), ShardKind::kDocuments, 512, {{1}});
  Shard s(path("a.bin"));
  EXPECT_NO_THROW(s.check_tokenizer(512, kFingerprint));
  std::string msg = error_of([&] { s.check_tokenizer(512, 0xfeedull); });
  EXPECT_NE(msg.find(path("a.bin")), std::string::npos) << msg;
  EXPECT_NE(msg.find("fingerprint 0x1234abcd5678ef00"), std::string::npos) << msg;
  EXPECT_NE(msg.find("fingerprint 0x000000000000feed"), std::string::npos) << msg;
  EXPECT_NE(error_of([&] { s.check_tokenizer(32000, kFingerprint); }).find("vocab 32000"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------------
// 64-bit sizes

TEST(ShardHeaderMath, SizesBeyond32Bits) {
  ShardHeader h;
  h.vocab_size = 50000;
  h.num_tokens = (uint64_t{1} << 32) + 3;  // 8 GiB of uint16 tokens; odd, so the index needs padding
  h.num_docs = 2;
  h.index_offset = shard_index_offset(h.num_tokens, 2, "x");
  EXPECT_EQ(h.index_offset, 256 + (uint64_t{1} << 33) + 8);
  const uint64_t end = h.index_offset + 24;
  auto parse = [&](const ShardHeader& hh, uint64_t size) {
    auto b = encode_shard_header(hh);
    return parse_shard_header(b.data(), size, "big.bin");
  };
  EXPECT_EQ(parse(h, end).num_tokens, h.num_tokens);
  EXPECT_NE(error_of([&] { parse(h, end - 1); }).find("need " + std::to_string(end) + " bytes (before any dataset "
                                                     "names) but the file has " + std::to_string(end - 1)),
            std::string::npos);
  EXPECT_NE(error_of([&] { parse(h, end + 5); }).find("5 bytes of trailing garbage"), std::string::npos);
  // A 32-bit truncation of the token count or the offsets would make these look consistent.
  EXPECT_NE(error_of([&] { parse(h, end - (uint64_t{1} << 32)); }).find("truncated"), std::string::npos);

  ShardHeader o = h;
  o.token_width = 4;
  o.vocab_size = 100000;
  o.num_tokens = uint64_t{1} << 62;  // 2^64 bytes
  EXPECT_NE(error_of([&] { parse(o, end); }).find("overflows 64 bits"), std::string::npos);
  o.num_tokens = uint64_t{1} << 63;
  EXPECT_NE(error_of([&] { parse(o, end); }).find("overflows 64 bits"), std::string::npos);
  o = h;
  o.num_docs = std::numeric_limits<uint64_t>::max();
  EXPECT_NE(error_of([&] { parse(o, end); }).find("overflows 64 bits"), std::string::npos);
  o.num_docs = uint64_t{1} << 61;  // (num_docs + 1) * 8 overflows
  EXPECT_NE(error_of([&] { parse(o, end); }).find("overflows 64 bits"), std::string::npos);
  o = h;
  o.kind = ShardKind::kTriples;
  o.num_docs = 3;
  o.num_datasets = uint64_t{1} << 61;
  EXPECT_NE(error_of([&] { parse(o, end); }).find("overflows 64 bits"), std::string::npos);
}

// A real shard over 8 GiB: a sparse file (only the header, the index and three tokens occupy disk).
TEST_F(ShardTest, SparseShardOver8GiB) {
  ShardHeader h;
  h.vocab_size = 50000;
  h.fingerprint = kFingerprint;
  h.num_tokens = (uint64_t{1} << 32) + 3;
  h.num_docs = 2;
  h.index_offset = shard_index_offset(h.num_tokens, 2, "x");
  const uint64_t size = h.index_offset + 24;
  const std::string p = path("big.bin");
  int fd = ::open(p.c_str(), O_CREAT | O_WRONLY | O_TRUNC, 0644);
  ASSERT_GE(fd, 0);
  if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
    ::close(fd);
    GTEST_SKIP() << "the temporary directory's file system cannot hold a sparse " << size << "-byte file";
  }
  auto pwrite_all = [&](const void* data, size_t n, uint64_t at) {
    ASSERT_EQ(::pwrite(fd, data, n, static_cast<off_t>(at)), static_cast<ssize_t>(n));
  };
  auto header = encode_shard_header(h);
  pwrite_all(header.data(), header.size(), 0);
  const uint64_t index[3] = {0, (uint64_t{1} << 32) + 1, h.num_tokens};
  pwrite_all(index, sizeof index, h.index_offset);
  const uint16_t first = 7, last_of_doc0 = 777, last = 4242;
  pwrite_all(&first, 2, 256);
  pwrite_all(&last_of_doc0, 2, 256 + 2 * (uint64_t{1} << 32));
  pwrite_all(&last, 2, 256 + 2 * ((uint64_t{1} << 32) + 2));
  ::close(fd);

  {
    Shard s(p);
    EXPECT_EQ(s.num_tokens(), h.num_tokens);
    ASSERT_EQ(s.num_docs(), 2u);
    TokenView d0 = s.doc(0), d1 = s.doc(1);
    EXPECT_EQ(d0.size, (uint64_t{1} << 32) + 1);
    EXPECT_EQ(d0[0], first);
    EXPECT_EQ(d0[uint64_t{1} << 32], last_of_doc0);
    EXPECT_EQ(d1.to_vector(), (std::vector<int32_t>{0, last}));

    // Token stream addressing across a small shard and past 2^32 in the big one.
    write_shard(path("small.bin"), ShardKind::kDocuments, 50000, {{1, 2}}, kFingerprint);
    ShardSet set(std::vector<std::string>{path("small.bin"), p});
    EXPECT_EQ(set.num_tokens(), h.num_tokens + 2);
    std::vector<int32_t> out(4);
    set.copy_tokens(0, 3, out.data());
    EXPECT_EQ(std::vector<int32_t>(out.begin(), out.begin() + 3), (std::vector<int32_t>{1, 2, first}));
    set.copy_tokens(set.num_tokens() - 4, 4, out.data());
    EXPECT_EQ(out, (std::vector<int32_t>{0, last_of_doc0, 0, last}));
    EXPECT_EQ(set.doc(2).to_vector(), (std::vector<int32_t>{0, last}));
    MntpBlocks blocks(set, 1000);
    EXPECT_EQ(blocks.num_blocks(), (h.num_tokens + 2) / 1000);
  }
  fs::resize_file(p, size - 8);
  expect_rejected(p, "truncated");
}

// ---------------------------------------------------------------------------------------------------
// ShardSet

TEST_F(ShardTest, ShardSetConcatenatesInOrder) {
  std::mt19937 rng(3);
  Docs a = random_docs(rng, 7, 300, 9), c = random_docs(rng, 5, 300, 9);
  write_shard(path("wiki-000.bin"), ShardKind::kDocuments, 300, a);
  write_shard(path("wiki-001.bin"), ShardKind::kDocuments, 300, {});
  write_shard(path("wiki-002.bin"), ShardKind::kDocuments, 300, c);
  ShardSet set(expand_shard_paths(path("wiki-*.bin")));
  ASSERT_EQ(set.num_shards(), 3u);
  EXPECT_EQ(set.shard(2).path(), path("wiki-002.bin"));
  Docs all = a;
  all.insert(all.end(), c.begin(), c.end());
  ASSERT_EQ(set.num_docs(), all.size());
  for (size_t d = 0; d < all.size(); ++d) EXPECT_EQ(set.doc(d).to_vector(), all[d]) << d;
  EXPECT_THROW(set.doc(all.size()), std::out_of_range);
  EXPECT_EQ(set.doc_start(2), a.size());
  EXPECT_NO_THROW(set.check_tokenizer(300, kFingerprint));
  EXPECT_NE(error_of([&] { set.check_tokenizer(300, 1); }).find(path("wiki-000.bin")), std::string::npos);

  // A comma-separated list keeps its order; patterns expand sorted.
  EXPECT_EQ(expand_shard_paths(path("wiki-002.bin") + "," + path("wiki-00[01].bin")),
            (std::vector<std::string>{path("wiki-002.bin"), path("wiki-000.bin"), path("wiki-001.bin")}));
  EXPECT_NE(error_of([&] { expand_shard_paths(path("nope-*.bin")); }).find("matches no file"), std::string::npos);
  EXPECT_NE(error_of([&] { expand_shard_paths(","); }).find("no shard files"), std::string::npos);
  EXPECT_NE(error_of([&] { ShardSet s(std::vector<std::string>{}); }).find("no shard files"), std::string::npos);
}

TEST_F(ShardTest, ShardSetRejectsInconsistentShards) {
  write_shard(path("a.bin"), ShardKind::kDocuments, 300, {{1}});
  write_shard(path("kind.bin"), ShardKind::kSentences, 300, {{1}});
  write_shard(path("vocab.bin"), ShardKind::kDocuments, 301, {{1}});
  write_shard(path("fp.bin"), ShardKind::kDocuments, 300, {{1}}, kFingerprint + 1);
  for (const char* odd : {"kind.bin", "vocab.bin", "fp.bin"}) {
    std::string msg = error_of([&] { ShardSet s(std::vector<std::string>{path("a.bin"), path(odd)}); });
    EXPECT_EQ(msg.rfind(path(odd) + ": ", 0), 0u) << msg;  // names the odd file first
    EXPECT_NE(msg.find(path("a.bin")), std::string::npos) << msg;
  }
}

TEST_F(ShardTest, ShardSetMergesDatasetNames) {
  ShardWriter w;
  w.open(path("t0.bin"), ShardKind::kTriples, 100, kFingerprint);
  w.add_triple({1}, 0, {2}, {3}, "nli");
  w.add_triple({4}, 1, {5}, {6}, "msmarco");
  w.finish();
  w.open(path("t1.bin"), ShardKind::kTriples, 100, kFingerprint);
  w.add_triple({7}, 0, {8}, {9}, "squad");
  w.add_triple({10}, 0, {11}, {12}, "nli");
  w.finish();
  ShardSet set(expand_shard_paths(path("t0.bin") + "," + path("t1.bin")));
  EXPECT_EQ(set.dataset_names(), (std::vector<std::string>{"nli", "msmarco", "squad"}));
  ASSERT_EQ(set.num_triples(), 4u);
  const std::vector<uint32_t> want = {0, 1, 2, 0};
  for (uint64_t e = 0; e < 4; ++e) {
    Triple t = set.triple(e);
    EXPECT_EQ(t.dataset, want[e]);
    EXPECT_EQ(t.query.to_vector(), (std::vector<int32_t>{static_cast<int32_t>(3 * e + 1)}));
    EXPECT_EQ(t.negative.to_vector(), (std::vector<int32_t>{static_cast<int32_t>(3 * e + 3)}));
  }
  EXPECT_EQ(set.triple(1).instruction_tokens, 1u);
  EXPECT_THROW(set.triple(4), std::out_of_range);
  EXPECT_THROW(MntpBlocks(set, 4), std::invalid_argument);
}

// ---------------------------------------------------------------------------------------------------
// Sampler

std::vector<std::vector<uint64_t>> take(Sampler& s, size_t n) {
  std::vector<std::vector<uint64_t>> out;
  for (size_t i = 0; i < n; ++i) out.push_back(s.next_batch());
  return out;
}

TEST(Sampler, EpochPermutation) {
  std::vector<uint64_t> p = epoch_permutation(1000, 42, 0), sorted = p;
  std::sort(sorted.begin(), sorted.end());
  for (uint64_t i = 0; i < 1000; ++i) ASSERT_EQ(sorted[i], i);
  EXPECT_EQ(p, epoch_permutation(1000, 42, 0));
  EXPECT_NE(p, epoch_permutation(1000, 42, 1));
  EXPECT_NE(p, epoch_permutation(1000, 43, 0));
  EXPECT_NE(epoch_permutation(1000, 42 + (uint64_t{1} << 32), 0), p);  // the seed's high half counts
  EXPECT_TRUE(epoch_permutation(0, 1, 0).empty());
  EXPECT_EQ(epoch_permutation(1, 1, 0), std::vector<uint64_t>{0});
}

TEST(Sampler, BatchesCutEachEpochsPermutation) {
  for (uint64_t n : {56, 60}) {  // a multiple of the batch, and not
    for (uint64_t epoch = 0; epoch < 2; ++epoch) {
      const std::vector<uint64_t> perm = epoch_permutation(n, 9, epoch);
      Sampler s({n, 9, 7});
      s.set_state({epoch, 0});
      ASSERT_EQ(s.batches_per_epoch(), n / 7);
      std::vector<uint64_t> seen;
      for (uint64_t b = 0; b < s.batches_per_epoch(); ++b) {
        const std::vector<uint64_t> batch = s.next_batch();
        ASSERT_EQ(batch.size(), 7u);  // full batches only
        seen.insert(seen.end(), batch.begin(), batch.end());
      }
      EXPECT_EQ(s.state().epoch, epoch + 1);
      EXPECT_EQ(s.state().position, 0u);
      // Consecutive positions of the permutation; the last n mod 7 are left out of the epoch.
      EXPECT_EQ(seen, std::vector<uint64_t>(perm.begin(), perm.begin() + (n - n % 7)));
    }
  }
}

TEST(Sampler, DeterministicPerSeed) {
  Sampler a({100, 5, 8}), b({100, 5, 8}), c({100, 6, 8});
  auto ta = take(a, 20), tb = take(b, 20), tc = take(c, 20);
  EXPECT_EQ(ta, tb);
  EXPECT_NE(ta, tc);
}

TEST(Sampler, ResumeContinuesExactly) {
  const SamplerConfig cfg{53, 11, 4};  // 13 batches per epoch, 1 item left out
  Sampler reference(cfg);
  EXPECT_EQ(reference.batches_per_epoch(), 13u);
  auto all = take(reference, 30);
  for (size_t k = 0; k <= 27; ++k) {  // k = 13 and 26 stop exactly at an epoch's end
    Sampler first(cfg);
    take(first, k);
    std::string saved = first.save().dump();
    Sampler resumed(cfg);
    resumed.restore(nlohmann::json::parse(saved), "state.json");
    EXPECT_EQ(resumed.state().epoch, first.state().epoch);
    EXPECT_EQ(resumed.state().position, first.state().position);
    for (size_t i = k; i < k + 3; ++i) EXPECT_EQ(resumed.next_batch(), all[i]) << "k=" << k << " i=" << i;
  }
  // A resumed run may change the batch size: the item stream continues where it stopped, and an epoch
  // whose remainder is shorter than the new batch ends there.
  Sampler first(cfg);
  take(first, 2);
  SamplerConfig bigger = cfg;
  bigger.batch_size = 5;
  Sampler resumed(bigger);
  resumed.restore(first.save(), "state.json");
  std::vector<uint64_t> want(all[2]);
  want.push_back(all[3][0]);
  EXPECT_EQ(resumed.next_batch(), want);
  resumed.set_state({0, 50});  // 3 of the 53 items left: the next batch starts epoch 1
  const std::vector<uint64_t> perm1 = epoch_permutation(53, 11, 1);
  EXPECT_EQ(resumed.next_batch(), std::vector<uint64_t>(perm1.begin(), perm1.begin() + 5));
}

TEST(Sampler, Errors) {
  EXPECT_THROW(Sampler({10, 0, 0}), std::invalid_argument);
  EXPECT_THROW(Sampler({3, 0, 4}), std::invalid_argument);  // no full batch
  Sampler s({10, 3, 2});
  EXPECT_THROW(s.set_state({0, 11}), std::invalid_argument);
  s.set_state({4, 10});  // the end of an epoch is the start of the next
  EXPECT_EQ(s.state().epoch, 5u);
  EXPECT_EQ(s.state().position, 0u);
  auto restore_error = [&](nlohmann::json j) { return error_of([&] { s.restore(j, "run/state.json"); }); };
  nlohmann::json good = s.save();
  for (const char* key : {"seed", "num_items"}) {
    nlohmann::json j = good;
    j[key] = 7;
    std::string msg = restore_error(j);
    EXPECT_NE(msg.find(std::string("run/state.json: sampler state saved with ") + key + " 7"), std::string::npos)
        << msg;
  }
  nlohmann::json j = good;
  j.erase("position");
  EXPECT_NE(restore_error(j).find("run/state.json: malformed sampler state"), std::string::npos);
  j = good;
  j["position"] = 99;
  EXPECT_NE(restore_error(j).find("run/state.json: Sampler: position 99 beyond"), std::string::npos);
}

// ---------------------------------------------------------------------------------------------------
// MNTP blocks

TEST_F(ShardTest, MntpBlocksMatchConcatenateAndCut) {
  std::mt19937 rng(4);
  for (uint32_t vocab : {1000u, 200000u}) {
    std::vector<Docs> shards = {random_docs(rng, 11, vocab, 13), {}, random_docs(rng, 4, vocab, 13),
                                random_docs(rng, 9, vocab, 13)};
    std::vector<std::string> paths;
    std::vector<int32_t> concat;
    for (size_t s = 0; s < shards.size(); ++s) {
      paths.push_back(path("m" + std::to_string(s) + ".bin"));
      write_shard(paths.back(), ShardKind::kDocuments, vocab, shards[s]);
      for (const auto& d : shards[s]) concat.insert(concat.end(), d.begin(), d.end());
    }
    ShardSet set(paths);
    ASSERT_EQ(set.num_tokens(), concat.size());
    for (uint64_t len : {1, 5, 7, 16, 64}) {
      MntpBlocks blocks(set, len);
      ASSERT_EQ(blocks.num_blocks(), concat.size() / len) << len;
      for (uint64_t i = 0; i < blocks.num_blocks(); ++i)
        ASSERT_EQ(blocks.block(i), std::vector<int32_t>(concat.begin() + i * len, concat.begin() + (i + 1) * len))
            << "block_len " << len << " block " << i;
      EXPECT_THROW(blocks.block(blocks.num_blocks()), std::out_of_range);
    }
    EXPECT_EQ(MntpBlocks(set, concat.size() + 1).num_blocks(), 0u);
    EXPECT_THROW(MntpBlocks(set, 0), std::invalid_argument);
  }
}

}  // namespace
