// Import of a llama2.c checkpoint in its legacy ("version 0") format, such as Karpathy's tinyllamas
// stories260K.bin, presented under Hugging Face Llama tensor names with a matching ModelConfig so the
// rest of the project treats it like any Hugging Face Llama model.
//
// Layout (little-endian): 7 int32 (dim, hidden_dim, n_layers, n_heads, n_kv_heads, vocab_size, seq_len;
// a negative vocab_size means the classifier is stored separately rather than shared with the token
// embedding), then fp32 arrays, each weight being a PyTorch nn.Linear weight [out, in], layer after layer:
//   token_embedding [vocab, dim]       rms_att [L, dim]
//   wq [L, H*D, dim]  wk [L, KV*D, dim]  wv [L, KV*D, dim]  wo [L, dim, H*D]
//   rms_ffn [L, dim]  w1 [L, hidden, dim]  w2 [L, dim, hidden]  w3 [L, hidden, dim]
//   rms_final [dim]   freq_cis_real [seq_len, D/2]  freq_cis_imag [seq_len, D/2]   (unused)
//   wcls [vocab, dim]  (only when not shared)
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "model/config.h"
#include "model/tensor_source.h"

namespace l2v {

class MappedFile;

class Llama2cCheckpoint : public TensorSource {
 public:
  // Maps the file and validates the header and the exact file size; throws std::runtime_error naming
  // the file otherwise.
  explicit Llama2cCheckpoint(const std::string& path);
  ~Llama2cCheckpoint() override;

  // model_type "llama", sizes from the header, head_dim = dim / n_heads, max_position_embeddings =
  // seq_len, rms_norm_eps 1e-5 and rope_theta 10000 (llama2.c's constants), tie_word_embeddings when the
  // classifier is shared, BOS 1 / EOS 2.
  ModelConfig config;

  bool has(const std::string& name) const override;
  std::vector<int64_t> shape(const std::string& name) const override;
  // q_proj / k_proj rows are permuted on the fly to the Hugging Face RoPE convention (see llama2c.cpp).
  void read_f32(const std::string& name, float* dst, size_t count) const override;
  std::vector<std::string> names() const override;  // sorted
  std::string describe() const override;

 private:
  struct Tensor {
    uint64_t offset = 0;  // byte offset in the file
    std::vector<int64_t> shape;
    int rope_heads = 0;  // > 0: rows form this many heads whose rows get the RoPE permutation
  };
  std::unique_ptr<MappedFile> file_;
  std::map<std::string, Tensor> tensors_;
};

}  // namespace l2v
