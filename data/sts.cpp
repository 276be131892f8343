#include "data/sts.h"

#include "data/file_io.h"

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <numeric>
#include <stdexcept>
#include <unordered_map>

#include <nlohmann/json.hpp>

#include "data/npy.h"
#include "data/unicode.h"

namespace l2v {
namespace {

std::vector<std::string> split_tabs(const std::string& line) {
  std::vector<std::string> out;
  size_t start = 0;
  for (;;) {
    size_t tab = line.find('\t', start);
    if (tab == std::string::npos) {
      out.push_back(line.substr(start));
      return out;
    }
    out.push_back(line.substr(start, tab - start));
    start = tab + 1;
  }
}

bool is_blank(const std::string& s) { return s.find_first_not_of(" \t\r\n") == std::string::npos; }

// A whole-field decimal number (strtod syntax, surrounding spaces allowed); false otherwise.
bool parse_number(const std::string& s, double& out) {
  if (is_blank(s)) return false;
  const char* begin = s.c_str();
  char* end = nullptr;
  errno = 0;
  double v = std::strtod(begin, &end);
  if (end == begin) return false;
  while (*end == ' ') ++end;
  if (*end != '\0') return false;
  out = v;
  return true;
}

// Reads the lines of a text file with their 1-based numbers, a trailing '\r' removed.
class LineFile {
 public:
  explicit LineFile(const std::string& path) : path_(path), in_(open_input_file(path, "a sentence-pair file")) {}
  bool next(std::string& line) {
    if (!std::getline(in_, line)) {
      if (in_.bad()) throw std::runtime_error(path_ + ": read error after line " + std::to_string(line_));
      return false;
    }
    ++line_;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    return true;
  }
  size_t line() const { return line_; }
  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(path_ + ":" + std::to_string(line_) + ": " + what);
  }

 private:
  std::string path_;
  std::ifstream in_;
  size_t line_ = 0;
};

void check_line_text(LineFile& f, const std::string& line) {
  if (!is_valid_utf8(line)) f.fail("not valid UTF-8");
}

void check_sentence(LineFile& f, const std::string& s, const char* name) {
  if (is_blank(s)) f.fail(std::string("empty ") + name);
}

double parse_score(LineFile& f, const std::string& s, const char* name) {
  double v = 0.0;
  if (!parse_number(s, v)) f.fail(std::string(name) + " '" + s + "' is not a number");
  if (!std::isfinite(v)) f.fail(std::string(name) + " '" + s + "' is not finite");
  return v;
}

}  // namespace

std::vector<StsPair> read_sick(const std::string& path, const std::string& split) {
  static const char* kSplits[] = {"TRAIN", "TRIAL", "TEST"};
  auto known_split = [](const std::string& s) {
    return std::find_if(std::begin(kSplits), std::end(kSplits), [&](const char* k) { return s == k; }) !=
           std::end(kSplits);
  };
  if (split != "ALL" && !known_split(split))
    throw std::runtime_error(path + ": unknown split '" + split + "' (TRAIN, TRIAL, TEST or ALL)");
  LineFile f(path);
  std::string line;
  if (!f.next(line)) throw std::runtime_error(path + ": empty file (expected a header line)");
  check_line_text(f, line);
  const std::vector<std::string> header = split_tabs(line);
  auto column = [&](std::initializer_list<const char*> names, bool required) -> int {
    for (const char* n : names)
      for (size_t i = 0; i < header.size(); ++i)
        if (header[i] == n) return (int)i;
    if (!required) return -1;
    std::string list;
    for (const char* n : names) list += (list.empty() ? "" : " or ") + std::string(n);
    f.fail("header has no column " + list);
  };
  const int ca = column({"sentence_A"}, true), cb = column({"sentence_B"}, true);
  const int cs = column({"relatedness_score"}, true);
  const int ce = column({"entailment_label", "entailment_judgment"}, true);
  const int csplit = column({"SemEval_set"}, false);
  if (csplit < 0 && split != "ALL")
    throw std::runtime_error(path + ": no SemEval_set column (e.g. the SICK_semeval2014_all.txt layout), so "
                             "only split ALL is available, not '" + split + "'");

  std::vector<StsPair> out;
  while (f.next(line)) {
    if (is_blank(line)) continue;
    check_line_text(f, line);
    std::vector<std::string> fields = split_tabs(line);
    if (fields.size() != header.size())
      f.fail("expected " + std::to_string(header.size()) + " tab-separated fields (as the header), found " +
             std::to_string(fields.size()));
    StsPair p;
    p.split = csplit < 0 ? std::string() : fields[csplit];
    if (csplit >= 0 && !known_split(p.split)) f.fail("unknown SemEval_set '" + p.split + "'");
    p.a = std::move(fields[ca]);
    p.b = std::move(fields[cb]);
    check_sentence(f, p.a, "sentence_A");
    check_sentence(f, p.b, "sentence_B");
    p.score = parse_score(f, fields[cs], "relatedness_score");
    p.entailment = std::move(fields[ce]);
    if (split == "ALL" || p.split == split) out.push_back(std::move(p));
  }
  if (out.empty()) throw std::runtime_error(path + ": no sentence pairs in split " + split);
  return out;
}

std::string sts_format_of(const std::string& path) {
  LineFile f(path);
  std::string line;
  while (f.next(line) && line.empty()) {
  }
  const std::vector<std::string> header = split_tabs(line);
  auto has = [&](const char* name) { return std::find(header.begin(), header.end(), name) != header.end(); };
  return has("sentence_A") && has("sentence_B") && has("relatedness_score") ? "sick" : "tsv";
}

std::vector<StsPair> read_sts_tsv(const std::string& path) {
  LineFile f(path);
  std::vector<StsPair> out;
  std::string line;
  bool first = true;
  while (f.next(line)) {
    if (is_blank(line)) continue;
    check_line_text(f, line);
    std::vector<std::string> fields = split_tabs(line);
    if (fields.size() != 3)
      f.fail("expected 3 tab-separated fields (sentence1, sentence2, score), found " + std::to_string(fields.size()));
    double v = 0.0;
    if (first && !parse_number(fields[2], v)) {  // a header line
      first = false;
      continue;
    }
    first = false;
    StsPair p;
    p.a = std::move(fields[0]);
    p.b = std::move(fields[1]);
    check_sentence(f, p.a, "sentence1");
    check_sentence(f, p.b, "sentence2");
    p.score = parse_score(f, fields[2], "score");
    out.push_back(std::move(p));
  }
  if (out.empty()) throw std::runtime_error(path + ": no sentence pairs");
  return out;
}

std::vector<double> average_ranks(const std::vector<double>& v) {
  const size_t n = v.size();
  std::vector<size_t> order(n);
  std::iota(order.begin(), order.end(), size_t{0});
  std::stable_sort(order.begin(), order.end(), [&](size_t i, size_t j) { return v[i] < v[j]; });
  std::vector<double> rank(n);
  for (size_t i = 0; i < n;) {
    size_t j = i + 1;
    while (j < n && v[order[j]] == v[order[i]]) ++j;
    // Positions i..j-1 (0-based) hold equal values: each gets the mean of ranks i+1..j.
    const double r = 0.5 * (double)(i + 1 + j);
    for (size_t k = i; k < j; ++k) rank[order[k]] = r;
    i = j;
  }
  return rank;
}

double spearman(const std::vector<double>& x, const std::vector<double>& y) {
  if (x.size() != y.size())
    throw std::invalid_argument("spearman: inputs differ in size (" + std::to_string(x.size()) + " vs " +
                                std::to_string(y.size()) + ")");
  const size_t n = x.size();
  if (n < 2) throw std::invalid_argument("spearman: needs at least 2 points, got " + std::to_string(n));
  for (size_t i = 0; i < n; ++i)
    if (std::isnan(x[i]) || std::isnan(y[i]))
      throw std::invalid_argument("spearman: NaN at index " + std::to_string(i));
  const std::vector<double> rx = average_ranks(x), ry = average_ranks(y);
  // Both rank vectors have mean (n + 1) / 2 exactly (ties keep the sum of ranks).
  const double mean = 0.5 * (double)(n + 1);
  double sxy = 0.0, sxx = 0.0, syy = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double dx = rx[i] - mean, dy = ry[i] - mean;
    sxy += dx * dy;
    sxx += dx * dx;
    syy += dy * dy;
  }
  if (sxx == 0.0 || syy == 0.0)
    throw std::invalid_argument(std::string("spearman: ") + (sxx == 0.0 ? "x" : "y") +
                                " is constant, the correlation is undefined");
  const double r = sxy / std::sqrt(sxx * syy);
  return std::clamp(r, -1.0, 1.0);
}

std::vector<SickTriple> sick_triples(const std::vector<StsPair>& pairs) {
  struct Found {
    const std::string* positive = nullptr;
    const std::string* negative = nullptr;
  };
  std::vector<const std::string*> order;  // distinct sentence_A in order of first appearance
  std::unordered_map<std::string, Found> found;
  for (const StsPair& p : pairs) {
    auto [it, inserted] = found.try_emplace(p.a);
    if (inserted) order.push_back(&p.a);
    if (p.entailment == "ENTAILMENT" && !it->second.positive) it->second.positive = &p.b;
    if (p.entailment == "CONTRADICTION" && !it->second.negative) it->second.negative = &p.b;
  }
  std::vector<SickTriple> out;
  for (const std::string* a : order) {
    const Found& f = found.at(*a);
    if (f.positive && f.negative) out.push_back({*a, *f.positive, *f.negative});
  }
  return out;
}

void write_supervised_jsonl(const std::vector<SickTriple>& triples, const std::string& path,
                            const std::string& instruction, const std::string& dataset) {
  if (triples.empty()) throw std::runtime_error(path + ": no supervised triples to write");
  std::string text;
  for (size_t i = 0; i < triples.size(); ++i) {
    const SickTriple& t = triples[i];
    nlohmann::ordered_json j;
    j["query"] = t.query;
    j["positive"] = t.positive;
    j["negative"] = t.negative;
    if (!instruction.empty()) j["instruction"] = instruction;
    if (!dataset.empty()) j["dataset"] = dataset;
    try {
      text += j.dump();
    } catch (const nlohmann::json::exception& e) {  // invalid UTF-8
      throw std::runtime_error(path + ": triple " + std::to_string(i) + " cannot be written as JSON: " + e.what());
    }
    text += '\n';
  }
  write_file_atomic(path, text);
}

}  // namespace l2v
