// The retrieval evaluation (data/retrieval.h):
//   - per-query nDCG@10, MRR@10, Recall@100 and MAP@100 equal pytrec_eval's (trec_eval 9's) on 25
//     random graded queries whose runs are full of tied scores (test/fixtures/retrieval/trec_eval.json,
//     scripts/make_retrieval_fixtures.py), whatever order the run is given in — so ties are broken as
//     trec_eval breaks them (by document id, descending), gains are linear and the ideal is the qrels';
//   - the exact top-k search equals a brute-force ranking (ties by index, an excluded document never
//     returned, k beyond the collection);
//   - BEIR files: ids as strings or integers, titles optional, and errors naming file:line;
//   - the fingerprint that keys the cached corpus embeddings follows the weights' bytes and the settings.
// Tolerance: each measure is a sum of at most 100 terms in double, in trec_eval's order: 1e-12 (a tie
// broken the other way, an exponential gain or a wrong cutoff moves some query by > 1e-3).
#include <gtest/gtest.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <random>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "data/retrieval.h"
#include "model/encoder.h"
#include "test/temp_dir.h"

namespace l2v {
namespace {

TEST(RetrievalScores, EqualTrecEvalsPerQueryWhateverTheRunOrder) {
  std::ifstream in("test/fixtures/retrieval/trec_eval.json");
  const nlohmann::json f = nlohmann::json::parse(in);
  const auto& expected = f.at("expected");
  ASSERT_EQ(expected.size(), 25u);
  std::mt19937 rng(3);
  size_t ties = 0;
  for (const auto& [qid, want] : expected.items()) {
    const std::map<std::string, int> rel = f.at("qrels").at(qid).get<std::map<std::string, int>>();
    std::vector<std::pair<std::string, double>> run;
    for (const auto& [doc, score] : f.at("run").at(qid).items()) run.push_back({doc, score.get<double>()});
    std::shuffle(run.begin(), run.end(), rng);  // the input order must not matter
    std::map<double, int> per_score;
    for (const auto& r : run) ties += per_score[r.second]++ > 0;
    const RetrievalScores s = score_query(rel, run);
    EXPECT_NEAR(s.ndcg10, want.at("ndcg@10").get<double>(), 1e-12) << qid;
    EXPECT_NEAR(s.mrr10, want.at("mrr@10").get<double>(), 1e-12) << qid;
    EXPECT_NEAR(s.recall100, want.at("recall@100").get<double>(), 1e-12) << qid;
    EXPECT_NEAR(s.map100, want.at("map@100").get<double>(), 1e-12) << qid;
  }
  EXPECT_GT(ties, 1000u) << "the fixture should exercise the tie order";
}

TEST(TopKCosine, EqualsABruteForceRankingWithTiesExclusionsAndShortCollections) {
  const int dim = 5, Q = 7, D = 300;
  std::mt19937 rng(1);
  std::normal_distribution<float> normal;
  std::vector<float> q(Q * dim), d(D * dim);
  for (float& x : q) x = normal(rng);
  for (float& x : d) x = normal(rng);
  for (int c = 0; c < dim; ++c) d[(size_t)40 * dim + c] = 3.0f * d[(size_t)10 * dim + c];  // 40 ties with 10
  std::vector<int> exclude(Q, -1);
  exclude[2] = 5;
  const int k = 20;
  const auto top = top_k_cosine(q, d, dim, k, exclude);
  ASSERT_EQ(top.size(), (size_t)Q);
  for (int i = 0; i < Q; ++i) {
    // Brute force in double on unit vectors; the search's fp32 similarities agree to ~1e-6.
    std::vector<std::pair<int, double>> all;
    for (int j = 0; j < D; ++j) {
      if (j == exclude[i]) continue;
      double dot = 0, nq = 0, nd = 0;
      for (int c = 0; c < dim; ++c) {
        dot += (double)q[i * dim + c] * d[j * dim + c];
        nq += (double)q[i * dim + c] * q[i * dim + c];
        nd += (double)d[j * dim + c] * d[j * dim + c];
      }
      all.push_back({j, dot / std::sqrt(nq * nd)});
    }
    std::sort(all.begin(), all.end(), [](auto& a, auto& b) { return a.second > b.second; });
    ASSERT_EQ(top[i].size(), (size_t)k);
    for (int r = 0; r < k; ++r) {
      EXPECT_NEAR(top[i][r].second, all[r].second, 1e-6) << "query " << i << " rank " << r;
      if (r > 0) {
        EXPECT_TRUE(top[i][r - 1].second > top[i][r].second ||
                    (top[i][r - 1].second == top[i][r].second && top[i][r - 1].first < top[i][r].first));
      }
      EXPECT_NE(top[i][r].first, exclude[i]);
    }
  }
  // k beyond the collection: every document, once.
  const auto whole = top_k_cosine(q, std::vector<float>(d.begin(), d.begin() + 3 * dim), dim, 10);
  EXPECT_EQ(whole[0].size(), 3u);
  EXPECT_THROW(top_k_cosine(q, d, dim, 0), std::invalid_argument);
}

TEST(BeirFiles, ReadIdsTitlesAndJudgementsAndNameTheLineOfAnError) {
  test::TempDir dir("beir");
  const std::string corpus = dir / "corpus.jsonl", queries = dir / "queries.jsonl", qrels = dir / "qrels.tsv";
  std::ofstream(corpus) << "{\"_id\": \"d1\", \"title\": \"Cats\", \"text\": \"Cats purr.\"}\n"
                           "{\"_id\": 7, \"text\": \"Dogs bark.\"}\r\n\n";
  std::ofstream(queries) << "{\"_id\": \"q1\", \"text\": \"what purrs\", \"metadata\": {}}\n";
  std::ofstream(qrels) << "query-id\tcorpus-id\tscore\nq1\td1\t2\nq1\t7\t0\n";
  const auto c = read_beir_corpus(corpus);
  ASSERT_EQ(c.size(), 2u);
  EXPECT_EQ(c[0].title, "Cats");
  EXPECT_EQ(c[1].id, "7");
  EXPECT_EQ(c[1].title, "");
  EXPECT_EQ(read_beir_queries(queries)[0].text, "what purrs");
  const Qrels r = read_beir_qrels(qrels);
  EXPECT_EQ(r.at("q1").at("d1"), 2);
  EXPECT_EQ(r.at("q1").at("7"), 0);
  struct Bad {
    std::string file, content, message;
  };
  for (const Bad& b : {Bad{"c.jsonl", "{\"_id\": \"a\", \"text\": \"x\"}\n{\"_id\": \"a\", \"text\": \"y\"}\n",
                           "c.jsonl:2: duplicate _id a"},
                       Bad{"c.jsonl", "{\"text\": \"x\"}\n", "c.jsonl:1: missing \"_id\""},
                       Bad{"c.jsonl", "{\"_id\": \"a\"}\n", "c.jsonl:1: missing \"text\""},
                       Bad{"c.jsonl", "{\"_id\": \"a\", \"text\": 3}\n", "c.jsonl:1: \"text\" must be a string"},
                       Bad{"c.jsonl", "oops\n", "c.jsonl:1: not valid JSON"},
                       Bad{"q.tsv", "h\nq1\td1\n", "q.tsv:2: expected query-id<TAB>corpus-id<TAB>score"},
                       Bad{"q.tsv", "h\nq1\td1\t1.5\n", "q.tsv:2: score '1.5' is not an integer"},
                       Bad{"q.tsv", "query-id\tcorpus-id\tscore\n", "no judgements"}}) {
    const std::string path = dir / b.file;
    std::ofstream(path) << b.content;
    try {
      if (b.file == "q.tsv")
        read_beir_qrels(path);
      else
        read_beir_corpus(path);
      ADD_FAILURE() << "accepted: " << b.content;
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(b.message), std::string::npos) << e.what();
    }
  }
}

// One changed byte in a model file, another pooling mode, attention, max_length or backend precision:
// another fingerprint (a stale cache would silently score the old model); the same inputs: the same one.
TEST(EncoderFingerprint, FollowsTheWeightsBytesAndTheSettings) {
  test::TempDir dir("fingerprint");
  const std::string model = dir / "model", adapter = dir / "adapter";
  std::filesystem::create_directories(model);
  std::filesystem::create_directories(adapter);
  std::ofstream(model + "/model.safetensors") << "weights-0123456789";
  std::ofstream(model + "/config.json") << "{}";
  std::ofstream(adapter + "/adapter_model.safetensors") << "lora";
  EncoderSpec spec;
  spec.model_name_or_path = model;
  spec.tokenizer = model;
  spec.adapters = {adapter};
  const uint64_t base = encoder_fingerprint(spec, "cpu");
  EXPECT_EQ(encoder_fingerprint(spec, "cpu"), base);
  EXPECT_NE(encoder_fingerprint(spec, "cuda (bf16)"), base);
  std::ofstream(adapter + "/adapter_model.safetensors") << "lorb";
  EXPECT_NE(encoder_fingerprint(spec, "cpu"), base) << "an adapter's bytes";
  std::ofstream(adapter + "/adapter_model.safetensors") << "lora";
  EXPECT_EQ(encoder_fingerprint(spec, "cpu"), base);
  std::ofstream(model + "/model.safetensors") << "weights-0123456788";
  EXPECT_NE(encoder_fingerprint(spec, "cpu"), base) << "the model's bytes";
  std::ofstream(model + "/model.safetensors") << "weights-0123456789";
  for (int change = 0; change < 4; ++change) {
    EncoderSpec other = spec;
    if (change == 0) other.pooling = PoolingMode::kWeightedMean;
    if (change == 1) other.bidirectional = false;
    if (change == 2) other.max_length = 128;
    if (change == 3) other.adapters.clear();
    EXPECT_NE(encoder_fingerprint(other, "cpu"), base) << change;
  }
}

}  // namespace
}  // namespace l2v
