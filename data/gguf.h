// GGUF files (llama.cpp's model format, versions 2 and 3): the header, the metadata, the tensor table, and
// the dequantisation of their tensors to fp32 — the reading half of `llm2vec convert --from-gguf`.
//
// Layout (little-endian): "GGUF", version u32, tensor count u64, metadata count u64; the metadata as
// key (u64 length + bytes), value type u32, value (u8 i8 u16 i16 u32 i32 f32 bool string array u64 i64
// f64; an array is its element type u32, count u64, elements); the tensor table as name, dimension count
// u32, dimensions u64 (innermost first), ggml type u32, offset u64 from the data section; the data
// section at the end of the table rounded up to general.alignment (32 when absent).
//
// The file is mapped read-only. Everything is validated before use — counts against the bytes left,
// string lengths, array element types, dimension products against overflow, the row length against the
// type's block size, every tensor's offset (aligned) and byte range inside the file — and every error
// names the file, and the key or tensor concerned.
#pragma once
#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace l2v {

// The ggml tensor types this reader dequantises (ggml's numbering).
enum class GgmlType : uint32_t {
  kF32 = 0, kF16 = 1, kQ4_0 = 2, kQ4_1 = 3, kQ5_0 = 6, kQ5_1 = 7, kQ8_0 = 8,
  kQ4_K = 12, kQ5_K = 13, kQ6_K = 14, kBF16 = 30,
};

// The name ggml gives `type` ("Q4_K"), or "type N" for one this reader does not know.
std::string ggml_type_name(uint32_t type);

// fp32 values of n elements of `type` stored at `data` (n a multiple of the type's block size: 1, 32 or
// 256), exactly as the gguf Python package's quants.dequantize computes them: each block's scales from
// fp16 (and bf16) bit patterns, then the products and sums in fp32 in its order (FMA contraction would
// change the last bit; the build does not contract). Throws std::invalid_argument for another type or n.
void dequantize_ggml(uint32_t type, const uint8_t* data, size_t n, float* out);
// Bytes of n elements of `type` (throws as dequantize_ggml).
size_t ggml_bytes(uint32_t type, size_t n);

struct GgufTensor {
  std::string name;
  std::vector<uint64_t> dims;  // innermost (contiguous) first, as ggml's ne
  uint32_t type = 0;
  uint64_t offset = 0;  // from the start of the file
  uint64_t bytes = 0;
  uint64_t elements() const;
};

class GgufFile {
 public:
  explicit GgufFile(const std::string& path);
  ~GgufFile();
  GgufFile(const GgufFile&) = delete;
  GgufFile& operator=(const GgufFile&) = delete;

  const std::string& path() const { return path_; }
  uint32_t version() const { return version_; }
  // key -> value: numbers, booleans, strings, arrays (of any of them) as JSON values.
  const nlohmann::json& metadata() const { return metadata_; }
  const std::vector<GgufTensor>& tensors() const { return tensors_; }
  const GgufTensor& tensor(const std::string& name) const;  // throws naming the file and the tensor
  // The tensor's values in fp32, in storage order (the innermost dimension fastest).
  std::vector<float> dequantize(const GgufTensor& t) const;

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  size_t size_ = 0;
  uint32_t version_ = 0;
  nlohmann::json metadata_;
  std::vector<GgufTensor> tensors_;
};

}  // namespace l2v
