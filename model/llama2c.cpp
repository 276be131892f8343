#include "model/llama2c.h"

#include <cstring>
#include <stdexcept>

#include "model/safetensors.h"  // MappedFile

namespace l2v {

namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

constexpr uint64_t kHeaderBytes = 7 * sizeof(int32_t);
// The newer versioned llama2.c exports start with this magic ("ak42") instead of a dimension.
constexpr int32_t kVersionedMagic = 0x616b3432;

uint64_t mul(uint64_t a, uint64_t b, const std::string& file) {
  uint64_t r;
  if (__builtin_mul_overflow(a, b, &r)) fail(file + ": llama2.c header sizes overflow 64 bits");
  return r;
}

}  // namespace

Llama2cCheckpoint::~Llama2cCheckpoint() = default;

Llama2cCheckpoint::Llama2cCheckpoint(const std::string& path) {
  file_ = std::make_unique<MappedFile>(path);
  const uint64_t fsize = file_->size();
  if (fsize < kHeaderBytes)
    fail(path + ": " + std::to_string(fsize) + " bytes, too short for the 28-byte llama2.c header");
  int32_t h[7];
  std::memcpy(h, file_->data(), kHeaderBytes);
  if (h[0] == kVersionedMagic)
    fail(path + ": this is a versioned llama2.c export (version " + std::to_string(h[1]) +
         "); only the legacy version-0 format is supported");
  const char* field[7] = {"dim", "hidden_dim", "n_layers", "n_heads", "n_kv_heads", "vocab_size", "seq_len"};
  const bool shared = h[5] > 0;
  // INT32_MIN has no positive counterpart; it is rejected with the other non-positive values.
  if (h[5] != INT32_MIN) h[5] = h[5] < 0 ? -h[5] : h[5];
  for (int i = 0; i < 7; ++i)
    if (h[i] <= 0)
      fail(path + ": llama2.c header field " + field[i] + " = " + std::to_string(h[i]) + " is not positive");
  const int dim = h[0], hidden = h[1], L = h[2], H = h[3], KV = h[4], vocab = h[5], seq = h[6];
  if (dim % H != 0)
    fail(path + ": llama2.c dim " + std::to_string(dim) + " is not divisible by n_heads " + std::to_string(H));
  if (H % KV != 0)
    fail(path + ": llama2.c n_heads " + std::to_string(H) + " is not divisible by n_kv_heads " +
         std::to_string(KV));
  const int D = dim / H;
  if (D % 2 != 0) fail(path + ": llama2.c head size " + std::to_string(D) + " is odd; RoPE needs pairs");

  // The arrays in file order, each under its Hugging Face name. The layout is walked twice: first only
  // to add up the sizes, so that a corrupt header (n_layers = 2^31 - 1, say) is refused by the file-size
  // check before a tensor table of its size is built; then to record the tensors.
  auto layer_name = [](int l, const char* rest) { return "model.layers." + std::to_string(l) + "." + rest; };
  auto walk = [&](bool record) {
    uint64_t off = kHeaderBytes;
    auto take = [&](uint64_t count) {
      uint64_t at = off;
      off += mul(count, sizeof(float), path);
      if (off < at) fail(path + ": llama2.c header sizes overflow 64 bits");
      return at;
    };
    auto single = [&](const char* name, int64_t rows, int64_t cols) {
      const uint64_t at = take(mul(static_cast<uint64_t>(rows), static_cast<uint64_t>(cols > 0 ? cols : 1), path));
      if (record) tensors_[name] = {at, cols > 0 ? std::vector<int64_t>{rows, cols} : std::vector<int64_t>{rows}, 0};
    };
    // One [L, rows, cols] block (cols 0: a [L, rows] block of vectors); layer l's slice becomes tensor
    // `rest` of layer l.
    auto per_layer = [&](const char* rest, int64_t rows, int64_t cols, int rope_heads) {
      const uint64_t per = mul(static_cast<uint64_t>(rows), static_cast<uint64_t>(cols > 0 ? cols : 1), path);
      const uint64_t base = take(mul(per, static_cast<uint64_t>(L), path));
      for (int l = 0; record && l < L; ++l) {
        Tensor t;
        t.offset = base + static_cast<uint64_t>(l) * per * sizeof(float);
        t.shape = cols > 0 ? std::vector<int64_t>{rows, cols} : std::vector<int64_t>{rows};
        t.rope_heads = rope_heads;
        tensors_[layer_name(l, rest)] = t;
      }
    };
    single("model.embed_tokens.weight", vocab, dim);
    per_layer("input_layernorm.weight", dim, 0, 0);
    per_layer("self_attn.q_proj.weight", int64_t(H) * D, dim, H);
    per_layer("self_attn.k_proj.weight", int64_t(KV) * D, dim, KV);
    per_layer("self_attn.v_proj.weight", int64_t(KV) * D, dim, 0);
    per_layer("self_attn.o_proj.weight", dim, int64_t(H) * D, 0);
    per_layer("post_attention_layernorm.weight", dim, 0, 0);
    per_layer("mlp.gate_proj.weight", hidden, dim, 0);  // w1
    per_layer("mlp.down_proj.weight", dim, hidden, 0);  // w2
    per_layer("mlp.up_proj.weight", hidden, dim, 0);    // w3
    single("model.norm.weight", dim, 0);
    // Precomputed RoPE tables of the legacy format; the forward pass computes its own frequencies.
    take(mul(2, mul(seq, D / 2, path), path));
    if (!shared) single("lm_head.weight", vocab, dim);
    return off;
  };

  const uint64_t expected = walk(/*record=*/false);
  if (expected != fsize)
    fail(path + ": file has " + std::to_string(fsize) + " bytes but its llama2.c header (dim " +
         std::to_string(dim) + ", hidden_dim " + std::to_string(hidden) + ", n_layers " + std::to_string(L) +
         ", n_heads " + std::to_string(H) + ", n_kv_heads " + std::to_string(KV) + ", vocab_size " +
         std::to_string(vocab) + ", seq_len " + std::to_string(seq) + ", " +
         (shared ? "shared classifier" : "separate classifier") + ") implies expected " +
         std::to_string(expected) + " bytes");
  walk(/*record=*/true);

  config.model_type = "llama";
  config.vocab_size = vocab;
  config.hidden_size = dim;
  config.intermediate_size = hidden;
  config.num_hidden_layers = L;
  config.num_attention_heads = H;
  config.num_key_value_heads = KV;
  config.head_dim = D;
  config.max_position_embeddings = seq;
  config.rms_norm_eps = 1e-5f;
  config.rope_theta = 10000.0f;
  config.tie_word_embeddings = shared;
  config.bos_token_id = 1;
  config.eos_token_id = 2;
}

bool Llama2cCheckpoint::has(const std::string& name) const { return tensors_.count(name) != 0; }

std::vector<int64_t> Llama2cCheckpoint::shape(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(file_->path() + ": llama2.c checkpoint has no tensor named '" + name + "'");
  return it->second.shape;
}

std::vector<std::string> Llama2cCheckpoint::names() const {
  std::vector<std::string> r;
  for (const auto& kv : tensors_) r.push_back(kv.first);
  return r;
}

std::string Llama2cCheckpoint::describe() const { return file_->path(); }

void Llama2cCheckpoint::read_f32(const std::string& name, float* dst, size_t count) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(file_->path() + ": llama2.c checkpoint has no tensor named '" + name + "'");
  const Tensor& t = it->second;
  const int64_t rows = t.shape[0];
  const int64_t cols = t.shape.size() > 1 ? t.shape[1] : 1;
  if (count != static_cast<size_t>(rows * cols))
    fail(file_->path() + ": tensor '" + name + "' has " + std::to_string(rows * cols) +
         " elements but the caller asked for " + std::to_string(count));
  const uint8_t* src = file_->data() + t.offset;
  if (t.rope_heads == 0) {
    std::memcpy(dst, src, count * sizeof(float));
    return;
  }
  deinterleave_rope_rows(dst, src, t.rope_heads, rows, cols);  // llama2.c's interleaved RoPE rows
}

}  // namespace l2v
