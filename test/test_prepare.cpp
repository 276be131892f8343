// `llm2vec prepare` end to end on real data: WikiText-2 articles through the stories260K tokenizer
// into shards, read back through the shard reader; shard roll-over, thread-count independence,
// supervised triples with llm2vec's instruction convention, bad-line handling, and no partial shards.
#include <gtest/gtest.h>

#include <omp.h>

#include <filesystem>
#include <fstream>
#include <iterator>
#include <unistd.h>

#include "data/prepare.h"
#include "data/shard.h"
#include "data/text_sources.h"
#include "data/tokenizer.h"
#include "test/temp_dir.h"

namespace l2v {
namespace {

namespace fs = std::filesystem;

std::string asset(const std::string& rel, const std::string& shared_rel) {
  if (std::ifstream("assets/" + rel)) return "assets/" + rel;
  return "../shared/data/" + shared_rel;
}


std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// The shards hold every WikiText article of the file, in order, each tokenized on its own (with the
// tokenizer's special tokens) exactly as a sequential encode gives it.
void expect_articles(const ShardSet& set, const Tokenizer& tok, const std::string& what) {
  TextReader reader(asset("wikitext-2/wiki.valid.raw", "wikitext-2/wiki.valid.raw"), TextLayout::kWikiText);
  std::vector<TextRecord> batch;
  std::vector<BadLine> bad;
  uint64_t d = 0;
  while (reader.next_batch(batch, 100, bad))
    for (const TextRecord& rec : batch) {
      std::vector<int> want = tok.encode(rec.text, true);
      ASSERT_EQ(std::vector<int32_t>(want.begin(), want.end()), set.doc(d++).to_vector()) << what << " doc " << d - 1;
    }
  EXPECT_EQ(60u, d);
  EXPECT_EQ(60u, set.num_docs());
}

class Prepare : public ::testing::Test {
 protected:
  std::unique_ptr<Tokenizer> tok = load_tokenizer(asset("stories260K/tok512.bin", "llama2c/tok512.bin"));
  std::string wiki = asset("wikitext-2/wiki.valid.raw", "wikitext-2/wiki.valid.raw");
  test::TempDir dir{"prepare"};

  PrepareOptions options(const std::string& prefix) {
    PrepareOptions o;
    o.inputs = {wiki};
    o.output_prefix = dir / prefix;
    o.progress = false;
    o.batch_records = 7;  // several batches even on small inputs
    return o;
  }
};

TEST_F(Prepare, WikiTextArticlesRoundTripThroughShards) {
  PrepareReport r = run_prepare(options("wiki"), *tok);
  ASSERT_EQ(1u, r.shards.size());
  EXPECT_EQ(60u, r.records);
  ShardSet set(r.shards);
  set.check_tokenizer((uint32_t)tok->vocab_size(), tok->fingerprint());
  EXPECT_EQ(ShardKind::kDocuments, set.kind());
  ASSERT_EQ(60u, set.num_docs());
  EXPECT_EQ(r.tokens, set.num_tokens());
  expect_articles(set, *tok, "tok512");
  for (uint64_t d = 0; d < set.num_docs(); ++d) EXPECT_EQ(tok->bos_id(), set.doc(d)[0]);
}

// The Hugging Face tokenizers share a word cache between threads: parallel preparation must still give
// exactly the sequential encodings.
TEST_F(Prepare, ParallelHuggingFaceTokenizationEqualsSequential) {
  for (const char* name : {"mistral-7b-v0.1", "qwen2.5"}) {
    std::unique_ptr<Tokenizer> hf = load_tokenizer(asset(std::string("tokenizers/") + name, std::string("tokenizers/") + name));
    PrepareOptions o = options(name);
    o.batch_records = 64;
    PrepareReport r = run_prepare(o, *hf);
    ShardSet set(r.shards);
    set.check_tokenizer((uint32_t)hf->vocab_size(), hf->fingerprint());
    expect_articles(set, *hf, name);
  }
}

TEST_F(Prepare, ShardsRollOverAndOutputDoesNotDependOnThreads) {
  PrepareOptions one = options("one");
  PrepareReport a = run_prepare(one, *tok);
  PrepareOptions many = options("many");
  many.shard_tokens = 20000;
  const int threads = omp_get_max_threads();
  omp_set_num_threads(1);
  PrepareReport b = run_prepare(many, *tok);
  omp_set_num_threads(2);
  many.output_prefix = dir / "many2";
  PrepareReport c = run_prepare(many, *tok);
  omp_set_num_threads(threads);
  ASSERT_GT(b.shards.size(), 3u);
  ASSERT_EQ(b.shards.size(), c.shards.size());
  for (size_t i = 0; i < b.shards.size(); ++i) EXPECT_EQ(read_file(b.shards[i]), read_file(c.shards[i])) << i;
  ShardSet whole(a.shards), split(b.shards);
  ASSERT_EQ(whole.num_docs(), split.num_docs());
  for (uint64_t d = 0; d < whole.num_docs(); ++d) EXPECT_EQ(whole.doc(d).to_vector(), split.doc(d).to_vector());
  for (size_t i = 0; i + 1 < b.shards.size(); ++i) EXPECT_GE(Shard(b.shards[i]).num_tokens(), 20000u);
}

TEST_F(Prepare, SupervisedTriplesFollowLlm2vecInstructionConvention) {
  const std::string input = dir / "sup.jsonl";
  std::ofstream(input) << R"({"query": "a girl plays", "positive": "a child plays", "negative": "a dog sleeps", "instruction": "Retrieve a similar sentence", "dataset": "nli"})"
                       << "\n"
                       << R"({"query": "the sun is hot", "positive": "it is warm", "negative": "snow falls", "dataset": "sts"})"
                       << "\n";
  PrepareOptions o = options("sup");
  o.inputs = {input};
  o.format = PrepareFormat::kSupervised;
  PrepareReport r = run_prepare(o, *tok);
  ShardSet set(r.shards);
  ASSERT_EQ(ShardKind::kTriples, set.kind());
  ASSERT_EQ(2u, set.num_triples());
  Triple t0 = set.triple(0), t1 = set.triple(1);
  // llm2vec pools the last len(tokenize(query, add_special_tokens=False)) positions of the tokenized
  // "instruction; query": everything before them is excluded.
  const std::vector<int> full0 = tok->encode("Retrieve a similar sentence; a girl plays", true);
  EXPECT_EQ(std::vector<int32_t>(full0.begin(), full0.end()), t0.query.to_vector());
  EXPECT_EQ(full0.size() - tok->encode("a girl plays", false).size(), t0.instruction_tokens);
  EXPECT_EQ(1u, t1.instruction_tokens);  // no instruction: only the BOS is excluded
  std::vector<int> pos = tok->encode("a child plays", true);
  EXPECT_EQ(std::vector<int32_t>(pos.begin(), pos.end()), t0.positive.to_vector());
  ASSERT_EQ(2u, set.dataset_names().size());
  EXPECT_EQ("nli", set.dataset_names()[t0.dataset]);
  EXPECT_EQ("sts", set.dataset_names()[t1.dataset]);
}

TEST_F(Prepare, BadLinesAreFatalOrSkippedButNeverSilent) {
  const std::string input = dir / "bad.jsonl";
  std::ofstream(input) << R"({"query": "q", "positive": "p", "negative": "n"})"
                       << "\n{broken\n"
                       << R"({"query": "q3", "positive": "p3", "negative": "n3"})"
                       << "\n";
  PrepareOptions o = options("bad");
  o.inputs = {input};
  o.format = PrepareFormat::kSupervised;
  try {
    run_prepare(o, *tok);
    FAIL() << "a bad line must be fatal by default";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string::npos, std::string(e.what()).find(input + ":2")) << e.what();
  }
  // Nothing is left under a final name, nor a temporary file.
  for (const std::string& f : dir.files()) EXPECT_EQ(std::string::npos, f.find("bad-")) << f;
  o.skip_bad_lines = true;
  PrepareReport r = run_prepare(o, *tok);
  EXPECT_EQ(1u, r.bad_lines);
  EXPECT_EQ(2u, r.records);
  EXPECT_EQ(2u, ShardSet(r.shards).num_triples());
}

TEST_F(Prepare, SentencesAndErrors) {
  const std::string input = dir / "s.txt";
  std::ofstream(input) << "One sentence.\n\nAnother one.\n";
  PrepareOptions o = options("sent");
  o.inputs = {input};
  o.format = PrepareFormat::kSentences;
  PrepareReport r = run_prepare(o, *tok);
  ShardSet set(r.shards);
  EXPECT_EQ(ShardKind::kSentences, set.kind());
  EXPECT_EQ(2u, set.num_docs());

  const std::string empty = dir / "empty.txt";
  std::ofstream(empty) << "\n\n";
  o.inputs = {empty};
  o.output_prefix = dir / "empty";
  EXPECT_THROW(run_prepare(o, *tok), std::runtime_error);
  o.inputs = {dir / "missing.txt"};
  EXPECT_THROW(run_prepare(o, *tok), std::runtime_error);
  EXPECT_THROW(parse_prepare_format("csv"), std::invalid_argument);
}

}  // namespace
}  // namespace l2v
