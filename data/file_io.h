// Whole-file I/O with errors that name the file: atomic writes, JSON reads, content checksums, and the
// advisory lock that keeps two processes out of one output directory or shard prefix.
#pragma once
#include <cstddef>
#include <cstdint>
#include <fstream>
#include <functional>
#include <string>

#include <nlohmann/json.hpp>

namespace l2v {

// Writes `content` so that no truncated file is ever left under the final name: it goes to
// `path.tmp.<pid>`, is flushed and fsync'ed, then renamed over `path` (atomic on POSIX file systems).
// Throws std::runtime_error naming the path on any failure (the temporary file is removed).
void write_file_atomic(const std::string& path, const std::string& content);

// Removes what write_file_atomic(path) leaves when its process is killed between creating and renaming
// its temporary file: files named `path.tmp.<digits>`. Call it only while no other process may be
// writing `path` (e.g. under the FileLock of its directory).
void remove_atomic_write_leftovers(const std::string& path);

// Opens a file for reading (binary mode). Throws std::runtime_error "<path>: cannot open <what>: <reason>"
// for a missing or unreadable file, and "<path>: is a directory, not <what>" for a directory, which
// opens as an empty stream on Linux and would otherwise read as "no records" or "no texts".
std::ifstream open_input_file(const std::string& path, const std::string& what);

// Parses a JSON file. Throws std::runtime_error "<path>: cannot open <what>" or "<path>: not valid JSON: …".
nlohmann::json read_json_file(const std::string& path, const std::string& what);

// Calls fn(object, "<path>:<line>: ") for every non-blank line of a JSON-lines file (a trailing '\r'
// dropped). Throws std::runtime_error naming path:line for a line that is not a JSON object.
void for_each_json_line(const std::string& path, const std::string& what,
                        const std::function<void(const nlohmann::json&, const std::string&)>& fn);

// A 64-bit checksum of `size` bytes for detecting damaged files (not for security): four lanes of
// 64-bit multiply-rotate rounds over 32-byte stripes (the structure of xxHash64's, with its constants),
// the tail folded in byte by byte, then an avalanche step. Every input bit reaches the result through
// multiplications by odd constants, so a flipped bit or byte always changes it; about 10 GB/s.
// Stable across runs and platforms (little-endian reads): stored in manifests and checkpoints.
uint64_t checksum64(const void* data, size_t size);
// checksum64 of a whole file, streamed; throws std::runtime_error naming the file if it cannot be read.
uint64_t file_checksum64(const std::string& path);
// "0x0123456789abcdef" (16 hex digits): how checksums are written in JSON (exactly, unlike a number).
std::string checksum_hex(uint64_t value);

// An exclusive advisory lock (flock) on `path` (created if missing), held while the object lives and
// released by the kernel when the process dies in any way, kill -9 included. The file holds the
// holder's pid for the message another process gets: std::runtime_error "<what> is in use by another
// process (pid N, lock file <path>) ...". Locks of one process on the same file exclude each other too.
class FileLock {
 public:
  FileLock(const std::string& path, const std::string& what);
  ~FileLock();
  FileLock(const FileLock&) = delete;
  FileLock& operator=(const FileLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace l2v
