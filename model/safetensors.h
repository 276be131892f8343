// Reading and writing safetensors checkpoints (https://huggingface.co/docs/safetensors), the format
// Hugging Face models ship in and the one this project saves its own checkpoints in.
//
// File layout: an 8-byte little-endian unsigned header length N, N bytes of a JSON object mapping each
// tensor name to {"dtype", "shape", "data_offsets": [begin, end]} (plus an optional "__metadata__"
// string-to-string object), then the data section; offsets are relative to the data section's start.
#pragma once
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "model/tensor_source.h"

namespace l2v {

// A whole file mapped read-only for the lifetime of the object. Checkpoints are read through mappings
// so that a multi-gigabyte model is never copied as a whole: each tensor is converted straight from the
// page cache into the caller's buffer. Shared by the safetensors and llama2.c readers.
class MappedFile {
 public:
  explicit MappedFile(const std::string& path);  // throws std::runtime_error naming the path
  ~MappedFile();
  MappedFile(const MappedFile&) = delete;
  MappedFile& operator=(const MappedFile&) = delete;

  const uint8_t* data() const { return data_; }  // nullptr for an empty file
  uint64_t size() const { return size_; }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
  const uint8_t* data_ = nullptr;
  uint64_t size_ = 0;
};

// A safetensors checkpoint opened from one of:
//  - a single "*.safetensors" file;
//  - a Hugging Face sharded index ("model.safetensors.index.json", any path ending in ".json"), whose
//    "weight_map" maps each tensor name to a shard file relative to the index's directory;
//  - a directory holding model.safetensors (preferred) or model.safetensors.index.json.
// Every header is validated when the checkpoint is opened, so later reads can only fail on the caller's
// mistakes (unknown name, wrong element count, unconvertible dtype). Besides each entry's fields (known
// dtype, byte size = product(shape) * dtype size, offsets inside the data section), the layout follows
// the reference implementation's rule: sorted by offset, the tensors tile the data section exactly (no
// gap, no overlap, nothing after the last one). Errors name the file and the tensor.
class SafetensorsCheckpoint : public TensorSource {
 public:
  explicit SafetensorsCheckpoint(const std::string& path);
  ~SafetensorsCheckpoint() override;

  bool has(const std::string& name) const override;
  std::vector<int64_t> shape(const std::string& name) const override;
  // Accepts F32, BF16 and F16 (converted exactly).
  void read_f32(const std::string& name, float* dst, size_t count) const override;
  std::vector<std::string> names() const override;  // sorted
  std::string describe() const override;

  // Integer tensors such as token ids: accepts I64 and I32.
  std::vector<int64_t> read_i64(const std::string& name) const;
  // The safetensors dtype string ("F32", "BF16", "I64", ...).
  std::string dtype(const std::string& name) const;
  // The "__metadata__" object (empty if the file has none). For a sharded checkpoint it is the first
  // shard's, in the order the index lists them: shards of one checkpoint carry the same metadata.
  const nlohmann::json& metadata() const { return metadata_; }

 private:
  struct Tensor {
    std::string dtype;
    std::vector<int64_t> shape;
    uint64_t numel = 0;
    size_t shard = 0;      // index into shards_
    const uint8_t* data = nullptr;  // inside the shard's mapping
    uint64_t nbytes = 0;
  };
  const Tensor& find(const std::string& name) const;
  std::string where(const Tensor& t) const;  // the shard path, for error messages
  // Maps one file, validates its header and adds its tensors; returns its metadata object.
  nlohmann::json add_shard(const std::string& file);
  void open_index(const std::string& index_path);

  std::string origin_;
  std::vector<std::unique_ptr<MappedFile>> shards_;
  std::map<std::string, Tensor> tensors_;
  nlohmann::json metadata_ = nlohmann::json::object();
};

struct SafetensorsEntry {
  std::string name;
  std::string dtype;  // any fixed-size safetensors dtype: "F32", "I64", "BF16", "F16", "I32", ...
  std::vector<int64_t> shape;
  const void* data;  // product(shape) * dtype size bytes, host byte order (little-endian)
};

// Writes a safetensors file with the tensors' data in the given order. The file is written to
// `path + ".tmp.<pid>"`, fsync'ed and renamed over `path`, so an interrupted save never leaves a truncated
// checkpoint under the final name. Throws std::runtime_error naming the path (and tensor) on failure.
void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                       const std::map<std::string, std::string>& metadata = {});

// Exact scalar conversions of the 16-bit float formats, exposed for tests and other readers.
float bf16_to_f32(uint16_t bits);
float f16_to_f32(uint16_t bits);

}  // namespace l2v
