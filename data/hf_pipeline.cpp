#include "data/hf_pipeline.h"

#include <algorithm>
#include <array>
#include <cstdint>
#include <initializer_list>
#include <memory>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "data/unicode.h"

namespace l2v {

using nlohmann::json;

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) { throw std::runtime_error(where + ": " + what); }

std::string type_of(const json& j, const std::string& where, const char* component) {
  if (!j.is_object()) fail(where, std::string(component) + " must be a JSON object");
  if (!j.contains("type") || !j["type"].is_string()) fail(where, std::string(component) + " without a \"type\"");
  return j["type"].get<std::string>();
}

// tokenizers ignores unknown keys, but a key this port does not know may be an option of a newer
// version that changes the output: refuse it rather than ignore it.
void check_keys(const json& j, std::initializer_list<const char*> known, const std::string& where, const std::string& what) {
  for (const auto& [key, value] : j.items()) {
    if (key == "type") continue;
    if (std::find_if(known.begin(), known.end(), [&key = key](const char* k) { return key == k; }) == known.end())
      fail(where, what + ": unsupported option \"" + key + "\"");
  }
}

const json& required(const json& j, const char* key, const std::string& where, const std::string& what) {
  if (!j.contains(key)) fail(where, what + ": missing \"" + key + "\"");
  return j[key];
}

bool get_bool(const json& j, const char* key, const std::string& where, const std::string& what) {
  const json& v = required(j, key, where, what);
  if (!v.is_boolean()) fail(where, what + ": \"" + key + "\" must be a boolean");
  return v.get<bool>();
}

std::string get_string(const json& j, const char* key, const std::string& where, const std::string& what) {
  const json& v = required(j, key, where, what);
  if (!v.is_string()) fail(where, what + ": \"" + key + "\" must be a string");
  return v.get<std::string>();
}

// {"String": "..."} or {"Regex": "..."}.
HfPattern parse_pattern(const json& j, const std::string& where, const std::string& what) {
  if (!j.is_object() || j.size() != 1 || !j.begin()->is_string())
    fail(where, what + ": \"pattern\" must be {\"String\": ...} or {\"Regex\": ...}");
  const std::string kind = j.begin().key();
  const std::string text = j.begin()->get<std::string>();
  HfPattern p;
  if (kind == "String") {
    if (text.empty()) fail(where, what + ": an empty String pattern is not supported");
    p.literal = text;
  } else if (kind == "Regex") {
    p.regex = std::make_shared<HfRegex>(text, where + ": " + what);
  } else {
    fail(where, what + ": unknown pattern kind \"" + kind + "\"");
  }
  return p;
}

// The text of `s` with each match of `p` replaced by `content`.
std::string replace_all(const HfPattern& p, std::string_view s, const std::string& content) {
  std::vector<MatchSpan> matches;
  p.find_all(s, matches);
  if (matches.empty()) return std::string(s);
  std::string out;
  out.reserve(s.size() + matches.size() * content.size());
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    out.append(s.data() + prev, b - prev);
    out += content;
    prev = e;
  }
  out.append(s.data() + prev, s.size() - prev);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------------------------------
// Normalizers

Normalizer parse_normalizer(const json& j, const std::string& where) {
  const std::string type = type_of(j, where, "normalizer");
  const std::string what = "normalizer " + type;
  Normalizer n;
  if (type == "Sequence") {
    check_keys(j, {"normalizers"}, where, what);
    const json& list = required(j, "normalizers", where, what);
    if (!list.is_array()) fail(where, what + ": \"normalizers\" must be an array");
    n.type = Normalizer::Type::Sequence;
    for (const json& c : list) n.children.push_back(parse_normalizer(c, where));
  } else if (type == "NFC") {
    check_keys(j, {}, where, what);
    n.type = Normalizer::Type::NFC;
  } else if (type == "Prepend") {
    check_keys(j, {"prepend"}, where, what);
    n.type = Normalizer::Type::Prepend;
    n.text = get_string(j, "prepend", where, what);
  } else if (type == "Replace") {
    check_keys(j, {"pattern", "content"}, where, what);
    n.type = Normalizer::Type::Replace;
    n.pattern = parse_pattern(required(j, "pattern", where, what), where, what);
    n.text = get_string(j, "content", where, what);
  } else {
    fail(where, "unsupported normalizer type \"" + type + "\" (supported: Sequence, NFC, Prepend, Replace)");
  }
  return n;
}

void normalize(const Normalizer& n, std::string& s) {
  switch (n.type) {
    case Normalizer::Type::Sequence:
      for (const Normalizer& c : n.children) normalize(c, s);
      break;
    case Normalizer::Type::NFC: {
      std::string out;
      if (nfc(s, out)) s.swap(out);
      break;
    }
    case Normalizer::Type::Prepend:
      if (!s.empty()) s.insert(0, n.text);
      break;
    case Normalizer::Type::Replace:
      s = replace_all(n.pattern, s, n.text);
      break;
  }
}

// ---------------------------------------------------------------------------------------------------
// Byte-level alphabet (GPT-2's bytes_to_unicode): printable Latin-1 bytes stand for themselves, the
// others take the code points from U+0100 on in byte order.

namespace {

struct ByteLevelTables {
  std::array<std::string, 256> chars;
  std::array<int, 0x144> bytes;  // the largest code point used is U+0143
  ByteLevelTables() {
    bytes.fill(-1);
    int next = 256;
    for (int b = 0; b < 256; ++b) {
      const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE && b <= 0xFF);
      const uint32_t cp = printable ? b : next++;
      append_utf8(chars[b], cp);
      bytes[cp] = b;
    }
  }
};

const ByteLevelTables& byte_level_tables() {
  static const ByteLevelTables t;
  return t;
}

}  // namespace

const std::string& byte_level_char(unsigned char b) { return byte_level_tables().chars[b]; }

int byte_level_byte(uint32_t cp) { return cp < 0x144 ? byte_level_tables().bytes[cp] : -1; }

// ---------------------------------------------------------------------------------------------------
// Pre-tokenizers

namespace {

void parse_pre_tokenizer_into(const json& j, const std::string& where, std::vector<PreTokenizer>& stages) {
  const std::string type = type_of(j, where, "pre_tokenizer");
  const std::string what = "pre_tokenizer " + type;
  if (type == "Sequence") {
    check_keys(j, {"pretokenizers"}, where, what);
    const json& list = required(j, "pretokenizers", where, what);
    if (!list.is_array()) fail(where, what + ": \"pretokenizers\" must be an array");
    for (const json& c : list) parse_pre_tokenizer_into(c, where, stages);
  } else if (type == "Split") {
    check_keys(j, {"pattern", "behavior", "invert"}, where, what);
    PreTokenizer p;
    p.type = PreTokenizer::Type::Split;
    p.pattern = parse_pattern(required(j, "pattern", where, what), where, what);
    const std::string behavior = get_string(j, "behavior", where, what);
    if (behavior == "Removed") p.behavior = SplitBehavior::Removed;
    else if (behavior == "Isolated") p.behavior = SplitBehavior::Isolated;
    else if (behavior == "MergedWithPrevious") p.behavior = SplitBehavior::MergedWithPrevious;
    else if (behavior == "MergedWithNext") p.behavior = SplitBehavior::MergedWithNext;
    else if (behavior == "Contiguous") p.behavior = SplitBehavior::Contiguous;
    else fail(where, what + ": unknown behavior \"" + behavior + "\"");
    p.invert = get_bool(j, "invert", where, what);
    stages.push_back(std::move(p));
  } else if (type == "ByteLevel") {
    // trim_offsets only moves offsets, which this port does not report.
    check_keys(j, {"add_prefix_space", "trim_offsets", "use_regex"}, where, what);
    PreTokenizer p;
    p.type = PreTokenizer::Type::ByteLevel;
    p.add_prefix_space = get_bool(j, "add_prefix_space", where, what);
    get_bool(j, "trim_offsets", where, what);
    p.use_regex = j.contains("use_regex") ? get_bool(j, "use_regex", where, what) : true;
    stages.push_back(std::move(p));
  } else {
    fail(where, "unsupported pre_tokenizer type \"" + type + "\" (supported: Sequence, Split, ByteLevel)");
  }
}

// GPT-2's word regex, which ByteLevel applies when use_regex is set.
const HfRegex& gpt2_regex() {
  static const HfRegex re("'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+",
                          "ByteLevel pre-tokenizer");
  return re;
}

// tokenizers' NormalizedString::split: the pieces of `s` (given the pattern's matches) that a
// behavior keeps, merging each match into a neighbour where it says so.
void split_pieces(std::string_view s, const std::vector<MatchSpan>& matches, bool invert, SplitBehavior behavior,
                  std::vector<MatchSpan>& pieces) {
  struct Part {
    size_t b, e;
    bool is_match;
  };
  std::vector<Part> parts;
  parts.reserve(matches.size() * 2 + 1);
  size_t prev = 0;
  for (const auto& [b, e] : matches) {
    if (prev != b) parts.push_back({prev, b, invert});
    parts.push_back({b, e, !invert});
    prev = e;
  }
  if (prev != s.size()) parts.push_back({prev, s.size(), invert});

  pieces.clear();
  switch (behavior) {
    case SplitBehavior::Isolated:
      for (const Part& p : parts) pieces.emplace_back(p.b, p.e);
      break;
    case SplitBehavior::Removed:
      for (const Part& p : parts)
        if (!p.is_match) pieces.emplace_back(p.b, p.e);
      break;
    case SplitBehavior::Contiguous: {
      bool previous_match = false;
      for (const Part& p : parts) {
        if (p.is_match == previous_match && !pieces.empty()) pieces.back().second = p.e;
        else pieces.emplace_back(p.b, p.e);
        previous_match = p.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithPrevious: {
      bool previous_match = false;
      for (const Part& p : parts) {
        if (p.is_match && !previous_match && !pieces.empty()) pieces.back().second = p.e;
        else pieces.emplace_back(p.b, p.e);
        previous_match = p.is_match;
      }
      break;
    }
    case SplitBehavior::MergedWithNext: {
      bool previous_match = false;
      for (auto it = parts.rbegin(); it != parts.rend(); ++it) {
        if (it->is_match && !previous_match && !pieces.empty()) pieces.back().first = it->b;
        else pieces.emplace_back(it->b, it->e);
        previous_match = it->is_match;
      }
      std::reverse(pieces.begin(), pieces.end());
      break;
    }
  }
}

void run_stages(const std::vector<PreTokenizer>& stages, size_t k, std::string_view s,
                const std::function<void(std::string_view)>& word) {
  if (s.empty()) return;  // tokenizers drops empty splits after every stage
  if (k == stages.size()) {
    word(s);
    return;
  }
  const PreTokenizer& st = stages[k];
  std::vector<MatchSpan> matches, pieces;
  if (st.type == PreTokenizer::Type::Split) {
    st.pattern.find_all(s, matches);
    split_pieces(s, matches, st.invert, st.behavior, pieces);
    for (const auto& [b, e] : pieces) run_stages(stages, k + 1, s.substr(b, e - b), word);
    return;
  }
  // ByteLevel: optional leading space, optional GPT-2 split, then every byte becomes its character.
  std::string prefixed;
  if (st.add_prefix_space && s[0] != ' ') {
    prefixed.reserve(s.size() + 1);
    prefixed += ' ';
    prefixed += s;
    s = prefixed;
  }
  if (st.use_regex) {
    gpt2_regex().find_all(s, matches);
    split_pieces(s, matches, false, SplitBehavior::Isolated, pieces);
  } else {
    pieces.emplace_back(0, s.size());
  }
  const std::array<std::string, 256>& chars = byte_level_tables().chars;
  std::string mapped;
  for (const auto& [b, e] : pieces) {
    mapped.clear();
    for (size_t i = b; i < e; ++i) mapped += chars[static_cast<unsigned char>(s[i])];
    run_stages(stages, k + 1, mapped, word);
  }
}

}  // namespace

std::vector<PreTokenizer> parse_pre_tokenizer(const json& j, const std::string& where) {
  std::vector<PreTokenizer> stages;
  parse_pre_tokenizer_into(j, where, stages);
  return stages;
}

void pre_tokenize(const std::vector<PreTokenizer>& stages, std::string_view piece,
                  const std::function<void(std::string_view)>& word) {
  run_stages(stages, 0, piece, word);
}

// ---------------------------------------------------------------------------------------------------
// Post-processors

PostProcessor parse_post_processor(const json& j, const std::string& where) {
  const std::string type = type_of(j, where, "post_processor");
  const std::string what = "post_processor " + type;
  PostProcessor p;
  if (type == "Sequence") {
    check_keys(j, {"processors"}, where, what);
    const json& list = required(j, "processors", where, what);
    if (!list.is_array()) fail(where, what + ": \"processors\" must be an array");
    p.type = PostProcessor::Type::Sequence;
    for (const json& c : list) p.children.push_back(parse_post_processor(c, where));
  } else if (type == "ByteLevel") {
    // As a post-processor ByteLevel only trims offsets: the ids pass through.
    check_keys(j, {"add_prefix_space", "trim_offsets", "use_regex"}, where, what);
    p.type = PostProcessor::Type::ByteLevel;
  } else if (type == "TemplateProcessing") {
    check_keys(j, {"single", "pair", "special_tokens"}, where, what);
    p.type = PostProcessor::Type::TemplateProcessing;
    const json& specials = required(j, "special_tokens", where, what);
    if (!specials.is_object()) fail(where, what + ": \"special_tokens\" must be an object");
    for (const auto& [name, tok] : specials.items()) {
      if (!tok.is_object() || !tok.contains("ids") || !tok["ids"].is_array())
        fail(where, what + ": special token \"" + name + "\" has no \"ids\" array");
      std::vector<int>& ids = p.special_tokens[name];
      for (const json& id : tok["ids"]) {
        if (!id.is_number_unsigned() || id.get<uint64_t>() > INT32_MAX)
          fail(where, what + ": special token \"" + name + "\" has id " + id.dump() + ", not an integer in [0, 2^31)");
        ids.push_back(id.get<int>());
      }
    }
    const json& single = required(j, "single", where, what);
    if (!single.is_array()) fail(where, what + ": \"single\" must be an array");
    for (const json& piece : single) {
      PostProcessor::Piece pc;
      if (piece.is_object() && piece.contains("Sequence") && piece["Sequence"].contains("id")) {
        if (piece["Sequence"]["id"] != "A")
          fail(where, what + ": the single template can only use sequence A");
        pc.is_sequence = true;
      } else if (piece.is_object() && piece.contains("SpecialToken") && piece["SpecialToken"].contains("id") &&
                 piece["SpecialToken"]["id"].is_string()) {
        pc.is_sequence = false;
        pc.special = piece["SpecialToken"]["id"].get<std::string>();
        if (!p.special_tokens.count(pc.special))
          fail(where, what + ": the template uses \"" + pc.special + "\", which is not in \"special_tokens\"");
      } else {
        fail(where, what + ": a template piece must be {\"Sequence\": ...} or {\"SpecialToken\": ...}");
      }
      p.single.push_back(pc);
    }
    // Only single sequences are encoded; the pair template just has to be there.
    if (!required(j, "pair", where, what).is_array()) fail(where, what + ": \"pair\" must be an array");
  } else {
    fail(where, "unsupported post_processor type \"" + type +
                    "\" (supported: Sequence, TemplateProcessing, ByteLevel)");
  }
  return p;
}

void post_process(const PostProcessor& p, std::vector<int>& ids, bool add_special_tokens) {
  switch (p.type) {
    case PostProcessor::Type::Sequence:
      for (const PostProcessor& c : p.children) post_process(c, ids, add_special_tokens);
      break;
    case PostProcessor::Type::ByteLevel:
      break;
    case PostProcessor::Type::TemplateProcessing: {
      std::vector<int> out;
      out.reserve(ids.size() + 4);
      for (const PostProcessor::Piece& pc : p.single) {
        if (pc.is_sequence) {
          out.insert(out.end(), ids.begin(), ids.end());
        } else if (add_special_tokens) {
          const std::vector<int>& sp = p.special_tokens.at(pc.special);
          out.insert(out.end(), sp.begin(), sp.end());
        }
      }
      ids.swap(out);
      break;
    }
  }
}

bool adds_special_tokens(const PostProcessor& p) {
  if (p.type == PostProcessor::Type::TemplateProcessing) return true;
  for (const PostProcessor& c : p.children)
    if (adds_special_tokens(c)) return true;
  return false;
}

void template_bos_eos(const PostProcessor& p, std::vector<int>& before, std::vector<int>& after) {
  if (p.type == PostProcessor::Type::TemplateProcessing) {
    bool seen_sequence = false;
    for (const PostProcessor::Piece& pc : p.single) {
      if (pc.is_sequence) {
        seen_sequence = true;
        continue;
      }
      const std::vector<int>& sp = p.special_tokens.at(pc.special);
      (seen_sequence ? after : before).insert((seen_sequence ? after : before).end(), sp.begin(), sp.end());
    }
  }
  for (const PostProcessor& c : p.children) template_bos_eos(c, before, after);
}

// ---------------------------------------------------------------------------------------------------
// Decoders

Decoder parse_decoder(const json& j, const std::string& where) {
  const std::string type = type_of(j, where, "decoder");
  const std::string what = "decoder " + type;
  Decoder d;
  if (type == "Sequence") {
    check_keys(j, {"decoders"}, where, what);
    const json& list = required(j, "decoders", where, what);
    if (!list.is_array()) fail(where, what + ": \"decoders\" must be an array");
    d.type = Decoder::Type::Sequence;
    for (const json& c : list) d.children.push_back(parse_decoder(c, where));
  } else if (type == "ByteLevel") {
    check_keys(j, {"add_prefix_space", "trim_offsets", "use_regex"}, where, what);
    d.type = Decoder::Type::ByteLevel;
  } else if (type == "ByteFallback") {
    check_keys(j, {}, where, what);
    d.type = Decoder::Type::ByteFallback;
  } else if (type == "Fuse") {
    check_keys(j, {}, where, what);
    d.type = Decoder::Type::Fuse;
  } else if (type == "Strip") {
    check_keys(j, {"content", "start", "stop"}, where, what);
    d.type = Decoder::Type::Strip;
    const std::string c = get_string(j, "content", where, what);
    size_t i = 0;
    if (c.empty() || !is_valid_utf8(c) || (d.strip_char = next_code_point(c, i), i != c.size()))
      fail(where, what + ": \"content\" must be one character");
    const json& start = required(j, "start", where, what);
    const json& stop = required(j, "stop", where, what);
    if (!start.is_number_unsigned() || !stop.is_number_unsigned())
      fail(where, what + ": \"start\" and \"stop\" must be non-negative integers");
    d.strip_start = start.get<size_t>();
    d.strip_stop = stop.get<size_t>();
  } else if (type == "Replace") {
    check_keys(j, {"pattern", "content"}, where, what);
    d.type = Decoder::Type::Replace;
    d.pattern = parse_pattern(required(j, "pattern", where, what), where, what);
    d.content = get_string(j, "content", where, what);
  } else {
    fail(where, "unsupported decoder type \"" + type +
                    "\" (supported: Sequence, ByteLevel, ByteFallback, Fuse, Strip, Replace)");
  }
  return d;
}

namespace {

// "<0xHH>" -> the byte, as tokenizers parses it (u8::from_str_radix, which also takes a '+' sign).
int byte_fallback_value(const std::string& t) {
  if (t.size() != 6 || t.compare(0, 3, "<0x") != 0 || t[5] != '>') return -1;
  auto hex = [](char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
  };
  if (t[3] == '+') return hex(t[4]);
  const int hi = hex(t[3]), lo = hex(t[4]);
  return hi < 0 || lo < 0 ? -1 : hi * 16 + lo;
}

// A run of byte tokens becomes its text if it is valid UTF-8, else one U+FFFD per byte.
void flush_bytes(std::string& bytes, std::vector<std::string>& out) {
  if (bytes.empty()) return;
  if (is_valid_utf8(bytes)) {
    out.push_back(bytes);
  } else {
    for (size_t i = 0; i < bytes.size(); ++i) out.emplace_back("\xEF\xBF\xBD");
  }
  bytes.clear();
}

}  // namespace

void decode_chain(const Decoder& d, std::vector<std::string>& tokens) {
  switch (d.type) {
    case Decoder::Type::Sequence:
      for (const Decoder& c : d.children) decode_chain(c, tokens);
      break;
    case Decoder::Type::Fuse: {
      std::string all;
      for (const std::string& t : tokens) all += t;
      tokens.assign(1, std::move(all));
      break;
    }
    case Decoder::Type::ByteLevel: {
      // Each token's characters back to bytes (a token with a character outside the alphabet, such
      // as an added token, keeps its own bytes), then all of it as lossy UTF-8.
      std::string bytes;
      for (const std::string& t : tokens) {
        const size_t mark = bytes.size();
        bool all_mapped = true;
        for (size_t i = 0; i < t.size();) {
          const int b = byte_level_byte(next_code_point(t, i));
          if (b < 0) {
            all_mapped = false;
            break;
          }
          bytes += static_cast<char>(b);
        }
        if (!all_mapped) {
          bytes.resize(mark);
          bytes += t;
        }
      }
      tokens.assign(1, utf8_lossy(bytes));
      break;
    }
    case Decoder::Type::ByteFallback: {
      std::vector<std::string> out;
      out.reserve(tokens.size());
      std::string bytes;
      for (std::string& t : tokens) {
        const int b = byte_fallback_value(t);
        if (b >= 0) {
          bytes += static_cast<char>(b);
          continue;
        }
        flush_bytes(bytes, out);
        out.push_back(std::move(t));
      }
      flush_bytes(bytes, out);
      tokens.swap(out);
      break;
    }
    case Decoder::Type::Strip:
      for (std::string& t : tokens) {
        std::vector<uint32_t> chars;
        for (size_t i = 0; i < t.size();) chars.push_back(next_code_point(t, i));
        size_t start_cut = 0;
        for (size_t i = 0; i < std::min(d.strip_start, chars.size()); ++i) {
          if (chars[i] != d.strip_char) break;
          start_cut = i + 1;
        }
        size_t stop_cut = chars.size();
        for (size_t i = 0; i < d.strip_stop; ++i) {
          // tokenizers indexes past the start here and panics; refuse the same inputs.
          if (i >= chars.size()) throw std::runtime_error("decoder Strip: stop exceeds the token length");
          const size_t index = chars.size() - i - 1;
          if (chars[index] != d.strip_char) break;
          stop_cut = index;
        }
        if (start_cut > stop_cut) throw std::runtime_error("decoder Strip: start and stop overlap");
        std::string kept;
        for (size_t i = start_cut; i < stop_cut; ++i) append_utf8(kept, chars[i]);
        t.swap(kept);
      }
      break;
    case Decoder::Type::Replace:
      for (std::string& t : tokens) t = replace_all(d.pattern, t, d.content);
      break;
  }
}

}  // namespace l2v
