#include "data/hf_tokenizer.h"

#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <nlohmann/json.hpp>
#include <stdexcept>
#include <unordered_set>

#include "data/file_io.h"
#include "data/unicode.h"

namespace l2v {

using nlohmann::json;

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) { throw std::runtime_error(where + ": " + what); }

std::string read_file_bytes(const std::string& path) {
  std::ifstream in = open_input_file(path, "a tokenizer file");
  std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail(path, "read error");
  return bytes;
}

json parse_json(const std::string& bytes, const std::string& path) {
  try {
    return json::parse(bytes);
  } catch (const json::exception& e) {
    fail(path, std::string("invalid JSON: ") + e.what());
  }
}

bool get_flag(const json& t, const char* key, const std::string& where) {
  if (!t.contains(key) || !t[key].is_boolean()) fail(where, std::string("added token without a boolean \"") + key + "\"");
  return t[key].get<bool>();
}

// The byte offset where the run of White_Space characters ending `s` starts (Rust's `\s*$`).
size_t trailing_space_start(std::string_view s) {
  size_t i = s.size();
  while (i > 0) {
    size_t b = i - 1;
    while (b > 0 && (static_cast<unsigned char>(s[b]) & 0xC0) == 0x80) --b;
    size_t k = b;
    if (!is_white_space(next_code_point(s, k))) break;
    i = b;
  }
  return i;
}

// The byte length of the run of White_Space characters starting `s` (Rust's `^\s*`).
size_t leading_space_length(std::string_view s) {
  size_t i = 0;
  while (i < s.size()) {
    size_t k = i;
    if (!is_white_space(next_code_point(s, k))) break;
    i = k;
  }
  return i;
}

}  // namespace

// -------------------------------------------------------------------------------------------------
// AddedTokenMatcher

void AddedTokenMatcher::add(const std::string& pattern, int token) {
  if (pattern.empty()) return;  // tokenizers skips empty added tokens
  const int index = static_cast<int>(patterns_.size());
  patterns_.emplace_back(pattern, token);
  auto& bucket = by_first_byte_[static_cast<unsigned char>(pattern[0])];
  bucket.push_back(index);
  std::stable_sort(bucket.begin(), bucket.end(),
                   [&](int a, int b) { return patterns_[a].first.size() > patterns_[b].first.size(); });
}

bool AddedTokenMatcher::find(std::string_view s, size_t from, size_t& begin, size_t& end, int& token) const {
  if (patterns_.empty()) return false;
  for (size_t pos = from; pos < s.size(); ++pos) {
    const auto& bucket = by_first_byte_[static_cast<unsigned char>(s[pos])];
    for (int index : bucket) {
      const std::string& p = patterns_[index].first;
      if (p.size() <= s.size() - pos && std::memcmp(s.data() + pos, p.data(), p.size()) == 0) {
        begin = pos;
        end = pos + p.size();
        token = patterns_[index].second;
        return true;
      }
    }
  }
  return false;
}

// -------------------------------------------------------------------------------------------------
// Loading

HfTokenizer::HfTokenizer(const std::string& json_path, const std::string& config_path) : path_(json_path) {
  const std::string bytes = read_file_bytes(json_path);
  fingerprint_ = fnv1a64(bytes.data(), bytes.size());
  const json j = parse_json(bytes, json_path);
  if (!j.is_object()) fail(json_path, "tokenizer.json must hold a JSON object");
  for (const auto& [key, value] : j.items()) {
    static const char* const kKeys[] = {"version", "truncation", "padding", "added_tokens", "normalizer",
                                        "pre_tokenizer", "post_processor", "decoder", "model"};
    if (std::find_if(std::begin(kKeys), std::end(kKeys), [&key = key](const char* k) { return key == k; }) == std::end(kKeys))
      fail(json_path, "unsupported top-level key \"" + key + "\"");
  }
  if (j.contains("version") && j["version"] != "1.0") fail(json_path, "unknown tokenizer.json version " + j["version"].dump());
  // Truncation and padding change what encode returns; they are the data pipeline's job here.
  if (j.contains("truncation") && !j["truncation"].is_null()) fail(json_path, "\"truncation\" is not supported (must be null)");
  if (j.contains("padding") && !j["padding"].is_null()) fail(json_path, "\"padding\" is not supported (must be null)");
  if (!j.contains("model")) fail(json_path, "no \"model\"");

  model_ = parse_bpe_model(j["model"], json_path);
  if (j.contains("normalizer") && !j["normalizer"].is_null()) {
    normalizer_ = parse_normalizer(j["normalizer"], json_path);
    has_normalizer_ = true;
  }
  if (j.contains("pre_tokenizer") && !j["pre_tokenizer"].is_null())
    pre_tokenizer_ = parse_pre_tokenizer(j["pre_tokenizer"], json_path);
  if (j.contains("post_processor") && !j["post_processor"].is_null()) {
    post_processor_ = parse_post_processor(j["post_processor"], json_path);
    has_post_processor_ = true;
  }
  if (j.contains("decoder") && !j["decoder"].is_null()) {
    decoder_ = parse_decoder(j["decoder"], json_path);
    has_decoder_ = true;
  }

  // Added tokens, given ids the way tokenizers' AddedVocabulary::add_tokens does (an existing
  // vocabulary entry keeps its id, a new token takes the next free id after the model's); the id
  // written in the file must agree.
  const json empty_list = json::array();
  const json& added = j.contains("added_tokens") && !j["added_tokens"].is_null() ? j["added_tokens"] : empty_list;
  if (!added.is_array()) fail(json_path, "\"added_tokens\" must be an array");
  const int model_vocab = static_cast<int>(model_.token_to_id.size());
  std::unordered_map<std::string, int> content_to_id;
  int max_added_id = -1;
  for (const json& t : added) {
    if (!t.is_object() || !t.contains("content") || !t["content"].is_string() || !t.contains("id") ||
        !t["id"].is_number_unsigned())
      fail(json_path, "an added token needs a string \"content\" and an integer \"id\"");
    AddedToken a;
    a.content = t["content"].get<std::string>();
    const std::string where = json_path + ": added token \"" + a.content + "\"";
    a.single_word = get_flag(t, "single_word", where);
    a.lstrip = get_flag(t, "lstrip", where);
    a.rstrip = get_flag(t, "rstrip", where);
    a.normalized = get_flag(t, "normalized", where);
    a.special = get_flag(t, "special", where);
    for (const auto& [key, value] : t.items())
      if (key != "id" && key != "content" && key != "single_word" && key != "lstrip" && key != "rstrip" &&
          key != "normalized" && key != "special")
        fail(where, "unsupported option \"" + key + "\"");
    // single_word needs Rust regex's Unicode \w, which is not ported.
    if (a.single_word) fail(where, "single_word = true is not supported");
    if (a.content.empty()) fail(where, "empty content");
    if (added_by_content_.count(a.content)) fail(where, "listed twice");
    int id;
    auto known = content_to_id.find(a.content);
    if (known != content_to_id.end()) id = known->second;
    else if (model_.vocab_id(a.content) >= 0) id = model_.vocab_id(a.content);
    else if (max_added_id < 0) id = model_vocab;
    else id = (max_added_id >= model_vocab || model_vocab == 0) ? max_added_id + 1 : model_vocab;
    if (t["id"].get<uint64_t>() != static_cast<uint64_t>(id))
      fail(where, "has id " + t["id"].dump() + " in the file but tokenizers would give it " + std::to_string(id));
    a.id = id;
    content_to_id[a.content] = id;
    max_added_id = std::max(max_added_id, id);
    added_by_content_[a.content] = static_cast<int>(added_.size());
    added_.push_back(a);
  }
  // tokenizers lists special tokens before the others when it builds its automata; with no
  // duplicate contents the order cannot change a leftmost-longest match, but keep it anyway.
  for (int pass = 0; pass < 2; ++pass) {
    for (size_t i = 0; i < added_.size(); ++i) {
      const AddedToken& a = added_[i];
      if (a.special != (pass == 0)) continue;
      if (!a.normalized) {
        raw_matcher_.add(a.content, static_cast<int>(i));
      } else {
        std::string n = a.content;
        if (has_normalizer_) normalize(normalizer_, n);
        normalized_matcher_.add(n, static_cast<int>(i));
      }
    }
  }

  // The id -> token table decode uses: added tokens take precedence over the model's entries.
  const int size = std::max(static_cast<int>(model_.id_to_token.size()), max_added_id + 1);
  id_to_token_.assign(size, std::string());
  id_used_.assign(size, false);
  for (int id = 0; id < static_cast<int>(model_.id_to_token.size()); ++id) {
    if (!model_.id_used[id]) continue;
    id_to_token_[id] = model_.id_to_token[id];
    id_used_[id] = true;
  }
  std::unordered_set<std::string> special_contents;
  for (const AddedToken& a : added_) {
    id_to_token_[a.id] = a.content;
    id_used_[a.id] = true;
    if (a.special) special_contents.insert(a.content);
  }
  skip_on_decode_.assign(size, false);
  special_.assign(size, false);
  for (int id = 0; id < size; ++id) {
    skip_on_decode_[id] = id_used_[id] && special_contents.count(id_to_token_[id]) > 0;
    special_[id] = skip_on_decode_[id];
  }
  if (has_post_processor_) {
    std::vector<int> probe;
    post_process(post_processor_, probe, true);
    for (int id : probe)
      if (id < 0 || id >= size || !id_used_[id])
        fail(json_path, "the post-processor adds id " + std::to_string(id) + ", which names no token");
  }

  unk_ = model_.unk_token.empty() ? -1 : model_.vocab_id(model_.unk_token);
  if (!config_path.empty()) load_config(config_path);
  if (bos_ < 0 && eos_ < 0 && has_post_processor_) {
    // Without a config, the template's own tokens around $A are the best names for BOS/EOS.
    std::vector<int> before, after;
    template_bos_eos(post_processor_, before, after);
    if (before.size() == 1) bos_ = before[0];
    if (after.size() == 1) eos_ = after[0];
  }
  for (int id : {bos_, eos_, pad_, unk_})
    if (id >= 0) special_[id] = true;
  // The fingerprint is that of the file, unless tokenizer_config.json adds tokens the file does not.
  if (extra_bos_ || extra_eos_) {
    const std::string keyed = bytes + (extra_bos_ ? "\n+add_bos_token" : "") + (extra_eos_ ? "\n+add_eos_token" : "");
    fingerprint_ = fnv1a64(keyed.data(), keyed.size());
  }
}

void HfTokenizer::load_config(const std::string& config_path) {
  const json cfg = parse_json(read_file_bytes(config_path), config_path);
  if (!cfg.is_object()) fail(config_path, "tokenizer_config.json must hold a JSON object");
  // A token is named by a string or by an AddedToken object {"content": ...}; null means none.
  auto token_id = [&](const char* key) {
    if (!cfg.contains(key) || cfg[key].is_null()) return -1;
    const json& v = cfg[key];
    std::string name;
    if (v.is_string()) name = v.get<std::string>();
    else if (v.is_object() && v.contains("content") && v["content"].is_string()) name = v["content"].get<std::string>();
    else fail(config_path, std::string("\"") + key + "\" must be a token string, an AddedToken object or null");
    const int id = token_to_id(name);
    if (id < 0) fail(config_path, std::string("\"") + key + "\" is \"" + name + "\", which is not in the vocabulary");
    return id;
  };
  auto flag = [&](const char* key) {
    if (!cfg.contains(key) || cfg[key].is_null()) return false;
    if (!cfg[key].is_boolean()) fail(config_path, std::string("\"") + key + "\" must be a boolean");
    return cfg[key].get<bool>();
  };
  bos_ = token_id("bos_token");
  eos_ = token_id("eos_token");
  pad_ = token_id("pad_token");
  if (unk_ < 0) unk_ = token_id("unk_token");
  const bool settled = has_post_processor_ && adds_special_tokens(post_processor_);
  if (!settled) {
    extra_bos_ = flag("add_bos_token");
    extra_eos_ = flag("add_eos_token");
    if (extra_bos_ && bos_ < 0) fail(config_path, "add_bos_token is true but there is no bos_token");
    if (extra_eos_ && eos_ < 0) fail(config_path, "add_eos_token is true but there is no eos_token");
  }
}

// -------------------------------------------------------------------------------------------------
// Encoding

template <class F>
void HfTokenizer::split_added(std::string_view s, const AddedTokenMatcher& matcher, F&& emit) const {
  if (s.empty()) return;
  // tokenizers' AddedVocabulary::find_matches. The automaton resumes after each match's own end,
  // even when rstrip took the spaces after it.
  size_t start_offset = 0, from = 0, b = 0, e = 0;
  int token = -1;
  while (matcher.find(s, from, b, e, token)) {
    from = e;
    const AddedToken& a = added_[token];
    size_t start = b, stop = e;
    if (a.lstrip) start = std::max(trailing_space_start(s.substr(0, b)), start_offset);
    if (a.rstrip) stop += leading_space_length(s.substr(e));
    if (start_offset < start) emit(s.substr(start_offset, start - start_offset), -1);
    emit(s.substr(start, stop - start), token);
    start_offset = stop;
  }
  if (start_offset < s.size()) emit(s.substr(start_offset), -1);
}

void HfTokenizer::encode_words(std::string_view piece, std::vector<int>& ids) const {
  if (pre_tokenizer_.empty()) {
    bpe_tokenize(model_, piece, ids);
    return;
  }
  pre_tokenize(pre_tokenizer_, piece, [&](std::string_view word) { bpe_tokenize(model_, word, ids); });
}

std::vector<int> HfTokenizer::encode(const std::string& text, bool add_special_tokens) const {
  if (!is_valid_utf8(text)) fail(path_, "encode: the text is not valid UTF-8");
  std::vector<int> ids;
  ids.reserve(text.size() / 3 + 4);
  std::string normalized;
  split_added(text, raw_matcher_, [&](std::string_view piece, int token) {
    if (token >= 0) {
      ids.push_back(added_[token].id);
      return;
    }
    std::string_view norm = piece;
    if (has_normalizer_) {
      normalized.assign(piece);
      normalize(normalizer_, normalized);
      norm = normalized;
    }
    if (normalized_matcher_.empty()) {
      encode_words(norm, ids);
      return;
    }
    split_added(norm, normalized_matcher_, [&](std::string_view p, int t) {
      if (t >= 0) ids.push_back(added_[t].id);
      else encode_words(p, ids);
    });
  });
  if (has_post_processor_) post_process(post_processor_, ids, add_special_tokens);
  if (add_special_tokens) {
    if (extra_bos_) ids.insert(ids.begin(), bos_);
    if (extra_eos_) ids.push_back(eos_);
  }
  return ids;
}

// -------------------------------------------------------------------------------------------------
// Decoding and lookups

std::string HfTokenizer::decode(const std::vector<int>& ids, bool skip_special_tokens) const {
  std::vector<std::string> tokens;
  tokens.reserve(ids.size());
  for (int id : ids) {
    if (id < 0 || id >= vocab_size() || !id_used_[id])
      throw std::out_of_range(path_ + ": decode: id " + std::to_string(id) + " names no token");
    if (skip_special_tokens && skip_on_decode_[id]) continue;
    tokens.push_back(id_to_token_[id]);
  }
  std::string out;
  if (has_decoder_) {
    decode_chain(decoder_, tokens);
    for (const std::string& t : tokens) out += t;
  } else {
    // tokenizers joins the raw tokens with spaces when there is no decoder.
    for (size_t i = 0; i < tokens.size(); ++i) {
      if (i) out += ' ';
      out += tokens[i];
    }
  }
  return out;
}

int HfTokenizer::token_to_id(const std::string& token) const {
  auto it = added_by_content_.find(token);
  if (it != added_by_content_.end()) return added_[it->second].id;
  return model_.vocab_id(token);
}

bool HfTokenizer::is_special(int id) const { return id >= 0 && id < vocab_size() && special_[id]; }

const std::string& HfTokenizer::id_to_token(int id) const {
  static const std::string kNone;
  return id >= 0 && id < vocab_size() && id_used_[id] ? id_to_token_[id] : kNone;
}

std::unique_ptr<Tokenizer> load_hf_tokenizer(const std::string& path) {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path json_path = fs::is_directory(path, ec) ? fs::path(path) / "tokenizer.json" : fs::path(path);
  if (!fs::is_regular_file(json_path, ec)) fail(json_path.string(), "no such tokenizer file");
  const fs::path config = json_path.parent_path() / "tokenizer_config.json";
  return std::make_unique<HfTokenizer>(json_path.string(), fs::is_regular_file(config, ec) ? config.string() : "");
}

}  // namespace l2v
