#include "data/loader.h"

#include <stdexcept>

namespace l2v {
namespace {

void check(const LoaderConfig& cfg) {
  if (cfg.world_size < 1 || cfg.rank < 0 || cfg.rank >= cfg.world_size || cfg.batch_size == 0)
    throw std::invalid_argument("loader: rank " + std::to_string(cfg.rank) + " of world size " +
                                std::to_string(cfg.world_size) + " with batch size " + std::to_string(cfg.batch_size));
}

uint64_t global_batch(const LoaderConfig& cfg) { return cfg.batch_size * (uint64_t)cfg.world_size; }

SamplerConfig sampler_config(uint64_t num_items, const LoaderConfig& cfg) {
  check(cfg);
  return {num_items, cfg.seed, global_batch(cfg)};
}

// This rank's rows of a global batch.
template <typename Batch>
Batch rank_rows(const Batch& global, const LoaderConfig& cfg, int rows_per_item) {
  const int n = (int)cfg.batch_size * rows_per_item;
  return slice_rows(global, cfg.rank * n, n);
}

// The shards, after checking that they hold `kind` and were tokenized by `tok` (used in member
// initialisers, so nothing is built from mismatched data).
const ShardSet& checked(const ShardSet& set, const Tokenizer& tok, ShardKind kind, const char* loader) {
  if (set.kind() != kind)
    throw std::invalid_argument(std::string(loader) + ": shards hold " + shard_kind_name(set.kind()) + ", expected " +
                                shard_kind_name(kind) + " (" + set.shard(0).path() + ")");
  set.check_tokenizer((uint32_t)tok.vocab_size(), tok.fingerprint());
  return set;
}

std::vector<int> to_ints(const TokenView& v) {
  std::vector<int32_t> x = v.to_vector();
  return std::vector<int>(x.begin(), x.end());
}

}  // namespace

MntpLoader::MntpLoader(const ShardSet& set, const Tokenizer& tok, uint64_t block_len, const MntpOptions& mntp,
                       const LoaderConfig& cfg)
    : tok_(tok),
      blocks_(checked(set, tok, ShardKind::kDocuments, "MNTP"), block_len),
      mntp_(mntp),
      cfg_(cfg),
      sampler_(sampler_config(blocks_.num_blocks(), cfg)) {}

MntpBatch MntpLoader::next() {
  std::vector<std::vector<int>> blocks;
  for (uint64_t i : sampler_.next_batch()) {
    std::vector<int32_t> b = blocks_.block(i);
    blocks.emplace_back(b.begin(), b.end());
  }
  // The global batch's number keys its masks: the same masks at every world size.
  const BatchRng rng{cfg_.seed, batches_++};
  return rank_rows(build_mntp_batch(blocks, (int)blocks_.block_len(), tok_, mntp_, rng), cfg_, 1);
}

nlohmann::json MntpLoader::save() const { return {{"sampler", sampler_.save()}, {"batches", batches_}}; }

void MntpLoader::restore(const nlohmann::json& j, const std::string& source) {
  if (!j.contains("sampler") || !j.contains("batches"))
    throw std::runtime_error(source + ": MNTP loader state needs 'sampler' and 'batches'");
  sampler_.restore(j.at("sampler"), source);
  batches_ = j.at("batches").get<uint64_t>();
}

SimcseLoader::SimcseLoader(const ShardSet& set, const Tokenizer& tok, const PadOptions& pad, const LoaderConfig& cfg)
    : set_(checked(set, tok, ShardKind::kSentences, "SimCSE")),
      tok_(tok),
      pad_(pad),
      cfg_(cfg),
      sampler_(sampler_config(set.num_docs(), cfg)) {}

SimcseBatch SimcseLoader::next() {
  std::vector<std::vector<int>> sentences;
  for (uint64_t i : sampler_.next_batch()) sentences.push_back(to_ints(set_.doc(i)));
  SimcseBatch global = build_simcse_batch(sentences, tok_, pad_), mine;
  mine.rows = rank_rows(global.rows, cfg_, 2);
  mine.pairs = (int)cfg_.batch_size;
  mine.positive_of.assign(global.positive_of.begin(), global.positive_of.begin() + 2 * mine.pairs);
  return mine;
}

nlohmann::json SimcseLoader::save() const { return {{"sampler", sampler_.save()}}; }

void SimcseLoader::restore(const nlohmann::json& j, const std::string& source) {
  if (!j.contains("sampler")) throw std::runtime_error(source + ": SimCSE loader state needs 'sampler'");
  sampler_.restore(j.at("sampler"), source);
}

SupervisedLoader::SupervisedLoader(const ShardSet& set, const Tokenizer& tok, const PadOptions& pad,
                                   const LoaderConfig& cfg)
    : set_(checked(set, tok, ShardKind::kTriples, "supervised")),
      tok_(tok),
      pad_(pad),
      cfg_(cfg) {
  check(cfg);
  dataset_of_.resize(set.num_triples());
  for (uint64_t e = 0; e < set.num_triples(); ++e) dataset_of_[e] = (int)set.triple(e).dataset;
  load_epoch(0);
}

void SupervisedLoader::load_epoch(uint64_t epoch) {
  batches_ = group_batches_by_dataset(dataset_of_, (int)global_batch(cfg_), cfg_.seed, epoch);
  if (batches_.empty())
    throw std::runtime_error("supervised loader: no dataset has " + std::to_string(global_batch(cfg_)) +
                             " examples for one global batch");
  epoch_ = epoch;
  position_ = 0;
}

SupervisedBatch SupervisedLoader::next() {
  if (position_ >= batches_.size()) load_epoch(epoch_ + 1);
  const std::vector<size_t>& global = batches_[position_++];
  std::vector<SupervisedExample> examples;
  for (size_t e : global) {
    Triple t = set_.triple(e);
    examples.push_back({to_ints(t.query), (int)t.instruction_tokens, to_ints(t.positive), to_ints(t.negative),
                        (int)t.dataset});
  }
  std::vector<size_t> all(examples.size());
  for (size_t i = 0; i < all.size(); ++i) all[i] = i;
  // Each group padded as the global batch's (the padding, hence the dropout keys, of one process).
  const SupervisedBatch b = build_supervised_batch(examples, all, tok_, pad_);
  SupervisedBatch mine;
  mine.queries = rank_rows(b.queries, cfg_, 1);
  mine.positives = rank_rows(b.positives, cfg_, 1);
  if (b.negatives.B > 0) mine.negatives = rank_rows(b.negatives, cfg_, 1);
  return mine;
}

nlohmann::json SupervisedLoader::save() const {
  return {{"epoch", epoch_}, {"position", position_}, {"seed", cfg_.seed}, {"global_batch", global_batch(cfg_)},
          {"num_triples", dataset_of_.size()}};
}

void SupervisedLoader::restore(const nlohmann::json& j, const std::string& source) {
  try {
    if (j.at("seed").get<uint64_t>() != cfg_.seed || j.at("global_batch").get<uint64_t>() != global_batch(cfg_) ||
        j.at("num_triples").get<size_t>() != dataset_of_.size())
      throw std::runtime_error(source + ": the supervised loader state was saved with another seed, global batch "
                                        "size or data set; resuming would repeat and skip examples");
    load_epoch(j.at("epoch").get<uint64_t>());
    position_ = j.at("position").get<uint64_t>();
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(source + ": malformed supervised loader state: " + e.what());
  }
  if (position_ > batches_.size()) throw std::runtime_error(source + ": supervised loader position out of range");
}

}  // namespace l2v
