// Per-rank batch streams: ranks read disjoint data, a restored loader continues exactly where the saved
// one stopped, shards from another tokenizer or of another kind are refused, and supervised global
// batches come from one dataset.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <unistd.h>

#include "data/loader.h"
#include "data/prepare.h"

namespace l2v {
namespace {

namespace fs = std::filesystem;

std::string asset(const std::string& rel, const std::string& shared_rel) {
  if (std::ifstream("assets/" + rel)) return "assets/" + rel;
  return "../shared/data/" + shared_rel;
}

class Loader : public ::testing::Test {
 protected:
  void SetUp() override {
    fs::create_directories(dir_);
    PrepareOptions o;
    o.inputs = {asset("wikitext-2/wiki.valid.raw", "wikitext-2/wiki.valid.raw")};
    o.output_prefix = (dir_ / "wiki").string();
    o.progress = false;
    wiki_ = run_prepare(o, *tok_).shards;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string write_triples(const std::vector<int>& datasets) {
    const std::string path = (dir_ / "triples.bin").string();
    ShardWriter w;
    w.open(path, ShardKind::kTriples, (uint32_t)tok_->vocab_size(), tok_->fingerprint());
    for (size_t e = 0; e < datasets.size(); ++e) {
      const int32_t x = 10 + (int32_t)e;
      w.add_triple({1, 300, x}, 2, {1, x, 301}, {1, x, 302}, "set" + std::to_string(datasets[e]));
    }
    w.finish();
    return path;
  }

  fs::path dir_ = fs::temp_directory_path() / ("l2v_loader_" + std::to_string(getpid()));
  std::unique_ptr<Tokenizer> tok_ = load_tokenizer(asset("stories260K/tok512.bin", "llama2c/tok512.bin"));
  std::vector<std::string> wiki_;
};

MntpOptions mntp_options(const Tokenizer& tok) {
  MntpOptions m;
  m.mask_token_id = resolve_mask_token(tok, "eos");
  return m;
}

// The unmasked rows of an MNTP batch: labels hold the original id wherever a position was chosen.
std::vector<std::vector<int32_t>> originals(const MntpBatch& b) {
  std::vector<std::vector<int32_t>> rows(b.B);
  for (int r = 0; r < b.B; ++r)
    for (int t = 0; t < b.T; ++t) {
      const int i = r * b.T + t;
      rows[r].push_back(b.labels[i] != -100 ? b.labels[i] : b.ids[i]);
    }
  return rows;
}

TEST_F(Loader, MntpRanksReadDisjointBlocksOfOneEpoch) {
  ShardSet set(wiki_);
  const uint64_t block_len = 64;
  MntpBlocks blocks(set, block_len);
  std::map<std::vector<int32_t>, uint64_t> block_id;
  for (uint64_t i = 0; i < blocks.num_blocks(); ++i) block_id[blocks.block(i)] = i;
  const int world = 3;
  std::set<uint64_t> seen;
  uint64_t total = 0;
  for (int rank = 0; rank < world; ++rank) {
    LoaderConfig cfg{4, 7, world, rank};
    MntpLoader loader(set, *tok_, block_len, mntp_options(*tok_), cfg);
    for (uint64_t b = 0; b < loader.sampler().batches_per_epoch(); ++b)
      for (const auto& row : originals(loader.next())) {
        auto it = block_id.find(row);
        ASSERT_NE(it, block_id.end()) << "a row is not a block of the corpus";
        EXPECT_TRUE(seen.insert(it->second).second) << "block " << it->second << " read twice";
        ++total;
      }
  }
  // Every rank reads floor(n / world) blocks in full batches of 4.
  EXPECT_EQ(total, (uint64_t)world * (blocks.num_blocks() / world / 4 * 4));
}

TEST_F(Loader, RestoredLoadersContinueExactly) {
  ShardSet set(wiki_);
  LoaderConfig cfg{2, 11, 2, 1};
  MntpLoader a(set, *tok_, 32, mntp_options(*tok_), cfg);
  for (int i = 0; i < 5; ++i) a.next();
  const nlohmann::json state = a.save();
  MntpLoader b(set, *tok_, 32, mntp_options(*tok_), cfg);
  b.restore(state, "state.json");
  for (int i = 0; i < 4; ++i) {
    MntpBatch x = a.next(), y = b.next();
    EXPECT_EQ(x.ids, y.ids);
    EXPECT_EQ(x.labels, y.labels);
  }
  LoaderConfig other = cfg;
  other.seed = 12;
  MntpLoader c(set, *tok_, 32, mntp_options(*tok_), other);
  EXPECT_THROW(c.restore(state, "state.json"), std::exception);
}

TEST_F(Loader, MismatchedTokenizerOrKindIsRefused) {
  ShardSet set(wiki_);
  std::unique_ptr<Tokenizer> mistral =
      load_tokenizer(asset("tokenizers/mistral-7b-v0.1", "tokenizers/mistral-7b-v0.1"));
  try {
    MntpLoader l(set, *mistral, 32, mntp_options(*mistral), LoaderConfig{});
    FAIL() << "shards of another tokenizer were accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string::npos, std::string(e.what()).find(wiki_[0])) << e.what();
  }
  EXPECT_THROW(SimcseLoader(set, *tok_, PadOptions{}, LoaderConfig{}), std::invalid_argument);
}

TEST_F(Loader, SupervisedGlobalBatchesComeFromOneDatasetAndRanksTakeSlices) {
  std::vector<int> datasets;
  for (int e = 0; e < 12; ++e) datasets.push_back(e < 8 ? 0 : 1);
  ShardSet set(std::vector<std::string>{write_triples(datasets)});
  const int world = 2;
  LoaderConfig c0{2, 5, world, 0}, c1{2, 5, world, 1};
  SupervisedLoader r0(set, *tok_, PadOptions{}, c0), r1(set, *tok_, PadOptions{}, c1);
  ASSERT_EQ(3u, r0.batches_per_epoch());  // 8 / 4 + 4 / 4 global batches of 4
  for (uint64_t step = 0; step < 2 * r0.batches_per_epoch(); ++step) {
    SupervisedBatch a = r0.next(), b = r1.next();
    // The third id of each query is 10 + example index; examples 0-7 are dataset 0.
    std::set<int> examples, groups;
    for (const SupervisedBatch* x : {&a, &b})
      for (int r = 0; r < x->queries.B; ++r) {
        const int e = x->queries.ids[(size_t)r * x->queries.T + x->queries.T - 1] - 10;
        examples.insert(e);
        groups.insert(e < 8 ? 0 : 1);
      }
    EXPECT_EQ(4u, examples.size()) << "ranks overlap at step " << step;
    EXPECT_EQ(1u, groups.size()) << "a global batch mixes datasets at step " << step;
  }
}

}  // namespace
}  // namespace l2v
