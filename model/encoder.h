// Inference with a trained LLM2Vec model: texts in, embeddings out. Loads the base checkpoint, merges
// the adapter chain into it (PEFT's merge_and_unload, so inference runs at base-model cost), and pools
// with the trained pooling mode (and latent-attention head).
//
// Instructions follow llm2vec's encode(): an (instruction, text) pair is fed as
// `instruction.strip() + " " + text`, and only the trailing len(tokenize(text, no special tokens))
// positions are pooled (everything before — BOS and instruction — is attended to but not pooled) when
// skip_instruction is set.
#pragma once
#include <memory>
#include <cstdint>
#include <string>
#include <vector>

#include "data/batches.h"
#include "data/tokenizer.h"
#include "model/checkpoint.h"
#include "model/model.h"
#include "model/pooler.h"

namespace l2v {

struct EncoderSpec {
  std::string model_name_or_path, tokenizer;
  std::vector<std::string> adapters;  // merged in order
  PoolingMode pooling = PoolingMode::kMean;
  std::string pooling_head;           // latent_attention: the head's safetensors file
  bool bidirectional = true;
  bool skip_instruction = true;
  // Tokens a text is cut to. 0: llm2vec's default, 512, or the model's context when that is smaller
  // (resolved by the Encoder). Not the trained max_seq_length: a SimCSE run trains on 128 tokens, yet
  // llm2vec embeds with 512, and cutting longer texts there changed the embeddings (cosine down to 0.84).
  int max_length = 0;
  PaddingSide padding_side = PaddingSide::kLeft;
};

// Reads <dir>/llm2vec_run.json written by `llm2vec train`; relative paths in it are resolved against dir.
EncoderSpec read_encoder_spec(const std::string& dir);
bool has_encoder_spec(const std::string& dir);

// A fingerprint of what determines an embedding under `spec` on a backend named backend_name (its
// storage precision): the contents of the model's, the adapters' and the tokenizer's files (every regular
// file of a directory, by name, or the file itself) and of the pooling head, and the pooling mode,
// attention, max_length, padding side and instruction handling. Reads every weight file once (about
// 10 GB/s): what keys cached embeddings (`eval retrieval`'s corpus), never stale after a retrain.
uint64_t encoder_fingerprint(const EncoderSpec& spec, const std::string& backend_name);

// llm2vec's instruction.strip() (ASCII whitespace at both ends): the text is `strip(instruction) + " " + text`.
std::string strip_instruction(std::string s);

struct EncoderInput {
  std::string instruction;  // empty: none
  std::string text;
};

// What an embed call did: the token length texts were cut to, and how many were longer.
struct EmbedStats {
  int max_length = 0;
  size_t texts = 0, truncated = 0;
};

class Encoder {
 public:
  // cuda_graphs: each batch's forward and pooling launched as one CUDA graph on a backend that has them
  // (Backend::run_as_graph); false launches every kernel directly.
  Encoder(const EncoderSpec& spec, Backend& backend, bool cuda_graphs = true);
  int dim() const { return model_.config.hidden_size; }
  const EncoderSpec& spec() const { return spec_; }  // max_length resolved
  const Tokenizer& tokenizer() const { return *tok_; }
  // The base with the adapters merged. Its linear weights' values are there until the first embed(),
  // which keeps them only in the form the backend multiplies (Backend::keep_only_forward_form: the CPU
  // backend's bf16 tiles, giving the fp32 copies back); read them before embedding (the export does).
  const Model& model() const { return model_; }
  // Embeddings [inputs.size(), dim] (not normalised), in input order, batch_size texts per forward; the
  // texts go through in llm2vec's order (by decreasing length), so that batches carry little padding.
  // progress: a line on stderr every few batches.
  // *stats (when given) receives the truncation count: texts longer than the spec's max_length keep their
  // first max_length tokens (llm2vec's truncation), which callers report rather than hide.
  std::vector<float> embed(const std::vector<EncoderInput>& inputs, int batch_size, bool progress,
                           EmbedStats* stats = nullptr);

 private:
  EncoderSpec spec_;
  Checkpoint base_;
  std::unique_ptr<Tokenizer> tok_;
  Model model_;
  PoolingHead head_;
  bool cuda_graphs_;
  bool forward_forms_only_ = false;  // keep_only_forward_form done (first embed)
};

}  // namespace l2v
