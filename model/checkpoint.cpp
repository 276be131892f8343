#include "model/checkpoint.h"

#include <filesystem>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "data/file_io.h"
#include "host/cpu_backend.h"
#include "model/gguf_checkpoint.h"
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
  if (fs::path(path).extension() == ".gguf") {
    auto g = std::make_unique<GgufCheckpoint>(path);
    ck.config = g->config;
    ck.tensors = std::move(g);
    return ck;
  }
  if (fs::path(path).extension() == ".bin") {
    auto l2c = std::make_unique<Llama2cCheckpoint>(path);
    ck.config = l2c->config;
    ck.tensors = std::move(l2c);
    return ck;
  }
  throw std::runtime_error(path +
                           ": not a checkpoint (expected a Hugging Face model directory, a llama2.c .bin file or a .gguf file)");
}

namespace {

// config.json and model.safetensors (F32) of `tensors`, as given.
void write_hf_dir(const ModelConfig& config, const TensorSource& tensors, const std::string& dir) {
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

  write_file_atomic((fs::path(dir) / "config.json").string(), to_hf_config_json(config).dump(2) + "\n");
}

// The weights of a loaded model seen as a TensorSource (downloaded to fp32 on demand).
class ModelWeightsSource : public TensorSource {
 public:
  explicit ModelWeightsSource(const Model& m) : m_(m), weights_(model_weights(m)) {}
  bool has(const std::string& name) const override { return find(name) != nullptr; }
  std::vector<int64_t> shape(const std::string& name) const override { return get(name).shape; }
  void read_f32(const std::string& name, float* dst, size_t count) const override {
    const NamedWeight& w = get(name);
    size_t n = 1;
    for (int64_t d : w.shape) n *= (size_t)d;
    if (n != count) throw std::runtime_error("model weights: '" + name + "' has " + std::to_string(n) + " values");
    std::vector<float> host = download_weight(m_, w);
    std::copy(host.begin(), host.end(), dst);
  }
  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const NamedWeight& w : weights_) out.push_back(w.name);
    return out;
  }
  std::string describe() const override { return "the loaded model"; }

 private:
  const NamedWeight* find(const std::string& name) const {
    for (const NamedWeight& w : weights_)
      if (w.name == name) return &w;
    return nullptr;
  }
  const NamedWeight& get(const std::string& name) const {
    if (const NamedWeight* w = find(name)) return *w;
    throw std::runtime_error("model weights: no tensor '" + name + "'");
  }
  const Model& m_;
  std::vector<NamedWeight> weights_;
};

}  // namespace

void save_hf_checkpoint(const ModelConfig& config, const TensorSource& tensors, const std::string& dir) {
  // Through a model on the CPU backend: load_model refuses a missing tensor or a wrong shape (naming the
  // tensor and the source), so a damaged checkpoint is never copied, and exactly the model's weights are
  // written, as transformers saves them.
  std::unique_ptr<Backend> cpu = make_cpu_backend();
  Model m;
  load_model(m, config, tensors, *cpu);
  write_hf_dir(config, ModelWeightsSource(m), dir);
}

void save_model_hf(const Model& m, const std::string& dir) { write_hf_dir(m.config, ModelWeightsSource(m), dir); }

}  // namespace l2v
