// Which training items each global batch holds, and in what order: a deterministic, resumable sampler
// over abstract items 0..n-1 (documents, sentences, triples, or MNTP blocks), and the MNTP blocks
// themselves.
//
// Epoch e visits the items in the order of a seeded Fisher–Yates shuffle (std::mt19937_64 seeded from
// (seed, e) through std::seed_seq; both are fully specified by the C++ standard, and the bounded draws
// use rejection rather than std::uniform_int_distribution, whose algorithm is implementation-defined, so
// the order is the same with every compiler and standard library), cut into full batches of
// batch_size consecutive items; the n mod batch_size items at the end of the permutation are left out
// of that epoch (a different epoch's shuffle leaves out different items). Batches never span two epochs.
//
// The sampler knows nothing of ranks: batch_size is the GLOBAL batch (world size × per-device batch)
// and every rank runs the same sampler; the loaders (data/loader.h) build the whole global batch and
// give rank r its rows [r·b, (r+1)·b). So `mpirun -np N` with per-device batch b reads exactly what
// one process with batch N·b reads, and the state (identical on every rank) resumes at any world size.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/shard.h"

namespace l2v {

// The order in which epoch `epoch` visits items 0..num_items-1.
std::vector<uint64_t> epoch_permutation(uint64_t num_items, uint64_t seed, uint64_t epoch);

struct SamplerConfig {
  uint64_t num_items = 0;
  uint64_t seed = 0;
  uint64_t batch_size = 1;  // items per (global) batch
};

// Where the sampler is: the next batch starts at item `position` of epoch `epoch`'s permutation. The
// position counts items, not batches, so a run may resume with another batch size.
struct SamplerState {
  uint64_t epoch = 0;
  uint64_t position = 0;
};

class Sampler {
 public:
  // Throws std::invalid_argument for a zero batch size or fewer items than one batch.
  explicit Sampler(const SamplerConfig& config);

  const SamplerConfig& config() const { return config_; }
  uint64_t batches_per_epoch() const { return config_.num_items / config_.batch_size; }

  // The item ids of the next batch (batch_size of them); moves to the next epoch after its last batch.
  std::vector<uint64_t> next_batch();

  const SamplerState& state() const { return state_; }
  // Throws std::invalid_argument if the position lies beyond the epoch.
  void set_state(const SamplerState& state);

  // The state as JSON, together with the settings that determine the order (num_items, seed), which
  // restore() requires to be unchanged: continuing with another seed would silently repeat and skip
  // items. `source` names the file in error messages.
  nlohmann::json save() const;
  void restore(const nlohmann::json& j, const std::string& source);

 private:
  SamplerState normalized(SamplerState s) const;
  void load_epoch(uint64_t epoch);

  SamplerConfig config_;
  SamplerState state_;
  uint64_t loaded_epoch_ = 0;
  bool loaded_ = false;
  std::vector<uint64_t> items_;  // the loaded epoch's permutation
};

// MNTP training blocks as Hugging Face's run_mlm builds them (group_texts): every document of the set
// concatenated in order, cut into blocks of block_len tokens, the final partial block dropped. (run_mlm
// applies group_texts to each `datasets.map` batch of 1000 documents and so also drops a remainder per
// 1000 documents; one concatenation keeps those tokens and does not depend on a batch size.) Nothing is
// materialised: block i is copied from the shards on demand (ShardSet::copy_tokens finds the shard by
// binary search over cumulative token offsets). The ShardSet must outlive this object.
class MntpBlocks {
 public:
  // Throws std::invalid_argument for block_len 0 or a triples set.
  MntpBlocks(const ShardSet& set, uint64_t block_len);

  uint64_t num_blocks() const { return num_blocks_; }
  uint64_t block_len() const { return block_len_; }
  void block(uint64_t i, int32_t* out) const;  // writes block_len tokens; throws std::out_of_range
  std::vector<int32_t> block(uint64_t i) const;

 private:
  const ShardSet* set_;
  uint64_t block_len_;
  uint64_t num_blocks_;
};

}  // namespace l2v
