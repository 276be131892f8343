// Tests of the batch builders (data/batches.h): MNTP masking statistics against transformers'
// 80/10/10 rule with 5-sigma binomial bounds, label/special-token/padding invariants, determinism in
// (seed, step), SimCSE pairing, padding and truncation, the supervised embed_mask convention, and the
// single-dataset batch grouping. A small fake tokenizer stands in for the real ones.
#include "data/batches.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <map>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

namespace {

using l2v::BatchRng;
using l2v::EmbedBatch;
using l2v::MntpBatch;
using l2v::MntpCollator;
using l2v::MntpOptions;
using l2v::PaddingSide;
using l2v::PadOptions;

// Ids 0..2 are UNK/BOS/EOS, 3 is an added special token; "_" is an ordinary token. Each special
// id can be switched off to exercise the fallbacks.
struct FakeTokenizer : l2v::Tokenizer {
  int bos = 1, eos = 2, pad = -1;
  bool has_blank = true;
  static constexpr int kVocab = 1000;
  static constexpr int kBlank = 95;
  static constexpr int kAddedSpecial = 3;

  std::vector<int> encode(const std::string&, bool) const override { return {}; }
  std::string decode(const std::vector<int>&, bool) const override { return ""; }
  int vocab_size() const override { return kVocab; }
  int token_to_id(const std::string& token) const override {
    if (token == "_") return has_blank ? kBlank : -1;
    if (token == "<s>") return bos;
    if (token == "</s>") return eos;
    if (token == "<extra>") return kAddedSpecial;
    return -1;
  }
  bool is_special(int id) const override { return id == 0 || id == bos || id == eos || id == kAddedSpecial; }
  int bos_id() const override { return bos; }
  int eos_id() const override { return eos; }
  int pad_id() const override { return pad; }
  uint64_t fingerprint() const override { return 42; }
  std::string describe() const override { return "fake"; }
};

// Ordinary (non-special) ids that avoid the mask token, so "equals the mask token" identifies masking.
int ordinary_id(std::mt19937& gen) {
  std::uniform_int_distribution<int> d(4, FakeTokenizer::kVocab - 1);
  for (;;) {
    int id = d(gen);
    if (id != FakeTokenizer::kBlank) return id;
  }
}

// Blocks the way the block builder cuts concatenated documents: each document starts with BOS and ends
// with EOS, an added special token now and then.
std::vector<std::vector<int>> make_blocks(int B, int T, uint32_t seed) {
  std::mt19937 gen(seed);
  std::vector<std::vector<int>> blocks(B, std::vector<int>(T));
  for (auto& block : blocks) {
    for (int t = 0; t < T; ++t) {
      int r = (int)(gen() % 40);
      block[t] = r == 0 ? 1 : r == 1 ? 2 : r == 2 ? FakeTokenizer::kAddedSpecial : ordinary_id(gen);
    }
  }
  return blocks;
}

MntpOptions mntp_options(MntpCollator collator, float p = 0.2f) {
  MntpOptions opt;
  opt.mask_probability = p;
  opt.collator = collator;
  opt.mask_token_id = FakeTokenizer::kBlank;
  return opt;
}

// |observed - n p| within 5 binomial standard deviations.
void expect_binomial(int64_t observed, int64_t n, double p, const char* what) {
  double mean = n * p, sigma = std::sqrt(n * p * (1 - p));
  EXPECT_LE(std::fabs(observed - mean), 5 * sigma)
      << what << ": " << observed << " of " << n << ", expected " << mean << " +- " << sigma;
}

// The invariants every MNTP batch satisfies against the unmasked blocks.
void expect_mntp_invariants(const MntpBatch& b, const std::vector<int>& original, const FakeTokenizer& tok,
                            MntpCollator collator) {
  ASSERT_EQ(b.labels.size(), original.size());
  for (size_t i = 0; i < original.size(); ++i) {
    if (b.labels[i] == -100) {
      EXPECT_EQ(b.ids[i], original[i]) << "unchosen position " << i << " changed";
    } else {
      EXPECT_EQ(b.labels[i], original[i]) << "label at " << i;
      EXPECT_FALSE(tok.is_special(original[i])) << "special token chosen at " << i;
      EXPECT_EQ(b.key_mask[i], 1) << "padding chosen at " << i;
      if (collator == MntpCollator::kAllMask) { EXPECT_EQ(b.ids[i], FakeTokenizer::kBlank) << "at " << i; }
    }
  }
}

std::vector<int> flatten(const std::vector<std::vector<int>>& rows) {
  std::vector<int> out;
  for (const auto& r : rows) out.insert(out.end(), r.begin(), r.end());
  return out;
}

// ---- BatchRng ----

TEST(BatchRng, PureFunctionOfSeedStepStreamIndex) {
  BatchRng a{7, 3}, same{7, 3}, other_step{7, 4}, other_seed{8, 3};
  auto eq = [](l2v::Philox4 x, l2v::Philox4 y) { return std::equal(x.v, x.v + 4, y.v); };
  EXPECT_TRUE(eq(a.draw(1, 5), same.draw(1, 5)));
  EXPECT_FALSE(eq(a.draw(1, 5), other_step.draw(1, 5)));
  EXPECT_FALSE(eq(a.draw(1, 5), other_seed.draw(1, 5)));
  EXPECT_FALSE(eq(a.draw(1, 5), a.draw(2, 5)));
  EXPECT_FALSE(eq(a.draw(1, 5), a.draw(1, 6)));
  EXPECT_THROW((BatchRng{7, 1ull << 32}.draw(1, 0)), std::invalid_argument);
}

TEST(BatchRng, UniformBelowStaysInRangeAndCoversIt) {
  BatchRng rng{1, 0};
  std::vector<int> hits(10, 0);
  for (int i = 0; i < 10000; ++i) {
    l2v::Philox4 r = rng.draw(9, i);
    uint64_t x = l2v::uniform_below(10, r.v[0], r.v[1]);
    ASSERT_LT(x, 10u);
    ++hits[x];
  }
  for (int h : hits) expect_binomial(h, 10000, 0.1, "uniform_below bucket");
  EXPECT_EQ(l2v::unit_interval(0), 0.0);
  EXPECT_LT(l2v::unit_interval(0xFFFFFFFFu), 1.0);
}

// ---- MNTP ----

TEST(Mntp, DefaultCollatorRatesWithinBinomialBounds) {
  FakeTokenizer tok;
  const int B = 8, T = 128, steps = 100;
  const double p = 0.2, V = FakeTokenizer::kVocab;
  MntpOptions opt = mntp_options(MntpCollator::kDefault);
  int64_t eligible = 0, chosen = 0, to_mask = 0, unchanged = 0, random_other = 0;
  double random_sum = 0;
  std::set<int> chosen_per_row;
  for (int step = 0; step < steps; ++step) {
    auto blocks = make_blocks(B, T, 100 + step);
    std::vector<int> original = flatten(blocks);
    MntpBatch b = l2v::build_mntp_batch(blocks, T, tok, opt, BatchRng{1234, (uint64_t)step});
    ASSERT_EQ(b.B, B);
    ASSERT_EQ(b.T, T);
    EXPECT_TRUE(std::all_of(b.key_mask.begin(), b.key_mask.end(), [](int m) { return m == 1; }));
    expect_mntp_invariants(b, original, tok, opt.collator);
    for (int r = 0; r < B; ++r) {
      int in_row = 0;
      for (int t = 0; t < T; ++t) {
        size_t i = (size_t)r * T + t;
        if (tok.is_special(original[i])) continue;
        ++eligible;
        if (b.labels[i] == -100) continue;
        ++chosen;
        ++in_row;
        if (b.ids[i] == FakeTokenizer::kBlank) {
          ++to_mask;
        } else if (b.ids[i] == original[i]) {
          ++unchanged;
        } else {
          ++random_other;
          random_sum += b.ids[i];
        }
      }
      chosen_per_row.insert(in_row);
    }
  }
  expect_binomial(chosen, eligible, p, "chosen");
  // A random replacement lands on the mask token or on the original id with probability 1/V each.
  expect_binomial(to_mask, chosen, 0.8 + 0.1 / V, "replaced by the mask token");
  expect_binomial(unchanged, chosen, 0.1 + 0.1 / V, "kept unchanged");
  expect_binomial(random_other, chosen, 0.1 * (1 - 2 / V), "replaced by a random token");
  // Random ids are uniform over [0, V): their mean is (V-1)/2 with variance (V^2-1)/12 per draw.
  double mean = random_sum / random_other, sigma = std::sqrt((V * V - 1) / 12 / random_other);
  EXPECT_LE(std::fabs(mean - (V - 1) / 2), 5 * sigma) << "mean random id " << mean;
  // Bernoulli choice, not a fixed count per row.
  EXPECT_GT(chosen_per_row.size(), 5u);
}

TEST(Mntp, AllMaskReplacesEveryChosenPosition) {
  FakeTokenizer tok;
  const int B = 8, T = 64, steps = 50;
  const double p = 0.3;
  MntpOptions opt = mntp_options(MntpCollator::kAllMask, (float)p);
  int64_t eligible = 0, chosen = 0;
  for (int step = 0; step < steps; ++step) {
    auto blocks = make_blocks(B, T, 900 + step);
    std::vector<int> original = flatten(blocks);
    MntpBatch b = l2v::build_mntp_batch(blocks, T, tok, opt, BatchRng{5, (uint64_t)step});
    expect_mntp_invariants(b, original, tok, opt.collator);
    for (size_t i = 0; i < original.size(); ++i) {
      if (tok.is_special(original[i])) continue;
      ++eligible;
      chosen += b.labels[i] != -100;
    }
  }
  expect_binomial(chosen, eligible, p, "chosen");
}

TEST(Mntp, ProbabilityOneChoosesExactlyTheRealNonSpecialTokens) {
  // A padded (line-by-line style) batch: padding and special tokens are never chosen, everything
  // else is when p = 1.
  FakeTokenizer tok;
  MntpBatch b;
  b.B = 2;
  b.T = 6;
  b.ids = {2, 2, 1, 10, 11, 2,  // left-padded with EOS as the pad
           1, 20, 3, 21, 7, 7};  // right-padded with an ordinary id
  b.key_mask = {0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0};
  const std::vector<int> original = b.ids;
  l2v::mask_mntp(b, tok, mntp_options(MntpCollator::kAllMask, 1.0f), BatchRng{3, 0});
  const std::vector<int> expected_labels = {-100, -100, -100, 10, 11, -100, -100, 20, -100, 21, -100, -100};
  EXPECT_EQ(b.labels, expected_labels);
  expect_mntp_invariants(b, original, tok, MntpCollator::kAllMask);
}

TEST(Mntp, ProbabilityZeroLeavesTheBatchAlone) {
  FakeTokenizer tok;
  auto blocks = make_blocks(4, 32, 1);
  MntpBatch b = l2v::build_mntp_batch(blocks, 32, tok, mntp_options(MntpCollator::kDefault, 0.0f), BatchRng{});
  EXPECT_EQ(b.ids, flatten(blocks));
  EXPECT_TRUE(std::all_of(b.labels.begin(), b.labels.end(), [](int l) { return l == -100; }));
}

TEST(Mntp, SameSeedAndStepRebuildTheBatch) {
  FakeTokenizer tok;
  auto blocks = make_blocks(4, 64, 2);
  MntpOptions opt = mntp_options(MntpCollator::kDefault);
  MntpBatch a = l2v::build_mntp_batch(blocks, 64, tok, opt, BatchRng{11, 5});
  MntpBatch again = l2v::build_mntp_batch(blocks, 64, tok, opt, BatchRng{11, 5});
  MntpBatch next = l2v::build_mntp_batch(blocks, 64, tok, opt, BatchRng{11, 6});
  MntpBatch reseeded = l2v::build_mntp_batch(blocks, 64, tok, opt, BatchRng{12, 5});
  EXPECT_EQ(a.ids, again.ids);
  EXPECT_EQ(a.labels, again.labels);
  EXPECT_NE(a.labels, next.labels);
  EXPECT_NE(a.labels, reseeded.labels);
  // A row's masking depends on its own position only, not on the other rows' content.
  auto changed = blocks;
  changed[3] = make_blocks(1, 64, 77)[0];
  MntpBatch c = l2v::build_mntp_batch(changed, 64, tok, opt, BatchRng{11, 5});
  EXPECT_TRUE(std::equal(a.labels.begin(), a.labels.begin() + 3 * 64, c.labels.begin()));
}

TEST(Mntp, Errors) {
  FakeTokenizer tok;
  MntpOptions opt = mntp_options(MntpCollator::kDefault);
  EXPECT_THROW(l2v::build_mntp_batch({}, 8, tok, opt, BatchRng{}), std::invalid_argument);
  auto blocks = make_blocks(3, 8, 1);
  blocks[1].pop_back();
  EXPECT_THROW(l2v::build_mntp_batch(blocks, 8, tok, opt, BatchRng{}), std::invalid_argument);
  blocks = make_blocks(3, 8, 1);
  MntpOptions bad = opt;
  bad.mask_token_id = -1;  // never resolved
  EXPECT_THROW(l2v::build_mntp_batch(blocks, 8, tok, bad, BatchRng{}), std::invalid_argument);
  bad.mask_token_id = FakeTokenizer::kVocab;
  EXPECT_THROW(l2v::build_mntp_batch(blocks, 8, tok, bad, BatchRng{}), std::invalid_argument);
  bad = opt;
  bad.mask_probability = 1.5f;
  EXPECT_THROW(l2v::build_mntp_batch(blocks, 8, tok, bad, BatchRng{}), std::invalid_argument);
  EXPECT_THROW(l2v::parse_mntp_collator("bert"), std::invalid_argument);
  EXPECT_EQ(l2v::parse_mntp_collator("all_mask"), MntpCollator::kAllMask);
  EXPECT_EQ(l2v::parse_mntp_collator("default"), MntpCollator::kDefault);
}

TEST(MaskToken, ResolvedLikeRunMntp) {
  FakeTokenizer tok;
  EXPECT_EQ(l2v::resolve_mask_token(tok, "blank"), FakeTokenizer::kBlank);
  EXPECT_EQ(l2v::resolve_mask_token(tok, "eos"), 2);
  EXPECT_EQ(l2v::resolve_mask_token(tok, "<extra>"), FakeTokenizer::kAddedSpecial);
  EXPECT_THROW(l2v::resolve_mask_token(tok, "mask"), std::invalid_argument);
  EXPECT_THROW(l2v::resolve_mask_token(tok, "<nope>"), std::invalid_argument);
  EXPECT_THROW(l2v::resolve_mask_token(tok, ""), std::invalid_argument);
  FakeTokenizer bare;
  bare.has_blank = false;
  bare.eos = -1;
  try {
    l2v::resolve_mask_token(bare, "blank");
    ADD_FAILURE() << "no throw without \"_\"";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("\"_\""), std::string::npos) << e.what();
  }
  EXPECT_THROW(l2v::resolve_mask_token(bare, "eos"), std::invalid_argument);
}

// ---- padding ----

TEST(Padding, PadIdFallsBackToEosThenZero) {
  FakeTokenizer tok;
  tok.pad = 9;
  EXPECT_EQ(l2v::resolve_pad_id(tok), 9);
  tok.pad = -1;
  EXPECT_EQ(l2v::resolve_pad_id(tok), 2);
  tok.eos = -1;
  EXPECT_EQ(l2v::resolve_pad_id(tok), 0);
  EXPECT_EQ(l2v::parse_padding_side("left"), PaddingSide::kLeft);
  EXPECT_EQ(l2v::parse_padding_side("right"), PaddingSide::kRight);
  EXPECT_THROW(l2v::parse_padding_side("both"), std::invalid_argument);
}

TEST(Padding, LeftAndRightRowsTruncatedToMaxLength) {
  FakeTokenizer tok;
  tok.pad = 9;
  const std::vector<std::vector<int>> texts = {{1, 10, 11}, {1, 20, 21, 22, 23, 24, 25}, {30}};
  EmbedBatch left = l2v::build_embed_batch(texts, {}, tok, PadOptions{5, PaddingSide::kLeft});
  ASSERT_EQ(left.B, 3);
  ASSERT_EQ(left.T, 5);  // the longest row after truncation
  EXPECT_EQ(left.ids, (std::vector<int>{9, 9, 1, 10, 11, 1, 20, 21, 22, 23, 9, 9, 9, 9, 30}));
  EXPECT_EQ(left.key_mask, (std::vector<int>{0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0, 1}));
  EXPECT_EQ(left.embed_mask, (std::vector<int>{0, 0, 0, 1, 1, 0, 1, 1, 1, 1, 0, 0, 0, 0, 1}));
  EmbedBatch right = l2v::build_embed_batch(texts, {}, tok, PadOptions{5, PaddingSide::kRight});
  EXPECT_EQ(right.ids, (std::vector<int>{1, 10, 11, 9, 9, 1, 20, 21, 22, 23, 30, 9, 9, 9, 9}));
  EXPECT_EQ(right.key_mask, (std::vector<int>{1, 1, 1, 0, 0, 1, 1, 1, 1, 1, 1, 0, 0, 0, 0}));
  EXPECT_EQ(right.embed_mask, (std::vector<int>{0, 1, 1, 0, 0, 0, 1, 1, 1, 1, 1, 0, 0, 0, 0}));
}

// ---- SimCSE ----

TEST(Simcse, Rows2bAnd2bPlus1HoldSentenceB) {
  FakeTokenizer tok;
  std::mt19937 gen(4);
  std::vector<std::vector<int>> sentences;
  for (int n : {5, 200, 1, 40}) {
    std::vector<int> s = {1};
    for (int k = 0; k < n; ++k) s.push_back(ordinary_id(gen));
    sentences.push_back(s);
  }
  for (PaddingSide side : {PaddingSide::kLeft, PaddingSide::kRight}) {
    PadOptions opt{l2v::kSimcseMaxLength, side};
    l2v::SimcseBatch s = l2v::build_simcse_batch(sentences, tok, opt);
    const int B = (int)sentences.size(), T = s.rows.T;
    ASSERT_EQ(s.pairs, B);
    ASSERT_EQ(s.rows.B, 2 * B);
    EXPECT_EQ(T, l2v::kSimcseMaxLength);  // the 201-id sentence is truncated
    ASSERT_EQ(s.positive_of.size(), (size_t)(2 * B));
    for (int i = 0; i < 2 * B; ++i) {
      const int j = s.positive_of[i];
      EXPECT_EQ(j, i % 2 == 0 ? i + 1 : i - 1);
      EXPECT_EQ(s.positive_of[j], i);
      for (int t = 0; t < T; ++t) {
        EXPECT_EQ(s.rows.ids[i * T + t], s.rows.ids[j * T + t]);
        EXPECT_EQ(s.rows.key_mask[i * T + t], s.rows.key_mask[j * T + t]);
        EXPECT_EQ(s.rows.embed_mask[i * T + t], s.rows.embed_mask[j * T + t]);
      }
    }
    for (int b = 0; b < B; ++b) {
      const int len = std::min((int)sentences[b].size(), T), r = 2 * b;
      const int first = side == PaddingSide::kLeft ? T - len : 0;
      for (int t = 0; t < T; ++t) {
        const bool real = t >= first && t < first + len;
        EXPECT_EQ(s.rows.key_mask[r * T + t], real) << "row " << r << " t " << t;
        if (real) { EXPECT_EQ(s.rows.ids[r * T + t], sentences[b][t - first]); }
        EXPECT_EQ(s.rows.embed_mask[r * T + t], real && t != first) << "BOS or padding pooled";
      }
    }
  }
  EXPECT_THROW(l2v::build_simcse_batch({}, tok), std::invalid_argument);
  EXPECT_THROW(l2v::build_simcse_batch({{1, 5}, {}}, tok), std::invalid_argument);
  EXPECT_THROW(l2v::build_simcse_batch({{1}}, tok), std::invalid_argument);  // only a BOS: nothing to pool
}

// ---- supervised ----

l2v::SupervisedExample example(int instruction, int query, int doc, int dataset, bool negative = true) {
  l2v::SupervisedExample e;
  e.query.push_back(1);
  for (int k = 1; k < instruction; ++k) e.query.push_back(100 + k);  // BOS + instruction "; "
  for (int k = 0; k < query; ++k) e.query.push_back(500 + k);
  e.query_instruction_tokens = instruction;
  e.positive = {1};
  for (int k = 0; k < doc; ++k) e.positive.push_back(600 + k);
  if (negative) {
    e.negative = {1};
    for (int k = 0; k < doc + 1; ++k) e.negative.push_back(700 + k);
  }
  e.dataset = dataset;
  return e;
}

TEST(Supervised, EmbedMaskExcludesInstructionAndPaddingKeyMaskKeepsInstruction) {
  FakeTokenizer tok;
  std::vector<l2v::SupervisedExample> ex = {example(6, 3, 10, 0), example(4, 5, 2, 0), example(0, 4, 7, 0)};
  ex[2].query.erase(ex[2].query.begin());  // no BOS and no instruction
  for (PaddingSide side : {PaddingSide::kLeft, PaddingSide::kRight}) {
    l2v::SupervisedBatch sb = l2v::build_supervised_batch(ex, {0, 1, 2}, tok, PadOptions{512, side});
    const EmbedBatch& q = sb.queries;
    ASSERT_EQ(q.B, 3);
    ASSERT_EQ(q.T, 9);  // each group is padded to its own longest row
    EXPECT_EQ(sb.positives.T, 11);
    EXPECT_EQ(sb.negatives.T, 12);
    EXPECT_EQ(sb.negatives.B, 3);
    for (int b = 0; b < 3; ++b) {
      const std::vector<int>& ids = ex[b].query;
      const int len = (int)ids.size(), n = ex[b].query_instruction_tokens;
      const int first = side == PaddingSide::kLeft ? q.T - len : 0;
      int pooled = 0, attended = 0;
      for (int t = 0; t < q.T; ++t) {
        const int k = t - first;  // index into the query ids
        const bool real = k >= 0 && k < len;
        EXPECT_EQ(q.key_mask[b * q.T + t], real);
        EXPECT_EQ(q.embed_mask[b * q.T + t], real && k >= n) << "query " << b << " t " << t;
        if (real) { EXPECT_EQ(q.ids[b * q.T + t], ids[k]); }
        pooled += q.embed_mask[b * q.T + t];
        attended += q.key_mask[b * q.T + t];
      }
      EXPECT_EQ(pooled, len - n);  // exactly the query text: llm2vec's len(tokenize(query, no specials))
      EXPECT_EQ(attended, len);
    }
    // Documents carry no instruction: everything but BOS and padding is pooled.
    for (const EmbedBatch* d : {&sb.positives, &sb.negatives}) {
      for (int b = 0; b < 3; ++b) {
        int pooled = 0, attended = 0;
        for (int t = 0; t < d->T; ++t) {
          pooled += d->embed_mask[b * d->T + t];
          attended += d->key_mask[b * d->T + t];
          if (d->ids[b * d->T + t] == 1) { EXPECT_EQ(d->embed_mask[b * d->T + t], 0) << "BOS pooled"; }
        }
        EXPECT_EQ(pooled, attended - 1);
      }
    }
  }
}

TEST(Supervised, TruncationKeepsTheInstructionUnpooled) {
  FakeTokenizer tok;
  std::vector<l2v::SupervisedExample> ex = {example(5, 20, 3, 0)};
  l2v::SupervisedBatch sb = l2v::build_supervised_batch(ex, {0}, tok, PadOptions{8, PaddingSide::kLeft});
  EXPECT_EQ(sb.queries.T, 8);
  EXPECT_EQ(sb.queries.embed_mask, (std::vector<int>{0, 0, 0, 0, 0, 1, 1, 1}));
  EXPECT_EQ(sb.queries.ids, (std::vector<int>(ex[0].query.begin(), ex[0].query.begin() + 8)));
  // An instruction that fills max_length leaves nothing to pool.
  EXPECT_THROW(l2v::build_supervised_batch(ex, {0}, tok, PadOptions{5}), std::invalid_argument);
}

TEST(Supervised, NoBosTokenizerPoolsTheWholeInstructionFreeText) {
  FakeTokenizer tok;
  tok.bos = -1;  // Qwen2 adds no BOS
  EmbedBatch e = l2v::build_embed_batch({{40, 41, 42}}, {0}, tok, PadOptions{});
  EXPECT_EQ(e.embed_mask, (std::vector<int>{1, 1, 1}));
  e = l2v::build_embed_batch({{40, 41, 42}}, {1}, tok, PadOptions{});
  EXPECT_EQ(e.embed_mask, (std::vector<int>{0, 1, 1}));
}

TEST(Supervised, Errors) {
  FakeTokenizer tok;
  std::vector<l2v::SupervisedExample> ex = {example(3, 2, 2, 0), example(3, 2, 2, 0, false)};
  EXPECT_THROW(l2v::build_supervised_batch(ex, {}, tok), std::invalid_argument);
  EXPECT_THROW(l2v::build_supervised_batch(ex, {0, 5}, tok), std::invalid_argument);
  EXPECT_THROW(l2v::build_supervised_batch(ex, {0, 1}, tok), std::invalid_argument);  // some negatives
  EXPECT_EQ(l2v::build_supervised_batch(ex, {1, 1}, tok).negatives.B, 0);           // none is fine
  ex[0].query_instruction_tokens = 6;  // more than the query holds
  EXPECT_THROW(l2v::build_supervised_batch(ex, {0}, tok), std::invalid_argument);
  ex[0].query_instruction_tokens = 5;  // all of it: nothing to pool
  EXPECT_THROW(l2v::build_supervised_batch(ex, {0}, tok), std::invalid_argument);
  ex[0].query_instruction_tokens = -1;
  EXPECT_THROW(l2v::build_supervised_batch(ex, {0}, tok), std::invalid_argument);
  EXPECT_THROW(l2v::build_embed_batch({{1, 5}}, {0, 0}, tok, PadOptions{}), std::invalid_argument);
}

TEST(Grouping, SingleDatasetBatchesPartitionTheKeptExamples) {
  // Dataset sizes 37, 5, 64, 3 (interleaved) with batch size 8: 4 + 0 + 8 + 0 batches.
  std::vector<int> dataset_of;
  std::map<int, int> size = {{0, 37}, {1, 5}, {2, 64}, {5, 3}};
  for (int k = 0; k < 64; ++k)
    for (auto& [d, n] : size)
      if (k < n) dataset_of.push_back(d);
  const int B = 8;
  auto batches = l2v::group_batches_by_dataset(dataset_of, B, 99, 0);
  ASSERT_EQ(batches.size(), 12u);
  std::set<size_t> seen;
  std::map<int, int> kept;
  std::vector<int> batch_dataset;
  for (const auto& batch : batches) {
    ASSERT_EQ(batch.size(), (size_t)B);
    const int d = dataset_of[batch[0]];
    batch_dataset.push_back(d);
    for (size_t i : batch) {
      ASSERT_LT(i, dataset_of.size());
      EXPECT_EQ(dataset_of[i], d) << "batch mixes datasets";
      EXPECT_TRUE(seen.insert(i).second) << "example " << i << " in two batches";
      ++kept[d];
    }
  }
  for (auto& [d, n] : size) EXPECT_EQ(kept[d], n / B * B) << "dataset " << d;
  // Shuffled within datasets (dataset 2 is cut from a permutation, not in index order) and across.
  EXPECT_FALSE(std::is_sorted(batch_dataset.begin(), batch_dataset.end()));
  std::vector<size_t> all(seen.begin(), seen.end()), order;
  for (const auto& batch : batches) order.insert(order.end(), batch.begin(), batch.end());
  EXPECT_NE(order, all);

  EXPECT_EQ(l2v::group_batches_by_dataset(dataset_of, B, 99, 0), batches);
  EXPECT_NE(l2v::group_batches_by_dataset(dataset_of, B, 99, 1), batches);
  EXPECT_NE(l2v::group_batches_by_dataset(dataset_of, B, 100, 0), batches);
  EXPECT_TRUE(l2v::group_batches_by_dataset({}, B, 1, 0).empty());
  EXPECT_THROW(l2v::group_batches_by_dataset(dataset_of, 0, 1, 0), std::invalid_argument);
  EXPECT_THROW(l2v::group_batches_by_dataset({0, -1}, 1, 1, 0), std::invalid_argument);
}

}  // namespace
