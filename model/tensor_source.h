// A read-only collection of named tensors that can be converted to fp32 on demand: a safetensors
// checkpoint (single or sharded) or an imported llama2.c checkpoint. The weight loader only needs this
// interface, so it does not care where the numbers come from.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

namespace l2v {

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

}  // namespace l2v
