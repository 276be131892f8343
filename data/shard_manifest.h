// Shard sets as units: the manifest `prepare` writes last, and the only way training opens shards.
//
// `prepare --out PREFIX` writes PREFIX-000000.bin, PREFIX-000001.bin, ... and then PREFIX.manifest.json:
//   {"format": 1, "kind": "documents", "shards": [{"file": "PREFIX-000000.bin" (base name),
//    "bytes": N, "checksum": "0x<16 hex digits>" (checksum64 of the whole file)}, ...]}
// The manifest is written after every shard of the set is complete under its final name and the
// previous set's shards are gone, so a set is valid exactly when its manifest exists: an interrupted
// prepare leaves no manifest (and the loader refuses the shards), a re-run with fewer shards removes the
// old extra shards before its manifest appears, and a glob that also matches a file of another run is
// refused instead of training on mixed data.
//
// open_shard_dataset checks, for every shard a spec names: a manifest beside it lists it, its size and
// checksum match (a flipped byte anywhere in the file is found before training starts: one sequential
// read of the data, about the cost of touching the mapping once), and a pattern that matches some of a
// manifest's shards matches all of them that the manifest lists (a deleted shard is not skipped
// silently). A plain path may name a single shard of a set.
#pragma once
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "data/shard.h"

namespace l2v {

struct ShardManifestEntry {
  std::string file;  // base name, in the manifest's directory
  uint64_t bytes = 0;
  uint64_t checksum = 0;
};

struct ShardManifest {
  ShardKind kind = ShardKind::kDocuments;
  std::vector<ShardManifestEntry> shards;
};

std::string shard_manifest_path(const std::string& prefix);  // PREFIX.manifest.json
// The shard file name prepare gives shard i of PREFIX: PREFIX-%06d.bin.
std::string shard_file_path(const std::string& prefix, size_t i);

// Reads and validates a manifest; throws std::runtime_error naming the file and the problem.
ShardManifest read_shard_manifest(const std::string& path);

// Makes the shards in `staged` (complete files, in order, in any directory of the same file system)
// the shard set PREFIX: removes PREFIX's manifest, then every PREFIX-NNNNNN.bin, renames the staged
// files to PREFIX-000000.bin, ..., and writes the manifest last (atomically). Returns the final paths.
std::vector<std::string> commit_shard_set(const std::string& prefix, const std::vector<std::string>& staged,
                                          ShardKind kind);

// Opens the shards named by `spec` (comma-separated paths and glob patterns, see expand_shard_paths)
// after checking them against their manifests as described above. *content_fingerprint, when given,
// receives a digest of the shards' checksums in order: equal for the same data wherever it lies.
std::unique_ptr<ShardSet> open_shard_dataset(const std::string& spec, uint64_t* content_fingerprint = nullptr);

}  // namespace l2v
