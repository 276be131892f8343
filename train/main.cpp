// llm2vec: the one binary of llm2vec.cu. Each subcommand declares its options in the table at the
// bottom; `llm2vec <command> --help` prints them.
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/prepare.h"
#include "data/tokenizer.h"
#include "host/cpu_backend.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "model/model.h"
#include "train/cli.h"

#if defined(L2V_WITH_CUDA)
#include "cuda/cuda_backend.h"
#endif

namespace l2v {
namespace {

#if defined(L2V_WITH_CUDA)
constexpr const char* kDefaultBackend = "cuda";
#else
constexpr const char* kDefaultBackend = "cpu";
#endif

std::unique_ptr<Backend> make_backend(const std::string& name, const std::string& precision) {
  if (name == "cpu") {
    if (precision != "fp32") throw UsageError("the cpu backend computes in fp32 only (--precision fp32)");
    return make_cpu_backend();
  }
  if (name == "cuda") {
#if defined(L2V_WITH_CUDA)
    return make_cuda_backend(parse_cuda_precision(precision));
#else
    throw UsageError("this binary was built without CUDA (use build/llm2vec_cuda, built when nvcc is present)");
#endif
  }
  throw UsageError("unknown backend '" + name + "' (cpu or cuda)");
}

struct LoadedModel {
  std::unique_ptr<Backend> backend;
  Checkpoint checkpoint;
  Model model;
};

void load(LoadedModel& lm, const ParsedOptions& o) {
  const std::string path = o.required("--model");
  const std::string backend = o.get("--backend", kDefaultBackend);
  lm.backend = make_backend(backend, o.get("--precision", backend == "cuda" ? "bf16" : "fp32"));
  lm.checkpoint = open_checkpoint(path);
  load_model(lm.model, lm.checkpoint.config, *lm.checkpoint.tensors, *lm.backend);
  const ModelConfig& c = lm.checkpoint.config;
  std::printf("model %s: %s, %d layers, hidden %d, heads %d/%d, vocab %d (backend: %s)\n", path.c_str(),
              c.model_type.c_str(), c.num_hidden_layers, c.hidden_size, c.num_attention_heads,
              c.num_key_value_heads, c.vocab_size, lm.backend->name());
}

std::unique_ptr<Tokenizer> load_matching_tokenizer(const std::string& path, const ModelConfig& c) {
  std::unique_ptr<Tokenizer> tok = load_tokenizer(path);
  if (tok->vocab_size() > c.vocab_size)
    throw std::runtime_error(path + ": the tokenizer has " + std::to_string(tok->vocab_size()) +
                             " ids but the model's vocabulary has " + std::to_string(c.vocab_size));
  return tok;
}

std::vector<std::string> read_lines(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  if (lines.empty()) throw std::runtime_error(path + ": no sentences");
  return lines;
}

// Mean of the final hidden states over the real (non-padding) tokens of each row, L2-normalised.
std::vector<std::vector<float>> mean_pool(const std::vector<float>& hidden, const std::vector<int>& mask, int B,
                                          int T, int C) {
  std::vector<std::vector<float>> out(B, std::vector<float>(C, 0.0f));
  for (int b = 0; b < B; ++b) {
    int count = 0;
    for (int t = 0; t < T; ++t) {
      if (!mask[b * T + t]) continue;
      ++count;
      for (int c = 0; c < C; ++c) out[b][c] += hidden[((size_t)b * T + t) * C + c];
    }
    double norm = 0.0;
    for (float& x : out[b]) {
      x /= (float)count;
      norm += (double)x * x;
    }
    for (float& x : out[b]) x /= (float)std::sqrt(norm);
  }
  return out;
}

void print_similarities(const char* title, const std::vector<std::vector<float>>& emb) {
  std::printf("\n%s: cosine similarity of mean-pooled embeddings\n     ", title);
  for (size_t j = 0; j < emb.size(); ++j) std::printf("  s%-4zu", j + 1);
  std::printf("\n");
  for (size_t i = 0; i < emb.size(); ++i) {
    std::printf("s%-3zu", i + 1);
    for (size_t j = 0; j < emb.size(); ++j) {
      double dot = 0.0;
      for (size_t c = 0; c < emb[i].size(); ++c) dot += (double)emb[i][c] * emb[j][c];
      std::printf("  %+.3f", dot);
    }
    std::printf("\n");
  }
}

int run_demo(const ParsedOptions& o) {
  LoadedModel lm;
  load(lm, o);
  std::unique_ptr<Tokenizer> tok = load_matching_tokenizer(o.required("--tokenizer"), lm.checkpoint.config);
  std::vector<std::string> sentences = read_lines(o.required("--text"));
  std::vector<std::vector<int>> encoded;
  int T = 0;
  for (const std::string& s : sentences) {
    encoded.push_back(tok->encode(s, /*add_special_tokens=*/true));
    T = std::max(T, (int)encoded.back().size());
  }
  const int B = (int)sentences.size(), C = lm.model.config.hidden_size;
  // Right padding with a key-padding mask; the padding id is irrelevant (never attended to, never pooled).
  std::vector<int> ids((size_t)B * T, 0), mask((size_t)B * T, 0);
  for (int b = 0; b < B; ++b)
    for (size_t t = 0; t < encoded[b].size(); ++t) {
      ids[(size_t)b * T + t] = encoded[b][t];
      mask[(size_t)b * T + t] = 1;
    }
  for (int b = 0; b < B; ++b) std::printf("s%-3d (%2zu tokens) %s\n", b + 1, encoded[b].size(), sentences[b].c_str());
  for (bool causal : {true, false}) {
    ForwardOptions opt;
    opt.causal = causal;
    model_forward(lm.model, ids.data(), mask.data(), B, T, opt);
    std::vector<float> hidden = download_tensor(lm.model, lm.model.acts.final_hidden, (size_t)B * T * C);
    print_similarities(causal ? "causal attention (Uni)" : "bidirectional attention (Bi, untrained)",
                       mean_pool(hidden, mask, B, T, C));
  }
  return 0;
}

int run_generate(const ParsedOptions& o) {
  LoadedModel lm;
  load(lm, o);
  std::unique_ptr<Tokenizer> tok = load_matching_tokenizer(o.required("--tokenizer"), lm.checkpoint.config);
  const int bos = tok->bos_id() >= 0 ? tok->bos_id() : lm.checkpoint.config.bos_token_id;
  if (bos < 0) throw std::runtime_error("neither the tokenizer nor the model config names a BOS token");
  const int steps = (int)o.get_int("--steps", 255, 1);
  std::vector<int> ids;
  for (const GreedyStep& s : greedy_decode(lm.model, {bos}, steps)) ids.push_back(s.token);
  std::printf("%s\n", tok->decode(ids, /*skip_special_tokens=*/true).c_str());
  return 0;
}

int run_convert(const ParsedOptions& o) {
  Checkpoint ck = open_checkpoint(o.required("--model"));
  const std::string out = o.required("--out");
  save_hf_checkpoint(ck.config, *ck.tensors, out);
  std::printf("wrote %s/config.json and %s/model.safetensors (%zu tensors)\n", out.c_str(), out.c_str(),
              ck.tensors->names().size());
  return 0;
}

int run_prepare_command(const ParsedOptions& o) {
  std::unique_ptr<Tokenizer> tok = load_tokenizer(o.required("--tokenizer"));
  PrepareOptions opt;
  std::stringstream inputs(o.required("--input"));
  for (std::string item; std::getline(inputs, item, ',');)
    if (!item.empty()) opt.inputs.push_back(item);
  opt.format = parse_prepare_format(o.get("--format", "wikitext"));
  opt.output_prefix = o.required("--out");
  opt.shard_tokens = (uint64_t)o.get_int("--shard-tokens", (int64_t)opt.shard_tokens, 1);
  opt.skip_bad_lines = o.has("--skip-bad-lines");
  opt.progress = !o.has("--quiet");
  PrepareReport r = run_prepare(opt, *tok);
  std::printf("prepared %llu records, %llu tokens into %zu shard(s)%s\n", (unsigned long long)r.records,
              (unsigned long long)r.tokens, r.shards.size(),
              r.bad_lines ? (", skipped " + std::to_string(r.bad_lines) + " bad line(s)").c_str() : "");
  for (const std::string& s : r.shards) std::printf("  %s\n", s.c_str());
  return 0;
}

struct Command {
  const char* name;
  const char* summary;
  std::vector<OptionSpec> options;
  int (*run)(const ParsedOptions&);
};

const OptionSpec kModel{"--model", "PATH", "checkpoint: a Hugging Face model directory or a llama2.c .bin file"};
const OptionSpec kTokenizer{"--tokenizer", "PATH",
                            "tokenizer.json, a directory holding one, or a llama2.c tokenizer .bin"};
const OptionSpec kBackend{"--backend", "NAME", std::string("cpu or cuda (default ") + kDefaultBackend + ")"};
const OptionSpec kPrecision{"--precision", "P",
                            "storage of activations and base weights: bf16 (cuda default, fp32\n"
                            "accumulation) or fp32 (cpu: fp32 only)"};

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {"demo",
       "embed the lines of a text file with mean pooling, once with causal and once with\n"
       "bidirectional attention (no training), and print their cosine similarities",
       {kModel, kTokenizer, {"--text", "PATH", "one sentence per line"}, kBackend, kPrecision},
       run_demo},
      {"generate",
       "greedy decoding from BOS with causal attention",
       {kModel, kTokenizer, kBackend, kPrecision,
        {"--steps", "N",
         "tokens to generate (default 255, what llama2.c's run.c prints with -n 256:\n"
         "its step count includes the BOS position)"}},
       run_generate},
      {"convert",
       "write the checkpoint as a Hugging Face model directory (config.json +\n"
       "model.safetensors, F32), loadable by transformers",
       {kModel, {"--out", "DIR", "output directory"}},
       run_convert},
      {"prepare",
       "tokenize raw text into shards (PREFIX-000000.bin, ...) for training",
       {kTokenizer,
        {"--input", "FILES", "comma-separated input files"},
        {"--format", "F",
         "wikitext (articles at ' = Title = ' headings; default), lines (one document\n"
         "per line), sentences (one sentence per line, SimCSE), supervised (JSONL with\n"
         "query, positive, negative, optional instruction and dataset)"},
        {"--out", "PREFIX", "output path prefix"},
        {"--shard-tokens", "N", "start a new shard after N tokens (default 268435456)"},
        {"--skip-bad-lines", "", "report bad input lines and skip them (default: stop at the first)"},
        {"--quiet", "", "no progress line"}},
       run_prepare_command},
  };
  return table;
}

std::string usage() {
  std::string out = "usage: llm2vec <command> [options]    (llm2vec <command> --help for its options)\n\ncommands:\n";
  for (const Command& c : commands()) {
    std::string summary = c.summary;
    for (size_t p = summary.find('\n'); p != std::string::npos; p = summary.find('\n', p + 1))
      summary.insert(p + 1, std::string(12, ' '));
    char name[16];
    std::snprintf(name, sizeof name, "  %-10s", c.name);
    out += name + summary + "\n";
  }
  return out + "\nBackends: cpu (fp32 reference ops, OpenBLAS + OpenMP)" +
         (std::string(kDefaultBackend) == "cuda" ? ", cuda (default)" : " (this build has no CUDA)") + ".\n";
}

}  // namespace
}  // namespace l2v

int main(int argc, char** argv) {
  using namespace l2v;
  const std::string name = argc > 1 ? argv[1] : "";
  if (name == "-h" || name == "--help") {
    std::fputs(usage().c_str(), stdout);
    return 0;
  }
  const Command* cmd = nullptr;
  for (const Command& c : commands())
    if (name == c.name) cmd = &c;
  if (!cmd) {
    std::fprintf(stderr, "llm2vec: %s\n\n%s", name.empty() ? "missing command" : ("unknown command " + name).c_str(),
                 usage().c_str());
    return 2;
  }
  try {
    ParsedOptions opts = parse_options(argc, argv, 2, cmd->options);
    if (opts.help) {
      std::printf("usage: llm2vec %s [options]\n\n%s\n\noptions:\n%s", cmd->name, cmd->summary,
                  options_help(cmd->options).c_str());
      return 0;
    }
    return cmd->run(opts);
  } catch (const UsageError& e) {
    std::fprintf(stderr, "llm2vec %s: %s\n\noptions:\n%s", cmd->name, e.what(), options_help(cmd->options).c_str());
    return 2;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llm2vec %s: error: %s\n", cmd->name, e.what());
    return 1;
  }
}
