// Batch builders (llm2vec's collators): turn token ids into the host arrays the model and the losses
// consume. Every array is row-major [B, T] of int:
//   ids        token ids; padded positions hold the pad id (see resolve_pad_id)
//   key_mask   1 = real token, 0 = padding (what model_forward's key_mask expects)
//   labels     MNTP only: the original id at masked positions, -100 elsewhere, at the ORIGINAL
//              positions — the loss applies the causal-LM shift (logits at t-1 predict labels[t]),
//              exactly like transformers' DataCollatorForLanguageModeling output
//   embed_mask embedding batches only: 1 = the position is pooled into the text's embedding
//
// Sequences are taken as the tokenizer produced them with add_special_tokens=true (so they begin with
// BOS when the model's tokenizer adds one); the builders never add special tokens themselves.
//
// Randomness (MNTP masking, the supervised batch order) comes from BatchRng, a pure function of
// (seed, step, what is drawn), so a resumed run rebuilds identical batches.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "host/philox.h"

namespace l2v {

// ---- randomness ----

// Philox4x32-10 keyed by the seed, with the counter (index, stream, step): every draw is independent
// of the order in which draws are made. `step` must identify the batch being built — count batches
// (micro-batches under gradient accumulation), not optimizer steps, or two batches of one step would
// share a masking pattern. The key is a hash of the seed so the same seed given to the model's dropout
// (also Philox) yields unrelated bits.
struct BatchRng {
  uint64_t seed = 0;
  uint64_t step = 0;  // < 2^32

  // Four independent 32-bit words for draw `index` of `stream`. Throws if step >= 2^32.
  Philox4 draw(uint32_t stream, uint64_t index) const;
};

// Uniform in [0, 1) with 32 random bits.
inline double unit_interval(uint32_t bits) { return bits * (1.0 / 4294967296.0); }
// Uniform integer in [0, n) from 64 random bits (multiply-shift; the bias, at most n / 2^64, is far
// below anything observable).
inline uint64_t uniform_below(uint64_t n, uint32_t hi, uint32_t lo) {
  unsigned __int128 x = ((uint64_t)hi << 32 | lo);
  return (uint64_t)((x * n) >> 64);
}

// ---- padding ----

enum class PaddingSide { kLeft, kRight };
// "left" | "right". llm2vec pads on the LEFT (LLM2Vec.from_pretrained sets padding_side = "left").
PaddingSide parse_padding_side(const std::string& side);

// The id written into padded positions: the tokenizer's pad, else its EOS, else 0. llm2vec sets
// pad_token = eos_token; the value never affects results because padded keys are masked out of
// attention and padded positions are never pooled or labelled — it only has to be a valid id.
int resolve_pad_id(const Tokenizer& tok);

struct PadOptions {
  // Longer sequences keep their first max_length ids (Hugging Face's truncation_side="right", the
  // default, used by llm2vec's tokenize(); the BOS survives).
  int max_length = 512;  // llm2vec's LLM2Vec.max_length default, used for supervised training
  PaddingSide padding_side = PaddingSide::kLeft;
  // eos_token pooling: end every text with the tokenizer's EOS (unless it already ends with it), as
  // llm2vec's prepare_for_tokenization appends " </s>". Unlike llm2vec, which appends before truncating
  // and so loses the EOS of long texts, the EOS replaces the last id that fits: it is always pooled.
  bool append_eos = false;
};
constexpr int kSimcseMaxLength = 128;  // llm2vec's SimCSE configs (max_seq_length 128)

// ---- MNTP ----

enum class MntpCollator {
  kDefault,  // transformers' DataCollatorForLanguageModeling: of the chosen positions 80% → mask
             // token, 10% → a random id uniform over [0, vocab_size), 10% unchanged
  kAllMask,  // llm2vec's DataCollatorForLanguageModelingWithFullMasking: every chosen position → mask
};
// "default" | "all_mask" (run_mntp's data_collator_type).
MntpCollator parse_mntp_collator(const std::string& name);

// The mask token the way run_mntp chooses it from `mask_token_type`: "blank" → the token "_",
// "eos" → the EOS token, anything else → that token string of the vocabulary. run_mntp's "mask" adds
// a new "<mask>" token and resizes the embeddings, which we do not support: it is refused by name.
// Throws if the tokenizer lacks the token.
int resolve_mask_token(const Tokenizer& tok, const std::string& mask_token_type);

struct MntpOptions {
  float mask_probability = 0.2f;  // the paper's value (run_mntp's mlm_probability)
  MntpCollator collator = MntpCollator::kDefault;
  int mask_token_id = -1;  // from resolve_mask_token; required
};

struct MntpBatch {
  int B = 0, T = 0;
  std::vector<int> ids, key_mask, labels;  // [B, T]
  // Data parallelism (data/loader.h): a rank's batch is rows [row0, row0 + B) of the global batch, and
  // the loss is normalised by the labels of the whole global batch (mntp_label_count of it), so the
  // ranks' gradients sum to the gradient of one process holding the global batch.
  int row0 = 0;
  long global_labels = 0;
};

// The positions the MNTP loss scores: labels[b, t] != -100 for t >= 1 (the causal-LM shift: logits at
// t - 1 predict labels[t], so a label at t = 0 is never scored).
long mntp_label_count(const std::vector<int>& labels, int B, int T);

// MNTP batch from B blocks of exactly max_seq_length ids each (the block builder concatenates
// documents and cuts them, as run_mntp's group_texts does, so there is no padding): key_mask all 1,
// then mask_mntp. Throws on no blocks or a block of another length.
MntpBatch build_mntp_batch(const std::vector<std::vector<int>>& blocks, int max_seq_length, const Tokenizer& tok,
                           const MntpOptions& opt, const BatchRng& rng);

// Masks batch.ids in place and writes batch.labels, as transformers' torch_mask_tokens: each position
// with key_mask 1 whose id is not special (Tokenizer::is_special — run_mntp's special_tokens_mask) is
// chosen independently with probability mask_probability (Bernoulli, not a fixed count); chosen
// positions get label = original id and are replaced per the collator; every other label is -100.
// Works on padded batches too (padding is never chosen). The draws for row b, position t are
// rng.draw(stream, b*T + t), so they do not depend on the rest of the batch.
void mask_mntp(MntpBatch& batch, const Tokenizer& tok, const MntpOptions& opt, const BatchRng& rng);

// ---- slices (a rank's share of a global batch; a chunk of rows) ----

// Rows [row0, row0 + n) of a batch with its T (its padding) unchanged; row0 is added to the batch's own.
MntpBatch slice_rows(const MntpBatch& b, int row0, int n);

// ---- embedding batches (SimCSE, supervised) ----

struct EmbedBatch {
  int B = 0, T = 0;  // T = the longest row after truncation (padding="longest", as llm2vec)
  std::vector<int> ids, key_mask, embed_mask;  // [B, T]
  int row0 = 0;      // the index of row 0 in the global batch (a rank's or a chunk's share; keys dropout)
};

// Pads texts into one batch. Attention sees every real token (key_mask), instruction included; the
// embedding pools (embed_mask) the real tokens from max(n_instruction[i], leading BOS) on.
//
// This is llm2vec's separator convention: a query is `instruction + "; " + separator + text`, a
// document `separator + text`, and tokenize() pools the last len(tokenize(text,
// add_special_tokens=False)) positions — everything the tokenizer put before the text (the BOS and the
// instruction) is never pooled. So n_instruction counts from position 0 and INCLUDES the BOS when the
// ids start with one; with n_instruction = 0 a leading BOS is still excluded (llm2vec pools no BOS for
// an instruction-free text either). An empty n_instruction means 0 for every text.
//
// Where we deliberately differ: llm2vec counts its pooled positions from the end of the row with a
// separately truncated text, so a truncated query pools instruction tokens; we pool the text tokens
// that survive truncation. Throws on no texts, an empty text, n_instruction outside [0, length], or a
// text with nothing left to pool.
EmbedBatch build_embed_batch(const std::vector<std::vector<int>>& texts, const std::vector<int>& n_instruction,
                             const Tokenizer& tok, const PadOptions& opt);
EmbedBatch slice_rows(const EmbedBatch& b, int row0, int n);

// SimCSE: 2B rows, rows 2b and 2b+1 both hold sentence b. One forward pass over the doubled batch gives
// the two dropout views (the dropout masks are keyed by the row, so they differ). The loss (llm2vec's
// HardNegativeNLLLoss) scores the even rows (queries) against the odd rows (positives); positive_of
// makes the pairing explicit. The pairs are adjacent so that a rank's share of a global batch, and a
// chunk of rows, are contiguous rows of it.
// Pooling excludes the BOS, as llm2vec embeds an instruction-free text at inference; llm2vec's SimCSE
// trainer itself passes Wiki1M lines without the separator, gets an all-zero embed_mask and, through
// `hidden[i, -0:]`, averages every position of the padded row — a quirk we do not reproduce.
struct SimcseBatch {
  EmbedBatch rows;                // B = 2 * pairs
  int pairs = 0;                  // the number of sentences
  std::vector<int> positive_of;   // [2 * pairs]: the row holding the other view of row i
};
SimcseBatch build_simcse_batch(const std::vector<std::vector<int>>& sentences, const Tokenizer& tok,
                               const PadOptions& opt = PadOptions{kSimcseMaxLength});

// One supervised (E5) training example, tokenized with add_special_tokens=true.
struct SupervisedExample {
  std::vector<int> query;          // [BOS] instruction "; " query
  int query_instruction_tokens = 0;  // the first n ids of query are not pooled (BOS included, see above)
  std::vector<int> positive;       // [BOS] document (llm2vec's E5 documents carry no instruction)
  std::vector<int> negative;       // [BOS] hard negative; empty when the data has none
  int dataset = 0;                 // >= 0; a batch is drawn from one dataset
};

// Three groups padded separately, as llm2vec's collator tokenizes queries, positives and negatives
// in three calls (short instruction-prefixed queries are not padded to document length); row b of each
// group is example batch[b]. negatives.B is 0 when no example of the batch has a negative; a batch
// with some but not all negatives is refused.
struct SupervisedBatch {
  EmbedBatch queries, positives, negatives;
};
SupervisedBatch build_supervised_batch(const std::vector<SupervisedExample>& examples,
                                       const std::vector<size_t>& batch, const Tokenizer& tok,
                                       const PadOptions& opt = PadOptions{});

// llm2vec's E5 batching: the indices of each dataset are shuffled, cut into batches of batch_size
// (an incomplete last batch is dropped), and the batches of all datasets are shuffled together, so
// in-batch negatives always come from the same task. Deterministic in (seed, epoch); datasets are
// visited in increasing id. Throws on a negative dataset id or batch_size < 1.
std::vector<std::vector<size_t>> group_batches_by_dataset(const std::vector<int>& dataset_of, int batch_size,
                                                          uint64_t seed, uint64_t epoch);

}  // namespace l2v
