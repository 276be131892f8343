// Shard sets as units (data/shard_manifest.h) and the checksum behind them (data/file_io.h):
//   - checksum64: streamed (file_checksum64, any chunking) equals one-shot; every single-bit flip and
//     every one-byte change of a buffer changes it; pinned values, since manifests store it;
//   - prepare writes a manifest last; a re-run with fewer shards leaves no old shard behind; an
//     interrupted or failed re-run leaves the earlier set byte-identical and no staging files;
//   - open_shard_dataset refuses: shards without a manifest (an interrupted commit), a stray shard a
//     glob matches that the manifest does not list, a missing shard the glob should have matched, a
//     truncated shard, a flipped byte; it accepts a single shard named plainly, and the same data at
//     another path has the same content fingerprint while other data has another;
//   - two prepares on one prefix exclude each other (the lock).
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <random>

#include "data/file_io.h"
#include "data/prepare.h"
#include "data/shard.h"
#include "data/shard_manifest.h"
#include "data/tokenizer.h"
#include "test/temp_dir.h"
#include "test/test_util.h"

namespace l2v {
namespace {

namespace fs = std::filesystem;
using test::error_of;
using test::Mentions;

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

void write_file(const std::string& path, const std::string& bytes) {
  std::ofstream(path, std::ios::binary) << bytes;
}

TEST(Checksum64, StreamedEqualsOneShotForEveryTailLength) {
  test::TempDir dir("checksum");
  std::mt19937 rng(7);
  // Around the 32-byte stripe and the 1 MiB read buffer of file_checksum64.
  for (size_t n : {0u, 1u, 31u, 32u, 33u, 63u, 64u, 65u, 1000u, (1u << 20) - 1, 1u << 20, (1u << 20) + 33}) {
    std::string bytes(n, '\0');
    for (char& b : bytes) b = (char)rng();
    write_file(dir / "f", bytes);
    EXPECT_EQ(checksum64(bytes.data(), n), file_checksum64(dir / "f")) << n;
  }
}

TEST(Checksum64, EveryBitFlipAndByteChangeIsSeen) {
  std::string bytes(100, '\0');
  std::mt19937 rng(3);
  for (char& b : bytes) b = (char)rng();
  const uint64_t base = checksum64(bytes.data(), bytes.size());
  for (size_t i = 0; i < bytes.size(); ++i) {
    for (int bit = 0; bit < 8; ++bit) {
      bytes[i] ^= (char)(1 << bit);
      EXPECT_NE(base, checksum64(bytes.data(), bytes.size())) << i << " bit " << bit;
      bytes[i] ^= (char)(1 << bit);
    }
  }
  // A zero byte appended (the length is mixed in) and two swapped stripes.
  std::string longer = bytes + '\0';
  EXPECT_NE(base, checksum64(longer.data(), longer.size()));
  std::string swapped = bytes.substr(32, 32) + bytes.substr(0, 32) + bytes.substr(64);
  EXPECT_NE(base, checksum64(swapped.data(), swapped.size()));
}

// Manifests store these values (pinned from this implementation, no outside reference exists): a change
// of the function would make every existing set "damaged".
// Every reader of a user's file opens it through open_input_file: a directory (an empty stream on Linux,
// which read as "no records" / "no texts") and a missing file are refused naming the path and the kind.
TEST(FileIo, OpenInputFileRefusesADirectoryAndAMissingFile) {
  test::TempDir dir("open_input");
  EXPECT_TRUE(Mentions(error_of([&] { open_input_file(dir.path.string(), "a text file"); }),
                       {dir.path.string(), "is a directory, not a text file"}));
  EXPECT_TRUE(Mentions(error_of([&] { open_input_file(dir / "missing.txt", "a text file"); }),
                       {dir / "missing.txt", "cannot open a text file", "No such file"}));
  write_file(dir / "x.txt", "abc");
  std::ifstream in = open_input_file(dir / "x.txt", "a text file");
  std::string line;
  EXPECT_TRUE(std::getline(in, line) && line == "abc");
}

TEST(Checksum64, PinnedValues) {
  EXPECT_EQ("0x3fdf455f9dcf1e62", checksum_hex(checksum64("", 0)));
  const std::string text = "The quick brown fox jumps over the lazy dog, twice over: the quick brown fox.";
  EXPECT_EQ("0xb53cbf46e854b58f", checksum_hex(checksum64(text.data(), text.size())));
}

class ShardManifestTest : public ::testing::Test {
 protected:
  std::unique_ptr<Tokenizer> tok = load_tokenizer("assets/stories260K/tok512.bin");
  test::TempDir dir{"manifest"};

  // The first `lines` lines of WikiText-2 validation, split into shards of about `shard_tokens`.
  PrepareReport prepare(const std::string& prefix, int lines, uint64_t shard_tokens) {
    const std::string input = dir / (prefix + "_input.txt");
    {
      std::ifstream in("assets/wikitext-2/wiki.valid.raw");
      std::ofstream out(input);
      std::string line;
      for (int i = 0; i < lines && std::getline(in, line); ++i) out << line << "\n";
    }
    PrepareOptions o;
    o.inputs = {input};
    o.output_prefix = dir / prefix;
    o.shard_tokens = shard_tokens;
    o.progress = false;
    return run_prepare(o, *tok);
  }
  std::vector<std::string> shard_files() const {
    std::vector<std::string> out;
    for (const std::string& f : dir.files())
      if (f.size() > 4 && f.compare(f.size() - 4, 4, ".bin") == 0) out.push_back(f);
    return out;
  }
};

TEST_F(ShardManifestTest, ManifestListsTheSetAndARerunWithFewerShardsLeavesNoOldShard) {
  const PrepareReport many = prepare("wiki", 600, 1);
  ASSERT_GE(many.shards.size(), 4u);
  const ShardManifest m = read_shard_manifest(dir / "wiki.manifest.json");
  ASSERT_EQ(many.shards.size(), m.shards.size());
  for (size_t i = 0; i < m.shards.size(); ++i) {
    EXPECT_EQ(fs::path(many.shards[i]).filename().string(), m.shards[i].file);
    EXPECT_EQ(fs::file_size(many.shards[i]), m.shards[i].bytes);
    EXPECT_EQ(file_checksum64(many.shards[i]), m.shards[i].checksum);
  }
  const uint64_t docs = ShardSet(many.shards).num_docs();
  const PrepareReport few = prepare("wiki", 600, 1u << 28);
  ASSERT_EQ(1u, few.shards.size());
  EXPECT_EQ(std::vector<std::string>{"wiki-000000.bin"}, shard_files());
  EXPECT_EQ(1u, read_shard_manifest(dir / "wiki.manifest.json").shards.size());
  // The glob now opens the one-shard set: the same documents as the four-shard one had.
  std::unique_ptr<ShardSet> set = open_shard_dataset(dir / "wiki-*.bin");
  EXPECT_EQ(1u, set->num_shards());
  EXPECT_EQ(docs, set->num_docs());
  // No staging directory or temporary file is left behind.
  for (const std::string& f : dir.files()) EXPECT_EQ(std::string::npos, f.find("staging")) << f;
}

TEST_F(ShardManifestTest, AFailedRerunLeavesTheEarlierSetByteIdentical) {
  const PrepareReport first = prepare("wiki", 600, 1);
  std::map<std::string, std::string> before;
  for (const std::string& f : dir.files()) before[f] = read_file(dir / f);
  // A re-run whose input breaks midway (a missing second input file, after the first was tokenized
  // into shards of the new set): the error is reported and nothing of the earlier set changed.
  PrepareOptions o;
  o.inputs = {dir / "wiki_input.txt", dir / "missing.txt"};
  o.output_prefix = dir / "wiki";
  o.shard_tokens = 5000;
  o.progress = false;
  EXPECT_THROW(run_prepare(o, *tok), std::runtime_error);
  std::map<std::string, std::string> after;
  for (const std::string& f : dir.files()) after[f] = read_file(dir / f);
  EXPECT_EQ(before, after);
  EXPECT_EQ(first.shards.size(), open_shard_dataset(dir / "wiki-*.bin")->num_shards());
}

TEST_F(ShardManifestTest, TheLoaderRefusesIncompleteMixedOrDamagedSets) {
  const PrepareReport r = prepare("wiki", 600, 1);
  ASSERT_GE(r.shards.size(), 3u);
  const std::string glob = dir / "wiki-*.bin";
  const std::string manifest = dir / "wiki.manifest.json";
  const std::string saved = read_file(manifest);
  uint64_t fp = 0;
  EXPECT_EQ(r.shards.size(), open_shard_dataset(glob, &fp)->num_shards());

  // An interrupted commit: shards under final names, no manifest.
  fs::remove(manifest);
  EXPECT_TRUE(Mentions(error_of([&] { open_shard_dataset(glob); }), {"no manifest", manifest, "prepare again"}));
  write_file(manifest, saved);

  // A stray shard of an earlier, longer run that the glob also matches.
  fs::copy_file(r.shards[0], dir / "wiki-000099.bin");
  EXPECT_TRUE(Mentions(error_of([&] { open_shard_dataset(glob); }), {"wiki-000099.bin", "not part of the shard set"}));
  fs::remove(dir / "wiki-000099.bin");

  // A shard of the set gone: the glob would silently skip it.
  const std::string kept = read_file(r.shards[1]);
  fs::remove(r.shards[1]);
  EXPECT_TRUE(Mentions(error_of([&] { open_shard_dataset(glob); }), {r.shards[1], "missing"}));
  // ... while naming single shards of the set plainly is fine.
  EXPECT_EQ(2u, open_shard_dataset(r.shards[0] + "," + r.shards[2])->num_shards());
  write_file(r.shards[1], kept);

  // Truncated, then one flipped byte in the token data.
  write_file(r.shards[1], kept.substr(0, kept.size() - 8));
  EXPECT_TRUE(Mentions(error_of([&] { open_shard_dataset(glob); }), {r.shards[1], "bytes", "truncated"}));
  std::string flipped = kept;
  flipped[kShardHeaderBytes + 100] ^= 0x01;
  write_file(r.shards[1], flipped);
  EXPECT_TRUE(Mentions(error_of([&] { open_shard_dataset(glob); }), {r.shards[1], "checksum", "damaged"}));
  write_file(r.shards[1], kept);

  // A manifest of another format, including numbers no int holds (fuzz_shard_manifest found that
  // converting 1.9e21 to int was undefined behaviour).
  for (const char* format : {"2", "1.5", "1.9e21", "\"1\"", "18446744073709551617"}) {
    std::string m = saved;
    const size_t at = m.find("\"format\": 1");
    ASSERT_NE(at, std::string::npos) << m;
    m.replace(at, std::string("\"format\": 1").size(), std::string("\"format\": ") + format);
    write_file(manifest, m);
    EXPECT_TRUE(Mentions(error_of([&] { open_shard_dataset(glob); }), {manifest, "format"})) << format;
  }
  write_file(manifest, saved);

  // A file that prepare did not write, and one that is not there.
  write_file(dir / "other.bin", kept);
  EXPECT_TRUE(Mentions(error_of([&] { open_shard_dataset(dir / "other.bin"); }), {"other.bin", "no manifest"}));
  EXPECT_TRUE(Mentions(error_of([&] { open_shard_dataset(dir / "wiki-000123.bin"); }), {"wiki-000123.bin", "no such"}));

  // The content fingerprint follows the data, not its path.
  fs::create_directories(dir / "moved");
  for (const std::string& f : dir.files())
    if (f.rfind("wiki-", 0) == 0 || f == "wiki.manifest.json") fs::copy_file(dir / f, dir.path / "moved" / f);
  uint64_t moved = 0, other = 0;
  open_shard_dataset((dir.path / "moved" / "wiki-*.bin").string(), &moved);
  EXPECT_EQ(fp, moved);
  open_shard_dataset(r.shards[0], &other);
  EXPECT_NE(fp, other);
}

TEST_F(ShardManifestTest, TwoPreparesOnOnePrefixExcludeEachOther) {
  FileLock held(dir / ".wiki.lock", "test");
  EXPECT_TRUE(Mentions(error_of([&] { prepare("wiki", 50, 1u << 28); }), {"in use by another process", ".wiki.lock"}));
  EXPECT_TRUE(shard_files().empty());
}

}  // namespace
}  // namespace l2v
