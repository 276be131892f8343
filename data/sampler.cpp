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
  if (config.batch_size == 0) throw std::invalid_argument("Sampler: batch size 0");
  if (config.num_items < config.batch_size)
    throw std::invalid_argument("Sampler: " + std::to_string(config.num_items) + " items make no full batch of " +
                                std::to_string(config.batch_size));
}

void Sampler::load_epoch(uint64_t epoch) {
  if (loaded_ && loaded_epoch_ == epoch) return;
  items_ = epoch_permutation(config_.num_items, config_.seed, epoch);
  loaded_epoch_ = epoch;
  loaded_ = true;
}

// An epoch ends when fewer than a batch of its items remain (normally n mod batch_size of them; after a
// resume with another batch size, whatever the old position leaves).
SamplerState Sampler::normalized(SamplerState s) const {
  return s.position + config_.batch_size > config_.num_items ? SamplerState{s.epoch + 1, 0} : s;
}

std::vector<uint64_t> Sampler::next_batch() {
  load_epoch(state_.epoch);
  std::vector<uint64_t> batch(items_.begin() + state_.position, items_.begin() + state_.position + config_.batch_size);
  // Move on right away so a state saved after an epoch's last batch already points at the next epoch.
  state_ = normalized({state_.epoch, state_.position + config_.batch_size});
  return batch;
}

void Sampler::set_state(const SamplerState& state) {
  if (state.position > config_.num_items)
    throw std::invalid_argument("Sampler: position " + std::to_string(state.position) + " beyond the " +
                                std::to_string(config_.num_items) + " items of an epoch");
  state_ = normalized(state);
}

nlohmann::json Sampler::save() const {
  return {{"epoch", state_.epoch},
          {"position", state_.position},
          {"num_items", config_.num_items},
          {"seed", config_.seed}};
}

void Sampler::restore(const nlohmann::json& j, const std::string& source) {
  SamplerState s;
  uint64_t num_items, seed;
  try {
    s.epoch = j.at("epoch").get<uint64_t>();
    s.position = j.at("position").get<uint64_t>();
    num_items = j.at("num_items").get<uint64_t>();
    seed = j.at("seed").get<uint64_t>();
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
