// Per-rank batch streams over pre-tokenized shards: a Sampler (data/sampler.h) decides which items
// each GLOBAL batch (batch_size × world_size items) holds, the collators (data/batches.h) turn the whole
// global batch into model inputs — padding, MNTP masks and everything random keyed by the global batch —
// and rank r takes its rows [r·batch_size, (r+1)·batch_size) (SimCSE: twice as many, the pairs are
// adjacent). So every rank's batch equals the same rows of one process's batch of batch_size ×
// world_size items with the same seed, whatever the world size (row0 and MntpBatch::global_labels
// carry what the step needs to match that process: dropout keys and the loss normaliser).
// Deterministic in the seed and resumable: save() captures everything needed to continue exactly where
// a run stopped, at any world size with the same global batch.
//   MntpLoader        kind-0 shards cut into blocks of block_len tokens, masked (MNTP)
//   SimcseLoader      kind-1 shards, one sentence per item, each used twice
//   SupervisedLoader  kind-2 shards; every global batch comes from one dataset, as llm2vec's E5 loader
//                     builds them
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
  uint64_t batches_ = 0;  // global batches built: keys the masking randomness
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
  LoaderConfig cfg_;
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
