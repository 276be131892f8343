// Retrieval evaluation (MTEB's retrieval tasks, `llm2vec eval retrieval`): a BEIR-layout collection,
// exact top-k search by cosine similarity, and trec_eval's measures (what BEIR and MTEB report through
// pytrec_eval): nDCG@10, MRR@10, Recall@100, MAP@100.
#pragma once
#include <map>
#include <string>
#include <utility>
#include <vector>

namespace l2v {

struct BeirDoc {
  std::string id, title, text;
};
struct BeirQuery {
  std::string id, text;
};
// query id -> (document id -> graded relevance; > 0 relevant, 0 judged non-relevant)
using Qrels = std::map<std::string, std::map<std::string, int>>;

// BEIR's files: corpus.jsonl lines {"_id", "title" (optional), "text"}, queries.jsonl lines {"_id",
// "text"}, qrels/<split>.tsv lines query-id<TAB>corpus-id<TAB>score after a header line. Ids may be JSON
// strings or integers. Throw std::runtime_error naming file:line for a bad line (not JSON, a missing id
// or text, a duplicate id, a score that is not an integer, a qrels line without three fields), and the
// file when it cannot be read or holds nothing.
std::vector<BeirDoc> read_beir_corpus(const std::string& path);
std::vector<BeirQuery> read_beir_queries(const std::string& path);
Qrels read_beir_qrels(const std::string& path);

struct RetrievalScores {
  double ndcg10 = 0.0, mrr10 = 0.0, recall100 = 0.0, map100 = 0.0;
};

// One query's measures, as trec_eval computes them (pytrec_eval's ndcg_cut_10, recip_rank of the top 10,
// recall_100, map_cut_100): `ranked` is ordered by score descending, ties by document id descending (the
// order trec_eval imposes whatever the input order); gains are the relevance grades (linear), discounts
// log2(rank + 1); the ideal ranking is the qrels' grades sorted; recall and MAP divide by the number of
// relevant (grade > 0) documents in the qrels. A query without relevant documents scores 0 everywhere.
RetrievalScores score_query(const std::map<std::string, int>& relevance,
                            std::vector<std::pair<std::string, double>> ranked);

// The k most cosine-similar rows of `docs` [D, dim] for every row of `queries` [Q, dim] (fp32, any norms),
// by blocked matrix products (exact: every pair is scored): per query, (document index, similarity)
// ordered by similarity descending, ties by index. exclude[q], when given, is a document index never
// returned for query q (-1: none).
std::vector<std::vector<std::pair<int, float>>> top_k_cosine(const std::vector<float>& queries,
                                                             const std::vector<float>& docs, int dim, int k,
                                                             const std::vector<int>& exclude = {});

}  // namespace l2v
