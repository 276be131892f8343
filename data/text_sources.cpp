#include "data/text_sources.h"

#include <filesystem>
#include <stdexcept>

#include <nlohmann/json.hpp>

#include "data/file_io.h"
#include "data/unicode.h"

namespace l2v {
namespace {

std::string trim(const std::string& s) {
  size_t b = s.find_first_not_of(" \t\r\n"), e = s.find_last_not_of(" \t\r\n");
  return b == std::string::npos ? std::string() : s.substr(b, e - b + 1);
}

// " = Title = " but not " = = Section = = ": a top-level WikiText heading starts an article.
bool is_article_heading(const std::string& trimmed) {
  return trimmed.size() >= 5 && trimmed.compare(0, 2, "= ") == 0 && trimmed.compare(0, 3, "= =") != 0 &&
         trimmed.compare(trimmed.size() - 2, 2, " =") == 0;
}

void open_input(std::ifstream& in, const std::string& path, size_t& size) {
  in = open_input_file(path, "an input file");
  std::error_code ec;
  size = (size_t)std::filesystem::file_size(path, ec);
  if (ec) size = 0;
}

}  // namespace

TextReader::TextReader(const std::string& path, TextLayout layout) : path_(path), layout_(layout) {
  open_input(in_, path, file_size_);
}

bool TextReader::next_batch(std::vector<TextRecord>& out, size_t max_records, std::vector<BadLine>& bad) {
  out.clear();
  std::string line;
  while (out.size() < max_records && !eof_) {
    if (!std::getline(in_, line)) {
      eof_ = true;
      if (!pending_.text.empty()) out.push_back(std::move(pending_));
      pending_ = TextRecord{};
      break;
    }
    ++line_;
    bytes_read_ += line.size() + 1;
    if (!is_valid_utf8(line)) {
      bad.push_back({line_, "not valid UTF-8"});
      continue;
    }
    std::string t = trim(line);
    const bool after_blank = prev_blank_;
    prev_blank_ = t.empty();
    if (t.empty()) continue;
    if (layout_ == TextLayout::kLines) {
      out.push_back({std::move(t), line_});
      continue;
    }
    // Headings stand between blank lines; a paragraph line shaped like one (WikiText-2 has formulas
    // such as " = 1 henry and capacitance C = " inside paragraphs) is not a heading.
    if (after_blank && is_article_heading(t) && !pending_.text.empty()) {
      out.push_back(std::move(pending_));
      pending_ = TextRecord{};
    }
    if (pending_.text.empty()) pending_.line = line_;
    else pending_.text += '\n';
    pending_.text += t;
  }
  return !out.empty() || !eof_;
}

SupervisedReader::SupervisedReader(const std::string& path) : path_(path) { open_input(in_, path, file_size_); }

bool SupervisedReader::next_batch(std::vector<SupervisedRecord>& out, size_t max_records,
                                  std::vector<BadLine>& bad) {
  out.clear();
  std::string line;
  while (out.size() < max_records && !eof_) {
    if (!std::getline(in_, line)) {
      eof_ = true;
      break;
    }
    ++line_;
    bytes_read_ += line.size() + 1;
    if (trim(line).empty()) continue;
    if (!is_valid_utf8(line)) {
      bad.push_back({line_, "not valid UTF-8"});
      continue;
    }
    nlohmann::json j = nlohmann::json::parse(line, nullptr, /*allow_exceptions=*/false);
    if (j.is_discarded() || !j.is_object()) {
      bad.push_back({line_, "not a JSON object"});
      continue;
    }
    SupervisedRecord r;
    r.line = line_;
    std::string problem;
    auto field = [&](const char* key, std::string& dst, bool required) {
      if (!j.contains(key) || j[key].is_null()) {
        if (required && problem.empty()) problem = std::string("missing field '") + key + "'";
        return;
      }
      if (!j[key].is_string()) {
        if (problem.empty()) problem = std::string("field '") + key + "' is not a string";
        return;
      }
      dst = j[key].get<std::string>();
      if (required && trim(dst).empty() && problem.empty()) problem = std::string("field '") + key + "' is empty";
    };
    field("query", r.query, true);
    field("positive", r.positive, true);
    field("negative", r.negative, true);
    field("instruction", r.instruction, false);
    field("dataset", r.dataset, false);
    if (!problem.empty()) {
      bad.push_back({line_, problem});
      continue;
    }
    out.push_back(std::move(r));
  }
  return !out.empty() || !eof_;
}

}  // namespace l2v
