// Which training items each rank reads, and in what order: a deterministic, resumable, per-rank sampler
// over abstract items 0..n-1 (documents, sentences, triples, or MNTP blocks), and the MNTP blocks
// themselves.
//
// Epoch e visits the items in the order of a seeded Fisher–Yates shuffle (std::mt19937_64 seeded from
// (seed, e) through std::seed_seq; both are fully specified by the C++ standard, and the bounded draws
// use rejection rather than std::uniform_int_distribution, whose algorithm is implementation-defined, so
// the order is the same with every compiler and standard library). Rank r of W takes positions
// r, r + W, r + 2W, ... of the permutation, floor(n / W) items each: the n mod W items at the end of the
// permutation are left out of that epoch, so every rank yields the same number of micro-batches and the
// ranks' collective operations stay in step. A different epoch's shuffle leaves out different items.
// Micro-batches never span two epochs: an epoch's last one holds the remainder unless drop_last.
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
  int world_size = 1;
  int rank = 0;
  uint64_t batch_size = 1;  // items per micro-batch on one rank
  bool drop_last = false;   // skip each epoch's final short micro-batch
};

// Where the sampler is: the next micro-batch starts at item `position` of this rank's share of epoch
// `epoch`. Every rank is at the same state (they advance in lockstep), so one saved state resumes all
// ranks. The position counts items, not batches, so a run may resume with another batch size.
struct SamplerState {
  uint64_t epoch = 0;
  uint64_t position = 0;
};

class Sampler {
 public:
  // Throws std::invalid_argument for a rank outside [0, world_size), a zero batch size, fewer items than
  // ranks, or (with drop_last) fewer items per rank than one batch.
  explicit Sampler(const SamplerConfig& config);

  const SamplerConfig& config() const { return config_; }
  uint64_t items_per_rank() const { return config_.num_items / config_.world_size; }
  uint64_t batches_per_epoch() const;

  // The item ids of the next micro-batch on this rank (batch_size of them, fewer for an epoch's last
  // batch unless drop_last); moves to the next epoch after its last batch.
  std::vector<uint64_t> next_batch();

  const SamplerState& state() const { return state_; }
  // Throws std::invalid_argument if the position lies beyond the epoch.
  void set_state(const SamplerState& state);

  // The state as JSON, together with the settings that determine the order (num_items, seed,
  // world_size), which restore() requires to be unchanged: continuing with another seed or world size
  // would silently repeat and skip items. `source` names the file in error messages.
  nlohmann::json save() const;
  void restore(const nlohmann::json& j, const std::string& source);

 private:
  uint64_t usable_items() const;  // items of an epoch that end up in batches
  void load_epoch(uint64_t epoch);

  SamplerConfig config_;
  SamplerState state_;
  uint64_t loaded_epoch_ = 0;
  bool loaded_ = false;
  std::vector<uint64_t> items_;  // this rank's share of the loaded epoch, in order
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
