// Per-rank batch streams: rank r of N with batch b gets exactly rows [r·b, (r+1)·b) of what one process
// with batch N·b gets (ids, padding, MNTP masks and the global label count, SimCSE pairs, supervised
// groups), ranks read disjoint data, a restored loader continues exactly where the saved one stopped,
// shards from another tokenizer or of another kind are refused, and supervised global batches come
// from one dataset.
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
      std::vector<int32_t> query = {1, 300};  // 0 to 2 more ids: rows of different lengths
      query.insert(query.end(), e % 3, 303);
      query.push_back(x);
      w.add_triple(query, 2, {1, x, 301}, {1, x, 302}, "set" + std::to_string(datasets[e]));
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
  // Every global batch of 12 blocks is full: the epoch's last n mod 12 blocks are left out.
  EXPECT_EQ(total, blocks.num_blocks() - blocks.num_blocks() % (world * 4));
}

// What makes `mpirun -np N` equal to one process: the rows of each rank are the same rows of the one
// process's global batch, padded to the global batch's length, with row0 naming their place in it.
template <typename Batch>
void expect_rows_of(const Batch& part, const Batch& global, int row0, const std::string& what) {
  ASSERT_EQ(part.T, global.T) << what << ": padded to the global batch's length";
  EXPECT_EQ(part.row0, row0) << what;
  const Batch want = slice_rows(global, row0, part.B);
  EXPECT_EQ(part.ids, want.ids) << what;
  EXPECT_EQ(part.key_mask, want.key_mask) << what;
}

TEST_F(Loader, EveryRankGetsItsRowsOfOneProcesssGlobalBatch) {
  const int world = 3, b = 2;
  ShardSet wiki(wiki_);
  {
    MntpLoader one(wiki, *tok_, 32, mntp_options(*tok_), LoaderConfig{world * b, 7, 1, 0});
    std::vector<std::unique_ptr<MntpLoader>> ranks;
    for (int r = 0; r < world; ++r)
      ranks.push_back(std::make_unique<MntpLoader>(wiki, *tok_, 32, mntp_options(*tok_), LoaderConfig{b, 7, world, r}));
    for (int step = 0; step < 4; ++step) {
      const MntpBatch g = one.next();
      EXPECT_EQ(g.global_labels, mntp_label_count(g.labels, g.B, g.T));
      EXPECT_GT(g.global_labels, 0);
      long labels = 0;
      for (int r = 0; r < world; ++r) {
        const MntpBatch x = ranks[r]->next();
        expect_rows_of(x, g, r * b, "mntp rank " + std::to_string(r));
        EXPECT_EQ(x.labels, slice_rows(g, r * b, b).labels) << "the masks are the global batch's";
        EXPECT_EQ(x.global_labels, g.global_labels) << "the loss is normalised by the global batch's labels";
        labels += mntp_label_count(x.labels, x.B, x.T);
      }
      EXPECT_EQ(labels, g.global_labels);
    }
  }
  // Sentences and triples of very different lengths, so that a rank's own longest row is shorter than
  // the global batch's: the ranks must pad as one process does.
  std::ofstream lines(dir_ / "sentences.txt");
  for (int i = 0; i < 60; ++i) lines << "once upon a time" << std::string((size_t)(i * 7) % 90, 'a') << " there was\n";
  lines.close();
  PrepareOptions o;
  o.inputs = {(dir_ / "sentences.txt").string()};
  o.format = PrepareFormat::kSentences;
  o.output_prefix = (dir_ / "sentences").string();
  o.progress = false;
  ShardSet sentences(run_prepare(o, *tok_).shards);
  const PadOptions pad{64, PaddingSide::kLeft};
  SimcseLoader one(sentences, *tok_, pad, LoaderConfig{world * b, 5, 1, 0});
  std::vector<std::unique_ptr<SimcseLoader>> ranks;
  for (int r = 0; r < world; ++r)
    ranks.push_back(std::make_unique<SimcseLoader>(sentences, *tok_, pad, LoaderConfig{b, 5, world, r}));
  int shorter = 0;
  for (int step = 0; step < 6; ++step) {
    const SimcseBatch g = one.next();
    for (int r = 0; r < world; ++r) {
      const SimcseBatch x = ranks[r]->next();
      ASSERT_EQ(x.pairs, b);
      expect_rows_of(x.rows, g.rows, 2 * r * b, "simcse rank " + std::to_string(r));
      EXPECT_EQ(x.rows.embed_mask, slice_rows(g.rows, 2 * r * b, 2 * b).embed_mask);
      for (int i = 0; i < 2 * b; ++i) EXPECT_EQ(x.positive_of[i], i ^ 1);
      int longest = 0;
      for (int i = 0; i < x.rows.B; ++i) {
        int n = 0;
        for (int t = 0; t < x.rows.T; ++t) n += x.rows.key_mask[(size_t)i * x.rows.T + t];
        longest = std::max(longest, n);
      }
      shorter += longest < g.rows.T;
    }
  }
  EXPECT_GT(shorter, 0) << "no rank's rows were shorter than the global batch's: the padding went untested";
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
  SupervisedLoader one(set, *tok_, PadOptions{}, LoaderConfig{4, 5, 1, 0});
  ASSERT_EQ(3u, r0.batches_per_epoch());  // 8 / 4 + 4 / 4 global batches of 4
  for (uint64_t step = 0; step < 2 * r0.batches_per_epoch(); ++step) {
    SupervisedBatch a = r0.next(), b = r1.next(), g = one.next();
    for (int r = 0; r < world; ++r) {
      const SupervisedBatch& x = r == 0 ? a : b;
      expect_rows_of(x.queries, g.queries, 2 * r, "queries");
      EXPECT_EQ(x.queries.embed_mask, slice_rows(g.queries, 2 * r, 2).embed_mask);
      expect_rows_of(x.positives, g.positives, 2 * r, "positives");
      expect_rows_of(x.negatives, g.negatives, 2 * r, "negatives");
    }
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
