// Tokenizer throughput on WikiText-2's validation text (every line, as the data preparation reads
// it), for the bundled Hugging Face tokenizers. Reports tokens/s; scripts/bench_tokenizer_python.py
// measures the Python `tokenizers` library on the same lines for comparison. Run from the repo root:
//   make bench && ./build/bench/bench_tokenizer
// Encoding runs with a warm word cache (the cache of the first pass persists), as a long data
// preparation run would have; so does tokenizers' own BPE cache.
#include <benchmark/benchmark.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <memory>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/hf_tokenizer.h"

namespace {

std::string find_file(const std::vector<std::string>& candidates) {
  for (const std::string& p : candidates)
    if (std::filesystem::exists(p)) return p;
  throw std::runtime_error("bench_tokenizer: none of " + candidates.front() + ", ... exists (run from the repo root)");
}

const std::vector<std::string>& lines() {
  static const std::vector<std::string> all = [] {
    const std::string path = find_file({"assets/wikitext-2/wiki.valid.raw", "../shared/data/wikitext-2/wiki.valid.raw"});
    std::ifstream in(path, std::ios::binary);
    std::vector<std::string> out;
    std::string line;
    while (std::getline(in, line)) out.push_back(line);
    return out;
  }();
  return all;
}

const l2v::Tokenizer& tokenizer(const std::string& name) {
  static std::map<std::string, std::unique_ptr<l2v::Tokenizer>> cache;
  auto& t = cache[name];
  if (!t) {
    t = l2v::load_hf_tokenizer(
        find_file({"assets/tokenizers/" + name + "/tokenizer.json", "../shared/data/tokenizers/" + name + "/tokenizer.json"}));
  }
  return *t;
}

void BM_Encode(benchmark::State& state, const std::string& name) {
  const l2v::Tokenizer& tok = tokenizer(name);
  const auto& text = lines();
  // Threads split the lines between them, like a parallel data preparation.
  const size_t n = text.size(), per = (n + state.threads() - 1) / state.threads();
  const size_t begin = std::min(n, per * state.thread_index()), end = std::min(n, begin + per);
  int64_t tokens = 0, bytes = 0;
  for (auto _ : state) {
    for (size_t i = begin; i < end; ++i) {
      const std::vector<int> ids = tok.encode(text[i], true);
      tokens += static_cast<int64_t>(ids.size());
      bytes += static_cast<int64_t>(text[i].size());
    }
  }
  state.SetBytesProcessed(bytes);
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
}

void BM_Decode(benchmark::State& state, const std::string& name) {
  const l2v::Tokenizer& tok = tokenizer(name);
  std::vector<std::vector<int>> encoded;
  for (const std::string& line : lines()) encoded.push_back(tok.encode(line, true));
  int64_t tokens = 0;
  for (auto _ : state) {
    for (const auto& ids : encoded) {
      benchmark::DoNotOptimize(tok.decode(ids, true));
      tokens += static_cast<int64_t>(ids.size());
    }
  }
  state.counters["tokens/s"] = benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
}

void BM_Load(benchmark::State& state, const std::string& name) {
  const std::string path =
      find_file({"assets/tokenizers/" + name + "/tokenizer.json", "../shared/data/tokenizers/" + name + "/tokenizer.json"});
  for (auto _ : state) benchmark::DoNotOptimize(l2v::load_hf_tokenizer(path));
}

}  // namespace

BENCHMARK_CAPTURE(BM_Encode, mistral, std::string("mistral-7b-v0.1"))->Threads(1)->Threads(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Encode, qwen2_5, std::string("qwen2.5"))->Threads(1)->Threads(2)->UseRealTime()->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Decode, mistral, std::string("mistral-7b-v0.1"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Decode, qwen2_5, std::string("qwen2.5"))->Unit(benchmark::kMillisecond);
BENCHMARK_CAPTURE(BM_Load, mistral, std::string("mistral-7b-v0.1"))->Unit(benchmark::kMillisecond)->Iterations(3);
BENCHMARK_CAPTURE(BM_Load, qwen2_5, std::string("qwen2.5"))->Unit(benchmark::kMillisecond)->Iterations(3);

BENCHMARK_MAIN();
