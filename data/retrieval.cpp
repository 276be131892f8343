#include "data/retrieval.h"

#include <cblas.h>

#include <algorithm>
#include <cmath>
#include <set>
#include <sstream>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "data/file_io.h"

namespace l2v {
namespace {

// An "_id" given as a string or an integer.
std::string id_of(const nlohmann::json& j, const std::string& at) {
  if (j.contains("_id") && j.at("_id").is_string() && !j.at("_id").get<std::string>().empty())
    return j.at("_id").get<std::string>();
  if (j.contains("_id") && j.at("_id").is_number_integer()) return std::to_string(j.at("_id").get<long long>());
  throw std::runtime_error(at + "missing \"_id\" (a non-empty string or an integer)");
}

std::string string_field(const nlohmann::json& j, const char* key, const std::string& at, bool required) {
  if (!j.contains(key) || j.at(key).is_null()) {
    if (required) throw std::runtime_error(at + "missing \"" + key + "\"");
    return "";
  }
  if (!j.at(key).is_string()) throw std::runtime_error(at + "\"" + key + "\" must be a string");
  return j.at(key).get<std::string>();
}

}  // namespace

std::vector<BeirDoc> read_beir_corpus(const std::string& path) {
  std::vector<BeirDoc> out;
  std::set<std::string> seen;
  for_each_json_line(path, "a BEIR corpus.jsonl", [&](const nlohmann::json& j, const std::string& at) {
    BeirDoc d{id_of(j, at), string_field(j, "title", at, false), string_field(j, "text", at, true)};
    if (d.title.empty() && d.text.empty()) throw std::runtime_error(at + "empty \"title\" and \"text\"");
    if (!seen.insert(d.id).second) throw std::runtime_error(at + "duplicate _id " + d.id);
    out.push_back(std::move(d));
  });
  if (out.empty()) throw std::runtime_error(path + ": no documents");
  return out;
}

std::vector<BeirQuery> read_beir_queries(const std::string& path) {
  std::vector<BeirQuery> out;
  std::set<std::string> seen;
  for_each_json_line(path, "a BEIR queries.jsonl", [&](const nlohmann::json& j, const std::string& at) {
    BeirQuery q{id_of(j, at), string_field(j, "text", at, true)};
    if (q.text.empty()) throw std::runtime_error(at + "empty \"text\"");
    if (!seen.insert(q.id).second) throw std::runtime_error(at + "duplicate _id " + q.id);
    out.push_back(std::move(q));
  });
  if (out.empty()) throw std::runtime_error(path + ": no queries");
  return out;
}

Qrels read_beir_qrels(const std::string& path) {
  std::ifstream in = open_input_file(path, "a BEIR qrels TSV (query-id, corpus-id, score)");
  Qrels out;
  size_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line_no == 1 || line.find_first_not_of(" \t") == std::string::npos) continue;  // the header
    const std::string at = path + ":" + std::to_string(line_no) + ": ";
    std::vector<std::string> f;
    std::stringstream ss(line);
    for (std::string field; std::getline(ss, field, '\t');) f.push_back(field);
    if (f.size() != 3) throw std::runtime_error(at + "expected query-id<TAB>corpus-id<TAB>score");
    size_t used = 0;
    int score = 0;
    try {
      score = std::stoi(f[2], &used);
    } catch (const std::exception&) {
      used = 0;
    }
    if (used == 0 || used != f[2].size()) throw std::runtime_error(at + "score '" + f[2] + "' is not an integer");
    out[f[0]][f[1]] = score;
  }
  if (out.empty()) throw std::runtime_error(path + ": no judgements (the first line is a header)");
  return out;
}

RetrievalScores score_query(const std::map<std::string, int>& relevance,
                            std::vector<std::pair<std::string, double>> ranked) {
  std::sort(ranked.begin(), ranked.end(), [](const auto& a, const auto& b) {
    return a.second != b.second ? a.second > b.second : a.first > b.first;
  });
  std::vector<int> ideal;
  for (const auto& [doc, grade] : relevance)
    if (grade > 0) ideal.push_back(grade);
  RetrievalScores s;
  const double relevant = (double)ideal.size();
  if (ideal.empty()) return s;
  std::sort(ideal.rbegin(), ideal.rend());
  auto grade_of = [&](const std::string& doc) {
    const auto it = relevance.find(doc);
    return it == relevance.end() ? 0 : it->second;
  };
  double dcg = 0.0, idcg = 0.0, precision_sum = 0.0;
  int hits = 0;
  for (size_t i = 0; i < ranked.size() && i < 100; ++i) {
    const int g = grade_of(ranked[i].first);
    if (g <= 0) continue;
    ++hits;
    precision_sum += hits / (double)(i + 1);
    if (i < 10) {
      dcg += g / std::log2((double)i + 2.0);
      if (s.mrr10 == 0.0) s.mrr10 = 1.0 / (double)(i + 1);
    }
  }
  for (size_t i = 0; i < ideal.size() && i < 10; ++i) idcg += ideal[i] / std::log2((double)i + 2.0);
  s.ndcg10 = dcg / idcg;
  s.recall100 = hits / relevant;
  s.map100 = precision_sum / relevant;
  return s;
}

namespace {

// Rows scaled to unit length (norms in double; a zero row stays zero).
std::vector<float> unit_rows(const std::vector<float>& x, int dim) {
  std::vector<float> out(x.size());
  for (size_t r = 0; r < x.size() / dim; ++r) {
    double s = 0.0;
    for (int c = 0; c < dim; ++c) s += (double)x[r * dim + c] * x[r * dim + c];
    const double inv = s > 0.0 ? 1.0 / std::sqrt(s) : 0.0;
    for (int c = 0; c < dim; ++c) out[r * dim + c] = (float)(x[r * dim + c] * inv);
  }
  return out;
}

}  // namespace

std::vector<std::vector<std::pair<int, float>>> top_k_cosine(const std::vector<float>& queries,
                                                             const std::vector<float>& docs, int dim, int k,
                                                             const std::vector<int>& exclude) {
  if (dim < 1 || k < 1 || queries.size() % dim || docs.size() % dim)
    throw std::invalid_argument("top_k_cosine: bad shapes");
  const int Q = (int)(queries.size() / dim), D = (int)(docs.size() / dim);
  if (!exclude.empty() && (int)exclude.size() != Q) throw std::invalid_argument("top_k_cosine: exclude needs Q entries");
  const std::vector<float> q = unit_rows(queries, dim), d = unit_rows(docs, dim);
  constexpr int kQueryBlock = 256, kDocBlock = 4096;
  auto better = [](const std::pair<int, float>& a, const std::pair<int, float>& b) {
    return a.second != b.second ? a.second > b.second : a.first < b.first;
  };
  std::vector<std::vector<std::pair<int, float>>> top(Q);
  std::vector<float> scores((size_t)kQueryBlock * kDocBlock);
  for (int q0 = 0; q0 < Q; q0 += kQueryBlock) {
    const int nq = std::min(kQueryBlock, Q - q0);
    for (int d0 = 0; d0 < D; d0 += kDocBlock) {
      const int nd = std::min(kDocBlock, D - d0);
      cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, nq, nd, dim, 1.0f, q.data() + (size_t)q0 * dim, dim,
                  d.data() + (size_t)d0 * dim, dim, 0.0f, scores.data(), nd);
#pragma omp parallel for schedule(static)
      for (int i = 0; i < nq; ++i) {
        std::vector<std::pair<int, float>>& t = top[q0 + i];
        const int skip = exclude.empty() ? -1 : exclude[q0 + i];
        for (int j = 0; j < nd; ++j)
          if (d0 + j != skip) t.push_back({d0 + j, scores[(size_t)i * nd + j]});
        const size_t keep = std::min<size_t>(k, t.size());
        std::partial_sort(t.begin(), t.begin() + keep, t.end(), better);
        t.resize(keep);
      }
    }
  }
  return top;
}

}  // namespace l2v
