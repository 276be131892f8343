#include "data/batches.h"

#include <algorithm>
#include <map>
#include <stdexcept>

namespace l2v {

namespace {

// Streams of BatchRng: each kind of draw has its own, so no two uses ever share bits.
constexpr uint32_t kStreamMntp = 1;
constexpr uint32_t kStreamDatasetShuffle = 2;  // index = dataset << 32 | position
constexpr uint32_t kStreamBatchOrder = 3;

// Distinguishes the batch key from a dropout key made from the same seed.
constexpr uint64_t kBatchKeyTag = 0x6261746368657321ull;  // "batches!"

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

// Fisher–Yates with draw i of `stream` at index base + i.
void shuffle(std::vector<size_t>& v, const BatchRng& rng, uint32_t stream, uint64_t base) {
  for (size_t i = v.size(); i > 1; --i) {
    Philox4 r = rng.draw(stream, base + (i - 1));
    std::swap(v[i - 1], v[uniform_below(i, r.v[0], r.v[1])]);
  }
}

}  // namespace

Philox4 BatchRng::draw(uint32_t stream, uint64_t index) const {
  if (step >> 32) throw std::invalid_argument("BatchRng: step " + std::to_string(step) + " is not below 2^32");
  return philox4x32_10((uint32_t)index, (uint32_t)(index >> 32), stream, (uint32_t)step,
                       splitmix64(seed ^ kBatchKeyTag));
}

PaddingSide parse_padding_side(const std::string& side) {
  if (side == "left") return PaddingSide::kLeft;
  if (side == "right") return PaddingSide::kRight;
  throw std::invalid_argument("padding side \"" + side + "\": expected \"left\" or \"right\"");
}

int resolve_pad_id(const Tokenizer& tok) {
  if (tok.pad_id() >= 0) return tok.pad_id();
  if (tok.eos_id() >= 0) return tok.eos_id();
  return 0;
}

MntpCollator parse_mntp_collator(const std::string& name) {
  if (name == "default") return MntpCollator::kDefault;
  if (name == "all_mask") return MntpCollator::kAllMask;
  throw std::invalid_argument("MNTP collator \"" + name + "\": expected \"default\" or \"all_mask\"");
}

int resolve_mask_token(const Tokenizer& tok, const std::string& mask_token_type) {
  if (mask_token_type == "mask")
    throw std::invalid_argument(
        "mask_token_type \"mask\" makes llm2vec add a new \"<mask>\" token and resize the embeddings, which is "
        "not supported: use \"blank\", \"eos\" or a token of the vocabulary");
  if (mask_token_type == "eos") {
    if (tok.eos_id() < 0)
      throw std::invalid_argument(tok.describe() + ": mask_token_type \"eos\" but the tokenizer has no EOS token");
    return tok.eos_id();
  }
  if (mask_token_type.empty()) throw std::invalid_argument("mask_token_type is empty");
  const std::string token = mask_token_type == "blank" ? "_" : mask_token_type;
  int id = tok.token_to_id(token);
  if (id < 0)
    throw std::invalid_argument(tok.describe() + ": mask_token_type \"" + mask_token_type + "\" needs the token \"" +
                                token + "\", which is not in the vocabulary");
  return id;
}

MntpBatch build_mntp_batch(const std::vector<std::vector<int>>& blocks, int max_seq_length, const Tokenizer& tok,
                           const MntpOptions& opt, const BatchRng& rng) {
  if (blocks.empty()) throw std::invalid_argument("build_mntp_batch: no blocks");
  if (max_seq_length < 1) throw std::invalid_argument("build_mntp_batch: max_seq_length must be positive");
  MntpBatch batch;
  batch.B = (int)blocks.size();
  batch.T = max_seq_length;
  batch.ids.reserve((size_t)batch.B * batch.T);
  for (size_t b = 0; b < blocks.size(); ++b) {
    if ((int64_t)blocks[b].size() != max_seq_length)
      throw std::invalid_argument("build_mntp_batch: block " + std::to_string(b) + " has " +
                                  std::to_string(blocks[b].size()) + " ids, expected max_seq_length = " +
                                  std::to_string(max_seq_length));
    batch.ids.insert(batch.ids.end(), blocks[b].begin(), blocks[b].end());
  }
  batch.key_mask.assign(batch.ids.size(), 1);
  mask_mntp(batch, tok, opt, rng);
  batch.global_labels = mntp_label_count(batch.labels, batch.B, batch.T);
  return batch;
}

void mask_mntp(MntpBatch& batch, const Tokenizer& tok, const MntpOptions& opt, const BatchRng& rng) {
  const size_t n = (size_t)batch.B * batch.T;
  if (batch.B < 1 || batch.T < 1 || batch.ids.size() != n || batch.key_mask.size() != n)
    throw std::invalid_argument("mask_mntp: ids and key_mask must both hold B*T = " + std::to_string(n) + " values");
  if (!(opt.mask_probability >= 0.0f && opt.mask_probability <= 1.0f))
    throw std::invalid_argument("mask_mntp: mask_probability " + std::to_string(opt.mask_probability) +
                                " is not in [0, 1]");
  const int vocab = tok.vocab_size();
  if (opt.mask_token_id < 0 || opt.mask_token_id >= vocab)
    throw std::invalid_argument("mask_mntp: mask token id " + std::to_string(opt.mask_token_id) +
                                " is not in the vocabulary [0, " + std::to_string(vocab) +
                                ") (see resolve_mask_token)");
  batch.labels.assign(n, -100);
  for (size_t i = 0; i < n; ++i) {
    if (!batch.key_mask[i] || tok.is_special(batch.ids[i])) continue;
    // One Philox call per position: word 0 chooses, word 1 picks mask/random/keep, words 2-3 the
    // random id. transformers draws bernoulli(0.8) then bernoulli(0.5) among the rest: 0.8/0.1/0.1.
    Philox4 r = rng.draw(kStreamMntp, i);
    if (unit_interval(r.v[0]) >= opt.mask_probability) continue;
    batch.labels[i] = batch.ids[i];
    double kind = opt.collator == MntpCollator::kAllMask ? 0.0 : unit_interval(r.v[1]);
    if (kind < 0.8)
      batch.ids[i] = opt.mask_token_id;
    else if (kind < 0.9)
      batch.ids[i] = (int)uniform_below((uint64_t)vocab, r.v[2], r.v[3]);
  }
}

EmbedBatch build_embed_batch(const std::vector<std::vector<int>>& texts, const std::vector<int>& n_instruction,
                             const Tokenizer& tok, const PadOptions& opt) {
  if (texts.empty()) throw std::invalid_argument("build_embed_batch: no texts");
  if (!n_instruction.empty() && n_instruction.size() != texts.size())
    throw std::invalid_argument("build_embed_batch: " + std::to_string(n_instruction.size()) +
                                " instruction counts for " + std::to_string(texts.size()) + " texts");
  if (opt.max_length < 1) throw std::invalid_argument("build_embed_batch: max_length must be positive");
  const int bos = tok.bos_id(), eos = tok.eos_id();
  if (opt.append_eos && eos < 0) throw std::invalid_argument("build_embed_batch: append_eos, but the tokenizer has no EOS");
  std::vector<std::vector<int>> with_eos;
  if (opt.append_eos) {
    with_eos.reserve(texts.size());
    for (const std::vector<int>& t : texts) {
      with_eos.emplace_back(t.begin(), t.begin() + std::min(t.size(), (size_t)opt.max_length));
      if (!t.empty() && with_eos.back().back() != eos) {
        if ((int)with_eos.back().size() == opt.max_length) with_eos.back().pop_back();
        with_eos.back().push_back(eos);
      }
    }
  }
  const std::vector<std::vector<int>>& seqs = opt.append_eos ? with_eos : texts;
  std::vector<int> length(texts.size()), start(texts.size());
  int T = 0;
  for (size_t i = 0; i < texts.size(); ++i) {
    const std::vector<int>& t = seqs[i];
    const int n = n_instruction.empty() ? 0 : n_instruction[i];
    const std::string what = "build_embed_batch: text " + std::to_string(i);
    if (t.empty()) throw std::invalid_argument(what + " is empty");
    if (n < 0 || (size_t)n > t.size())
      throw std::invalid_argument(what + ": " + std::to_string(n) + " instruction tokens in a text of " +
                                  std::to_string(t.size()));
    length[i] = (int)std::min(t.size(), (size_t)opt.max_length);
    start[i] = std::max(n, bos >= 0 && t[0] == bos ? 1 : 0);
    if (start[i] >= length[i])
      throw std::invalid_argument(what + ": nothing to pool — " + std::to_string(t.size()) + " ids, " +
                                  std::to_string(n) + " instruction tokens, max_length " +
                                  std::to_string(opt.max_length));
    T = std::max(T, length[i]);
  }
  EmbedBatch batch;
  batch.B = (int)texts.size();
  batch.T = T;
  batch.ids.assign((size_t)batch.B * T, resolve_pad_id(tok));
  batch.key_mask.assign(batch.ids.size(), 0);
  batch.embed_mask.assign(batch.ids.size(), 0);
  for (size_t i = 0; i < texts.size(); ++i) {
    const size_t row = i * T + (opt.padding_side == PaddingSide::kLeft ? T - length[i] : 0);
    for (int k = 0; k < length[i]; ++k) {
      batch.ids[row + k] = seqs[i][k];
      batch.key_mask[row + k] = 1;
      batch.embed_mask[row + k] = k >= start[i];
    }
  }
  return batch;
}

namespace {

// Rows [row0, row0 + n) of the [B, T] arrays `arrays`.
template <typename Batch>
Batch slice_of(const Batch& b, int row0, int n, std::initializer_list<std::vector<int> Batch::*> arrays) {
  if (row0 < 0 || n < 1 || row0 + n > b.B)
    throw std::invalid_argument("slice_rows: rows [" + std::to_string(row0) + ", " + std::to_string(row0 + n) +
                                ") of a batch of " + std::to_string(b.B));
  Batch out = b;
  out.B = n;
  out.row0 = b.row0 + row0;
  for (std::vector<int> Batch::*a : arrays)
    (out.*a).assign((b.*a).begin() + (size_t)row0 * b.T, (b.*a).begin() + (size_t)(row0 + n) * b.T);
  return out;
}

}  // namespace

MntpBatch slice_rows(const MntpBatch& b, int row0, int n) {
  return slice_of(b, row0, n, {&MntpBatch::ids, &MntpBatch::key_mask, &MntpBatch::labels});
}

EmbedBatch slice_rows(const EmbedBatch& b, int row0, int n) {
  return slice_of(b, row0, n, {&EmbedBatch::ids, &EmbedBatch::key_mask, &EmbedBatch::embed_mask});
}

long mntp_label_count(const std::vector<int>& labels, int B, int T) {
  long n = 0;
  for (int b = 0; b < B; ++b)
    for (int t = 1; t < T; ++t) n += labels[(size_t)b * T + t] != -100;
  return n;
}

SimcseBatch build_simcse_batch(const std::vector<std::vector<int>>& sentences, const Tokenizer& tok,
                               const PadOptions& opt) {
  if (sentences.empty()) throw std::invalid_argument("build_simcse_batch: no sentences");
  std::vector<std::vector<int>> doubled;
  for (const std::vector<int>& s : sentences) doubled.insert(doubled.end(), {s, s});
  SimcseBatch batch;
  batch.rows = build_embed_batch(doubled, {}, tok, opt);
  batch.pairs = (int)sentences.size();
  batch.positive_of.resize(doubled.size());
  for (int i = 0; i < 2 * batch.pairs; ++i) batch.positive_of[i] = i ^ 1;
  return batch;
}

SupervisedBatch build_supervised_batch(const std::vector<SupervisedExample>& examples,
                                       const std::vector<size_t>& batch, const Tokenizer& tok,
                                       const PadOptions& opt) {
  if (batch.empty()) throw std::invalid_argument("build_supervised_batch: empty batch");
  std::vector<std::vector<int>> queries, positives, negatives;
  std::vector<int> n_instruction;
  for (size_t i : batch) {
    if (i >= examples.size())
      throw std::invalid_argument("build_supervised_batch: example index " + std::to_string(i) + " out of " +
                                  std::to_string(examples.size()));
    const SupervisedExample& e = examples[i];
    queries.push_back(e.query);
    n_instruction.push_back(e.query_instruction_tokens);
    positives.push_back(e.positive);
    if (!e.negative.empty()) negatives.push_back(e.negative);
  }
  if (!negatives.empty() && negatives.size() != batch.size())
    throw std::invalid_argument("build_supervised_batch: " + std::to_string(negatives.size()) + " of " +
                                std::to_string(batch.size()) +
                                " examples have a hard negative; a batch needs all or none");
  SupervisedBatch out;
  out.queries = build_embed_batch(queries, n_instruction, tok, opt);
  out.positives = build_embed_batch(positives, {}, tok, opt);
  if (!negatives.empty()) out.negatives = build_embed_batch(negatives, {}, tok, opt);
  return out;
}

std::vector<std::vector<size_t>> group_batches_by_dataset(const std::vector<int>& dataset_of, int batch_size,
                                                          uint64_t seed, uint64_t epoch) {
  if (batch_size < 1) throw std::invalid_argument("group_batches_by_dataset: batch_size must be positive");
  std::map<int, std::vector<size_t>> by_dataset;
  for (size_t i = 0; i < dataset_of.size(); ++i) {
    if (dataset_of[i] < 0)
      throw std::invalid_argument("group_batches_by_dataset: example " + std::to_string(i) + " has dataset id " +
                                  std::to_string(dataset_of[i]));
    by_dataset[dataset_of[i]].push_back(i);
  }
  const BatchRng rng{seed, epoch};
  std::vector<std::vector<size_t>> batches;
  for (auto& [dataset, indices] : by_dataset) {
    shuffle(indices, rng, kStreamDatasetShuffle, (uint64_t)dataset << 32);
    for (size_t i = 0; i + batch_size <= indices.size(); i += batch_size)
      batches.emplace_back(indices.begin() + i, indices.begin() + i + batch_size);
  }
  std::vector<size_t> order(batches.size());
  for (size_t i = 0; i < order.size(); ++i) order[i] = i;
  shuffle(order, rng, kStreamBatchOrder, 0);
  std::vector<std::vector<size_t>> shuffled;
  shuffled.reserve(batches.size());
  for (size_t i : order) shuffled.push_back(std::move(batches[i]));
  return shuffled;
}

}  // namespace l2v
