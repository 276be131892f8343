#include "data/gguf_tokenizer.h"

#include <stdexcept>

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
  if (model != "gpt2")
    fail("tokenizer.ggml.model '" + model + "' is not supported (byte-level BPE 'gpt2' is): give --tokenizer");
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
  const json merges = m.contains("tokenizer.ggml.merges") ? m.at("tokenizer.ggml.merges") : json::array();
  if (!merges.is_array()) fail("tokenizer.ggml.merges is not an array");
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
      if (t != 3 && t != 4) continue;  // 3: control, 4: user-defined
      added.push_back({{"id", i}, {"content", tokens[i]}, {"single_word", false}, {"lstrip", false},
                       {"rstrip", false}, {"normalized", false}, {"special", t == 3}});
    }
  }
  HfTokenizerFiles out;
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
  out.config = json::object();
  for (const char* role : {"bos", "eos", "padding"}) {
    const std::string key = std::string("tokenizer.ggml.") + role + "_token_id";
    if (!m.contains(key)) continue;
    if (!m.at(key).is_number_integer() || m.at(key).get<int64_t>() < 0 || m.at(key).get<uint64_t>() >= tokens.size())
      fail(key + " is not a token id");
    out.config[std::string(role == std::string("padding") ? "pad" : role) + "_token"] = tokens[m.at(key).get<size_t>()];
  }
  for (const char* flag : {"add_bos_token", "add_eos_token"}) {
    const std::string key = std::string("tokenizer.ggml.") + flag;
    out.config[flag] = m.contains(key) && m.at(key).is_boolean() && m.at(key).get<bool>();
  }
  return out;
}

}  // namespace l2v
