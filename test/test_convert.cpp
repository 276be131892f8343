// llama2.c → Hugging Face conversion against the independent conversion in
// scripts/make_hf_fixtures.py (written in Python with torch, checked there by greedy decoding with
// transformers), and the written directory read back through our own loader.
#include <gtest/gtest.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <unistd.h>

#include "model/checkpoint.h"
#include "model/safetensors.h"

namespace l2v {
namespace {

std::string stories_bin() {
  for (std::string p : {"assets/stories260K/stories260K.bin", "../shared/data/llama2c/stories260K.bin"})
    if (std::ifstream(p)) return p;
  return "assets/stories260K/stories260K.bin";
}

TEST(Convert, Llama2cToHuggingFaceEqualsTheIndependentConversion) {
  namespace fs = std::filesystem;
  const fs::path out = fs::temp_directory_path() / ("l2v_convert_" + std::to_string(getpid()));
  Checkpoint src = open_checkpoint(stories_bin());
  save_hf_checkpoint(src.config, *src.tensors, out.string());

  Checkpoint ours = open_checkpoint(out.string());
  SafetensorsCheckpoint theirs("test/fixtures/stories260k/model/model.safetensors");
  // transformers does not store lm_head.weight for tied embeddings; neither do we.
  EXPECT_EQ(theirs.names(), ours.tensors->names());
  for (const std::string& name : theirs.names()) {
    std::vector<int64_t> shape = theirs.shape(name);
    ASSERT_EQ(shape, ours.tensors->shape(name)) << name;
    size_t n = 1;
    for (int64_t d : shape) n *= (size_t)d;
    std::vector<float> a(n), b(n);
    theirs.read_f32(name, a.data(), n);
    ours.tensors->read_f32(name, b.data(), n);
    EXPECT_EQ(0, std::memcmp(a.data(), b.data(), n * sizeof(float))) << name;
  }
  ModelConfig want = load_hf_config("test/fixtures/stories260k/model/config.json");
  const ModelConfig& got = ours.config;
  EXPECT_EQ(want.model_type, got.model_type);
  EXPECT_EQ(want.vocab_size, got.vocab_size);
  EXPECT_EQ(want.hidden_size, got.hidden_size);
  EXPECT_EQ(want.intermediate_size, got.intermediate_size);
  EXPECT_EQ(want.num_hidden_layers, got.num_hidden_layers);
  EXPECT_EQ(want.num_attention_heads, got.num_attention_heads);
  EXPECT_EQ(want.num_key_value_heads, got.num_key_value_heads);
  EXPECT_EQ(want.head_dim, got.head_dim);
  EXPECT_EQ(want.rms_norm_eps, got.rms_norm_eps);
  EXPECT_EQ(want.rope_theta, got.rope_theta);
  EXPECT_EQ(want.tie_word_embeddings, got.tie_word_embeddings);
  EXPECT_EQ(want.bos_token_id, got.bos_token_id);
  EXPECT_EQ(want.eos_token_id, got.eos_token_id);
  fs::remove_all(out);
}

TEST(Convert, RefusesAMissingOrMisshapenTensorAndWritesNothing) {
  namespace fs = std::filesystem;
  const fs::path dir = fs::temp_directory_path() / ("l2v_convert_bad_" + std::to_string(getpid()));
  const fs::path good = dir / "good", bad = dir / "bad", out = dir / "out";
  {
    Checkpoint src = open_checkpoint(stories_bin());
    save_hf_checkpoint(src.config, *src.tensors, good.string());
  }
  // `bad` is `good` with up_proj of layer 1 dropped (drop) or stored transposed (reshape).
  auto damaged = [&](bool drop) {
    SafetensorsCheckpoint g((good / "model.safetensors").string());
    std::vector<std::vector<float>> data;
    std::vector<SafetensorsEntry> entries;
    for (const std::string& name : g.names()) {
      std::vector<int64_t> shape = g.shape(name);
      const bool target = name == "model.layers.1.mlp.up_proj.weight";
      if (target && drop) continue;
      if (target) std::swap(shape[0], shape[1]);
      size_t n = 1;
      for (int64_t d : shape) n *= (size_t)d;
      data.emplace_back(n);
      g.read_f32(name, data.back().data(), data.back().size());
      entries.push_back({name, "F32", shape, data.back().data()});
    }
    fs::create_directories(bad);
    fs::copy_file(good / "config.json", bad / "config.json", fs::copy_options::overwrite_existing);
    write_safetensors((bad / "model.safetensors").string(), entries);
  };
  auto message = [&] {
    Checkpoint src = open_checkpoint(bad.string());
    try {
      save_hf_checkpoint(src.config, *src.tensors, out.string());
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  const std::string file = (bad / "model.safetensors").string();
  damaged(/*drop=*/true);
  EXPECT_EQ(message(), bad.string() + "/model.safetensors: missing tensor 'model.layers.1.mlp.up_proj.weight'");
  damaged(/*drop=*/false);
  EXPECT_EQ(message(), bad.string() + "/model.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' has shape "
                                      "[64, 172], expected [172, 64]");
  EXPECT_FALSE(fs::exists(out / "model.safetensors"));
  EXPECT_FALSE(fs::exists(out / "config.json"));
  fs::remove_all(dir);
}

}  // namespace
}  // namespace l2v
