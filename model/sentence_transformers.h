// `llm2vec export --format sentence-transformers`: a model as the sentence-transformers library loads it
// (SentenceTransformer(DIR)), embedding as `llm2vec embed` does:
//
//   DIR/config.json, model.safetensors   the base with every adapter merged (fp32), as `convert` writes a
//                                        model; "is_causal": false for a bidirectional model (transformers
//                                        >= 5.2 then builds no causal mask for decoder-only models)
//   DIR/tokenizer.json, tokenizer_config.json (+ special_tokens_map.json when the source has one)
//                                        the model's Hugging Face tokenizer, padding on the right (the
//                                        library's pooling takes positions from the left: prompt masking,
//                                        weighted mean's position weights) and a padding token (the EOS,
//                                        as llm2vec sets it, when the tokenizer has none)
//   DIR/modules.json                     Transformer (DIR itself) -> Pooling (1_Pooling) -> Normalize
//   DIR/sentence_bert_config.json        max_seq_length: the encoder's max_length, at most the model's context
//   DIR/1_Pooling/config.json            mean -> mean_tokens, weighted_mean -> weightedmean_tokens (weights
//                                        1..n over the text's tokens, llm2vec's), last_token -> lasttoken,
//                                        eos_token -> lasttoken with a tokenizer.json whose template appends
//                                        the EOS (llm2vec appends it to every text, after truncation),
//                                        bos_token -> cls_token (the first position); include_prompt false
//                                        when instructions are not pooled (llm2vec's default)
//   DIR/2_Normalize/                     L2 normalisation (cosine similarity is unchanged by it)
//   DIR/config_sentence_transformers.json  the query prompt (`instruction.strip() + " "`, llm2vec's
//                                        format) under the name "query", cosine similarity
//   DIR/README.md                        what was exported, from what, and what differs from llm2vec
//
// Expressible only approximately, written with the difference stated (SentenceTransformersExport::differences
// and README.md): mean and weighted_mean with a tokenizer that adds a BOS token (the library pools the BOS,
// llm2vec pools the text's tokens only; Llama 2/3 and Mistral tokenizers add one, Qwen2's and SmolLM2's do
// not), and a query prompt that is not pooled (the library counts the prompt's tokens on the prompt alone,
// llm2vec inside `instruction text`: byte-level BPE tokenizes the prompt's trailing space as a token of its
// own there, so the library also leaves out the text's first token).
// Not expressible there, refused with the reason: latent_attention (NV-Embed's block is no
// sentence-transformers module), eos_token with a tokenizer whose post-processor is not a TemplateProcessing
// (or that has no EOS), and a tokenizer without a Hugging Face form (llama2.c's tok*.bin).
// Written into a sibling staging directory and renamed into place: DIR is complete or absent.
#pragma once
#include <string>
#include <vector>

#include "model/encoder.h"

namespace l2v {

struct SentenceTransformersOptions {
  std::string query_instruction;  // empty: no prompt
};

// What an export wrote, and where the library's embeddings will differ from `embed`'s (also in README.md).
struct SentenceTransformersExport {
  int max_seq_length = 0;
  std::vector<std::string> differences;
};

// Exports `spec` (merged on the CPU backend, fp32) to out_dir, which must not exist or be empty.
SentenceTransformersExport export_sentence_transformers(const EncoderSpec& spec,
                                                        const SentenceTransformersOptions& opt,
                                                        const std::string& out_dir);

}  // namespace l2v
