// The GGUF reader (data/gguf.h) against the gguf Python package (test/fixtures/gguf/, written by
// scripts/make_gguf_fixtures.py with gguf's own GGUFWriter):
//   - the header, metadata of every value type (integers of each width and sign, floats, bool, strings,
//     arrays) and the tensor table (names, innermost-first dimensions, types);
//   - every tensor dequantised bit for bit as gguf.quants.dequantize does it, for F32, F16, BF16, Q4_0,
//     Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K and Q6_K on random blocks (every packed bit pattern occurs);
//   - fp16 conversion of all 65,536 bit patterns against sign x mantissa x 2^exponent;
//   - damaged files: the file cut at every 61st byte, a wrong magic, a big-endian version, an unknown
//     type, a duplicate tensor name — each a std::runtime_error naming the file, never a read outside it (the ASan build runs this);
//   - GGUF as a checkpoint: the tiny Mistral (stored as llama.cpp's llama architecture, q/k rows permuted
//     as convert_hf_to_gguf.py permutes them) and Qwen2 (biases, tied embeddings) models written from the
//     Hugging Face fixtures by scripts/make_gguf_model_fixtures.py read back as the same config and every
//     tensor bit for bit under Hugging Face names — the q/k row order included;
//   - the tokenizer from GGUF metadata (data/gguf_tokenizer.h): a byte-level BPE cut from Qwen2.5's, as
//     GGUF metadata with pre-tokenizer "qwen2" and "smollm", encodes 403 lines (Unicode digits included)
//     as the `tokenizers` library does with the equivalent tokenizer.json (scripts/make_gguf_tokenizer_fixtures.py).
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <memory>
#include <stdexcept>

#include "data/gguf.h"
#include "data/gguf_tokenizer.h"
#include "data/npy.h"
#include "data/tokenizer.h"
#include "data/file_io.h"
#include "model/checkpoint.h"
#include "test/temp_dir.h"

namespace l2v {
namespace {

const std::string kDir = "test/fixtures/gguf/";

TEST(Gguf, ReadsTheHeaderMetadataAndTensorTable) {
  const GgufFile f(kDir + "tiny.gguf");
  EXPECT_EQ(f.version(), 3u);
  const nlohmann::json& m = f.metadata();
  EXPECT_EQ(m.at("general.name"), "tiny fixture");
  EXPECT_EQ(m.at("general.architecture"), "llama");
  EXPECT_EQ(m.at("llama.block_count").get<uint32_t>(), 2u);
  EXPECT_EQ(m.at("test.int32").get<int>(), -7);
  EXPECT_EQ(m.at("test.float32").get<double>(), 0.25);
  EXPECT_EQ(m.at("test.float64").get<double>(), -1.5);
  EXPECT_EQ(m.at("test.bool").get<bool>(), true);
  EXPECT_EQ(m.at("test.uint64").get<uint64_t>(), uint64_t(1) << 40);
  EXPECT_EQ(m.at("test.int8").get<int>(), -3);
  EXPECT_EQ(m.at("test.uint16").get<int>(), 65535);
  EXPECT_EQ(m.at("test.strings"), nlohmann::json({"a", "bc", "\u00e9t\u00e9"}));
  EXPECT_EQ(m.at("test.ints"), nlohmann::json({1, -2, 3}));
  ASSERT_EQ(f.tensors().size(), 11u);
  const GgufTensor& k = f.tensor("t.Q4_K");
  EXPECT_EQ(k.type, (uint32_t)GgmlType::kQ4_K);
  EXPECT_EQ(k.dims, (std::vector<uint64_t>{512, 3}));  // innermost first: 3 rows of 2 blocks of 256
  EXPECT_EQ(f.tensor("t.F32").dims, (std::vector<uint64_t>{8, 3, 2}));
  EXPECT_THROW(f.tensor("nope"), std::runtime_error);
}

TEST(Gguf, DequantisesEveryTypeBitForBitAsTheGgufPackage) {
  const GgufFile f(kDir + "tiny.gguf");
  for (const GgufTensor& t : f.tensors()) {
    size_t rows = 0, cols = 0;
    const std::vector<float> want = read_npy_f32(kDir + t.name + ".npy", &rows, &cols);
    const std::vector<float> got = f.dequantize(t);
    ASSERT_EQ(got.size(), want.size()) << t.name;
    EXPECT_EQ(cols, t.dims[0]) << t.name;
    size_t differ = 0;
    for (size_t i = 0; i < got.size(); ++i) differ += std::memcmp(&got[i], &want[i], 4) != 0;
    EXPECT_EQ(differ, 0u) << t.name << " (" << ggml_type_name(t.type) << "): " << differ << " of " << got.size()
                          << " values differ";
  }
}

TEST(Gguf, ConvertsEveryFp16BitPattern) {
  for (uint32_t h = 0; h < 65536; ++h) {
    const uint8_t bytes[2] = {(uint8_t)h, (uint8_t)(h >> 8)};
    float got;
    dequantize_ggml((uint32_t)GgmlType::kF16, bytes, 1, &got);
    const int sign = h >> 15 ? -1 : 1, exp = (h >> 10) & 31, mant = h & 1023;
    if (exp == 31) {
      EXPECT_TRUE(mant ? std::isnan(got) : got == sign * INFINITY) << h;
      continue;
    }
    const double want = sign * (exp == 0 ? std::ldexp(mant, -24) : std::ldexp(1024 + mant, exp - 25));
    EXPECT_EQ((double)got, want) << h;
    EXPECT_EQ(std::signbit(got), sign < 0) << h;
  }
}

TEST(Gguf, DamagedFilesAreRefusedNamingTheFile) {
  test::TempDir dir("gguf");
  std::ifstream in(kDir + "tiny.gguf", std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  auto expect_refused = [&](const std::string& content, const std::string& what) {
    const std::string path = dir / "bad.gguf";
    std::ofstream(path, std::ios::binary) << content;
    try {
      GgufFile f(path);
      ADD_FAILURE() << what << ": accepted";
    } catch (const std::runtime_error& e) {
      EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << what << ": " << e.what();
    }
  };
  for (size_t n = 0; n < bytes.size(); n += 61) expect_refused(bytes.substr(0, n), "cut at " + std::to_string(n));
  std::string magic = bytes;
  magic[0] = 'X';
  expect_refused(magic, "wrong magic");
  std::string big_endian = bytes;
  std::memcpy(&big_endian[4], "\0\0\0\3", 4);
  expect_refused(big_endian, "big-endian version");
  // The first tensor's type (4 bytes before its 8-byte offset at the end of its table entry) made unknown.
  const GgufFile good(kDir + "tiny.gguf");
  const size_t name_at = bytes.find("t.Q4_0");
  ASSERT_NE(name_at, std::string::npos);
  std::string unknown = bytes;
  const size_t type_at = name_at + 6 + 4 + 2 * 8;  // name, dimension count, two dimensions
  const uint32_t bogus = 99;
  std::memcpy(&unknown[type_at], &bogus, 4);
  expect_refused(unknown, "unknown tensor type");
  std::string duplicate = bytes;
  const size_t second = duplicate.find("t.Q4_1");
  ASSERT_NE(second, std::string::npos);
  duplicate.replace(second, 6, "t.Q4_0");
  expect_refused(duplicate, "duplicate tensor name");
  EXPECT_THROW(dequantize_ggml(99, nullptr, 0, nullptr), std::invalid_argument);
  EXPECT_THROW(dequantize_ggml((uint32_t)GgmlType::kQ4_0, nullptr, 31, nullptr), std::invalid_argument);
}

TEST(GgufCheckpoint, ReadsBackTheHuggingFaceModelItWasWrittenFrom) {
  // llama3_tiny: Llama 3's RoPE scaling, which the GGUF holds as the rope_freqs tensor (one divisor per
  // frequency) and the reader turns back into the config's parameters.
  for (const char* model : {"mistral_tiny", "qwen2_tiny", "llama3_tiny"}) {
    SCOPED_TRACE(model);
    const Checkpoint g = open_checkpoint(kDir + model + ".gguf");
    const Checkpoint hf = open_checkpoint(std::string("test/fixtures/") + model + "/model");
    const ModelConfig &a = g.config, &b = hf.config;
    EXPECT_EQ(a.model_type, b.model_type == "mistral" ? "llama" : b.model_type);
    EXPECT_EQ(a.vocab_size, b.vocab_size);
    EXPECT_EQ(a.hidden_size, b.hidden_size);
    EXPECT_EQ(a.intermediate_size, b.intermediate_size);
    EXPECT_EQ(a.num_hidden_layers, b.num_hidden_layers);
    EXPECT_EQ(a.num_attention_heads, b.num_attention_heads);
    EXPECT_EQ(a.num_key_value_heads, b.num_key_value_heads);
    EXPECT_EQ(a.head_dim, b.head_dim);
    EXPECT_EQ(a.max_position_embeddings, b.max_position_embeddings);
    EXPECT_EQ(a.rms_norm_eps, b.rms_norm_eps);
    EXPECT_EQ(a.rope_theta, b.rope_theta);
    EXPECT_EQ(a.tie_word_embeddings, b.tie_word_embeddings);
    EXPECT_EQ(a.qkv_bias, b.qkv_bias);
    EXPECT_EQ(a.bos_token_id, b.bos_token_id);
    EXPECT_EQ(a.eos_token_id, b.eos_token_id);
    EXPECT_EQ(a.rope_scaling.type, b.rope_scaling.type);
    EXPECT_EQ(a.rope_scaling.factor, b.rope_scaling.factor);
    EXPECT_EQ(a.rope_scaling.low_freq_factor, b.rope_scaling.low_freq_factor);
    EXPECT_EQ(a.rope_scaling.high_freq_factor, b.rope_scaling.high_freq_factor);
    EXPECT_EQ(a.rope_scaling.original_max_position_embeddings, b.rope_scaling.original_max_position_embeddings);
    ASSERT_EQ(g.tensors->names(), hf.tensors->names());
    for (const std::string& name : hf.tensors->names()) {
      ASSERT_EQ(g.tensors->shape(name), hf.tensors->shape(name)) << name;
      size_t n = 1;
      for (int64_t d : hf.tensors->shape(name)) n *= (size_t)d;
      std::vector<float> x(n), y(n);
      g.tensors->read_f32(name, x.data(), n);
      hf.tensors->read_f32(name, y.data(), n);
      EXPECT_EQ(std::memcmp(x.data(), y.data(), n * sizeof(float)), 0) << name;
    }
  }
  // The llama architecture's q rows really are stored permuted: read without the un-permutation they
  // differ (the test above would pass for a reader that skipped both).
  const GgufFile raw(kDir + "mistral_tiny.gguf");
  const Checkpoint hf = open_checkpoint("test/fixtures/mistral_tiny/model");
  std::vector<float> q(64 * 64);
  hf.tensors->read_f32("model.layers.0.self_attn.q_proj.weight", q.data(), q.size());
  EXPECT_NE(raw.dequantize(raw.tensor("blk.0.attn_q.weight")), q);
}

// The tokenizer of fixture `name`.gguf, converted into directory `out` and loaded from there.
std::unique_ptr<Tokenizer> converted_tokenizer(const std::string& name, const std::string& out) {
  const HfTokenizerFiles files = gguf_tokenizer(GgufFile(kDir + name + ".gguf"));
  std::filesystem::create_directories(out);
  write_file_atomic(out + "/tokenizer.json", files.tokenizer.dump());
  write_file_atomic(out + "/tokenizer_config.json", files.config.dump());
  return load_tokenizer(out);
}

TEST(GgufTokenizer, EncodesAsTheTokenizersLibraryForQwen2SmolLM2AndSentencePiece) {
  std::ifstream in(kDir + "tokenizer_expected.json");
  const nlohmann::json expected = nlohmann::json::parse(in);
  const std::vector<std::string> lines = expected.at("lines").get<std::vector<std::string>>();
  test::TempDir dir("gguf_tokenizer");
  for (const char* pre : {"qwen2", "smollm"}) {
    SCOPED_TRACE(pre);
    ASSERT_TRUE(gguf_has_tokenizer(GgufFile(kDir + "tokenizer_" + pre + ".gguf")));
    const std::unique_ptr<Tokenizer> tok = converted_tokenizer(std::string("tokenizer_") + pre, dir / pre);
    EXPECT_EQ(tok->vocab_size(), 3259);
    EXPECT_EQ(tok->bos_id(), 3256);
    EXPECT_EQ(tok->eos_id(), 3258);
    EXPECT_TRUE(tok->is_special(3257));
    // A class that invents no special tokens (transformers' LlamaTokenizerFast would add an "<unk>").
    const nlohmann::json config = gguf_tokenizer(GgufFile(kDir + "tokenizer_" + pre + ".gguf")).config;
    EXPECT_EQ(config.value("tokenizer_class", ""), "PreTrainedTokenizerFast");
    EXPECT_EQ(config.value("model_input_names", nlohmann::json()), nlohmann::json({"input_ids", "attention_mask"}));
    const auto& want = expected.at(pre);
    size_t differ = 0;
    for (size_t i = 0; i < lines.size(); ++i) {
      const std::vector<int> got = tok->encode(lines[i], false);
      if (got != want[i].get<std::vector<int>>() && ++differ <= 3) ADD_FAILURE() << "line " << i << ": " << lines[i];
    }
    EXPECT_EQ(differ, 0u);
  }
  // SentencePiece BPE (Llama 2, Mistral: no merges in the file, scores instead): the ids of Mistral's own
  // tokenizer.json cut to the same 6,295 pieces, and of the tokenizer transformers builds from the GGUF,
  // the BOS added, byte fallback for what the cut vocabulary lacks (CJK, emoji).
  {
    SCOPED_TRACE("llama (SentencePiece)");
    const std::unique_ptr<Tokenizer> tok = converted_tokenizer("tokenizer_llama", dir / "llama");
    EXPECT_EQ(tok->vocab_size(), 6295);
    EXPECT_EQ(tok->bos_id(), 1);
    EXPECT_EQ(tok->eos_id(), 2);
    const std::vector<std::string> spm_lines = expected.at("llama_lines").get<std::vector<std::string>>();
    for (const char* reference : {"llama", "llama_transformers"}) {
      size_t differ = 0;
      for (size_t i = 0; i < spm_lines.size(); ++i) {
        const std::vector<int> got = tok->encode(spm_lines[i], true);
        if (got != expected.at(reference)[i].get<std::vector<int>>() && ++differ <= 3)
          ADD_FAILURE() << reference << ", line " << i << ": " << spm_lines[i];
      }
      EXPECT_EQ(differ, 0u) << reference;
    }
    EXPECT_EQ(tok->decode(tok->encode("two  spaces, \u00e9t\u00e9 \u4e2d\u6587", true), true),
              "two  spaces, \u00e9t\u00e9 \u4e2d\u6587");
  }
  // No tokenizer, another tokenizer model, an unknown pre-tokenizer: refused naming the file.
  EXPECT_FALSE(gguf_has_tokenizer(GgufFile(kDir + "tiny.gguf")));
  EXPECT_THROW(gguf_tokenizer(GgufFile(kDir + "tiny.gguf")), std::runtime_error);
}

}  // namespace
}  // namespace l2v
