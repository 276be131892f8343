// Tests of the Hugging Face tokenizer port against the `tokenizers` library itself: every line of
// test/fixtures/tokenizers/ (written by scripts/make_tokenizer_fixtures.py with tokenizers 0.19.1)
// must encode to the same ids, with and without special tokens, and decode to the same text, with
// and without skip_special_tokens. Plus the special-token ids against tokenizer_config.json, the
// fingerprint, and clear errors for files this port cannot run. Run from the repository root.
#include "data/hf_tokenizer.h"

#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include <unistd.h>

#include "data/hf_pipeline.h"
#include "data/hf_regex.h"
#include "data/tokenizer.h"
#include "data/unicode.h"

namespace {

namespace fs = std::filesystem;
using nlohmann::json;

const char* const kMistral = "mistral-7b-v0.1";
const char* const kQwen = "qwen2.5";
const std::string kFixtures = "test/fixtures/tokenizers/";

// The project keeps its copies in assets/; the shared data directory is the fallback.
std::string tokenizer_dir(const std::string& name) {
  for (const std::string dir : {"assets/tokenizers/", "../shared/data/tokenizers/"}) {
    if (fs::exists(dir + name + "/tokenizer.json")) return dir + name;
  }
  throw std::runtime_error("test_hf_tokenizer: " + name + "/tokenizer.json not found in assets/tokenizers/ or " +
                           "../shared/data/tokenizers/ (run from the repo root)");
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("test_hf_tokenizer: cannot open " + path);
  return std::string((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
}

std::vector<json> read_jsonl(const std::string& path) {
  std::istringstream in(read_file(path));
  std::vector<json> rows;
  std::string line;
  while (std::getline(in, line))
    if (!line.empty()) rows.push_back(json::parse(line));
  return rows;
}

// Loading Qwen's 7 MB file takes a moment: each tokenizer is loaded once for the whole binary.
const l2v::HfTokenizer& tokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<l2v::Tokenizer>> cache;
  auto& t = cache[name];
  if (!t) t = l2v::load_hf_tokenizer(tokenizer_dir(name));
  return dynamic_cast<const l2v::HfTokenizer&>(*t);
}

// The text with control and non-ASCII characters escaped, for readable failure messages.
std::string escaped(const std::string& s) { return json(s).dump(-1, ' ', true); }

std::string ids_str(const std::vector<int>& ids) { return json(ids).dump(); }

// Compares every line of a fixture file; reports the first mismatches in full and the counts.
void check_encodings(const l2v::Tokenizer& tok, const std::string& name, const std::string& fixture, size_t min_rows) {
  const std::vector<json> rows = read_jsonl(fixture);
  ASSERT_GE(rows.size(), min_rows) << fixture;
  size_t bad = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const json& r = rows[i];
    const std::string text = r["text"].get<std::string>();
    const auto want = r["ids"].get<std::vector<int>>();
    const auto want_special = r["ids_special"].get<std::vector<int>>();
    const auto got = tok.encode(text, false);
    const auto got_special = tok.encode(text, true);
    const std::string dec = tok.decode(want_special, false), dec_skip = tok.decode(want_special, true);
    const bool ok = got == want && got_special == want_special && dec == r["decoded"] && dec_skip == r["decoded_skip"];
    if (!ok && ++bad <= 5) {
      ADD_FAILURE() << name << " line " << i + 1 << " text " << escaped(text) << "\n  ids      want " << ids_str(want)
                    << "\n           got  " << ids_str(got) << "\n  special  want " << ids_str(want_special)
                    << "\n           got  " << ids_str(got_special) << "\n  decoded  want " << r["decoded"].dump()
                    << "\n           got  " << escaped(dec) << "\n  skip     want " << r["decoded_skip"].dump()
                    << "\n           got  " << escaped(dec_skip);
    }
  }
  std::printf("[ %-8s ] %s: %zu of %zu fixture lines match tokenizers exactly (encode x2, decode x2)\n", "INFO",
              name.c_str(), rows.size() - bad, rows.size());
  EXPECT_EQ(bad, 0u);
}

void check_encodings(const std::string& name) { check_encodings(tokenizer(name), name, kFixtures + name + ".jsonl", 1000); }

void check_decodings(const std::string& name) {
  const l2v::HfTokenizer& tok = tokenizer(name);
  const std::vector<json> rows = read_jsonl(kFixtures + "decode_" + name + ".jsonl");
  ASSERT_GT(rows.size(), 100u);
  size_t bad = 0;
  for (size_t i = 0; i < rows.size(); ++i) {
    const auto ids = rows[i]["ids"].get<std::vector<int>>();
    const std::string dec = tok.decode(ids, false), dec_skip = tok.decode(ids, true);
    if ((dec != rows[i]["decoded"] || dec_skip != rows[i]["decoded_skip"]) && ++bad <= 5) {
      ADD_FAILURE() << name << " decode line " << i + 1 << " ids " << ids_str(ids) << "\n  want "
                    << rows[i]["decoded"].dump() << " / " << rows[i]["decoded_skip"].dump() << "\n  got  "
                    << escaped(dec) << " / " << escaped(dec_skip);
    }
  }
  std::printf("[ %-8s ] %s: %zu of %zu id sequences decode as tokenizers does\n", "INFO", name.c_str(),
              rows.size() - bad, rows.size());
  EXPECT_EQ(bad, 0u);
}

class TempDir {
 public:
  TempDir() {
    static int count = 0;
    path_ = fs::temp_directory_path() /
            ("test_hf_tokenizer_" + std::to_string(::getpid()) + "_" + std::to_string(count++));
    fs::create_directories(path_);
  }
  ~TempDir() { fs::remove_all(path_); }
  std::string write(const std::string& name, const std::string& text) const {
    const fs::path p = path_ / name;
    std::ofstream(p, std::ios::binary) << text;
    return p.string();
  }

 private:
  fs::path path_;
};

TEST(HfTokenizerFixtures, MistralEncodeDecode) { check_encodings(kMistral); }
TEST(HfTokenizerFixtures, QwenEncodeDecode) { check_encodings(kQwen); }
// Small tokenizers trained by the fixture script for what the real files do not use: lstrip/rstrip
// and normalized added tokens, a regex normalizer, ByteLevel with its own regex and prefix space
// (bytelevel); ##/</w> affixes, fused unk, Removed/MergedWithPrevious/MergedWithNext splits, Replace
// and Strip decoders (affixes); byte fallback with missing byte tokens, unfused unk, ignore_merges,
// Contiguous and inverted splits (byte-fallback).
TEST(HfTokenizerFixtures, Variants) {
  for (const std::string name : {"bytelevel", "affixes", "byte-fallback"}) {
    const auto tok = l2v::load_hf_tokenizer(kFixtures + "variants/" + name + ".tokenizer.json");
    check_encodings(*tok, "variant " + name, kFixtures + "variants/" + name + ".jsonl", 150);
  }
}

// Llama-3's components (no normalizer, its split regex, ByteLevel + TemplateProcessing post-processor
// adding a BOS) on Qwen2.5's byte-level vocabulary.
TEST(HfTokenizerFixtures, Llama3StyleOnQwenVocabulary) {
  const json variant = json::parse(read_file(kFixtures + "variants/llama3-style.json"));
  json j = json::parse(read_file(tokenizer_dir(variant["base"].get<std::string>()) + "/tokenizer.json"));
  for (const auto& [key, value] : variant["override"].items()) j[key] = value;
  TempDir dir;
  const auto tok = l2v::load_hf_tokenizer(dir.write("tokenizer.json", j.dump()));
  EXPECT_EQ(tok->bos_id(), 151643);  // no tokenizer_config.json: the template's token before $A
  check_encodings(*tok, "llama3-style", kFixtures + "variants/llama3-style.jsonl", 150);
}

TEST(HfTokenizerFixtures, MistralDecodeIdSequences) { check_decodings(kMistral); }
TEST(HfTokenizerFixtures, QwenDecodeIdSequences) { check_decodings(kQwen); }

// The special-token ids must be the ones tokenizer_config.json names.
void check_config_tokens(const std::string& name) {
  const l2v::HfTokenizer& tok = tokenizer(name);
  const json cfg = json::parse(read_file(tokenizer_dir(name) + "/tokenizer_config.json"));
  auto expected = [&](const char* key) { return cfg[key].is_null() ? -1 : tok.token_to_id(cfg[key].get<std::string>()); };
  EXPECT_EQ(tok.bos_id(), expected("bos_token"));
  EXPECT_EQ(tok.eos_id(), expected("eos_token"));
  EXPECT_EQ(tok.pad_id(), cfg.contains("pad_token") ? expected("pad_token") : -1);
  // Every added token of the config has its id and its special flag.
  for (const auto& [id, t] : cfg["added_tokens_decoder"].items()) {
    const std::string content = t["content"].get<std::string>();
    EXPECT_EQ(tok.token_to_id(content), std::stoi(id)) << content;
    EXPECT_EQ(tok.is_special(std::stoi(id)), t["special"].get<bool>()) << content;
    EXPECT_EQ(tok.id_to_token(std::stoi(id)), content);
  }
}

TEST(HfTokenizerConfig, Mistral) {
  check_config_tokens(kMistral);
  const l2v::HfTokenizer& tok = tokenizer(kMistral);
  EXPECT_EQ(tok.vocab_size(), 32000);
  EXPECT_EQ(tok.bos_id(), 1);
  EXPECT_EQ(tok.eos_id(), 2);
  EXPECT_EQ(tok.pad_id(), -1);
  EXPECT_EQ(tok.token_to_id("<unk>"), 0);
  EXPECT_EQ(tok.token_to_id("<0x0A>"), 13);
  EXPECT_EQ(tok.token_to_id("\xE2\x96\x81the"), 272);
  EXPECT_EQ(tok.token_to_id("no such token"), -1);
  EXPECT_TRUE(tok.is_special(0));
  EXPECT_FALSE(tok.is_special(13));
  EXPECT_FALSE(tok.is_special(-1));
  EXPECT_FALSE(tok.is_special(32000));
}

TEST(HfTokenizerConfig, Qwen) {
  check_config_tokens(kQwen);
  const l2v::HfTokenizer& tok = tokenizer(kQwen);
  EXPECT_EQ(tok.vocab_size(), 151665);
  EXPECT_EQ(tok.bos_id(), -1);  // bos_token is null: Qwen2 adds nothing in front
  EXPECT_EQ(tok.eos_id(), 151645);  // <|im_end|>
  EXPECT_EQ(tok.pad_id(), 151643);  // <|endoftext|>
  EXPECT_TRUE(tok.is_special(151643));
  EXPECT_FALSE(tok.is_special(151657));  // <tool_call> is an added token but not special
  EXPECT_EQ(tok.token_to_id("\xC4\xA0the"), 279);  // "Ġthe"
  EXPECT_EQ(tok.encode("Hello world", true), (std::vector<int>{9707, 1879}));
}

TEST(HfTokenizer, FingerprintIsFnv1aOfTheFile) {
  for (const char* name : {kMistral, kQwen}) {
    const std::string bytes = read_file(tokenizer_dir(name) + "/tokenizer.json");
    EXPECT_EQ(tokenizer(name).fingerprint(), l2v::fnv1a64(bytes.data(), bytes.size())) << name;
  }
  EXPECT_NE(tokenizer(kMistral).fingerprint(), tokenizer(kQwen).fingerprint());
}

TEST(HfTokenizer, LoadsThroughTheGenericEntryPoint) {
  const std::string dir = tokenizer_dir(kMistral);
  for (const std::string& path : {dir, dir + "/tokenizer.json"}) {
    const auto tok = l2v::load_tokenizer(path);
    EXPECT_EQ(tok->encode("Hello world", true), (std::vector<int>{1, 22557, 1526})) << path;
    EXPECT_EQ(tok->describe(), dir + "/tokenizer.json");
  }
}

TEST(HfTokenizer, RoundTripsText) {
  // Both tokenizers are lossless on valid NFC text without added tokens (byte fallback / byte-level).
  // With added tokens they are not: Mistral prepends "▁" to every piece between them.
  for (const std::string text : {"plain text", "  two spaces", "tab\tand\nnewline", "emoji 🦙 and 中文"}) {
    EXPECT_EQ(tokenizer(kMistral).decode(tokenizer(kMistral).encode(text, false), false), text);
    EXPECT_EQ(tokenizer(kQwen).decode(tokenizer(kQwen).encode(text, false), false), text);
  }
  EXPECT_EQ(tokenizer(kMistral).decode(tokenizer(kMistral).encode("<s> inside", false), false), "<s>  inside");
}

TEST(HfTokenizer, RefusesInvalidUtf8AndUnknownIds) {
  const l2v::HfTokenizer& tok = tokenizer(kQwen);
  EXPECT_THROW(tok.encode("bad \xC3\x28 byte", false), std::runtime_error);
  EXPECT_THROW(tok.encode("\xED\xA0\x80", false), std::runtime_error);  // a UTF-8-encoded surrogate
  EXPECT_THROW(tok.decode({1, 999999}, false), std::out_of_range);
  EXPECT_THROW(tok.decode({-1}, false), std::out_of_range);
}

// ---- Malformed and unsupported files

// A minimal valid tokenizer.json: a byte-level-free BPE over a few characters.
json tiny_tokenizer() {
  return json::parse(R"({
    "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
    "normalizer": null, "pre_tokenizer": null, "post_processor": null, "decoder": null,
    "model": {"type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": null,
              "end_of_word_suffix": null, "fuse_unk": false, "byte_fallback": false,
              "vocab": {"a": 0, "b": 1, "ab": 2}, "merges": ["a b"]}
  })");
}

// Expects loading `j` to throw a runtime_error whose message contains every one of `parts`.
void expect_load_error(const json& j, std::initializer_list<std::string> parts) {
  TempDir dir;
  const std::string path = dir.write("tokenizer.json", j.dump());
  try {
    l2v::load_hf_tokenizer(path);
    ADD_FAILURE() << "loading succeeded for " << j.dump().substr(0, 300);
  } catch (const std::runtime_error& e) {
    const std::string msg = e.what();
    EXPECT_NE(msg.find(path), std::string::npos) << msg;
    for (const std::string& p : parts) EXPECT_NE(msg.find(p), std::string::npos) << "'" << p << "' not in: " << msg;
  }
}

TEST(HfTokenizerErrors, TinyTokenizerLoads) {
  TempDir dir;
  const auto tok = l2v::load_hf_tokenizer(dir.write("tokenizer.json", tiny_tokenizer().dump()));
  EXPECT_EQ(tok->encode("abba", false), (std::vector<int>{2, 1, 0}));
  EXPECT_EQ(tok->decode({2, 1, 0}, false), "ab b a");  // no decoder: tokens joined by spaces
  EXPECT_EQ(tok->bos_id(), -1);
}

TEST(HfTokenizer, ConfigAddsBosWhenThePostProcessorDoesNot) {
  TempDir dir;
  json j = tiny_tokenizer();
  j["added_tokens"] = json::parse(R"([{"id": 3, "content": "<s>", "single_word": false, "lstrip": false,
                                       "rstrip": false, "normalized": false, "special": true}])");
  const std::string path = dir.write("tokenizer.json", j.dump());
  const std::string bytes = j.dump();
  dir.write("tokenizer_config.json", R"({"bos_token": "<s>", "add_bos_token": true, "eos_token": null})");
  const auto tok = l2v::load_hf_tokenizer(path);
  EXPECT_EQ(tok->encode("ab", true), (std::vector<int>{3, 2}));
  EXPECT_EQ(tok->encode("ab", false), (std::vector<int>{2}));
  EXPECT_EQ(tok->bos_id(), 3);
  EXPECT_TRUE(tok->is_special(3));
  EXPECT_NE(tok->fingerprint(), l2v::fnv1a64(bytes.data(), bytes.size()));  // the flag changes the ids

  // A TemplateProcessing settles it: the config flag adds nothing more (tokenizers ignores it).
  j["post_processor"] = json::parse(R"({"type": "TemplateProcessing",
      "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [3], "tokens": ["<s>"]}}})");
  const std::string bytes2 = j.dump();
  dir.write("tokenizer.json", bytes2);
  const auto tok2 = l2v::load_hf_tokenizer(path);
  EXPECT_EQ(tok2->encode("ab", true), (std::vector<int>{3, 2}));
  EXPECT_EQ(tok2->fingerprint(), l2v::fnv1a64(bytes2.data(), bytes2.size()));
}

TEST(HfTokenizerErrors, MissingFile) {
  try {
    l2v::load_hf_tokenizer("no/such/dir/tokenizer.json");
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("no/such/dir/tokenizer.json"), std::string::npos) << e.what();
  }
}

TEST(HfTokenizerErrors, InvalidJson) {
  TempDir dir;
  const std::string path = dir.write("tokenizer.json", "{\"version\": \"1.0\", \"model\": ");
  try {
    l2v::load_hf_tokenizer(path);
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(path), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("invalid JSON"), std::string::npos) << e.what();
  }
}

TEST(HfTokenizerErrors, UnsupportedComponents) {
  json j = tiny_tokenizer();
  j["model"]["type"] = "WordPiece";
  expect_load_error(j, {"unsupported model type \"WordPiece\""});

  j = tiny_tokenizer();
  j["normalizer"] = {{"type", "Lowercase"}};
  expect_load_error(j, {"unsupported normalizer type \"Lowercase\""});

  j = tiny_tokenizer();
  j["normalizer"] = json::parse(R"({"type": "Sequence", "normalizers": [{"type": "NFKC"}]})");
  expect_load_error(j, {"unsupported normalizer type \"NFKC\""});

  j = tiny_tokenizer();
  j["pre_tokenizer"] = json::parse(R"({"type": "Metaspace", "replacement": "_", "prepend_scheme": "always"})");
  expect_load_error(j, {"unsupported pre_tokenizer type \"Metaspace\""});

  j = tiny_tokenizer();
  j["post_processor"] = json::parse(R"({"type": "BertProcessing", "sep": ["b", 1], "cls": ["a", 0]})");
  expect_load_error(j, {"unsupported post_processor type \"BertProcessing\""});

  j = tiny_tokenizer();
  j["decoder"] = json::parse(R"({"type": "WordPiece", "prefix": "##", "cleanup": true})");
  expect_load_error(j, {"unsupported decoder type \"WordPiece\""});
}

TEST(HfTokenizerErrors, UnsupportedOptions) {
  json j = tiny_tokenizer();
  j["normalizer"] = json::parse(R"({"type": "Prepend", "prepend": "_", "shiny": true})");
  expect_load_error(j, {"normalizer Prepend", "unsupported option \"shiny\""});

  j = tiny_tokenizer();
  j["model"]["dropout"] = 0.1;
  expect_load_error(j, {"dropout"});

  j = tiny_tokenizer();
  j["truncation"] = json::parse(R"({"max_length": 8, "strategy": "LongestFirst", "stride": 0})");
  expect_load_error(j, {"truncation"});

  j = tiny_tokenizer();
  j["added_tokens"] = json::parse(R"([{"id": 3, "content": "<x>", "single_word": true, "lstrip": false,
                                       "rstrip": false, "normalized": false, "special": true}])");
  expect_load_error(j, {"<x>", "single_word"});

  // Regex constructs whose meaning differs between Oniguruma and PCRE2.
  for (const std::string re : {"\\w+", "^a", "(?m)a", "[[:alpha:]]", "a{,2}"}) {
    j = tiny_tokenizer();
    j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", re}}}, {"behavior", "Isolated"}, {"invert", false}};
    expect_load_error(j, {"pre_tokenizer Split", "not supported"});
  }
}

TEST(HfTokenizerErrors, InconsistentFiles) {
  json j = tiny_tokenizer();
  j["model"]["merges"] = {"a c"};
  expect_load_error(j, {"merge #0", "\"c\""});

  j = tiny_tokenizer();
  j["added_tokens"] = json::parse(R"([{"id": 7, "content": "<x>", "single_word": false, "lstrip": false,
                                       "rstrip": false, "normalized": false, "special": true}])");
  expect_load_error(j, {"<x>", "id 7", "would give it 3"});

  j = tiny_tokenizer();
  j["pre_tokenizer"] = {{"type", "Split"}, {"pattern", {{"Regex", "a*"}}}, {"behavior", "Isolated"}, {"invert", false}};
  expect_load_error(j, {"empty string"});

  TempDir dir;
  dir.write("tokenizer.json", tiny_tokenizer().dump());
  const std::string cfg = dir.write("tokenizer_config.json", R"({"bos_token": "<s>"})");
  try {
    l2v::load_hf_tokenizer(fs::path(cfg).parent_path().string());
    ADD_FAILURE() << "no error";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find(cfg), std::string::npos) << e.what();
    EXPECT_NE(std::string(e.what()).find("<s>"), std::string::npos) << e.what();
  }
}

TEST(HfTokenizerErrors, IdsFarBeyondTheVocabularyAreRefused) {
  // An id near 1e9 sized the id tables by it (std::bad_alloc, or gigabytes); ids are bounded by the
  // number of entries plus 65536 holes, and 2^32 + n is not read as n.
  json j = tiny_tokenizer();
  j["model"]["vocab"]["ab"] = 1000000000;
  expect_load_error(j, {": model: vocab entry \"ab\" has id 1000000000, beyond the 3 entries + 65536 holes"});
  j["model"]["vocab"]["ab"] = 3 + 65536;
  expect_load_error(j, {"vocab entry \"ab\" has id 65539"});
  j["model"]["vocab"]["ab"] = 3 + 65535;  // the largest id allowed
  TempDir dir;
  EXPECT_EQ(l2v::load_hf_tokenizer(dir.write("tokenizer.json", j.dump()))->vocab_size(), 3 + 65536);

  j = tiny_tokenizer();
  j["added_tokens"] = json::parse(R"([{"id": 4294967299, "content": "<x>", "single_word": false, "lstrip": false,
                                       "rstrip": false, "normalized": false, "special": true}])");
  expect_load_error(j, {"added token \"<x>\": has id 4294967299 in the file but tokenizers would give it 3"});

  j = tiny_tokenizer();
  j["post_processor"] = json::parse(R"({"type": "TemplateProcessing", "single": [{"Sequence": {"id": "A", "type_id": 0}}],
      "pair": [], "special_tokens": {"<s>": {"id": "<s>", "ids": [4294967296], "tokens": ["<s>"]}}})");
  expect_load_error(j, {"special token \"<s>\" has id 4294967296, not an integer in [0, 2^31)"});
}

// ---- Building blocks with known answers

TEST(HfUnicode, LossyUtf8LikeRust) {
  // Each maximal ill-formed subsequence becomes one U+FFFD (Rust's String::from_utf8_lossy).
  EXPECT_EQ(l2v::utf8_lossy("ok"), "ok");
  EXPECT_EQ(l2v::utf8_lossy("\xF0\x9F\x98"), "\xEF\xBF\xBD");            // truncated 4-byte sequence
  EXPECT_EQ(l2v::utf8_lossy("\xE0\x80\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // overlong: 3 subparts
  EXPECT_EQ(l2v::utf8_lossy("a\xC3(b"), "a\xEF\xBF\xBD(b");
  EXPECT_EQ(l2v::utf8_lossy("\xED\xA0\x80"), "\xEF\xBF\xBD\xEF\xBF\xBD\xEF\xBF\xBD");  // surrogate
}

TEST(HfUnicode, NfcKeepsCharactersNewerThanUnicode9) {
  std::string out;
  EXPECT_FALSE(l2v::nfc("plain ASCII and caf\xC3\xA9", out));  // quick check: nothing to do
  ASSERT_TRUE(l2v::nfc("e\xCC\x81", out));
  EXPECT_EQ(out, "\xC3\xA9");
  // U+1DF6 (Unicode 10, class 232) before U+0316 (class 220): Unicode 15 reorders them, tokenizers'
  // Unicode 9 tables do not know U+1DF6 and leave the text as it is.
  ASSERT_TRUE(l2v::nfc("a\xE1\xB7\xB6\xCC\x96", out));
  EXPECT_EQ(out, "a\xE1\xB7\xB6\xCC\x96");
}

TEST(HfByteLevel, Gpt2Alphabet) {
  // Printable Latin-1 bytes stand for themselves; the others are numbered from U+0100 in byte order.
  EXPECT_EQ(l2v::byte_level_char('A'), "A");
  EXPECT_EQ(l2v::byte_level_char(0), "\xC4\x80");      // U+0100
  EXPECT_EQ(l2v::byte_level_char(' '), "\xC4\xA0");    // U+0120 "Ġ"
  EXPECT_EQ(l2v::byte_level_char('\n'), "\xC4\x8A");   // U+010A "Ċ"
  EXPECT_EQ(l2v::byte_level_char(0xAD), "\xC5\x83");   // U+0143, the last one
  for (int b = 0; b < 256; ++b) {
    size_t i = 0;
    EXPECT_EQ(l2v::byte_level_byte(l2v::next_code_point(l2v::byte_level_char(b), i)), b);
  }
  EXPECT_EQ(l2v::byte_level_byte(0x144), -1);
  EXPECT_EQ(l2v::byte_level_byte(' '), -1);
}

TEST(HfRegex, TranslatesOnigurumaSpaces) {
  // \s is Oniguruma's White_Space set: U+180E is not in it (PCRE2's \s would take it).
  const l2v::HfRegex re("\\s+", "test");
  std::vector<l2v::MatchSpan> m;
  re.find_all("a \t\xE1\xA0\x8E b", m);  // "a", space, tab, U+180E, space, "b"
  ASSERT_EQ(m.size(), 2u);
  EXPECT_EQ(m[0], (l2v::MatchSpan{1, 3}));
  EXPECT_EQ(m[1], (l2v::MatchSpan{6, 7}));
}

}  // namespace
