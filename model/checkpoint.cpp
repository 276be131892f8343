#include "model/checkpoint.h"

#include <filesystem>
#include <stdexcept>

#include "model/llama2c.h"
#include "model/safetensors.h"

namespace l2v {

Checkpoint open_checkpoint(const std::string& path) {
  namespace fs = std::filesystem;
  Checkpoint ck;
  if (fs::is_directory(path)) {
    ck.config = load_hf_config((fs::path(path) / "config.json").string());
    ck.tensors = std::make_unique<SafetensorsCheckpoint>(path);
    return ck;
  }
  if (!fs::exists(path)) throw std::runtime_error(path + ": no such checkpoint file or directory");
  if (fs::path(path).extension() == ".bin") {
    auto l2c = std::make_unique<Llama2cCheckpoint>(path);
    ck.config = l2c->config;
    ck.tensors = std::move(l2c);
    return ck;
  }
  throw std::runtime_error(path +
                           ": not a checkpoint (expected a Hugging Face model directory or a llama2.c .bin file)");
}

}  // namespace l2v
