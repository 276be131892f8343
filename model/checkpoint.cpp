#include "model/checkpoint.h"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <unistd.h>

#include <nlohmann/json.hpp>

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

void save_hf_checkpoint(const ModelConfig& config, const TensorSource& tensors, const std::string& dir) {
  namespace fs = std::filesystem;
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir + ": cannot create directory: " + ec.message());

  std::vector<std::string> names = tensors.names();
  std::vector<std::vector<float>> data(names.size());
  std::vector<SafetensorsEntry> entries;
  for (size_t i = 0; i < names.size(); ++i) {
    std::vector<int64_t> shape = tensors.shape(names[i]);
    size_t n = 1;
    for (int64_t d : shape) n *= (size_t)d;
    data[i].resize(n);
    tensors.read_f32(names[i], data[i].data(), n);
    entries.push_back({names[i], "F32", shape, data[i].data()});
  }
  write_safetensors((fs::path(dir) / "model.safetensors").string(), entries, {{"format", "pt"}});

  const std::string path = (fs::path(dir) / "config.json").string();
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  {
    std::ofstream out(tmp);
    out << to_hf_config_json(config).dump(2) << "\n";
    if (!out.flush()) throw std::runtime_error(tmp + ": write failed");
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) throw std::runtime_error(path + ": rename failed");
}

}  // namespace l2v
