#include "data/hf_bpe.h"

#include <algorithm>
#include <array>
#include <cstdio>
#include <mutex>
#include <nlohmann/json.hpp>
#include <stdexcept>

#include "data/unicode.h"

namespace l2v {

using nlohmann::json;

void BpeMergeMap::reserve(size_t n) {
  size_t cap = 16;
  while (cap < n * 2) cap *= 2;  // load factor <= 1/2 keeps probe sequences short
  std::vector<Slot> old;
  old.swap(slots_);
  slots_.assign(cap, Slot{});
  mask_ = cap - 1;
  size_ = 0;
  for (const Slot& s : old)
    if (s.key != kEmpty) set(static_cast<int>(s.key >> 32), static_cast<int>(s.key & 0xffffffffu), s.merge);
}

void BpeMergeMap::set(int left, int right, Merge m) {
  if ((size_ + 1) * 2 > slots_.size()) reserve(size_ + 1);
  const uint64_t key = pack(left, right);
  for (size_t i = hash(key) & mask_;; i = (i + 1) & mask_) {
    Slot& s = slots_[i];
    if (s.key == kEmpty) {
      s.key = key;
      s.merge = m;
      ++size_;
      return;
    }
    if (s.key == key) {
      s.merge = m;
      return;
    }
  }
}

// Words already merged, keyed by their text. Sharded so that threads encoding in parallel rarely
// wait on the same lock; each shard is an open-addressing table that compares a stored hash before
// the bytes and never allocates to look up. A full shard is emptied rather than frozen, so the
// cache keeps following the text's current vocabulary over a long run.
struct BpeWordCache {
  static constexpr size_t kShards = 16;
  static constexpr size_t kSlots = 8192;            // per shard, a power of two
  static constexpr size_t kShardCapacity = kSlots / 2;
  static constexpr size_t kMaxWordBytes = 128;      // longer words are rare and would only bloat it
  struct Entry {
    uint64_t hash = 0;  // 0: empty slot
    std::string word;
    std::vector<int> ids;
  };
  struct Shard {
    std::mutex mutex;
    std::vector<Entry> slots{kSlots};
    size_t size = 0;
  };
  std::array<Shard, kShards> shards;

  static uint64_t hash_of(std::string_view w) {
    uint64_t h = 0xcbf29ce484222325ull;  // FNV-1a, finished with a mixer for the low bits
    for (unsigned char c : w) h = (h ^ c) * 0x100000001b3ull;
    h ^= h >> 29;
    h *= 0xbf58476d1ce4e5b9ull;
    h ^= h >> 32;
    return h | 1;
  }
  Shard& shard(uint64_t h) { return shards[(h >> 56) % kShards]; }
  // Appends the cached ids of `w` to `out`; false if absent. Caller holds the shard's lock.
  static bool lookup(const Shard& s, uint64_t h, std::string_view w, std::vector<int>& out) {
    for (size_t i = h & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
      const Entry& e = s.slots[i];
      if (e.hash == 0) return false;
      if (e.hash == h && e.word == w) {
        out.insert(out.end(), e.ids.begin(), e.ids.end());
        return true;
      }
    }
  }
  static void insert(Shard& s, uint64_t h, std::string_view w, const int* ids, size_t n) {
    if (s.size >= kShardCapacity) {
      for (Entry& e : s.slots) e.hash = 0;
      s.size = 0;
    }
    for (size_t i = h & (kSlots - 1);; i = (i + 1) & (kSlots - 1)) {
      Entry& e = s.slots[i];
      if (e.hash == h && e.word == w) return;  // another thread got there first
      if (e.hash != 0) continue;
      e.hash = h;
      e.word.assign(w);
      e.ids.assign(ids, ids + n);
      ++s.size;
      return;
    }
  }
};

BpeModel::BpeModel() : cache(std::make_unique<BpeWordCache>()) { std::fill(std::begin(byte_token), std::end(byte_token), -1); }
BpeModel::~BpeModel() = default;
BpeModel::BpeModel(BpeModel&&) noexcept = default;
BpeModel& BpeModel::operator=(BpeModel&&) noexcept = default;

namespace {

[[noreturn]] void fail(const std::string& where, const std::string& what) {
  throw std::runtime_error(where + ": model: " + what);
}

std::string optional_string(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return "";
  if (!j[key].is_string()) fail(where, std::string("\"") + key + "\" must be a string or null");
  return j[key].get<std::string>();
}

bool optional_bool(const json& j, const char* key, const std::string& where) {
  if (!j.contains(key) || j[key].is_null()) return false;
  if (!j[key].is_boolean()) fail(where, std::string("\"") + key + "\" must be a boolean or null");
  return j[key].get<bool>();
}

// The two tokens of merge `i`: "left right" (tokenizers' format; split on the one space) or
// ["left", "right"] (the format newer tokenizers write, which allows spaces inside tokens).
std::pair<std::string, std::string> merge_parts(const json& m, size_t i, const std::string& where) {
  if (m.is_string()) {
    const std::string s = m.get<std::string>();
    const size_t sp = s.find(' ');
    if (sp == std::string::npos || s.find(' ', sp + 1) != std::string::npos)
      fail(where, "merge #" + std::to_string(i) + " \"" + s + "\" is not two tokens separated by one space");
    return {s.substr(0, sp), s.substr(sp + 1)};
  }
  if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string())
    return {m[0].get<std::string>(), m[1].get<std::string>()};
  fail(where, "merge #" + std::to_string(i) + " is neither \"a b\" nor [\"a\", \"b\"]");
}

}  // namespace

// The most unused ids below a vocabulary's largest id.
constexpr uint64_t kMaxVocabHoles = 65536;

BpeModel parse_bpe_model(const json& j, const std::string& where) {
  if (!j.is_object()) fail(where, "\"model\" must be an object");
  const std::string type = j.contains("type") && j["type"].is_string() ? j["type"].get<std::string>() : "";
  if (type != "BPE")
    fail(where, "unsupported model type \"" + (type.empty() ? std::string("<missing>") : type) +
                    "\" (only BPE is implemented)");
  static const char* const kKeys[] = {"type", "dropout", "unk_token", "continuing_subword_prefix", "end_of_word_suffix",
                                      "fuse_unk", "byte_fallback", "ignore_merges", "vocab", "merges"};
  for (const auto& [key, value] : j.items()) {
    if (std::find_if(std::begin(kKeys), std::end(kKeys), [&key = key](const char* k) { return key == k; }) == std::end(kKeys))
      fail(where, "unsupported BPE option \"" + key + "\"");
  }
  if (j.contains("dropout") && !j["dropout"].is_null()) {
    if (!j["dropout"].is_number() || j["dropout"].get<double>() != 0.0)
      fail(where, "BPE dropout is not supported (it makes tokenization random)");
  }

  BpeModel m;
  m.unk_token = optional_string(j, "unk_token", where);
  m.continuing_subword_prefix = optional_string(j, "continuing_subword_prefix", where);
  m.end_of_word_suffix = optional_string(j, "end_of_word_suffix", where);
  m.fuse_unk = optional_bool(j, "fuse_unk", where);
  m.byte_fallback = optional_bool(j, "byte_fallback", where);
  m.ignore_merges = optional_bool(j, "ignore_merges", where);

  if (!j.contains("vocab") || !j["vocab"].is_object()) fail(where, "BPE needs a \"vocab\" object");
  if (!j.contains("merges") || !j["merges"].is_array()) fail(where, "BPE needs a \"merges\" array");
  const json& vocab = j["vocab"];
  // The id tables are sized by the largest id, so ids are bounded by the number of entries: a vocabulary
  // may have a few holes (which added tokens fill), never a billion (an id near 1e9 made the tables
  // gigabytes).
  const uint64_t id_bound = vocab.size() + kMaxVocabHoles;
  int max_id = -1;
  for (const auto& [token, id] : vocab.items()) {
    if (!id.is_number_unsigned()) fail(where, "vocab entry \"" + token + "\" has no valid id");
    if (id.get<uint64_t>() >= id_bound)
      fail(where, "vocab entry \"" + token + "\" has id " + id.dump() + ", beyond the " + std::to_string(vocab.size()) +
                      " entries + " + std::to_string(kMaxVocabHoles) + " holes a vocabulary may have");
    max_id = std::max(max_id, id.get<int>());
  }
  m.id_to_token.assign(max_id + 1, std::string());
  m.id_used.assign(max_id + 1, false);
  for (const auto& [token, id_json] : vocab.items()) {
    const int id = id_json.get<int>();
    if (m.id_used[id])
      fail(where, "vocab id " + std::to_string(id) + " is given to both \"" + m.id_to_token[id] + "\" and \"" + token + "\"");
    m.id_to_token[id] = token;
    m.id_used[id] = true;
  }
  // Views into id_to_token, which is not resized from here on.
  m.token_to_id.reserve(vocab.size());
  for (int id = 0; id <= max_id; ++id)
    if (m.id_used[id]) m.token_to_id.emplace(std::string_view(m.id_to_token[id]), id);

  const json& merges = j["merges"];
  m.merges.reserve(merges.size());
  const size_t prefix_len = m.continuing_subword_prefix.size();
  // The metaspace cut is exact only if the "▁" always stays a symbol of its own before merging (it
  // is in the vocabulary, so never spelled as bytes or unk), no affix or ignore_merges shortcut
  // depends on where the word starts or ends, and no merge joins "x" + "▁y".
  const std::string metaspace = "\xE2\x96\x81";
  m.split_at_metaspace = m.vocab_id(metaspace) >= 0 && m.continuing_subword_prefix.empty() &&
                         m.end_of_word_suffix.empty() && !m.ignore_merges;
  for (size_t i = 0; i < merges.size(); ++i) {
    const auto [a, b] = merge_parts(merges[i], i, where);
    if (b.compare(0, metaspace.size(), metaspace) == 0 &&
        (a.size() < metaspace.size() || a.compare(a.size() - metaspace.size(), metaspace.size(), metaspace) != 0))
      m.split_at_metaspace = false;
    const int a_id = m.vocab_id(a), b_id = m.vocab_id(b);
    if (a_id < 0) fail(where, "merge #" + std::to_string(i) + " uses \"" + a + "\", which is not in the vocabulary");
    if (b_id < 0) fail(where, "merge #" + std::to_string(i) + " uses \"" + b + "\", which is not in the vocabulary");
    // The right part carries the continuing-subword prefix, which the merged token has only once.
    if (b.size() < prefix_len || b.compare(0, prefix_len, m.continuing_subword_prefix) != 0)
      fail(where, "merge #" + std::to_string(i) + ": \"" + b + "\" lacks the continuing_subword_prefix");
    const std::string merged = a + b.substr(prefix_len);
    const int new_id = m.vocab_id(merged);
    if (new_id < 0) fail(where, "merge #" + std::to_string(i) + " makes \"" + merged + "\", which is not in the vocabulary");
    m.merges.set(a_id, b_id, {static_cast<uint32_t>(i), new_id});
  }

  for (int b = 0; b < 256; ++b) {
    char name[8];
    std::snprintf(name, sizeof name, "<0x%02X>", b);
    m.byte_token[b] = m.vocab_id(name);
  }
  m.small_char_id.assign(0x800, -1);
  for (uint32_t cp = 0; cp < 0x800; ++cp) {
    std::string s;
    append_utf8(s, cp);
    m.small_char_id[cp] = m.vocab_id(s);
  }
  m.where = where;
  return m;
}

namespace {

struct Symbol {
  int id;
  int prev, next;  // indices in the symbol array, -1 at the ends
  int len;         // bytes of the word it covers; 0 once merged into its left neighbour
};

struct QueuedMerge {
  uint32_t rank;
  int pos;  // index of the left symbol
  int new_id;
  // std heap functions keep the largest on top: order so that the lowest (rank, pos) is largest.
  bool operator<(const QueuedMerge& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
};

void add_symbol(std::vector<Symbol>& syms, int id, int len) {
  const int n = static_cast<int>(syms.size());
  if (n > 0) syms.back().next = n;
  syms.push_back({id, n - 1, -1, len});
}

// tokenizers' BPE::merge_word followed by Word::merge_all, leaving the surviving symbols in `syms`.
void merge_word(const BpeModel& m, std::string_view w, std::vector<Symbol>& syms, std::vector<QueuedMerge>& queue) {
  syms.clear();
  std::string scratch;
  int unk_id = -2;  // looked up on first need
  int pending_unk_len = 0;  // a pending (possibly fused) unk token, flushed before the next known char
  size_t i = 0;
  while (i < w.size()) {
    const size_t start = i;
    const uint32_t cp = next_code_point(w, i);
    const std::string_view ch = w.substr(start, i - start);
    const int byte_len = static_cast<int>(i - start);
    // The looked-up string carries the continuing-subword prefix (not on the first character) and
    // the end-of-word suffix (on the last), as tokenizers adds them.
    const bool prefix = start != 0 && !m.continuing_subword_prefix.empty();
    const bool suffix = i == w.size() && !m.end_of_word_suffix.empty();
    std::string_view s = ch;
    if (prefix || suffix) {
      scratch.clear();
      if (prefix) scratch += m.continuing_subword_prefix;
      scratch += ch;
      if (suffix) scratch += m.end_of_word_suffix;
      s = scratch;
    }
    const int id = (s.size() == ch.size() && cp < 0x800) ? m.small_char_id[cp] : m.vocab_id(s);
    if (id >= 0) {
      if (pending_unk_len > 0) {
        add_symbol(syms, unk_id, pending_unk_len);
        pending_unk_len = 0;
      }
      add_symbol(syms, id, byte_len);
      continue;
    }
    if (m.byte_fallback) {
      // Every byte of the looked-up string must have its <0xHH> token. As in tokenizers, a pending
      // unk token is not flushed first: it lands after these bytes.
      bool all = true;
      for (unsigned char b : s) all = all && m.byte_token[b] >= 0;
      if (all) {
        for (unsigned char b : s) add_symbol(syms, m.byte_token[b], 1);
        continue;
      }
    }
    if (m.unk_token.empty()) continue;  // no unk token: tokenizers drops the character
    if (unk_id == -2) {
      unk_id = m.vocab_id(m.unk_token);
      if (unk_id < 0) throw std::runtime_error(m.where + ": model: unk_token \"" + m.unk_token + "\" is not in the vocabulary");
    }
    if (pending_unk_len > 0 && m.fuse_unk) {
      pending_unk_len += byte_len;
    } else {
      if (pending_unk_len > 0) add_symbol(syms, unk_id, pending_unk_len);
      pending_unk_len = byte_len;
    }
  }
  if (pending_unk_len > 0) add_symbol(syms, unk_id, pending_unk_len);

  queue.clear();
  const int n = static_cast<int>(syms.size());
  for (int k = 0; k + 1 < n; ++k)
    if (const auto* mg = m.merges.find(syms[k].id, syms[k + 1].id)) queue.push_back({mg->rank, k, mg->new_id});
  std::make_heap(queue.begin(), queue.end());
  while (!queue.empty()) {
    std::pop_heap(queue.begin(), queue.end());
    const QueuedMerge top = queue.back();
    queue.pop_back();
    Symbol& left = syms[top.pos];
    if (left.len == 0 || left.next == -1) continue;  // merged away, or nothing to its right
    const int right_pos = left.next;
    const Symbol right = syms[right_pos];
    // Entries go stale when a neighbour merged since they were queued; the pair must still exist.
    const auto* cur = m.merges.find(left.id, right.id);
    if (!cur || cur->new_id != top.new_id) continue;
    left.id = top.new_id;
    left.len += right.len;
    left.next = right.next;
    syms[right_pos].len = 0;
    if (right.next >= 0) syms[right.next].prev = top.pos;
    if (left.prev >= 0) {
      if (const auto* mg = m.merges.find(syms[left.prev].id, left.id)) {
        queue.push_back({mg->rank, left.prev, mg->new_id});
        std::push_heap(queue.begin(), queue.end());
      }
    }
    if (left.next >= 0) {
      if (const auto* mg = m.merges.find(left.id, syms[left.next].id)) {
        queue.push_back({mg->rank, top.pos, mg->new_id});
        std::push_heap(queue.begin(), queue.end());
      }
    }
  }
}

}  // namespace

namespace {

void tokenize_word(const BpeModel& m, std::string_view word, std::vector<int>& out) {
  const bool cacheable = word.size() <= BpeWordCache::kMaxWordBytes;
  uint64_t h = 0;
  BpeWordCache::Shard* shard = nullptr;
  if (cacheable) {
    h = BpeWordCache::hash_of(word);
    shard = &m.cache->shard(h);
    std::lock_guard<std::mutex> lock(shard->mutex);
    if (BpeWordCache::lookup(*shard, h, word, out)) return;
  }
  if (m.ignore_merges) {
    const int id = m.vocab_id(word);
    if (id >= 0) {
      out.push_back(id);
      return;
    }
  }
  thread_local std::vector<Symbol> syms;
  thread_local std::vector<QueuedMerge> queue;
  merge_word(m, word, syms, queue);
  const size_t first = out.size();
  for (const Symbol& s : syms)
    if (s.len != 0) out.push_back(s.id);
  if (cacheable) {
    std::lock_guard<std::mutex> lock(shard->mutex);
    BpeWordCache::insert(*shard, h, word, out.data() + first, out.size() - first);
  }
}

}  // namespace

void bpe_tokenize(const BpeModel& m, std::string_view word, std::vector<int>& out) {
  if (word.empty()) return;
  if (!m.split_at_metaspace) {
    tokenize_word(m, word, out);
    return;
  }
  // Cut before each "▁" (E2 96 81) that follows a character other than "▁".
  size_t start = 0;
  for (size_t p = 1; p + 3 <= word.size(); ++p) {
    if (word.compare(p, 3, "\xE2\x96\x81") != 0) continue;
    if (p >= 3 && word.compare(p - 3, 3, "\xE2\x96\x81") == 0) continue;
    tokenize_word(m, word.substr(start, p - start), out);
    start = p;
  }
  tokenize_word(m, word.substr(start), out);
}

}  // namespace l2v
