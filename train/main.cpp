// llm2vec: the one binary of llm2vec.cu. Subcommands so far:
//   demo      embed sentences with mean pooling, causal vs bidirectional, and print cosine similarities
//   generate  greedy decoding from BOS with the causal model (a check of the forward pass)
//   convert   write any supported checkpoint (e.g. a llama2.c .bin) as a Hugging Face model directory
#include <cmath>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/llama2c_tokenizer.h"
#include "host/cpu_backend.h"
#include "model/checkpoint.h"
#include "model/generate.h"
#include "model/model.h"

namespace {

const char* kUsage =
    "usage: llm2vec <command> [options]\n"
    "\n"
    "commands:\n"
    "  demo      embed the lines of a text file with mean pooling, once with causal and once with\n"
    "            bidirectional attention (no training), and print their cosine similarities\n"
    "  generate  greedy decoding from BOS with causal attention\n"
    "  convert   write the checkpoint as a Hugging Face model directory (config.json +\n"
    "            model.safetensors, F32), loadable by transformers' LlamaForCausalLM etc.\n"
    "\n"
    "options:\n"
    "  --model PATH      checkpoint: a Hugging Face model directory or a llama2.c .bin file (required)\n"
    "  --tokenizer PATH  llama2.c tokenizer .bin (required for demo and generate)\n"
    "  --text PATH       demo: one sentence per line (required for demo)\n"
    "  --out DIR         convert: output directory (required for convert)\n"
    "  --steps N         generate: number of tokens to generate (default 255, what llama2.c's\n"
    "                    run.c prints with -n 256: its step count includes the BOS position)\n"
    "  -h, --help        this text\n"
    "\n"
    "Runs on the CPU backend (fp32 reference ops, OpenBLAS + OpenMP).\n";

struct Args {
  std::string command, model, tokenizer, text, out;
  int steps = 255;
};

Args parse_args(int argc, char** argv) {
  Args a;
  if (argc < 2) throw std::invalid_argument("missing command");
  a.command = argv[1];
  if (a.command == "-h" || a.command == "--help") throw std::invalid_argument("");
  std::map<std::string, std::string*> strings = {
      {"--model", &a.model}, {"--tokenizer", &a.tokenizer}, {"--text", &a.text}, {"--out", &a.out}};
  for (int i = 2; i < argc; ++i) {
    std::string key = argv[i];
    if (key == "-h" || key == "--help") throw std::invalid_argument("");
    if (i + 1 >= argc) throw std::invalid_argument("option " + key + " needs a value");
    std::string value = argv[++i];
    if (strings.count(key)) {
      *strings[key] = value;
    } else if (key == "--steps") {
      try {
        a.steps = std::stoi(value);
      } catch (const std::exception&) {
        throw std::invalid_argument("--steps needs an integer, got '" + value + "'");
      }
      if (a.steps <= 0) throw std::invalid_argument("--steps must be positive");
    } else {
      throw std::invalid_argument("unknown option " + key);
    }
  }
  if (a.command != "demo" && a.command != "generate" && a.command != "convert")
    throw std::invalid_argument("unknown command " + a.command);
  if (a.model.empty()) throw std::invalid_argument("--model is required");
  if (a.command != "convert" && a.tokenizer.empty()) throw std::invalid_argument("--tokenizer is required");
  if (a.command == "convert" && a.out.empty()) throw std::invalid_argument("--out is required for convert");
  if (a.command == "demo" && a.text.empty()) throw std::invalid_argument("--text is required for demo");
  return a;
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

int run_demo(const Args& a, l2v::Model& model, const l2v::Llama2cTokenizer& tok) {
  std::vector<std::string> sentences = read_lines(a.text);
  std::vector<std::vector<int>> encoded;
  int T = 0;
  for (const std::string& s : sentences) {
    encoded.push_back(l2v::encode(tok, s, /*bos=*/true, /*eos=*/false));
    T = std::max(T, (int)encoded.back().size());
  }
  const int B = (int)sentences.size(), C = model.config.hidden_size;
  // Right padding with a key-padding mask; the padding id is irrelevant (never attended to, never pooled).
  std::vector<int> ids((size_t)B * T, 0), mask((size_t)B * T, 0);
  for (int b = 0; b < B; ++b)
    for (size_t t = 0; t < encoded[b].size(); ++t) {
      ids[(size_t)b * T + t] = encoded[b][t];
      mask[(size_t)b * T + t] = 1;
    }
  for (int b = 0; b < B; ++b) std::printf("s%-3d (%2zu tokens) %s\n", b + 1, encoded[b].size(), sentences[b].c_str());
  for (bool causal : {true, false}) {
    l2v::ForwardOptions opt;
    opt.causal = causal;
    l2v::model_forward(model, ids.data(), mask.data(), B, T, opt);
    std::vector<float> hidden = l2v::download_floats(model, model.acts.final_hidden, (size_t)B * T * C);
    print_similarities(causal ? "causal attention (Uni)" : "bidirectional attention (Bi, untrained)",
                       mean_pool(hidden, mask, B, T, C));
  }
  return 0;
}

int run_generate(const Args& a, l2v::Model& model, const l2v::Llama2cTokenizer& tok) {
  if (model.config.bos_token_id < 0) throw std::runtime_error(a.model + ": the model config names no BOS token");
  std::vector<l2v::GreedyStep> steps = l2v::greedy_decode(model, {model.config.bos_token_id}, a.steps);
  int prev = model.config.bos_token_id;
  for (const l2v::GreedyStep& s : steps) {
    std::fputs(l2v::decode_piece(tok, prev, s.token).c_str(), stdout);
    prev = s.token;
  }
  std::printf("\n");
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  Args args;
  try {
    args = parse_args(argc, argv);
  } catch (const std::invalid_argument& e) {
    bool help = std::strlen(e.what()) == 0;
    if (!help) std::fprintf(stderr, "llm2vec: %s\n\n", e.what());
    std::fputs(kUsage, help ? stdout : stderr);
    return help ? 0 : 2;
  }
  try {
    l2v::Checkpoint ck = l2v::open_checkpoint(args.model);
    if (args.command == "convert") {
      l2v::save_hf_checkpoint(ck.config, *ck.tensors, args.out);
      std::printf("wrote %s/config.json and %s/model.safetensors (%zu tensors)\n", args.out.c_str(),
                  args.out.c_str(), ck.tensors->names().size());
      return 0;
    }
    auto backend = l2v::make_cpu_backend();
    l2v::Model model;
    l2v::load_model(model, ck.config, *ck.tensors, *backend);
    l2v::Llama2cTokenizer tok = l2v::load_llama2c_tokenizer(args.tokenizer, ck.config.vocab_size);
    std::printf("model %s: %s, %d layers, hidden %d, heads %d/%d, vocab %d (backend: %s)\n", args.model.c_str(),
                ck.config.model_type.c_str(), ck.config.num_hidden_layers, ck.config.hidden_size,
                ck.config.num_attention_heads, ck.config.num_key_value_heads, ck.config.vocab_size, backend->name());
    return args.command == "demo" ? run_demo(args, model, tok) : run_generate(args, model, tok);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "llm2vec: error: %s\n", e.what());
    return 1;
  }
}
