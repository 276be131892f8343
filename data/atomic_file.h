// Whole-file writes that never leave a truncated file under the final name: the content goes to
// `path.tmp.<pid>`, is flushed and fsync'ed, then renamed over `path` (atomic on POSIX file systems).
#pragma once
#include <string>

namespace l2v {

// Throws std::runtime_error naming the path on any failure (the temporary file is removed).
void write_file_atomic(const std::string& path, const std::string& content);

}  // namespace l2v
