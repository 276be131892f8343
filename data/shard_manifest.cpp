#include "data/shard_manifest.h"

#include <fnmatch.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <map>
#include <regex>
#include <stdexcept>

#include "data/file_io.h"

namespace l2v {
namespace fs = std::filesystem;

namespace {

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

const std::regex& shard_name_pattern() {
  static const std::regex re(R"((.+)-[0-9]{6}\.bin)");
  return re;
}

ShardKind parse_kind(const std::string& name, const std::string& path) {
  for (ShardKind k : {ShardKind::kDocuments, ShardKind::kSentences, ShardKind::kTriples})
    if (name == shard_kind_name(k)) return k;
  fail(path + ": unknown shard kind '" + name + "'");
}

uint64_t parse_checksum(const nlohmann::json& j, const std::string& path) {
  const std::string s = j.get<std::string>();
  if (s.size() != 18 || s.compare(0, 2, "0x") != 0 || s.find_first_not_of("0123456789abcdef", 2) != std::string::npos)
    fail(path + ": checksum '" + s + "' is not 0x followed by 16 lower-case hex digits");
  return std::stoull(s.substr(2), nullptr, 16);
}

}  // namespace

std::string shard_manifest_path(const std::string& prefix) { return prefix + ".manifest.json"; }

std::string shard_file_path(const std::string& prefix, size_t i) {
  char name[32];
  std::snprintf(name, sizeof name, "-%06zu.bin", i);
  return prefix + name;
}

ShardManifest read_shard_manifest(const std::string& path) {
  const nlohmann::json j = read_json_file(path, "the shard set's manifest");
  ShardManifest m;
  try {
    // Compared as JSON, not converted: a format of 1.9e21 converted to int would be undefined behaviour.
    if (!(j.at("format").is_number_integer() && j.at("format") == 1))
      fail(path + ": manifest format " + j.at("format").dump() + " (this build reads 1)");
    m.kind = parse_kind(j.at("kind").get<std::string>(), path);
    for (const nlohmann::json& e : j.at("shards")) {
      ShardManifestEntry s;
      s.file = e.at("file").get<std::string>();
      if (s.file.empty() || s.file.find('/') != std::string::npos) fail(path + ": shard file '" + s.file + "' is not a base name");
      s.bytes = e.at("bytes").get<uint64_t>();
      s.checksum = parse_checksum(e.at("checksum"), path);
      m.shards.push_back(s);
    }
  } catch (const nlohmann::json::exception& e) {
    fail(path + ": not a shard manifest: " + e.what());
  }
  if (m.shards.empty()) fail(path + ": the manifest lists no shards");
  return m;
}

std::vector<std::string> commit_shard_set(const std::string& prefix, const std::vector<std::string>& staged,
                                          ShardKind kind) {
  nlohmann::json shards = nlohmann::json::array();
  std::vector<std::string> finals;
  for (size_t i = 0; i < staged.size(); ++i) {
    finals.push_back(shard_file_path(prefix, i));
    shards.push_back({{"file", fs::path(finals.back()).filename().string()},
                      {"bytes", (uint64_t)fs::file_size(staged[i])},
                      {"checksum", checksum_hex(file_checksum64(staged[i]))}});
  }
  const std::string manifest = shard_manifest_path(prefix);
  // From here until the new manifest is written, PREFIX is no valid set: the loader refuses it.
  fs::remove(manifest);
  const fs::path dir = fs::path(prefix).parent_path().empty() ? fs::path(".") : fs::path(prefix).parent_path();
  const std::string base = fs::path(prefix).filename().string();
  std::smatch m;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string name = e.path().filename().string();
    if (std::regex_match(name, m, shard_name_pattern()) && m[1] == base) fs::remove(e.path());
  }
  for (size_t i = 0; i < staged.size(); ++i) fs::rename(staged[i], finals[i]);
  const nlohmann::json j = {{"format", 1}, {"kind", shard_kind_name(kind)}, {"shards", shards}};
  write_file_atomic(manifest, j.dump(2) + "\n");
  return finals;
}

std::unique_ptr<ShardSet> open_shard_dataset(const std::string& spec, uint64_t* content_fingerprint) {
  std::map<std::string, ShardManifest> manifests;  // by manifest path
  std::vector<std::string> paths;
  std::vector<uint64_t> checksums;
  size_t start = 0;
  while (start <= spec.size()) {
    const size_t comma = std::min(spec.find(',', start), spec.size());
    const std::string part = spec.substr(start, comma - start);
    start = comma + 1;
    if (part.empty()) continue;
    std::map<std::string, std::vector<std::string>> matched;  // manifest path -> matched base names
    for (const std::string& p : expand_shard_paths(part)) {
      const fs::path pp(p);
      const std::string name = pp.filename().string();
      if (!fs::is_regular_file(pp)) fail(p + ": no such shard file");
      std::smatch m;
      if (!std::regex_match(name, m, shard_name_pattern()))
        fail(p + ": not a shard name that prepare writes (PREFIX-NNNNNN.bin), so it has no manifest; "
                 "train on shards written by `llm2vec prepare`");
      const std::string mpath = shard_manifest_path((pp.parent_path() / m[1].str()).string());
      if (!fs::exists(mpath))
        fail(p + ": its shard set has no manifest " + mpath +
             " (written last by prepare): the set is incomplete, e.g. an interrupted prepare; run prepare again");
      auto it = manifests.find(mpath);
      if (it == manifests.end()) it = manifests.emplace(mpath, read_shard_manifest(mpath)).first;
      const ShardManifestEntry* entry = nullptr;
      for (const ShardManifestEntry& e : it->second.shards)
        if (e.file == name) entry = &e;
      if (!entry)
        fail(p + ": not part of the shard set of " + mpath +
             " (left over from another prepare run?); remove it or prepare the data again");
      std::error_code ec;
      const uint64_t bytes = fs::file_size(p, ec);
      if (ec) fail(p + ": cannot read its size: " + ec.message());
      if (bytes != entry->bytes)
        fail(p + ": " + std::to_string(bytes) + " bytes, but " + mpath + " lists " + std::to_string(entry->bytes) +
             " (truncated or replaced?)");
      if (file_checksum64(p) != entry->checksum)
        fail(p + ": checksum differs from " + mpath + "'s (" + checksum_hex(entry->checksum) +
             "): the file is damaged; prepare the data again");
      matched[mpath].push_back(name);
      paths.push_back(p);
      checksums.push_back(entry->checksum);
    }
    // A pattern must not skip shards of a set it matches (one deleted or never renamed in place).
    for (const auto& [mpath, names] : matched) {
      const fs::path dir = fs::path(mpath).parent_path();  // as the glob spelled it, so fnmatch compares like with like
      for (const ShardManifestEntry& e : manifests.at(mpath).shards) {
        const std::string candidate = dir.empty() ? e.file : (dir / e.file).string();
        if (::fnmatch(part.c_str(), candidate.c_str(), FNM_PATHNAME) == 0 &&
            std::find(names.begin(), names.end(), e.file) == names.end())
          fail(candidate + ": listed in " + mpath + " and matched by '" + part +
               "' but missing: the shard set is incomplete; prepare the data again");
      }
    }
  }
  auto set = std::make_unique<ShardSet>(paths);
  if (content_fingerprint) *content_fingerprint = checksum64(checksums.data(), checksums.size() * sizeof(uint64_t));
  return set;
}

}  // namespace l2v
