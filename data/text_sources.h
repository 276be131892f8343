// Streaming readers for the raw inputs of `llm2vec prepare`: text documents (WikiText layout or one
// document per line), sentence-per-line files (SimCSE's wiki1m layout) and supervised JSONL
// ({"query", "positive", "negative", optional "instruction" and "dataset"}). They read in bounded
// batches, so a multi-GB dump never has to fit in memory, and every record remembers its line number
// so problems are reported as file:line.
#pragma once
#include <cstddef>
#include <fstream>
#include <string>
#include <vector>

namespace l2v {

enum class TextLayout {
  kWikiText,  // articles start at a top-level heading " = Title = "; sub-headings and paragraphs follow
  kLines,     // one document (or sentence) per non-empty line
};

struct TextRecord {
  std::string text;
  size_t line = 0;  // 1-based line where the record starts
};

struct SupervisedRecord {
  std::string query, positive, negative;
  std::string instruction;  // empty: none
  std::string dataset;      // empty: "default"
  size_t line = 0;
};

struct BadLine {
  size_t line = 0;
  std::string reason;
};

class TextReader {
 public:
  TextReader(const std::string& path, TextLayout layout);
  // Fills `out` (cleared first) with up to max_records records; returns false once the input is
  // exhausted and nothing was read. A batch may come back empty while more input follows.
  // Lines that are not valid UTF-8 are not records: they go to `bad`.
  bool next_batch(std::vector<TextRecord>& out, size_t max_records, std::vector<BadLine>& bad);
  size_t bytes_read() const { return bytes_read_; }
  size_t file_size() const { return file_size_; }

 private:
  std::string path_;
  TextLayout layout_;
  std::ifstream in_;
  size_t line_ = 0, bytes_read_ = 0, file_size_ = 0;
  TextRecord pending_;  // WikiText: the article being accumulated
  bool prev_blank_ = true;  // the start of the file counts as a blank line
  bool eof_ = false;
};

class SupervisedReader {
 public:
  explicit SupervisedReader(const std::string& path);
  // Malformed lines (invalid JSON or UTF-8, missing or non-string fields, empty texts) go to `bad`.
  bool next_batch(std::vector<SupervisedRecord>& out, size_t max_records, std::vector<BadLine>& bad);
  size_t bytes_read() const { return bytes_read_; }
  size_t file_size() const { return file_size_; }

 private:
  std::string path_;
  std::ifstream in_;
  size_t line_ = 0, bytes_read_ = 0, file_size_ = 0;
  bool eof_ = false;
};

}  // namespace l2v
