#include "data/sampler.h"

#include <algorithm>
#include <random>
#include <stdexcept>

namespace l2v {

namespace {

// A uniform draw from [0, bound): values below 2^64 mod bound are rejected so the modulo is unbiased.
uint64_t uniform_below(std::mt19937_64& rng, uint64_t bound) {
  const uint64_t reject_below = (0 - bound) % bound;  // (2^64 - bound) mod bound == 2^64 mod bound
  for (;;) {
    uint64_t x = rng();
    if (x >= reject_below) return x % bound;
  }
}

}  // namespace

std::vector<uint64_t> epoch_permutation(uint64_t num_items, uint64_t seed, uint64_t epoch) {
  std::seed_seq seq{static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32), static_cast<uint32_t>(epoch),
                    static_cast<uint32_t>(epoch >> 32)};
  std::mt19937_64 rng(seq);
  std::vector<uint64_t> perm(num_items);
  for (uint64_t i = 0; i < num_items; ++i) perm[i] = i;
  for (uint64_t i = num_items; i > 1; --i) std::swap(perm[i - 1], perm[uniform_below(rng, i)]);
  return perm;
}

Sampler::Sampler(const SamplerConfig& config) : config_(config) {
  if (config.world_size < 1 || config.rank < 0 || config.rank >= config.world_size)
    throw std::invalid_argument("Sampler: rank " + std::to_string(config.rank) + " outside world size " +
                                std::to_string(config.world_size));
  if (config.batch_size == 0) throw std::invalid_argument("Sampler: batch size 0");
  if (config.num_items < static_cast<uint64_t>(config.world_size))
    throw std::invalid_argument("Sampler: " + std::to_string(config.num_items) + " items cannot feed " +
                                std::to_string(config.world_size) + " ranks");
  if (config.drop_last && items_per_rank() < config.batch_size)
    throw std::invalid_argument("Sampler: " + std::to_string(items_per_rank()) +
                                " items per rank make no full batch of " + std::to_string(config.batch_size));
}

uint64_t Sampler::usable_items() const {
  uint64_t n = items_per_rank();
  return config_.drop_last ? n - n % config_.batch_size : n;
}

uint64_t Sampler::batches_per_epoch() const {
  return (usable_items() + config_.batch_size - 1) / config_.batch_size;
}

void Sampler::load_epoch(uint64_t epoch) {
  if (loaded_ && loaded_epoch_ == epoch) return;
  std::vector<uint64_t> perm = epoch_permutation(config_.num_items, config_.seed, epoch);
  const uint64_t world = static_cast<uint64_t>(config_.world_size);
  items_.resize(items_per_rank());
  for (uint64_t k = 0; k < items_.size(); ++k) items_[k] = perm[config_.rank + k * world];
  loaded_epoch_ = epoch;
  loaded_ = true;
}

std::vector<uint64_t> Sampler::next_batch() {
  load_epoch(state_.epoch);
  uint64_t take = std::min(config_.batch_size, usable_items() - state_.position);
  std::vector<uint64_t> batch(items_.begin() + state_.position, items_.begin() + state_.position + take);
  state_.position += take;
  // Move on right away so a state saved after an epoch's last batch already points at the next epoch.
  if (state_.position == usable_items()) state_ = SamplerState{state_.epoch + 1, 0};
  return batch;
}

void Sampler::set_state(const SamplerState& state) {
  if (state.position > usable_items())
    throw std::invalid_argument("Sampler: position " + std::to_string(state.position) + " beyond the " +
                                std::to_string(usable_items()) + " items of an epoch on this rank");
  state_ = state.position == usable_items() ? SamplerState{state.epoch + 1, 0} : state;
}

nlohmann::json Sampler::save() const {
  return {{"epoch", state_.epoch},
          {"position", state_.position},
          {"num_items", config_.num_items},
          {"seed", config_.seed},
          {"world_size", config_.world_size}};
}

void Sampler::restore(const nlohmann::json& j, const std::string& source) {
  SamplerState s;
  uint64_t num_items, seed;
  int world_size;
  try {
    s.epoch = j.at("epoch").get<uint64_t>();
    s.position = j.at("position").get<uint64_t>();
    num_items = j.at("num_items").get<uint64_t>();
    seed = j.at("seed").get<uint64_t>();
    world_size = j.at("world_size").get<int>();
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(source + ": malformed sampler state: " + e.what());
  }
  auto mismatch = [&](const char* what, const std::string& saved, const std::string& now) {
    throw std::runtime_error(source + ": sampler state saved with " + what + " " + saved + " but this run has " +
                             now + " (resuming would repeat and skip items)");
  };
  if (num_items != config_.num_items)
    mismatch("num_items", std::to_string(num_items), std::to_string(config_.num_items));
  if (seed != config_.seed) mismatch("seed", std::to_string(seed), std::to_string(config_.seed));
  if (world_size != config_.world_size)
    mismatch("world_size", std::to_string(world_size), std::to_string(config_.world_size));
  try {
    set_state(s);
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(source + ": " + e.what());
  }
}

// ---------------------------------------------------------------------------------------------------
// MntpBlocks

MntpBlocks::MntpBlocks(const ShardSet& set, uint64_t block_len) : set_(&set), block_len_(block_len) {
  if (block_len == 0) throw std::invalid_argument("MntpBlocks: block length 0");
  if (set.kind() == ShardKind::kTriples)
    throw std::invalid_argument(set.shard(0).path() + ": MNTP blocks need documents, not triples");
  num_blocks_ = set.num_tokens() / block_len;
}

void MntpBlocks::block(uint64_t i, int32_t* out) const {
  if (i >= num_blocks_)
    throw std::out_of_range("MntpBlocks: block " + std::to_string(i) + " of " + std::to_string(num_blocks_));
  set_->copy_tokens(i * block_len_, block_len_, out);
}

std::vector<int32_t> MntpBlocks::block(uint64_t i) const {
  std::vector<int32_t> v(block_len_);
  block(i, v.data());
  return v;
}

}  // namespace l2v
