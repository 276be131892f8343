// A read-only collection of named tensors that can be converted to fp32 on demand: a safetensors
// checkpoint (single or sharded) or an imported llama2.c checkpoint. The weight loader only needs this
// interface, so it does not care where the numbers come from.
#pragma once
#include <cstdint>
#include <cstring>
#include <string>
#include <vector>

namespace l2v {

// "[3, 4]": a shape in error messages.
inline std::string shape_str(const std::vector<int64_t>& s) {
  std::string out = "[";
  for (size_t i = 0; i < s.size(); ++i) out += (i ? ", " : "") + std::to_string(s[i]);
  return out + "]";
}

class TensorSource {
 public:
  virtual ~TensorSource() = default;
  virtual bool has(const std::string& name) const = 0;
  // Shape of a tensor; throws std::runtime_error naming the tensor and the file if it is absent.
  virtual std::vector<int64_t> shape(const std::string& name) const = 0;
  // Converts the tensor to fp32 into dst, which holds `count` floats. Throws std::runtime_error naming
  // the tensor and the file if it is absent, if count differs from its element count, or if its dtype
  // cannot be converted to fp32.
  virtual void read_f32(const std::string& name, float* dst, size_t count) const = 0;
  virtual std::vector<std::string> names() const = 0;
  // Human-readable origin ("path/to/model.safetensors") for error messages.
  virtual std::string describe() const = 0;
};

// RoPE row layout. llama2.c and GGUF store each head's q/k projection rows with the rotary pairs
// interleaved — rows (2i, 2i+1) rotate together by angle pos * theta^(-2i/D) — where Hugging Face's
// rotate_half pairs rows (i, i + D/2) with the same angles. dst gets src with row 2i of every head moved
// to row i and row 2i+1 to row D/2 + i (the permutation of transformers' convert_llama_weights_to_hf.py,
// the inverse of llama.cpp's convert_hf_to_gguf.py permute): the HF forward pass then computes the same
// attention scores (q.k is invariant under a common permutation of q and k). src and dst hold
// rows x cols floats (cols 1 for a bias), rows a multiple of 2 * heads; they may not alias.
inline void deinterleave_rope_rows(float* dst, const uint8_t* src, int64_t heads, int64_t rows, int64_t cols) {
  const int64_t D = rows / heads;
  const size_t row_bytes = (size_t)cols * sizeof(float);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t r = 0; r < D; ++r) {
      const int64_t old_row = r < D / 2 ? 2 * r : 2 * (r - D / 2) + 1;
      std::memcpy(dst + (h * D + r) * cols, src + (h * D + old_row) * row_bytes, row_bytes);
    }
}

}  // namespace l2v
