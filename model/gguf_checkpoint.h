// A GGUF file (data/gguf.h) as a model checkpoint: its metadata turned into a Hugging Face config and its
// tensors served under Hugging Face names, dequantised to fp32 — so `convert`, `embed`, `eval` and
// `train` take a .gguf wherever they take a model (a tokenizer is given separately).
//
// Architectures: llama (llama.cpp stores Mistral models as llama too) and qwen2. Config from
// <arch>.embedding_length, feed_forward_length, block_count, attention.head_count(_kv),
// attention.layer_norm_rms_epsilon, context_length, rope.freq_base (default 10000), attention.key_length
// or rope.dimension_count (the head dimension; default hidden / heads), vocab_size (else the token
// embedding's rows), tokenizer.ggml.bos/eos_token_id; tied embeddings when output.weight is absent; Qwen2
// biases. The llama architecture's q/k rows are stored interleaved for llama.cpp's RoPE
// (convert_hf_to_gguf.py's permute) and are put back in Hugging Face's order (deinterleave_rope_rows).
// Refused, naming the file and the key or tensor: another architecture, RoPE scaling (a
// rope.scaling.type other than none, or a rope_freqs tensor), a tensor this mapping does not know.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "data/gguf.h"
#include "model/config.h"
#include "model/tensor_source.h"

namespace l2v {

class GgufCheckpoint : public TensorSource {
 public:
  explicit GgufCheckpoint(const std::string& path);

  ModelConfig config;

  bool has(const std::string& name) const override;
  std::vector<int64_t> shape(const std::string& name) const override;
  void read_f32(const std::string& name, float* dst, size_t count) const override;
  std::vector<std::string> names() const override;  // sorted
  std::string describe() const override { return file_.path(); }

 private:
  struct Entry {
    const GgufTensor* tensor;
    int rope_heads;  // > 0: q/k rows to de-interleave over this many heads
  };
  const Entry& entry(const std::string& name) const;
  GgufFile file_;
  std::map<std::string, Entry> tensors_;  // by Hugging Face name
};

}  // namespace l2v
