#include "data/gguf_tokenizer.h"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <unordered_map>
#include <utility>
#include <vector>

#include "data/unicode.h"

namespace l2v {
namespace {

using json = nlohmann::json;

json byte_level(bool use_regex, bool trim_offsets) {
  return {{"type", "ByteLevel"}, {"add_prefix_space", false}, {"trim_offsets", trim_offsets}, {"use_regex", use_regex}};
}

json split(const std::string& regex) {
  return {{"type", "Split"}, {"pattern", {{"Regex", regex}}}, {"behavior", "Isolated"}, {"invert", false}};
}

// The pre-tokenizer llama.cpp calls `name`, as the model families' tokenizer.json files write it.
json pre_tokenizer(const std::string& name, const std::string& where) {
  if (name == "smollm")
    return {{"type", "Sequence"}, {"pretokenizers", {split("\\p{N}"), byte_level(true, true)}}};
  if (name == "qwen2")
    return {{"type", "Sequence"},
            {"pretokenizers",
             {split("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
              byte_level(false, false)}}};
  if (name == "llama-bpe")
    return {{"type", "Sequence"},
            {"pretokenizers",
             {split("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
                    "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+"),
              byte_level(false, true)}}};
  if (name == "gpt-2" || name == "gpt2" || name == "default") return byte_level(true, true);
  throw std::runtime_error(where + ": tokenizer.ggml.pre '" + name +
                           "' is not a pre-tokenizer this converter knows (smollm, qwen2, llama-bpe, gpt-2, default): "
                           "give the model's tokenizer.json with --tokenizer");
}

// SentencePiece BPE (llama.cpp's "llama" model) stores no merges, only each piece's score: the merges are
// every split of a piece into two pieces of the vocabulary, a piece's splits ordered by their halves'
// scores (highest first), then all of them by the piece's score (highest first, a stable order) — as
// transformers rebuilds them from a GGUF file (and as Mistral's own tokenizer.json lists them). Splits fall
// on code-point boundaries.
json spm_merges(const json& tokens, const std::vector<double>& scores) {
  std::unordered_map<std::string, double> score_of;
  for (size_t i = 0; i < tokens.size(); ++i) score_of.emplace(tokens[i].get<std::string>(), scores[i]);
  struct Merge {
    std::string left, right;
    double score;
  };
  std::vector<Merge> merges;
  for (size_t i = 0; i < tokens.size(); ++i) {
    const std::string& piece = tokens[i].get_ref<const std::string&>();
    std::vector<Merge> local;
    size_t at = 0;
    next_code_point(piece, at);  // the first split follows the first code point
    while (at < piece.size()) {
      const std::string left = piece.substr(0, at), right = piece.substr(at);
      const auto l = score_of.find(left), r = score_of.find(right);
      if (l != score_of.end() && r != score_of.end()) local.push_back({left, right, scores[i]});
      next_code_point(piece, at);
    }
    std::stable_sort(local.begin(), local.end(), [&](const Merge& a, const Merge& b) {
      const double al = score_of.at(a.left), bl = score_of.at(b.left);
      if (al != bl) return al > bl;
      return score_of.at(a.right) > score_of.at(b.right);
    });
    merges.insert(merges.end(), local.begin(), local.end());
  }
  std::stable_sort(merges.begin(), merges.end(), [](const Merge& a, const Merge& b) { return a.score > b.score; });
  json out = json::array();
  for (const Merge& m : merges) out.push_back(m.left + " " + m.right);
  return out;
}

}  // namespace

bool gguf_has_tokenizer(const GgufFile& f) { return f.metadata().contains("tokenizer.ggml.tokens"); }

HfTokenizerFiles gguf_tokenizer(const GgufFile& f) {
  const json& m = f.metadata();
  const std::string& where = f.path();
  auto fail = [&](const std::string& what) { throw std::runtime_error(where + ": " + what); };
  if (!gguf_has_tokenizer(f)) fail("no tokenizer metadata (tokenizer.ggml.tokens)");
  auto string_of = [&](const std::string& key, const std::string& fallback) {
    if (!m.contains(key)) return fallback;
    if (!m.at(key).is_string()) fail(key + " is not a string");
    return m.at(key).get<std::string>();
  };
  const std::string model = string_of("tokenizer.ggml.model", "");
  if (model != "gpt2" && model != "llama")
    fail("tokenizer.ggml.model '" + model +
         "' is not supported (byte-level BPE 'gpt2' and SentencePiece BPE 'llama' are): give --tokenizer");
  const bool spm = model == "llama";
  const json& tokens = m.at("tokenizer.ggml.tokens");
  if (!tokens.is_array() || tokens.empty()) fail("tokenizer.ggml.tokens must be a non-empty array of strings");
  json vocab = json::object();
  for (size_t i = 0; i < tokens.size(); ++i) {
    if (!tokens[i].is_string() || !is_valid_utf8(tokens[i].get<std::string>()))
      fail("tokenizer.ggml.tokens[" + std::to_string(i) + "] is not a UTF-8 string");
    if (vocab.contains(tokens[i].get<std::string>()))
      fail("tokenizer.ggml.tokens[" + std::to_string(i) + "] repeats '" + tokens[i].get<std::string>() + "'");
    vocab[tokens[i].get<std::string>()] = i;
  }
  auto token_id = [&](const std::string& key) -> int64_t {
    if (!m.contains(key)) return -1;
    if (!m.at(key).is_number_integer() || m.at(key).get<int64_t>() < 0 || m.at(key).get<uint64_t>() >= tokens.size())
      fail(key + " is not a token id");
    return m.at(key).get<int64_t>();
  };
  auto flag = [&](const std::string& key, bool fallback) {
    return m.contains(key) && m.at(key).is_boolean() ? m.at(key).get<bool>() : fallback;
  };
  json merges = m.contains("tokenizer.ggml.merges") ? m.at("tokenizer.ggml.merges") : json::array();
  if (!merges.is_array()) fail("tokenizer.ggml.merges is not an array");
  if (spm && merges.empty()) {
    if (!m.contains("tokenizer.ggml.scores") || !m.at("tokenizer.ggml.scores").is_array() ||
        m.at("tokenizer.ggml.scores").size() != tokens.size())
      fail("tokenizer.ggml.scores must hold one score per token (SentencePiece merges follow the scores)");
    std::vector<double> scores;
    for (const json& x : m.at("tokenizer.ggml.scores")) {
      if (!x.is_number() || !std::isfinite(x.get<double>())) fail("tokenizer.ggml.scores holds a non-finite value");
      scores.push_back(x.get<double>());
    }
    merges = spm_merges(tokens, scores);
  }
  for (size_t i = 0; i < merges.size(); ++i)
    if (!merges[i].is_string() || !is_valid_utf8(merges[i].get<std::string>()) ||
        merges[i].get<std::string>().find(' ') == std::string::npos)
      fail("tokenizer.ggml.merges[" + std::to_string(i) + "] is not 'left right'");
  json added = json::array();
  if (m.contains("tokenizer.ggml.token_type")) {
    const json& types = m.at("tokenizer.ggml.token_type");
    if (!types.is_array() || types.size() != tokens.size())
      fail("tokenizer.ggml.token_type must hold one type per token");
    for (size_t i = 0; i < types.size(); ++i) {
      const int t = types[i].is_number_integer() ? types[i].get<int>() : -1;
      // 3: control, 4: user-defined (transformers' SentencePiece conversion adds the control tokens only)
      if (t != 3 && (t != 4 || spm)) continue;
      added.push_back({{"id", i}, {"content", tokens[i]}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", false}, {"special", t == 3}});
    }
  }
  HfTokenizerFiles out;
  if (spm) {
    // Llama 2 / Mistral's tokenizer.json: "▁" for spaces (and before the text unless add_space_prefix is
    // false), unknown bytes as <0xXX> tokens, the BOS (EOS) added when add_bos_token (add_eos_token) is true,
    // the default of llama.cpp (false) for SentencePiece vocabularies.
    const int64_t unk = token_id("tokenizer.ggml.unknown_token_id");
    const bool add_bos = flag("tokenizer.ggml.add_bos_token", true), add_eos = flag("tokenizer.ggml.add_eos_token", false);
    json normalizers = json::array();
    if (flag("tokenizer.ggml.add_space_prefix", true)) normalizers.push_back({{"type", "Prepend"}, {"prepend", "\u2581"}});
    normalizers.push_back({{"type", "Replace"}, {"pattern", {{"String", " "}}}, {"content", "\u2581"}});
    json single = json::array(), pair = json::array(), special = json::object();
    for (const auto& [use, key] : {std::pair<bool, const char*>{add_bos, "tokenizer.ggml.bos_token_id"},
                                   std::pair<bool, const char*>{add_eos, "tokenizer.ggml.eos_token_id"}}) {
      if (!use) continue;
      const int64_t id = token_id(key);
      if (id < 0) fail(std::string(key) + " is missing, yet the tokenizer adds that token");
      const std::string t = tokens[id].get<std::string>();
      special[t] = {{"id", t}, {"ids", {id}}, {"tokens", {t}}};
    }
    auto piece = [](const std::string& seq, int type_id) { return json{{"Sequence", {{"id", seq}, {"type_id", type_id}}}}; };
    auto token = [](const std::string& t, int type_id) { return json{{"SpecialToken", {{"id", t}, {"type_id", type_id}}}}; };
    const std::string bos = add_bos ? tokens[token_id("tokenizer.ggml.bos_token_id")].get<std::string>() : "";
    const std::string eos = add_eos ? tokens[token_id("tokenizer.ggml.eos_token_id")].get<std::string>() : "";
    for (int type_id = 0; type_id < 2; ++type_id) {
      if (add_bos) pair.push_back(token(bos, type_id));
      pair.push_back(piece(type_id == 0 ? "A" : "B", type_id));
      if (add_eos) pair.push_back(token(eos, type_id));
    }
    if (add_bos) single.push_back(token(bos, 0));
    single.push_back(piece("A", 0));
    if (add_eos) single.push_back(token(eos, 0));
    out.tokenizer = {{"version", "1.0"},
                     {"truncation", nullptr},
                     {"padding", nullptr},
                     {"added_tokens", added},
                     {"normalizer", {{"type", "Sequence"}, {"normalizers", normalizers}}},
                     {"pre_tokenizer", nullptr},
                     {"post_processor",
                      {{"type", "TemplateProcessing"}, {"single", single}, {"pair", pair}, {"special_tokens", special}}},
                     {"decoder",
                      {{"type", "Sequence"},
                       {"decoders",
                        {{{"type", "Replace"}, {"pattern", {{"String", "\u2581"}}}, {"content", " "}},
                         {{"type", "ByteFallback"}},
                         {{"type", "Fuse"}},
                         {{"type", "Strip"}, {"content", " "}, {"start", 1}, {"stop", 0}}}}}},
                     {"model",
                      {{"type", "BPE"},
                       {"dropout", nullptr},
                       {"unk_token", unk >= 0 ? json(tokens[unk]) : json(nullptr)},
                       {"continuing_subword_prefix", nullptr},
                       {"end_of_word_suffix", nullptr},
                       {"fuse_unk", true},
                       {"byte_fallback", true},
                       {"vocab", vocab},
                       {"merges", merges}}}};
  } else {
  out.tokenizer = {{"version", "1.0"},
                   {"truncation", nullptr},
                   {"padding", nullptr},
                   {"added_tokens", added},
                   {"normalizer", nullptr},
                   {"pre_tokenizer", pre_tokenizer(string_of("tokenizer.ggml.pre", "default"), where)},
                   {"post_processor", nullptr},
                   {"decoder", byte_level(true, true)},
                   {"model",
                    {{"type", "BPE"},
                     {"dropout", nullptr},
                     {"unk_token", nullptr},
                     {"continuing_subword_prefix", ""},
                     {"end_of_word_suffix", ""},
                     {"fuse_unk", false},
                     {"byte_fallback", false},
                     {"vocab", vocab},
                     {"merges", merges}}}};
  }
  out.config = json::object();
  for (const auto& [role, name] : {std::pair<const char*, const char*>{"bos", "bos_token"}, {"eos", "eos_token"},
                                    {"padding", "pad_token"}, {"unknown", "unk_token"}}) {
    const int64_t id = token_id(std::string("tokenizer.ggml.") + role + "_token_id");
    if (id >= 0) out.config[name] = tokens[id];
  }
  // The template above adds them for SentencePiece; the byte-level converters' tokenizer.json adds none.
  out.config["add_bos_token"] = flag("tokenizer.ggml.add_bos_token", spm);
  out.config["add_eos_token"] = flag("tokenizer.ggml.add_eos_token", false);
  // Without a class transformers picks one by the model type (LlamaTokenizerFast for llama), and that class
  // adds its default special tokens when the vocabulary lacks them: SmolLM2 gained an "<unk>" (id 49152),
  // len(tokenizer) exceeded the embedding, llm2vec's MNTP resized it and its own SimCSE stage could no
  // longer load that adapter on the base model. The generic class adds nothing: tokenizer.json is the whole
  // tokenizer (its template adds the BOS where the GGUF says so). Its default inputs include token_type_ids,
  // which decoder-only models refuse: the inputs are named as Llama 3's tokenizer_config.json names them.
  out.config["tokenizer_class"] = "PreTrainedTokenizerFast";
  out.config["model_input_names"] = {"input_ids", "attention_mask"};
  return out;
}

}  // namespace l2v
