// Sentence-pair similarity data and its metric: SICK (Marelli et al. 2014; `assets/sick/SICK.txt`) and
// simple STS TSV files, Spearman's rank correlation (the SICK-R / STS score of MTEB and llm2vec), and
// SICK's entailment labels turned into supervised (query, positive, negative) triples for
// `llm2vec prepare --format supervised`.
#pragma once
#include <string>
#include <vector>

namespace l2v {

struct StsPair {
  std::string a, b;        // the two sentences, as written in the file
  double score = 0.0;      // gold similarity (SICK: relatedness_score, 1-5)
  std::string entailment;  // SICK: ENTAILMENT | NEUTRAL | CONTRADICTION; empty for STS TSV
  std::string split;       // SICK.txt: TRAIN | TRIAL | TEST; empty when the file has no split column
};

// Reads a SICK file: tab-separated, first line a header naming the columns, which are found by name
// (their order does not matter). Two layouts are accepted:
//   SICK.txt                  sentence_A, sentence_B, relatedness_score, entailment_label, SemEval_set
//                             (and other columns, ignored); split is "TRAIN" | "TRIAL" | "TEST" | "ALL"
//   SICK_semeval2014_all.txt  pair_ID sentence_A sentence_B relatedness_score entailment_judgment: no
//                             split column, so only split "ALL" is valid
// Pairs come back in file order. Blank lines and a trailing '\r' are ignored. Throws std::runtime_error
// naming the file (and the line, for a bad line) on: a missing file, a missing column, an unknown split
// (argument or SemEval_set value), a line whose field count differs from the header's, a score that is not
// a finite number, an empty sentence, text that is not UTF-8, or no pair in the requested split.
std::vector<StsPair> read_sick(const std::string& path, const std::string& split);

// "sick" when the first non-blank line of `path` is a SICK header (it names the columns sentence_A,
// sentence_B and relatedness_score), else "tsv": what `eval sts` reads a file as when no --format is
// given. Throws std::runtime_error naming the file if it cannot be read.
std::string sts_format_of(const std::string& path);

// Reads `sentence1<TAB>sentence2<TAB>score` lines. The first line is a header (and skipped) when its
// third field is not a number. Same errors as read_sick.
std::vector<StsPair> read_sts_tsv(const std::string& path);

// Spearman's rank correlation of x and y: the Pearson correlation of their ranks, tied values getting
// the average of the ranks they span (scipy.stats.spearmanr). Throws std::invalid_argument when the sizes
// differ, there are fewer than 2 points, a value is NaN, or an input is constant (the correlation is
// undefined; scipy returns NaN).
double spearman(const std::vector<double>& x, const std::vector<double>& y);

// Ranks 1..n of v with ties averaged (scipy.stats.rankdata(method="average")).
std::vector<double> average_ranks(const std::vector<double>& v);

struct SickTriple {
  std::string query, positive, negative;
};

// Supervised triples from SICK's entailment labels. Rule: for every distinct sentence_A that has at
// least one ENTAILMENT pair and at least one CONTRADICTION pair among `pairs`, one triple
//   query = sentence_A, positive = sentence_B of its first ENTAILMENT pair,
//   negative = sentence_B of its first CONTRADICTION pair
// ("first" in the order of `pairs`). Triples are ordered by the first appearance of their sentence_A in
// `pairs` (whatever that pair's label). Labels are matched exactly; NEUTRAL pairs never contribute, and
// sentence_B is never used as a query. Each query appears at most once.
std::vector<SickTriple> sick_triples(const std::vector<StsPair>& pairs);

// Writes the JSONL `llm2vec prepare --format supervised` reads (data/text_sources.h): one object per
// line, {"query", "positive", "negative"} plus "instruction" and "dataset" when they are non-empty.
// Written to a temporary file in the same directory and renamed, so `path` is either absent, its old
// content, or complete. Throws std::runtime_error when there are no triples or on an I/O error.
void write_supervised_jsonl(const std::vector<SickTriple>& triples, const std::string& path,
                            const std::string& instruction, const std::string& dataset);

}  // namespace l2v
