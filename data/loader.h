// Per-rank batch streams over pre-tokenized shards: a Sampler (data/sampler.h) decides which items
// this rank reads, the collators (data/batches.h) turn them into model inputs. Deterministic in the
// seed and resumable: save() captures everything needed to continue exactly where a run stopped.
//   MntpLoader        kind-0 shards cut into blocks of block_len tokens, masked (MNTP)
//   SimcseLoader      kind-1 shards, one sentence per item, each used twice
//   SupervisedLoader  kind-2 shards; every GLOBAL batch (batch_size x world_size examples) comes from one
//                     dataset, as llm2vec's E5 loader builds them, and rank r takes its slice of it
#pragma once
#include <cstdint>
#include <string>

#include <nlohmann/json.hpp>

#include "data/batches.h"
#include "data/sampler.h"
#include "data/shard.h"
#include "data/tokenizer.h"

namespace l2v {

struct LoaderConfig {
  uint64_t batch_size = 8;  // per rank
  uint64_t seed = 0;
  int world_size = 1;
  int rank = 0;
};

class MntpLoader {
 public:
  // Checks the shards' tokenizer against `tok` (fingerprint and vocabulary).
  MntpLoader(const ShardSet& set, const Tokenizer& tok, uint64_t block_len, const MntpOptions& mntp,
             const LoaderConfig& cfg);
  MntpBatch next();
  const Sampler& sampler() const { return sampler_; }
  nlohmann::json save() const;
  void restore(const nlohmann::json& j, const std::string& source);

 private:
  const Tokenizer& tok_;
  MntpBlocks blocks_;
  MntpOptions mntp_;
  LoaderConfig cfg_;
  Sampler sampler_;
  uint64_t batches_ = 0;  // micro-batches built on this rank: keys the masking randomness
};

class SimcseLoader {
 public:
  SimcseLoader(const ShardSet& set, const Tokenizer& tok, const PadOptions& pad, const LoaderConfig& cfg);
  SimcseBatch next();
  nlohmann::json save() const;
  void restore(const nlohmann::json& j, const std::string& source);

 private:
  const ShardSet& set_;
  const Tokenizer& tok_;
  PadOptions pad_;
  Sampler sampler_;
};

class SupervisedLoader {
 public:
  SupervisedLoader(const ShardSet& set, const Tokenizer& tok, const PadOptions& pad, const LoaderConfig& cfg);
  SupervisedBatch next();
  uint64_t batches_per_epoch() const { return batches_.size(); }
  nlohmann::json save() const;
  void restore(const nlohmann::json& j, const std::string& source);

 private:
  void load_epoch(uint64_t epoch);

  const ShardSet& set_;
  const Tokenizer& tok_;
  PadOptions pad_;
  LoaderConfig cfg_;
  std::vector<int> dataset_of_;
  std::vector<std::vector<size_t>> batches_;  // global batches of the current epoch
  uint64_t epoch_ = 0, position_ = 0;         // next global batch
};

}  // namespace l2v
