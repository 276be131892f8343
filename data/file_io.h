// Whole-file I/O with errors that name the file: atomic writes and JSON reads.
#pragma once
#include <string>

#include <nlohmann/json.hpp>

namespace l2v {

// Writes `content` so that no truncated file is ever left under the final name: it goes to
// `path.tmp.<pid>`, is flushed and fsync'ed, then renamed over `path` (atomic on POSIX file systems).
// Throws std::runtime_error naming the path on any failure (the temporary file is removed).
void write_file_atomic(const std::string& path, const std::string& content);

// Parses a JSON file. Throws std::runtime_error "<path>: cannot open <what>" or "<path>: not valid JSON: …".
nlohmann::json read_json_file(const std::string& path, const std::string& what);

}  // namespace l2v
