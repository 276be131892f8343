#include "data/prepare.h"

#include <atomic>
#include <filesystem>
#include <chrono>
#include <csignal>
#include <cstdio>
#include <memory>
#include <stdexcept>

#include "data/file_io.h"
#include "data/shard.h"
#include "data/shard_manifest.h"
#include "data/text_sources.h"
#include "data/tokenizer.h"

namespace l2v {
namespace {

std::atomic<bool> g_interrupted{false};
extern "C" void on_interrupt(int) { g_interrupted = true; }

// Installs the handlers for the duration of a run and restores the previous ones.
struct InterruptGuard {
  void (*old_int)(int), (*old_term)(int);
  InterruptGuard() {
    g_interrupted = false;
    old_int = std::signal(SIGINT, on_interrupt);
    old_term = std::signal(SIGTERM, on_interrupt);
  }
  ~InterruptGuard() {
    std::signal(SIGINT, old_int);
    std::signal(SIGTERM, old_term);
  }
};

ShardKind kind_of(PrepareFormat f) {
  switch (f) {
    case PrepareFormat::kSentences: return ShardKind::kSentences;
    case PrepareFormat::kSupervised: return ShardKind::kTriples;
    default: return ShardKind::kDocuments;
  }
}

// Rolls shards over at opt.shard_tokens under `staging_prefix` and reports progress.
class ShardSink {
 public:
  ShardSink(const PrepareOptions& opt, const std::string& staging_prefix, const Tokenizer& tok, PrepareReport& report)
      : opt_(opt), staging_prefix_(staging_prefix), tok_(tok), report_(report), start_(std::chrono::steady_clock::now()) {}

  ShardWriter& writer() {
    if (writer_ && writer_->num_tokens() >= opt_.shard_tokens) close();
    if (!writer_) {
      current_ = shard_file_path(staging_prefix_, report_.shards.size());
      writer_ = std::make_unique<ShardWriter>();
      writer_->open(current_, kind_of(opt_.format), (uint32_t)tok_.vocab_size(), tok_.fingerprint());
    }
    return *writer_;
  }

  void close() {
    if (!writer_) return;
    writer_->finish();
    report_.shards.push_back(current_);
    writer_.reset();
  }

  void progress(const std::string& file, size_t done_bytes, size_t total_bytes, bool final) {
    if (!opt_.progress) return;
    auto now = std::chrono::steady_clock::now();
    if (!final && now - last_ < std::chrono::milliseconds(500)) return;
    last_ = now;
    double secs = std::chrono::duration<double>(now - start_).count();
    double frac = total_bytes ? (double)done_bytes / (double)total_bytes : 1.0;
    double eta = frac > 0 ? secs * (1.0 - frac) / frac : 0.0;
    std::fprintf(stderr, "\rprepare %s: %5.1f%%  %llu records  %llu tokens  %.0f tok/s  ETA %.0fs   ",
                 file.c_str(), 100.0 * frac, (unsigned long long)report_.records,
                 (unsigned long long)report_.tokens, secs > 0 ? report_.tokens / secs : 0.0, eta);
    if (final) std::fprintf(stderr, "\n");
  }

 private:
  const PrepareOptions& opt_;
  const std::string staging_prefix_;
  const Tokenizer& tok_;
  PrepareReport& report_;
  std::unique_ptr<ShardWriter> writer_;
  std::string current_;
  std::chrono::steady_clock::time_point start_, last_;
};

void handle_bad(const PrepareOptions& opt, const std::string& file, std::vector<BadLine>& bad, PrepareReport& r) {
  for (const BadLine& b : bad) {
    const std::string where = file + ":" + std::to_string(b.line) + ": " + b.reason;
    if (!opt.skip_bad_lines) throw std::runtime_error(where + " (use --skip-bad-lines to skip such lines)");
    std::fprintf(stderr, "\nprepare: skipping %s\n", where.c_str());
    ++r.bad_lines;
  }
  bad.clear();
}

void check_interrupted() {
  if (g_interrupted) throw std::runtime_error("interrupted: nothing was written (an earlier shard set of this prefix is intact)");
}

std::vector<int32_t> encode32(const Tokenizer& tok, const std::string& text, bool special) {
  std::vector<int> ids = tok.encode(text, special);
  return std::vector<int32_t>(ids.begin(), ids.end());
}

void prepare_text(const PrepareOptions& opt, const Tokenizer& tok, const std::string& file, ShardSink& sink,
                  PrepareReport& report) {
  TextReader reader(file, opt.format == PrepareFormat::kWikiText ? TextLayout::kWikiText : TextLayout::kLines);
  std::vector<TextRecord> records;
  std::vector<BadLine> bad;
  std::vector<std::vector<int32_t>> ids;
  while (reader.next_batch(records, opt.batch_records, bad)) {
    handle_bad(opt, file, bad, report);
    ids.assign(records.size(), {});
#pragma omp parallel for schedule(dynamic, 16)
    for (long i = 0; i < (long)records.size(); ++i) ids[i] = encode32(tok, records[i].text, true);
    for (const auto& doc : ids) {
      sink.writer().add_document(doc.data(), doc.size());
      ++report.records;
      report.tokens += doc.size();
    }
    check_interrupted();
    sink.progress(file, reader.bytes_read(), reader.file_size(), false);
  }
  handle_bad(opt, file, bad, report);
  sink.progress(file, reader.bytes_read(), reader.file_size(), true);
}

struct EncodedTriple {
  std::vector<int32_t> query, positive, negative;
  uint32_t instruction_tokens = 0;
};

// llm2vec's E5 convention: the query text is `instruction + "; " + query`, and the pooled positions
// are the last len(tokenize(query, add_special_tokens=False)) tokens; everything before them (BOS,
// instruction) is the excluded prefix. Without an instruction that prefix is just the BOS.
EncodedTriple encode_triple(const Tokenizer& tok, const SupervisedRecord& r) {
  EncodedTriple t;
  const std::string full = r.instruction.empty() ? r.query : r.instruction + "; " + r.query;
  t.query = encode32(tok, full, true);
  const size_t text_len = tok.encode(r.query, false).size();
  t.instruction_tokens = (uint32_t)(t.query.size() > text_len ? t.query.size() - text_len : 0);
  t.positive = encode32(tok, r.positive, true);
  t.negative = encode32(tok, r.negative, true);
  return t;
}

void prepare_supervised(const PrepareOptions& opt, const Tokenizer& tok, const std::string& file, ShardSink& sink,
                        PrepareReport& report) {
  SupervisedReader reader(file);
  std::vector<SupervisedRecord> records;
  std::vector<BadLine> bad;
  std::vector<EncodedTriple> encoded;
  while (reader.next_batch(records, opt.batch_records, bad)) {
    handle_bad(opt, file, bad, report);
    encoded.assign(records.size(), {});
#pragma omp parallel for schedule(dynamic, 16)
    for (long i = 0; i < (long)records.size(); ++i) encoded[i] = encode_triple(tok, records[i]);
    for (size_t i = 0; i < encoded.size(); ++i) {
      const EncodedTriple& t = encoded[i];
      sink.writer().add_triple(t.query, t.instruction_tokens, t.positive, t.negative,
                               records[i].dataset.empty() ? "default" : records[i].dataset);
      ++report.records;
      report.tokens += t.query.size() + t.positive.size() + t.negative.size();
    }
    check_interrupted();
    sink.progress(file, reader.bytes_read(), reader.file_size(), false);
  }
  handle_bad(opt, file, bad, report);
  sink.progress(file, reader.bytes_read(), reader.file_size(), true);
}

}  // namespace

PrepareFormat parse_prepare_format(const std::string& name) {
  if (name == "wikitext") return PrepareFormat::kWikiText;
  if (name == "lines") return PrepareFormat::kLines;
  if (name == "sentences") return PrepareFormat::kSentences;
  if (name == "supervised") return PrepareFormat::kSupervised;
  throw std::invalid_argument("unknown input format '" + name + "' (wikitext, lines, sentences, supervised)");
}

PrepareReport run_prepare(const PrepareOptions& opt, const Tokenizer& tok) {
  if (opt.inputs.empty()) throw std::invalid_argument("prepare: no input files");
  if (opt.output_prefix.empty()) throw std::invalid_argument("prepare: no output prefix");
  if (opt.shard_tokens == 0) throw std::invalid_argument("prepare: shard size must be positive");
  const std::filesystem::path dir = std::filesystem::path(opt.output_prefix).parent_path();
  std::error_code ec;
  if (!dir.empty()) std::filesystem::create_directories(dir, ec);
  if (ec) throw std::runtime_error(dir.string() + ": cannot create the output directory: " + ec.message());
  // One prepare per prefix at a time; with the lock held, a staging directory left by a killed run can go.
  const std::filesystem::path here = dir.empty() ? std::filesystem::path(".") : dir;
  const std::string name = std::filesystem::path(opt.output_prefix).filename().string();
  FileLock lock((here / ("." + name + ".lock")).string(), "the shard prefix " + opt.output_prefix);
  const std::filesystem::path staging = here / ("." + name + ".staging");
  std::filesystem::remove_all(staging);
  remove_atomic_write_leftovers(shard_manifest_path(opt.output_prefix));
  std::filesystem::create_directories(staging);
  struct RemoveStaging {
    std::filesystem::path dir;
    ~RemoveStaging() {
      std::error_code ignored;
      std::filesystem::remove_all(dir, ignored);
    }
  } remove_staging{staging};
  InterruptGuard guard;
  PrepareReport report;
  {
    ShardSink sink(opt, (staging / "shard").string(), tok, report);
    for (const std::string& file : opt.inputs) {
      if (opt.format == PrepareFormat::kSupervised) prepare_supervised(opt, tok, file, sink, report);
      else prepare_text(opt, tok, file, sink, report);
    }
    if (report.records == 0) throw std::runtime_error("prepare: the inputs hold no records");
    sink.close();
  }
  report.shards = commit_shard_set(opt.output_prefix, report.shards, kind_of(opt.format));
  return report;
}

}  // namespace l2v
