// What `llm2vec train` exports, checked against Python: test/fixtures/export/ holds an MNTP adapter and a
// SimCSE adapter trained on top of it (stories260K, CPU backend) exactly as our trainer wrote them, the
// texts, the left-padded batch our embed path builds for them, and the embeddings Python computed from
// that batch after loading the chain with peft and llm2vec (scripts/make_export_fixture.sh,
// scripts/check_export.py; see test/fixtures/README.md, section "export/").
//
// Here, without Python:
//   - our tokenizer + build_embed_batch still build the committed batch (ids, attention mask, embed mask);
//   - the Encoder (base stories260K.bin + the two committed adapters, pooling from the committed
//     llm2vec_config.json) reproduces the Python embeddings (batched, and one text per batch);
//   - save_peft_adapter, re-exporting each loaded adapter, writes the committed tensors bit for bit and
//     an adapter_config.json equal to the committed one: the format PEFT accepted is what we still write.
//
// Generation: with L2V_EXPORT_WRITE_BATCH=<path> set, Export.BatchIsOurs first writes the batch there.
#include <gtest/gtest.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "data/batches.h"
#include "data/npy.h"
#include "data/tokenizer.h"
#include "host/cpu_backend.h"
#include "model/checkpoint.h"
#include "model/encoder.h"
#include "model/model.h"
#include "model/peft.h"
#include "model/pooling.h"
#include "model/safetensors.h"
#include "test/temp_dir.h"

namespace l2v {
namespace {

const std::string kDir = "test/fixtures/export/";
const std::string kBase = "assets/stories260K/stories260K.bin";
const std::string kTok = "assets/stories260K/tok512.bin";
const char* kStages[] = {"mntp", "simcse"};

nlohmann::json read_json(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  nlohmann::json j;
  in >> j;
  return j;
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  return lines;
}

PadOptions pad_options(const nlohmann::json& l2v_cfg) {
  PadOptions pad;
  pad.max_length = l2v_cfg.at("max_length").get<int>();
  pad.padding_side = PaddingSide::kLeft;  // LLM2Vec.from_pretrained: padding_side = "left"
  pad.append_eos = parse_pooling_mode(l2v_cfg.at("pooling_mode").get<std::string>()) == PoolingMode::kEosToken;
  return pad;
}

EmbedBatch our_batch(const Tokenizer& tok, const std::vector<std::string>& texts, const PadOptions& pad) {
  std::vector<std::vector<int>> ids;
  for (const std::string& t : texts) ids.push_back(tok.encode(t, true));
  return build_embed_batch(ids, std::vector<int>(texts.size(), 0), tok, pad);
}

TEST(Export, BatchIsOurs) {
  auto tok = load_tokenizer(kTok);
  const auto texts = read_lines(kDir + "inputs.txt");
  const nlohmann::json l2v_cfg = read_json(kDir + "simcse/llm2vec_config.json");
  const EmbedBatch b = our_batch(*tok, texts, pad_options(l2v_cfg));
  if (const char* out = std::getenv("L2V_EXPORT_WRITE_BATCH")) {
    std::vector<int64_t> ids(b.ids.begin(), b.ids.end()), key(b.key_mask.begin(), b.key_mask.end()),
        emb(b.embed_mask.begin(), b.embed_mask.end());
    const std::vector<int64_t> shape = {b.B, b.T};
    const int64_t bos = tok->bos_id(), eos = tok->eos_id(), pad = resolve_pad_id(*tok);
    write_safetensors(out,
                      {{"input_ids", "I64", shape, ids.data()},
                       {"attention_mask", "I64", shape, key.data()},
                       {"embed_mask", "I64", shape, emb.data()},
                       {"bos_id", "I64", {1}, &bos},
                       {"eos_id", "I64", {1}, &eos},
                       {"pad_id", "I64", {1}, &pad}},
                      {{"generator", "test/test_export.cpp (L2V_EXPORT_WRITE_BATCH)"}});
    std::printf("wrote %s: [%d, %d]\n", out, b.B, b.T);
  }
  SafetensorsCheckpoint ref(kDir + "batch.safetensors");
  ASSERT_EQ(ref.shape("input_ids"), (std::vector<int64_t>{(int64_t)texts.size(), b.T}));
  auto same = [&](const char* name, const std::vector<int>& ours) {
    const std::vector<int64_t> want = ref.read_i64(name);
    ASSERT_EQ(want.size(), ours.size()) << name;
    for (size_t i = 0; i < want.size(); ++i) ASSERT_EQ(want[i], ours[i]) << name << " at " << i;
  };
  same("input_ids", b.ids);
  same("attention_mask", b.key_mask);
  same("embed_mask", b.embed_mask);
  EXPECT_EQ(ref.read_i64("bos_id")[0], tok->bos_id());
  // The layout Python's LLM2Vec pooling assumes: left padding, the pooled positions are the row's tail
  // after the BOS; and the batch really is padded (texts of different lengths).
  int padded_rows = 0;
  for (int r = 0; r < b.B; ++r) {
    const int* key = &b.key_mask[(size_t)r * b.T];
    const int* emb = &b.embed_mask[(size_t)r * b.T];
    int first = 0;
    while (first < b.T && !key[first]) ++first;
    padded_rows += first > 0;
    ASSERT_LT(first + 1, b.T);
    EXPECT_EQ(b.ids[(size_t)r * b.T + first], tok->bos_id()) << "row " << r;
    for (int t = 0; t < b.T; ++t) EXPECT_EQ(emb[t], t > first ? 1 : 0) << "row " << r << " t " << t;
  }
  EXPECT_GE(padded_rows, 3);
}

EncoderSpec fixture_spec() {
  const nlohmann::json l2v_cfg = read_json(kDir + "simcse/llm2vec_config.json");
  EncoderSpec s;
  s.model_name_or_path = kBase;
  s.tokenizer = kTok;
  s.adapters = {kDir + "mntp", kDir + "simcse"};
  s.pooling = parse_pooling_mode(l2v_cfg.at("pooling_mode").get<std::string>());
  s.skip_instruction = l2v_cfg.at("skip_instruction").get<bool>();
  s.max_length = l2v_cfg.at("max_length").get<int>();
  s.bidirectional = true;  // LLM2Vec.from_pretrained's enable_bidirectional default
  s.padding_side = PaddingSide::kLeft;
  return s;
}

struct Err {
  double abs = 0.0, rel = 0.0, scale = 0.0;
};

Err compare(const std::vector<float>& got, const std::vector<float>& want) {
  Err e;
  EXPECT_EQ(got.size(), want.size());
  for (float w : want) e.scale = std::max(e.scale, (double)std::fabs(w));
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    const double d = std::fabs((double)got[i] - (double)want[i]);
    e.abs = std::isnan(d) ? INFINITY : std::max(e.abs, d);
  }
  e.rel = e.abs / e.scale;
  return e;
}

TEST(Export, EmbeddingsMatchPeftAndLlm2vec) {
  size_t rows = 0, cols = 0;
  const std::vector<float> ref = read_npy_f32(kDir + "python_embeddings.npy", &rows, &cols);
  const auto texts = read_lines(kDir + "inputs.txt");
  ASSERT_EQ(rows, texts.size());
  std::vector<EncoderInput> inputs;
  for (const std::string& t : texts) inputs.push_back({"", t});

  auto backend = make_cpu_backend();
  Encoder enc(fixture_spec(), *backend);
  ASSERT_EQ((size_t)enc.dim(), cols);
  // fp32 on both sides: only summation order differs; the embeddings are O(1).
  const double kRelTol = 1e-5;
  for (int batch_size : {16, 1}) {  // one left-padded batch (what Python ran), and unpadded rows
    const std::vector<float> got = enc.embed(inputs, batch_size, false);
    const Err e = compare(got, ref);
    std::printf("  embeddings vs python (batch size %2d): max abs err %.3g, rel to max|ref| (%.3g) %.3g\n",
                batch_size, e.abs, e.scale, e.rel);
    EXPECT_LE(e.rel, kRelTol) << "batch size " << batch_size;
    EXPECT_GT(e.scale, 0.1);
  }

  // The base model alone (no adapters) is far from the reference: the comparison above sees the adapters.
  EncoderSpec base_only = fixture_spec();
  base_only.adapters.clear();
  Encoder plain(base_only, *backend);
  const Err e = compare(plain.embed(inputs, 16, false), ref);
  std::printf("  base model without adapters vs python: rel err %.3g (must be large)\n", e.rel);
  EXPECT_GT(e.rel, 1e-2);
}

// Loads `stage` (after merging the earlier stages) and re-exports it with save_peft_adapter.
void reexport(const std::string& stage, const std::string& out_dir, const std::string& base_name) {
  auto backend = make_cpu_backend();
  Checkpoint ck = open_checkpoint(kBase);
  Model m;
  load_model(m, ck.config, *ck.tensors, *backend);
  for (const char* s : kStages) {
    load_peft_adapter(m, kDir + s);
    if (s == stage) break;
    merge_and_unload_lora(m);
  }
  save_peft_adapter(m, out_dir, base_name, PeftLayout::kInnerModel);
}

TEST(Export, ReexportedAdaptersEqualCommitted) {
  test::TempDir tmp("export");
  for (const std::string stage : kStages) {
    SCOPED_TRACE(stage);
    const std::string committed = kDir + stage + "/";
    const nlohmann::json want_cfg = read_json(committed + "adapter_config.json");
    const std::string out = (tmp.path / stage).string();
    reexport(stage, out, want_cfg.at("base_model_name_or_path").get<std::string>());

    // adapter_config.json: the same keys with the same values.
    const nlohmann::json got_cfg = read_json(out + "/adapter_config.json");
    std::set<std::string> got_keys, want_keys;
    for (const auto& kv : got_cfg.items()) got_keys.insert(kv.key());
    for (const auto& kv : want_cfg.items()) want_keys.insert(kv.key());
    EXPECT_EQ(got_keys, want_keys);
    for (const std::string& k : want_keys)
      if (got_cfg.contains(k)) {
        EXPECT_EQ(got_cfg.at(k), want_cfg.at(k)) << "adapter_config.json key " << k;
      }

    // adapter_model.safetensors: the same names (llm2vec's inner-model layout), dtypes, shapes, bits.
    SafetensorsCheckpoint want(committed + "adapter_model.safetensors");
    SafetensorsCheckpoint got(out + "/adapter_model.safetensors");
    ASSERT_EQ(got.names(), want.names());
    const int n_layers = open_checkpoint(kBase).config.num_hidden_layers;
    EXPECT_EQ(want.names().size(), (size_t)(2 * kNumLinears * n_layers));
    size_t nonzero_B = 0, n_B = 0;
    for (const std::string& name : want.names()) {
      EXPECT_EQ(name.rfind("base_model.model.layers.", 0), 0u) << name;
      EXPECT_EQ(name.rfind("base_model.model.model.", 0), std::string::npos) << name;
      EXPECT_EQ(want.dtype(name), "F32") << name;
      EXPECT_EQ(got.dtype(name), "F32") << name;
      ASSERT_EQ(got.shape(name), want.shape(name)) << name;
      size_t n = 1;
      for (int64_t d : want.shape(name)) n *= (size_t)d;
      std::vector<float> a(n), b(n);
      want.read_f32(name, a.data(), n);
      got.read_f32(name, b.data(), n);
      EXPECT_EQ(0, std::memcmp(a.data(), b.data(), n * sizeof(float))) << name;
      if (name.find("lora_B") != std::string::npos) {
        ++n_B;
        bool nz = false;
        for (float x : a) nz |= x != 0.0f;
        nonzero_B += nz;
      }
    }
    // Trained adapters: every B moved away from PEFT's zero initialisation.
    EXPECT_EQ(nonzero_B, n_B);
    EXPECT_EQ(got.metadata(), want.metadata());
  }
}

// PEFT saves whole tensors beside the LoRA factors when it resized the vocabulary (save_embedding_layers)
// or for modules_to_save. The base's own embedding saved in bf16 (what llm2vec's run_mntp.py wrote) loads;
// one element changed by more than bf16's rounding, a resized vocabulary, or a whole projection is refused
// naming the tensor (ignoring them would silently run another model than the one trained).
TEST(Export, AdapterWholeTensorsOnlyTheBaseOwnEmbeddingLoads) {
  test::TempDir tmp("peft_whole");
  auto backend = make_cpu_backend();
  Checkpoint ck = open_checkpoint(kBase);
  Model base;
  load_model(base, ck.config, *ck.tensors, *backend);
  const int64_t V = base.config.vocab_size, C = base.config.hidden_size;
  const std::vector<float> embed = download_tensor(base, base.embed, (size_t)(V * C));
  auto bf16 = [](float x) {  // round to nearest even, as torch's .to(torch.bfloat16)
    uint32_t u;
    std::memcpy(&u, &x, 4);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
  };
  std::vector<uint16_t> saved(embed.size());
  for (size_t i = 0; i < embed.size(); ++i) saved[i] = bf16(embed[i]);

  const std::string committed = kDir + "mntp/";
  SafetensorsCheckpoint lora(committed + "adapter_model.safetensors");
  std::vector<std::vector<float>> data;
  std::vector<SafetensorsEntry> factors;
  for (const std::string& name : lora.names()) {
    const std::vector<int64_t> shape = lora.shape(name);
    size_t n = 1;
    for (int64_t d : shape) n *= (size_t)d;
    data.emplace_back(n);
    lora.read_f32(name, data.back().data(), n);
  }
  for (size_t i = 0; i < data.size(); ++i)
    factors.push_back({lora.names()[i], "F32", lora.shape(lora.names()[i]), data[i].data()});
  const std::string embed_name = "base_model.model.embed_tokens.weight";
  auto load_with = [&](const std::string& tag, const std::vector<SafetensorsEntry>& extra) {
    const std::string dir = (tmp.path / tag).string();
    std::filesystem::create_directories(dir);
    std::filesystem::copy_file(committed + "adapter_config.json", dir + "/adapter_config.json");
    std::vector<SafetensorsEntry> all = factors;
    all.insert(all.end(), extra.begin(), extra.end());
    write_safetensors(dir + "/adapter_model.safetensors", all, {{"format", "pt"}});
    Model m;
    load_model(m, ck.config, *ck.tensors, *backend);
    try {
      load_peft_adapter(m, dir);
    } catch (const std::runtime_error& e) {
      return std::string(e.what());
    }
    return std::string();
  };
  EXPECT_EQ(load_with("own", {{embed_name, "BF16", {V, C}, saved.data()}}), "");
  // Off by two bf16 units in the last place in one element: beyond the rounding, refused at that element.
  std::vector<uint16_t> trained = saved;
  trained[5 * C + 3] += 2;
  const std::string off = load_with("trained", {{embed_name, "BF16", {V, C}, trained.data()}});
  EXPECT_NE(off.find(embed_name), std::string::npos) << off;
  EXPECT_NE(off.find("row 5, column 3"), std::string::npos) << off;
  std::vector<uint16_t> resized = saved;
  resized.resize((size_t)((V + 1) * C), saved[0]);
  const std::string grown = load_with("resized", {{embed_name, "BF16", {V + 1, C}, resized.data()}});
  EXPECT_NE(grown.find("resized"), std::string::npos) << grown;
  const std::vector<float> proj((size_t)(C * C), 0.5f);
  const std::string whole = load_with("module", {{"base_model.model.layers.0.self_attn.q_proj.weight", "F32",
                                                  {C, C}, proj.data()}});
  EXPECT_NE(whole.find("q_proj.weight' is not a LoRA factor"), std::string::npos) << whole;
}

}  // namespace
}  // namespace l2v
