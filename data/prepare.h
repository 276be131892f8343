// `llm2vec prepare`: raw text → pre-tokenized shards (data/shard.h).
//   documents  WikiText layout (one article per top-level heading) or one document per line → kind 0,
//              the MNTP corpus (each document tokenized with the tokenizer's special tokens, e.g. BOS,
//              as run_mntp's tokenize_function does before group_texts concatenates them)
//   sentences  one sentence per line (SimCSE's wiki1m) → kind 1
//   supervised JSONL {"query", "positive", "negative", "instruction"?, "dataset"?} → kind 2
// Tokenization runs in parallel (OpenMP) on bounded batches of records; the output does not depend on
// the number of threads. Bad input lines are reported as file:line and either skipped (counted and
// listed) or fatal. The shards are written into a staging directory beside the prefix
// (.<name>.staging) and become the set PREFIX only when all are complete: commit_shard_set
// (data/shard_manifest.h) replaces any earlier set of that prefix and writes the manifest last. An
// error, SIGINT/SIGTERM or kill leaves the earlier set intact (or, killed during the commit itself, no
// manifest, which the loader refuses); a lock on .NAME.lock beside the shards keeps two prepares off one prefix.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace l2v {

class Tokenizer;

enum class PrepareFormat { kWikiText, kLines, kSentences, kSupervised };
PrepareFormat parse_prepare_format(const std::string& name);  // "wikitext" | "lines" | "sentences" | "supervised"

struct PrepareOptions {
  std::vector<std::string> inputs;
  PrepareFormat format = PrepareFormat::kWikiText;
  std::string output_prefix;          // shards are <prefix>-000000.bin, <prefix>-000001.bin, ...
  uint64_t shard_tokens = 1ull << 28;  // start a new shard once this many tokens are written
  bool skip_bad_lines = false;        // false: the first bad line is fatal
  size_t batch_records = 4096;        // records tokenized in parallel at a time
  bool progress = true;               // a progress line on stderr
};

struct PrepareReport {
  std::vector<std::string> shards;  // paths written
  uint64_t records = 0, tokens = 0, bad_lines = 0;
};

PrepareReport run_prepare(const PrepareOptions& opt, const Tokenizer& tok);

}  // namespace l2v
