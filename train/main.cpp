// llm2vec: the one binary of llm2vec.cu. Each subcommand declares its options in the table at the
// bottom; `llm2vec <command> --help` prints them.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <map>
#include <set>
#include <sstream>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/file_io.h"
#include "data/gguf_tokenizer.h"
#include "data/npy.h"
#include "data/prepare.h"
#include "data/classification.h"
#include "data/clustering.h"
#include "data/retrieval.h"
#include "data/sts.h"
#include "data/tokenizer.h"
#include "host/cpu_backend.h"
#include "host/cpu_gemm_bf16.h"
#include "model/checkpoint.h"
#include "model/encoder.h"
#include "model/sentence_transformers.h"
#include "model/generate.h"
#include "model/model.h"
#include "train/bench_step.h"
#include "train/cli.h"
#include "train/comm.h"
#include "train/plan.h"
#include "train/train_config.h"
#include "train/trainer.h"

#if defined(L2V_WITH_CUDA)
#include <cuda_runtime_api.h>

#include "cuda/comm_nccl.h"
#include "cuda/cuda_backend.h"
#endif

namespace l2v {
namespace {

#if defined(L2V_WITH_CUDA)
constexpr const char* kDefaultBackend = "cuda";
#else
constexpr const char* kDefaultBackend = "cpu";
#endif

// The precision a backend runs in when none is asked for: bf16 on CUDA; on the CPU bf16 where it has
// AMX-BF16 (its bf16 embeddings sit closer to fp32 than PyTorch's bf16: scripts/check_cpu_bf16.py), else the
// fp32 reference (the portable bf16 GEMM is slower than fp32).
std::string default_precision(const std::string& backend) {
  return backend == "cuda" || cpu::amx_bf16_available() ? "bf16" : "fp32";
}

// attention_impl: "" (the backend's choice) or the cuda backend's simt | mma | cudnn.
std::unique_ptr<Backend> make_backend(const std::string& name, const std::string& precision,
                                      const std::string& attention_impl) {
  if (name == "cpu") {
    if (precision != "fp32" && precision != "bf16")
      throw UsageError("--precision for the cpu backend: fp32 or bf16, got '" + precision + "'");
    if (!attention_impl.empty())
      throw UsageError("--attention_impl chooses the cuda backend's kernels (the cpu backend has one attention)");
    if (precision == "fp32") return make_cpu_backend(CpuPrecision::kFp32);
    if (cpu::amx_bf16_available())
      std::fprintf(stderr, "note: cpu backend in bf16: base-weight GEMMs on AMX-BF16 tiles, the rest in fp32\n");
    else
      std::fprintf(stderr, "note: cpu backend in bf16 without AMX-BF16 on this CPU: the portable bf16 GEMM (the "
                           "same precision, slower than --precision fp32)\n");
    return make_cpu_backend(CpuPrecision::kBf16);
  }
  if (name == "cuda") {
#if defined(L2V_WITH_CUDA)
    return make_cuda_backend(parse_cuda_precision(precision), parse_attention_impl(attention_impl));
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
  lm.backend = make_backend(backend, o.get("--precision", default_precision(backend)),
                            o.get("--attention_impl", ""));
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
  std::ifstream in = open_input_file(path, "a text file (one sentence per line)");
  std::vector<std::string> lines;
  for (std::string line; std::getline(in, line);)
    if (!line.empty()) lines.push_back(line);
  if (lines.empty()) throw std::runtime_error(path + ": no sentences");
  return lines;
}

void normalize_rows(std::vector<float>& x, int dim) {
  for (size_t r = 0; r < x.size() / dim; ++r) {
    double s = 0.0;
    for (int c = 0; c < dim; ++c) s += (double)x[r * dim + c] * x[r * dim + c];
    const double inv = s > 0.0 ? 1.0 / std::sqrt(s) : 0.0;
    for (int c = 0; c < dim; ++c) x[r * dim + c] = (float)(x[r * dim + c] * inv);
  }
}

void print_similarities(const char* title, const std::vector<float>& emb, int n, int dim) {
  std::printf("\n%s: cosine similarity of mean-pooled embeddings\n    ", title);
  for (int j = 0; j < n; ++j) std::printf("  s%-5d", j + 1);
  std::printf("\n");
  for (int i = 0; i < n; ++i) {
    std::printf("s%-3d", i + 1);
    for (int j = 0; j < n; ++j) {
      double dot = 0.0;
      for (int c = 0; c < dim; ++c) dot += (double)emb[(size_t)i * dim + c] * emb[(size_t)j * dim + c];
      std::printf("  %+.3f", dot);
    }
    std::printf("\n");
  }
}

std::unique_ptr<Backend> backend_for(const ParsedOptions& o) {
  const std::string backend = o.get("--backend", kDefaultBackend);
  return make_backend(backend, o.get("--precision", default_precision(backend)),
                      o.get("--attention_impl", ""));
}

int run_demo(const ParsedOptions& o) {
  std::vector<EncoderInput> inputs;
  for (const std::string& s : read_lines(o.required("--text"))) inputs.push_back({"", s});
  std::unique_ptr<Backend> backend = backend_for(o);
  for (bool causal : {true, false}) {
    EncoderSpec spec;
    spec.model_name_or_path = o.required("--model");
    spec.tokenizer = o.required("--tokenizer");
    spec.bidirectional = !causal;
    Encoder enc(spec, *backend);
    if (causal)
      for (size_t i = 0; i < inputs.size(); ++i)
        std::printf("s%-3zu (%2zu tokens) %s\n", i + 1, enc.tokenizer().encode(inputs[i].text, true).size(),
                    inputs[i].text.c_str());
    std::vector<float> emb = enc.embed(inputs, (int)inputs.size(), /*progress=*/false);
    normalize_rows(emb, enc.dim());
    print_similarities(causal ? "causal attention (Uni)" : "bidirectional attention (Bi, untrained)", emb,
                       (int)inputs.size(), enc.dim());
  }
  return 0;
}

int run_generate(const ParsedOptions& o) {
  LoadedModel lm;
  load(lm, o);
  std::unique_ptr<Tokenizer> tok = load_matching_tokenizer(o.required("--tokenizer"), lm.checkpoint.config);
  const int bos = tok->bos_id() >= 0 ? tok->bos_id() : lm.checkpoint.config.bos_token_id;
  if (bos < 0) throw std::runtime_error("neither the tokenizer nor the model config names a BOS token");
  const int context = lm.checkpoint.config.max_position_embeddings;
  const int64_t steps = o.get_int("--steps", std::min(255, context - 1), 1);
  if (steps > context - 1)
    throw UsageError("--steps " + std::to_string(steps) + " exceeds the model's context: at most " +
                     std::to_string(context - 1) + " tokens follow the BOS (max_position_embeddings " +
                     std::to_string(context) + ")");
  std::vector<int> ids;
  for (const GreedyStep& s : greedy_decode(lm.model, {bos}, (int)steps)) ids.push_back(s.token);
  std::printf("%s\n", tok->decode(ids, /*skip_special_tokens=*/true).c_str());
  return 0;
}

int run_convert(const ParsedOptions& o) {
  const std::string model = o.required("--model");
  Checkpoint ck = open_checkpoint(model);
  const std::string out = o.required("--out");
  save_hf_checkpoint(ck.config, *ck.tensors, out);
  std::printf("wrote %s/config.json and %s/model.safetensors (%zu tensors)\n", out.c_str(), out.c_str(),
              ck.tensors->names().size());
  // A GGUF file carries its tokenizer: written beside the model, so the directory is complete.
  if (std::filesystem::path(model).extension() == ".gguf") {
    const GgufFile gguf(model);
    if (gguf_has_tokenizer(gguf)) {
      const HfTokenizerFiles tok = gguf_tokenizer(gguf);
      write_file_atomic(out + "/tokenizer.json", tok.tokenizer.dump(2) + "\n");
      write_file_atomic(out + "/tokenizer_config.json", tok.config.dump(2) + "\n");
      std::printf("wrote %s/tokenizer.json and tokenizer_config.json (%zu tokens) from the GGUF metadata\n", out.c_str(),
                  tok.tokenizer.at("model").at("vocab").size());
    } else {
      std::printf("%s holds no tokenizer: give --tokenizer to the commands that use %s\n", model.c_str(), out.c_str());
    }
  }
  return 0;
}

int run_prepare_command(const ParsedOptions& o) {
  std::unique_ptr<Tokenizer> tok = load_tokenizer(o.required("--tokenizer"));
  PrepareOptions opt;
  std::stringstream inputs(o.required("--input"));
  for (std::string item; std::getline(inputs, item, ',');)
    if (!item.empty()) opt.inputs.push_back(item);
  opt.output_prefix = o.required("--out");
  const std::string format = o.get("--format", "wikitext");
  if (format == "sick") {
    // SICK's TRAIN split turned into (premise, entailed, contradicted) triples, kept next to the shards.
    std::vector<SickTriple> triples;
    for (const std::string& in : opt.inputs) {
      std::vector<SickTriple> t = sick_triples(read_sick(in, "TRAIN"));
      triples.insert(triples.end(), t.begin(), t.end());
    }
    const std::string jsonl = opt.output_prefix + "-triples.jsonl";
    write_supervised_jsonl(triples, jsonl, o.get("--instruction", ""), "sick");
    std::printf("%zu SICK TRAIN triples -> %s\n", triples.size(), jsonl.c_str());
    opt.inputs = {jsonl};
    opt.format = PrepareFormat::kSupervised;
  } else {
    if (o.has("--instruction")) throw UsageError("--instruction applies to --format sick only");
    opt.format = parse_prepare_format(format);
  }
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

// ---- train ----

std::vector<OptionSpec> train_options() {
  std::vector<OptionSpec> spec = {{"--config", "PATH", "JSON config (llm2vec train_configs style); options below override it"}};
  for (const ConfigKey& k : train_config_keys()) {
    const char* value = k.type == 'i' ? "N" : k.type == 'f' ? "X" : k.type == 'b' ? "true|false" : k.type == 'l' ? "A,B" : "S";
    std::string help = k.help;
    if (!k.fallback.is_null()) {
      const std::string d = k.fallback.is_string() ? k.fallback.get<std::string>() : k.fallback.dump();
      if (!d.empty() && d != "[]" && help.find("default") == std::string::npos) help += " (default " + d + ")";
    }
    spec.push_back({"--" + k.name, value, help});
  }
  return spec;
}

// train's options as plan and bench-step read them: the data, tokenizer and output paths unused.
std::vector<OptionSpec> options_without_data(const std::string& command) {
  std::vector<OptionSpec> spec = train_options();
  for (OptionSpec& o : spec)
    if (o.name == "--dataset_file_path" || o.name == "--output_dir" || o.name == "--tokenizer")
      o.help = "not used by " + command;
  return spec;
}

// The communicator of this process: MPI (CPU backend) or NCCL (cuda backend) when started by mpirun or
// srun, else a single process. The cuda backend's device is chosen here, before the backend exists:
// the node-local rank's GPU.
std::unique_ptr<Comm> make_comm(const std::string& backend_name) {
  if (!launched_by_mpi()) return make_single_process_comm();
  std::unique_ptr<Comm> mpi = make_mpi_comm();
  // The ranks of a node share its cores: without OMP_NUM_THREADS, each takes its share (the CPU backend's
  // OpenMP loops; omp_get_num_procs counts the cores this rank may run on, which mpirun's binding limits).
  if (!std::getenv("OMP_NUM_THREADS"))
    omp_set_num_threads(std::max(1, omp_get_num_procs() / std::max(1, mpi->local_size())));
#if defined(L2V_WITH_CUDA)
  if (backend_name == "cuda") return make_nccl_comm(std::move(mpi));
#endif
  (void)backend_name;
  return mpi;
}

// train's and plan's --key value options as config overrides (names without the dashes).
std::vector<std::pair<std::string, std::string>> config_overrides(const ParsedOptions& o) {
  std::vector<std::pair<std::string, std::string>> overrides;
  for (const auto& [name, value] : o.values)
    if (name != "--config") overrides.push_back({name.substr(2), value});
  return overrides;
}

int run_train(const ParsedOptions& o) {
  const std::vector<std::pair<std::string, std::string>> overrides = config_overrides(o);
  std::vector<std::string> notes;
  TrainConfig cfg;
  std::string config_error;  // under mpirun: reported once, by rank 0, below
  try {
    cfg = load_train_config(o.get("--config", ""), overrides, &notes);
  } catch (const std::exception& e) {
    if (!launched_by_mpi()) throw;
    config_error = e.what();
  }
  const std::string backend_name = cfg.backend.empty() ? kDefaultBackend : cfg.backend;
  std::unique_ptr<Comm> comm = make_comm(config_error.empty() ? backend_name : "cpu");
  try {
    if (!config_error.empty()) throw SameOnEveryRank(config_error);
    if (comm->rank() == 0)
      for (const std::string& n : notes) std::printf("note: %s\n", n.c_str());
    std::unique_ptr<Backend> backend = make_backend(
        backend_name, !cfg.precision.empty() ? cfg.precision : default_precision(backend_name),
        cfg.attention_impl);
    TrainResult r = run_training(cfg, *backend, {}, comm.get());
    return r.interrupted ? 130 : 0;
  } catch (const std::exception& e) {
    if (comm->world_size() == 1) throw;
    fail_rank(*comm, "llm2vec train", e);
  }
}

// ---- plan, bench-step ----

// plan's and bench-step's configuration: train's keys; the data and output paths are not needed.
TrainConfig config_without_data(const ParsedOptions& o, const std::string& command) {
  std::vector<std::pair<std::string, std::string>> overrides = config_overrides(o);
  const std::string unused = "(not used by " + command + ")";
  if (!o.has("--dataset_file_path")) overrides.push_back({"dataset_file_path", unused});
  if (!o.has("--output_dir")) overrides.push_back({"output_dir", unused});
  return load_train_config(o.get("--config", ""), overrides, nullptr);
}

// The configuration of a model directory (its config.json), a config.json, or a checkpoint file.
ModelConfig model_config_of(const std::string& path) {
  if (std::filesystem::is_directory(path)) return load_hf_config(path + "/config.json");
  if (path.size() > 5 && path.rfind(".json") == path.size() - 5) return load_hf_config(path);
  return open_checkpoint(path).config;
}

// `llm2vec plan`: the memory plan of a training configuration (train/plan.h), from the model's
// config.json alone. The options are train's; the data and output paths are not needed.
int run_plan(const ParsedOptions& o) {
  const TrainConfig cfg = config_without_data(o, "plan");
  const std::string& path = cfg.model_name_or_path;
  const ModelConfig mc = model_config_of(path);
  const bool cuda = (cfg.backend.empty() ? std::string("cuda") : cfg.backend) == "cuda";
  const size_t tensor_bytes = cuda && cfg.precision != "fp32" ? 2 : 4;
  // The CPU in bf16 (asked for, or its default on this CPU) keeps bf16 tiles of the weights beside them.
  const bool cpu_bf16_tiles =
      !cuda && (!cfg.precision.empty() ? cfg.precision : default_precision("cpu")) == "bf16";
  double budget = cfg.gpu_memory_gb;
  std::string budget_note;
  if (budget <= 0 && cuda) {
    budget = 80.0;
    budget_note = " (an H100's 80 GB; --gpu_memory_gb sets another)";
#if defined(L2V_WITH_CUDA)
    size_t free_bytes = 0, total_bytes = 0;
    if (cudaMemGetInfo(&free_bytes, &total_bytes) == cudaSuccess) {
      budget = total_bytes / 1e9;
      budget_note = " (this GPU's)";
    } else {
      cudaGetLastError();
    }
#endif
  }
  TrainConfig planned = cfg;
  planned.gpu_memory_gb = budget;
  MemoryPlan plan;
  std::string refusal;
  try {
    choose_recompute_layers(planned, mc, cuda, tensor_bytes, cpu_bf16_tiles, &plan);
  } catch (const std::runtime_error& e) {
    refusal = e.what();
  }
  std::printf("plan: %s (%d layers, hidden %d, MLP %d, %d heads / %d KV, vocab %d), %s, %d x %d tokens per forward, "
              "LoRA r=%d, %s on the %s backend, budget %.2f GB%s\n",
              path.c_str(), mc.num_hidden_layers, mc.hidden_size, mc.intermediate_size, mc.num_attention_heads,
              mc.num_key_value_heads, mc.vocab_size, stage_name(cfg.stage), plan_inputs(cfg, mc, cuda, tensor_bytes, cpu_bf16_tiles).rows,
              cfg.max_seq_length, cfg.lora.r, tensor_bytes == 2 ? "bf16" : cpu_bf16_tiles ? "bf16 GEMMs" : "fp32",
              cuda ? "cuda" : "cpu", budget,
              budget_note.c_str());
  std::fputs(format_plan(plan, mc, budget).c_str(), stdout);
  if (!refusal.empty()) std::printf("does not fit: %s\n", refusal.c_str());
  return refusal.empty() ? 0 : 1;
}

// `llm2vec bench-step`: MNTP steps of a configuration at its real size with random weights and tokens
// (train/bench_step.h); --max_steps timed steps (default 5) after a first one.
int run_bench_step(const ParsedOptions& o) {
  const TrainConfig cfg = config_without_data(o, "bench-step");
  const ModelConfig mc = model_config_of(cfg.model_name_or_path);
  const std::string backend_name = cfg.backend.empty() ? kDefaultBackend : cfg.backend;
  std::unique_ptr<Backend> backend = make_backend(
      backend_name, !cfg.precision.empty() ? cfg.precision : default_precision(backend_name),
      cfg.attention_impl);
  const int steps = o.has("--max_steps") ? cfg.max_steps : 5;
  std::printf("bench-step: %s (%d layers, hidden %d, MLP %d, %d heads / %d KV, vocab %d) with random weights, "
              "MNTP %d x %d tokens, %s attention, LoRA r=%d, %s, 1 + %d steps\n",
              cfg.model_name_or_path.c_str(), mc.num_hidden_layers, mc.hidden_size, mc.intermediate_size,
              mc.num_attention_heads, mc.num_key_value_heads, mc.vocab_size, cfg.batch_size, cfg.max_seq_length,
              cfg.bidirectional ? "bidirectional" : "causal", cfg.lora.r, backend->name(), steps);
  std::fflush(stdout);
  const BenchStepResult r = bench_steps(cfg, mc, *backend, steps, true);
  const double ms = r.median_ms();
  char mfu[96] = "";
  if (backend->peak_flops() > 0)
    std::snprintf(mfu, sizeof mfu, ", MFU %.1f%% of %.0f TFLOP/s", 100.0 * r.model_flops / (ms * 1e-3) / backend->peak_flops(),
                  backend->peak_flops() / 1e12);
  std::printf("median %.1f ms/step over %zu steps (first %.1f ms): %.0f tokens/s, %.1f model TFLOP/s%s; %.3g model "
              "FLOPs per step, %.3g executed (%d of %d layers recomputed)\n",
              ms, r.step_ms.size(), r.first_ms, r.tokens_per_step / (ms * 1e-3), r.model_flops / (ms * 1e-3) / 1e12, mfu,
              r.model_flops, r.executed_flops, r.recompute_layers, mc.num_hidden_layers);
  if (!backend->is_host_memory()) {
    if (cfg.cuda_graphs)
      std::printf("CUDA graphs: %ld launched (%ld instantiated, %ld updated in place), %ld captures abandoned and run "
                  "directly\n",
                  r.graphs.launches, r.graphs.instantiations, r.graphs.updates, r.graphs.broken);
    else
      std::printf("CUDA graphs: off (--cuda_graphs false)\n");
  }
  return 0;
}

// ---- embed / eval ----

EncoderSpec encoder_spec(const ParsedOptions& o) {
  const std::string model = o.required("--model");
  EncoderSpec spec;
  if (has_encoder_spec(model)) {
    spec = read_encoder_spec(model);
  } else {
    spec.model_name_or_path = model;
    spec.tokenizer = model;
  }
  if (o.has("--tokenizer")) spec.tokenizer = o.required("--tokenizer");
  if (o.has("--peft")) {
    spec.adapters.clear();
    std::stringstream list(o.required("--peft"));
    for (std::string item; std::getline(list, item, ',');)
      if (!item.empty()) spec.adapters.push_back(item);
  }
  if (o.has("--pooling_mode")) spec.pooling = parse_pooling_mode(o.required("--pooling_mode"));
  if (spec.pooling == PoolingMode::kLatentAttention && spec.pooling_head.empty())
    throw UsageError("latent_attention pooling needs a trained output directory as --model");
  if (o.has("--causal")) spec.bidirectional = false;
  if (o.has("--max_length")) spec.max_length = (int)o.get_int("--max_length", 512, 1);
  if (o.has("--no-skip-instruction")) spec.skip_instruction = false;
  if (spec.tokenizer == spec.model_name_or_path && std::filesystem::is_regular_file(spec.model_name_or_path))
    throw UsageError("a llama2.c checkpoint holds no tokenizer: give --tokenizer");
  return spec;
}

// "max_length 64: 3 of 5001 sentences truncated to their first 64 tokens (--max_length sets another)".
std::string truncation_line(const EmbedStats& s, const char* what) {
  return "max_length " + std::to_string(s.max_length) + ": " + std::to_string(s.truncated) + " of " +
         std::to_string(s.texts) + " " + what + " truncated" +
         (s.truncated ? " to their first " + std::to_string(s.max_length) + " tokens (--max_length sets another)"
                      : std::string());
}

int run_export(const ParsedOptions& o) {
  const std::string format = o.required("--format");
  if (format != "sentence-transformers")
    throw UsageError("--format " + format + ": the one format is sentence-transformers");
  const EncoderSpec spec = encoder_spec(o);
  SentenceTransformersOptions opt;
  opt.query_instruction = o.get("--query_instruction", "");
  const std::string out = o.required("--out");
  const SentenceTransformersExport result = export_sentence_transformers(spec, opt, out);
  std::printf("wrote %s: a sentence-transformers model (%s pooling, %s attention, max_seq_length %d%s)\n",
              out.c_str(), pooling_mode_name(spec.pooling), spec.bidirectional ? "bidirectional" : "causal",
              result.max_seq_length, opt.query_instruction.empty() ? "" : ", query prompt");
  for (const std::string& d : result.differences)
    std::fprintf(stderr, "note: the library's embeddings will differ from embed's: %s\n", d.c_str());
  return 0;
}

int run_embed(const ParsedOptions& o) {
  const EncoderSpec spec = encoder_spec(o);
  const std::string input = o.required("--input"), output = o.required("--output");
  const bool jsonl = output.size() > 6 && output.substr(output.size() - 6) == ".jsonl";
  if (!jsonl && !(output.size() > 4 && output.substr(output.size() - 4) == ".npy"))
    throw UsageError("--output must end in .npy or .jsonl");
  const bool with_instructions = o.has("--instructions");
  std::vector<EncoderInput> inputs;
  {
    std::ifstream file;
    if (input != "-") file = open_input_file(input, "a text file (one text per line)");
    std::istream& in = input == "-" ? std::cin : file;
    size_t line_no = 0;
    for (std::string line; std::getline(in, line);) {
      ++line_no;
      if (!line.empty() && line.back() == '\r') line.pop_back();
      if (line.empty()) throw std::runtime_error(input + ":" + std::to_string(line_no) + ": empty line (one text per line)");
      EncoderInput e;
      const size_t tab = line.find('\t');
      if (with_instructions) {
        if (tab == std::string::npos)
          throw std::runtime_error(input + ":" + std::to_string(line_no) + ": expected instruction<TAB>text");
        e.instruction = line.substr(0, tab);
        e.text = line.substr(tab + 1);
      } else {
        e.text = line;
      }
      inputs.push_back(std::move(e));
    }
  }
  if (inputs.empty()) throw std::runtime_error(input + ": no texts");
  std::unique_ptr<Backend> backend = backend_for(o);
  Encoder enc(spec, *backend, !o.has("--no-cuda-graphs"));
  EmbedStats stats;
  std::vector<float> emb = enc.embed(inputs, (int)o.get_int("--batch-size", 16, 1), !o.has("--quiet"), &stats);
  std::fprintf(stderr, "%s\n", truncation_line(stats, "texts").c_str());
  if (o.has("--normalize")) normalize_rows(emb, enc.dim());
  if (jsonl) {
    std::string text;
    for (size_t i = 0; i < inputs.size(); ++i) {
      nlohmann::json j = {{"text", inputs[i].text},
                          {"embedding", std::vector<float>(emb.begin() + i * enc.dim(), emb.begin() + (i + 1) * enc.dim())}};
      if (!inputs[i].instruction.empty()) j["instruction"] = inputs[i].instruction;
      text += j.dump() + "\n";
    }
    write_file_atomic(output, text);
  } else {
    write_npy_f32(output, emb.data(), inputs.size(), enc.dim());
  }
  std::fprintf(stderr, "wrote %zu embeddings of dimension %d to %s\n", inputs.size(), enc.dim(), output.c_str());
  return 0;
}

int run_eval_sts(const ParsedOptions& o) {
  const EncoderSpec spec = encoder_spec(o);
  const std::string data = o.required("--data");
  const std::string format = o.has("--format") ? o.required("--format") : sts_format_of(data);
  const std::string split = o.get("--split", "TEST");
  std::vector<StsPair> pairs;
  if (format == "sick") pairs = read_sick(data, split);
  else if (format == "tsv") pairs = read_sts_tsv(data);
  else throw UsageError("--format must be sick or tsv");
  std::unique_ptr<Backend> backend = backend_for(o);
  Encoder enc(spec, *backend, !o.has("--no-cuda-graphs"));
  // Each distinct sentence is embedded once.
  std::map<std::string, size_t> index;
  std::vector<EncoderInput> inputs;
  for (const StsPair& p : pairs)
    for (const std::string* s : {&p.a, &p.b})
      if (index.emplace(*s, inputs.size()).second) inputs.push_back({"", *s});
  EmbedStats stats;
  std::vector<float> emb = enc.embed(inputs, (int)o.get_int("--batch-size", 32, 1), !o.has("--quiet"), &stats);
  normalize_rows(emb, enc.dim());
  std::vector<double> cosine, gold;
  for (const StsPair& p : pairs) {
    const float* a = &emb[index[p.a] * enc.dim()];
    const float* b = &emb[index[p.b] * enc.dim()];
    double dot = 0.0;
    for (int c = 0; c < enc.dim(); ++c) dot += (double)a[c] * b[c];
    cosine.push_back(dot);
    gold.push_back(p.score);
  }
  const double rho = spearman(cosine, gold);
  const std::string name = format == "sick" ? "SICK-R (" + split + ")" : data;
  std::printf("%s: %zu pairs, %zu sentences, Spearman %.4f\n", name.c_str(), pairs.size(), inputs.size(), rho);
  std::printf("%s\n", truncation_line(stats, "sentences").c_str());
  if (o.has("--json-out")) {
    nlohmann::json j = {{"data", data}, {"split", split}, {"pairs", pairs.size()}, {"spearman", rho},
                        {"model", o.required("--model")}, {"pooling_mode", pooling_mode_name(spec.pooling)},
                        {"bidirectional", spec.bidirectional}, {"max_length", stats.max_length},
                        {"truncated", stats.truncated}};
    write_file_atomic(o.required("--json-out"), j.dump(2) + "\n");
  }
  return 0;
}

int run_eval_clustering(const ParsedOptions& o) {
  const EncoderSpec spec = encoder_spec(o);
  const std::string data = o.required("--data");
  const std::vector<LabelledText> texts = read_labelled_jsonl(data);
  std::map<std::string, int> label_of;
  const std::vector<int> truth = label_ids(texts, &label_of);
  const int classes = (int)label_of.size();
  const int k = (int)o.get_int("--clusters", classes, 1);
  if (k > (int)texts.size())
    throw UsageError("--clusters " + std::to_string(k) + " exceeds the " + std::to_string(texts.size()) + " texts");
  const int n_init = (int)o.get_int("--n_init", 10, 1);
  const uint64_t seed = (uint64_t)o.get_int("--seed", 42, 0);
  const bool quiet = o.has("--quiet");
  std::unique_ptr<Backend> backend = backend_for(o);
  Encoder enc(spec, *backend, !o.has("--no-cuda-graphs"));
  std::vector<EncoderInput> inputs;
  for (const LabelledText& t : texts) inputs.push_back({o.get("--instruction", ""), t.text});
  EmbedStats stats;
  const std::vector<float> emb = enc.embed(inputs, (int)o.get_int("--batch-size", 32, 1), !quiet, &stats);
  if (!quiet)
    std::fprintf(stderr, "k-means: %zu texts into %d clusters, best of %d seedings\n", texts.size(), k, n_init);
  const KMeansResult km = kmeans(emb.data(), (int)texts.size(), enc.dim(), k, n_init, 300, seed);
  const ClusterScores s = cluster_scores(truth, km.assignment);
  std::printf("%s: %zu texts, %d labels, %d clusters: V-measure %.4f (homogeneity %.4f, completeness %.4f)\n",
              data.c_str(), texts.size(), classes, k, s.v_measure, s.homogeneity, s.completeness);
  std::printf("%s\n", truncation_line(stats, "texts").c_str());
  if (o.has("--json-out")) {
    nlohmann::json j = {{"data", data}, {"texts", texts.size()}, {"labels", classes}, {"clusters", k},
                        {"v_measure", s.v_measure}, {"homogeneity", s.homogeneity},
                        {"completeness", s.completeness}, {"inertia", km.inertia}, {"n_init", n_init},
                        {"seed", seed}, {"model", o.required("--model")},
                        {"pooling_mode", pooling_mode_name(spec.pooling)}, {"bidirectional", spec.bidirectional},
                        {"max_length", stats.max_length}, {"truncated", stats.truncated}};
    write_file_atomic(o.required("--json-out"), j.dump(2) + "\n");
  }
  return 0;
}

int run_eval_retrieval(const ParsedOptions& o) {
  const EncoderSpec spec = encoder_spec(o);
  const std::string dir = o.required("--data"), split = o.get("--split", "test");
  const std::vector<BeirDoc> corpus = read_beir_corpus(dir + "/corpus.jsonl");
  const std::vector<BeirQuery> all_queries = read_beir_queries(dir + "/queries.jsonl");
  const Qrels qrels = read_beir_qrels(dir + "/qrels/" + split + ".tsv");
  // The queries judged in the split, in the order of queries.jsonl.
  std::vector<BeirQuery> queries;
  std::set<std::string> known;
  for (const BeirQuery& q : all_queries) {
    known.insert(q.id);
    if (qrels.count(q.id)) queries.push_back(q);
  }
  for (const auto& [qid, rel] : qrels)
    if (!known.count(qid))
      throw std::runtime_error(dir + "/qrels/" + split + ".tsv: query " + qid + " is not in queries.jsonl");
  std::map<std::string, int> doc_index;
  std::vector<EncoderInput> doc_inputs, query_inputs;
  for (const BeirDoc& d : corpus) {
    doc_index[d.id] = (int)doc_inputs.size();
    // BEIR's and MTEB's document text: the title, a space, the text (stripped of surrounding blanks).
    std::string text = d.title.empty() ? d.text : d.text.empty() ? d.title : d.title + " " + d.text;
    text.erase(0, text.find_first_not_of(" \t\n"));
    text.erase(text.find_last_not_of(" \t\n") + 1);
    doc_inputs.push_back({"", text});
  }
  for (const BeirQuery& q : queries) query_inputs.push_back({o.get("--query_instruction", ""), q.text});
  const bool quiet = o.has("--quiet");
  const int batch = (int)o.get_int("--batch-size", 32, 1);
  std::unique_ptr<Backend> backend = backend_for(o);
  Encoder enc(spec, *backend, !o.has("--no-cuda-graphs"));
  // The corpus's embeddings are cached under a fingerprint of the encoder (weights' contents, pooling,
  // attention, max_length, backend precision) and of the documents' texts.
  const std::string cache_dir = o.has("--no-cache") ? "" : o.get("--cache_dir", dir + "/llm2vec_cache");
  std::string cache;
  if (!cache_dir.empty()) {
    std::string texts;
    for (const EncoderInput& d : doc_inputs) texts += d.text + '\0';
    const uint64_t key = encoder_fingerprint(enc.spec(), backend->name()) ^ checksum64(texts.data(), texts.size());
    cache = cache_dir + "/corpus-" + checksum_hex(key).substr(2);
  }
  EmbedStats doc_stats, query_stats;
  std::vector<float> doc_emb;
  if (!cache.empty() && std::filesystem::is_regular_file(cache + ".npy") &&
      std::filesystem::is_regular_file(cache + ".json")) {
    size_t rows = 0, cols = 0;
    doc_emb = read_npy_f32(cache + ".npy", &rows, &cols);
    const nlohmann::json stats = read_json_file(cache + ".json", "the cached corpus's statistics");
    if (rows != doc_inputs.size() || cols != (size_t)enc.dim())
      throw std::runtime_error(cache + ".npy: holds " + std::to_string(rows) + " x " + std::to_string(cols) +
                               " embeddings, not " + std::to_string(doc_inputs.size()) + " x " +
                               std::to_string(enc.dim()) + ": remove it (or pass --no-cache)");
    doc_stats.texts = rows;
    doc_stats.max_length = stats.at("max_length").get<int>();
    doc_stats.truncated = stats.at("truncated").get<size_t>();
    if (!quiet) std::fprintf(stderr, "corpus embeddings from the cache: %s.npy\n", cache.c_str());
  } else {
    if (!quiet) std::fprintf(stderr, "embedding %zu documents\n", doc_inputs.size());
    doc_emb = enc.embed(doc_inputs, batch, !quiet, &doc_stats);
    if (!cache.empty()) {
      std::filesystem::create_directories(cache_dir);
      write_npy_f32(cache + ".npy", doc_emb.data(), doc_inputs.size(), enc.dim());
      write_file_atomic(cache + ".json", nlohmann::json({{"max_length", doc_stats.max_length},
                                                         {"truncated", doc_stats.truncated},
                                                         {"documents", doc_inputs.size()},
                                                         {"model", o.required("--model")}})
                                             .dump(2) +
                                             "\n");
      if (!quiet) std::fprintf(stderr, "cached the corpus embeddings in %s.npy\n", cache.c_str());
    }
  }
  if (!quiet) std::fprintf(stderr, "embedding %zu queries\n", query_inputs.size());
  const std::vector<float> query_emb = enc.embed(query_inputs, batch, !quiet, &query_stats);
  // A document with the query's own id is never its result (MTEB's ignore_identical_ids).
  std::vector<int> exclude;
  for (const BeirQuery& q : queries) {
    const auto it = doc_index.find(q.id);
    exclude.push_back(it == doc_index.end() ? -1 : it->second);
  }
  const auto top = top_k_cosine(query_emb, doc_emb, enc.dim(), 100, exclude);
  RetrievalScores mean;
  for (size_t i = 0; i < queries.size(); ++i) {
    std::vector<std::pair<std::string, double>> ranked;
    for (const auto& [doc, sim] : top[i]) ranked.push_back({corpus[doc].id, sim});
    const RetrievalScores s = score_query(qrels.at(queries[i].id), ranked);
    mean.ndcg10 += s.ndcg10 / queries.size();
    mean.mrr10 += s.mrr10 / queries.size();
    mean.recall100 += s.recall100 / queries.size();
    mean.map100 += s.map100 / queries.size();
  }
  std::printf("%s (%s): %zu queries, %zu documents: nDCG@10 %.4f, MRR@10 %.4f, Recall@100 %.4f, MAP@100 %.4f\n",
              dir.c_str(), split.c_str(), queries.size(), corpus.size(), mean.ndcg10, mean.mrr10, mean.recall100,
              mean.map100);
  std::printf("documents: %s\nqueries: %s\n", truncation_line(doc_stats, "documents").c_str(),
              truncation_line(query_stats, "queries").c_str());
  if (o.has("--json-out")) {
    nlohmann::json j = {{"data", dir}, {"split", split}, {"queries", queries.size()}, {"documents", corpus.size()},
                        {"ndcg@10", mean.ndcg10}, {"mrr@10", mean.mrr10}, {"recall@100", mean.recall100},
                        {"map@100", mean.map100}, {"model", o.required("--model")},
                        {"pooling_mode", pooling_mode_name(spec.pooling)}, {"bidirectional", spec.bidirectional},
                        {"max_length", doc_stats.max_length}, {"truncated_documents", doc_stats.truncated},
                        {"truncated_queries", query_stats.truncated}};
    write_file_atomic(o.required("--json-out"), j.dump(2) + "\n");
  }
  return 0;
}

int run_eval_classification(const ParsedOptions& o) {
  const EncoderSpec spec = encoder_spec(o);
  const std::string train_path = o.required("--train"), test_path = o.required("--test");
  const std::vector<LabelledText> train = read_labelled_jsonl(train_path), test = read_labelled_jsonl(test_path);
  std::map<std::string, int> label_of;
  const std::vector<int> train_y = label_ids(train, &label_of);
  const int classes = (int)label_of.size();
  const std::vector<int> test_y = label_ids(test, &label_of);
  for (size_t i = 0; i < test.size(); ++i)
    if (test_y[i] >= classes)
      throw std::runtime_error(test_path + ": label '" + test[i].label + "' is not in " + train_path);
  const int per_label = (int)o.get_int("--samples_per_label", 8, 1);
  const int experiments = (int)o.get_int("--n_experiments", 10, 1);
  const uint64_t seed = (uint64_t)o.get_int("--seed", 42, 0);
  const bool quiet = o.has("--quiet");
  // The training texts of every experiment, embedded once.
  std::vector<std::vector<int>> samples;
  std::map<int, int> row_of;  // training index -> row of the embedded training texts
  std::vector<EncoderInput> train_inputs, test_inputs;
  const std::string instruction = o.get("--instruction", "");
  for (int e = 0; e < experiments; ++e) {
    samples.push_back(undersample(train_y, per_label, seed + (uint64_t)e));
    for (int i : samples.back())
      if (row_of.emplace(i, (int)train_inputs.size()).second) train_inputs.push_back({instruction, train[i].text});
  }
  for (const LabelledText& t : test) test_inputs.push_back({instruction, t.text});
  std::unique_ptr<Backend> backend = backend_for(o);
  Encoder enc(spec, *backend, !o.has("--no-cuda-graphs"));
  const int batch = (int)o.get_int("--batch-size", 32, 1), dim = enc.dim();
  if (!quiet) std::fprintf(stderr, "embedding %zu training texts (the union of %d samples)\n", train_inputs.size(), experiments);
  EmbedStats train_stats, test_stats;
  const std::vector<float> train_emb = enc.embed(train_inputs, batch, !quiet, &train_stats);
  if (!quiet) std::fprintf(stderr, "embedding %zu test texts\n", test_inputs.size());
  const std::vector<float> test_emb = enc.embed(test_inputs, batch, !quiet, &test_stats);
  std::vector<ClassificationScores> runs;
  int max_iterations = 0;
  for (int e = 0; e < experiments; ++e) {
    std::vector<float> x;
    std::vector<int> y;
    for (int i : samples[e]) {
      x.insert(x.end(), train_emb.begin() + (size_t)row_of[i] * dim, train_emb.begin() + (size_t)(row_of[i] + 1) * dim);
      y.push_back(train_y[i]);
    }
    const LogisticRegression model = fit_logistic_regression(x.data(), y, dim, classes);
    max_iterations = std::max(max_iterations, model.iterations);
    std::vector<int> pred;
    for (size_t i = 0; i < test.size(); ++i) pred.push_back(model.predict(test_emb.data() + i * dim));
    runs.push_back(classification_scores(test_y, pred));
    if (!quiet)
      std::fprintf(stderr, "experiment %d/%d: accuracy %.4f, macro-F1 %.4f (%d Newton iterations)\n", e + 1, experiments,
                   runs.back().accuracy, runs.back().macro_f1, model.iterations);
  }
  auto mean_std = [&](double ClassificationScores::*field) {
    double mean = 0.0, var = 0.0;
    for (const ClassificationScores& r : runs) mean += r.*field / runs.size();
    for (const ClassificationScores& r : runs) var += (r.*field - mean) * (r.*field - mean) / runs.size();
    return std::make_pair(mean, std::sqrt(var));
  };
  const auto [acc, acc_std] = mean_std(&ClassificationScores::accuracy);
  const auto [f1, f1_std] = mean_std(&ClassificationScores::macro_f1);
  std::printf("%s: %zu test texts, %d labels, %d experiments of %d training texts per label: accuracy %.4f (std %.4f), "
              "macro-F1 %.4f (std %.4f)\n",
              test_path.c_str(), test.size(), classes, experiments, per_label, acc, acc_std, f1, f1_std);
  std::printf("training texts: %s\ntest texts: %s\n", truncation_line(train_stats, "texts").c_str(),
              truncation_line(test_stats, "texts").c_str());
  if (o.has("--json-out")) {
    nlohmann::json j = {{"train", train_path}, {"test", test_path}, {"labels", classes}, {"test_texts", test.size()},
                        {"samples_per_label", per_label}, {"n_experiments", experiments}, {"seed", seed},
                        {"accuracy", acc}, {"accuracy_std", acc_std}, {"f1", f1}, {"f1_std", f1_std},
                        {"max_newton_iterations", max_iterations}, {"model", o.required("--model")},
                        {"pooling_mode", pooling_mode_name(spec.pooling)}, {"bidirectional", spec.bidirectional},
                        {"max_length", test_stats.max_length},
                        {"truncated", train_stats.truncated + test_stats.truncated}};
    write_file_atomic(o.required("--json-out"), j.dump(2) + "\n");
  }
  return 0;
}

struct Command {
  const char* name;
  const char* summary;
  std::vector<OptionSpec> options;
  int (*run)(const ParsedOptions&);
};

const OptionSpec kModel{"--model", "PATH", "checkpoint: a Hugging Face model directory, a llama2.c .bin file or a .gguf file"};
const OptionSpec kTokenizer{"--tokenizer", "PATH",
                            "tokenizer.json, a directory holding one, or a llama2.c tokenizer .bin"};
const OptionSpec kBackend{"--backend", "NAME", std::string("cpu or cuda (default ") + kDefaultBackend + ")"};
const OptionSpec kPrecision{"--precision", "P",
                            "bf16 or fp32. cuda: storage of activations and base weights (default bf16,\n"
                            "fp32 accumulation). cpu: bf16 runs the base-weight GEMMs and attention's\n"
                            "products on bf16 inputs with fp32 accumulation (AMX-BF16), the rest in fp32;\n"
                            "fp32 is the bit-reproducible reference (default: bf16 where the CPU has\n"
                            "AMX-BF16, else fp32)"};
const OptionSpec kAttentionImpl{"--attention_impl", "I",
                                "cuda attention kernels: simt | mma (tensor cores: bf16, head dim 16, 64\n"
                                "or 128) | cudnn (cuDNN SDPA: bf16, builds with cuDNN; left/right key padding\n"
                                "only; its own dropout RNG, unlike the CPU reference's) (default: the fastest of\n"
                                "simt/mma that supports the case, printed at start)"};

// The options that name a model for embedding and its settings (see encoder_spec).
std::vector<OptionSpec> encoder_model_options() {
  return {
      {"--model", "PATH", "an `llm2vec train` output directory, or a base checkpoint"},
      {"--tokenizer", "PATH", "tokenizer (default: from the output directory / the model directory)"},
      {"--peft", "DIRS", "comma-separated adapters merged in order (replaces the directory's chain)"},
      {"--pooling_mode", "MODE", "mean | weighted_mean | eos_token | last_token | bos_token (default: trained)"},
      {"--causal", "", "causal attention (default: the trained setting; bidirectional for a base model)"},
      {"--max_length", "N", "truncate texts to N tokens (default 512 as llm2vec, or the model's context when smaller; not the "
       "trained max_seq_length)"}};
}

// The options of the commands that load a model for embedding, then `own`.
std::vector<OptionSpec> encoder_options(const std::vector<OptionSpec>& own) {
  std::vector<OptionSpec> spec = encoder_model_options();
  spec.insert(spec.end(), own.begin(), own.end());
  spec.insert(spec.end(), {{"--quiet", "", "no progress lines"}, kBackend, kPrecision, kAttentionImpl,
                            {"--no-cuda-graphs", "", "cuda: launch every kernel directly, not each batch's as one CUDA graph"}});
  return spec;
}

// export: the encoder's model options (the export's max_seq_length is --max_length, at most the model's
// context; eos_token and latent_attention are refused with the reason), the format, the output, the prompt.
std::vector<OptionSpec> export_options() {
  std::vector<OptionSpec> spec = {{"--format", "F", "sentence-transformers (the one format)"},
                                  {"--out", "DIR", "output directory (must not exist, or be empty)"}};
  for (const OptionSpec& o : encoder_model_options()) spec.push_back(o);
  spec.push_back({"--query_instruction", "TEXT", "the query prompt (prompt_name=\"query\"), as llm2vec's instruction"});
  spec.push_back({"--no-skip-instruction", "", "pool the prompt's tokens too"});
  return spec;
}

const std::vector<Command>& commands() {
  static const std::vector<Command> table = {
      {"demo",
       "embed the lines of a text file with mean pooling, once with causal and once with\n"
       "bidirectional attention (no training), and print their cosine similarities",
       {kModel, kTokenizer, {"--text", "PATH", "one sentence per line"}, kBackend, kPrecision, kAttentionImpl},
       run_demo},
      {"generate",
       "greedy decoding from BOS with causal attention",
       {kModel, kTokenizer, kBackend, kPrecision, kAttentionImpl,
        {"--steps", "N",
         "tokens to generate (default 255, what llama2.c's run.c prints with -n 256:\n"
         "its step count includes the BOS position); at most max_position_embeddings - 1"}},
       run_generate},
      {"convert",
       "write the checkpoint as a Hugging Face model directory (config.json +\n"
       "model.safetensors, F32), loadable by transformers; from a .gguf also its\n"
       "tokenizer (tokenizer.json, tokenizer_config.json)",
       {kModel, {"--out", "DIR", "output directory"}},
       run_convert},
      {"prepare",
       "tokenize raw text into shards (PREFIX-000000.bin, ...) for training",
       {kTokenizer,
        {"--input", "FILES", "comma-separated input files"},
        {"--format", "F",
         "wikitext (articles at ' = Title = ' headings; default), lines (one document\n"
         "per line), sentences (one sentence per line, SimCSE), supervised (JSONL with\n"
         "query, positive, negative, optional instruction and dataset), sick (SICK.txt:\n"
         "its TRAIN split as entailment/contradiction triples, also written to\n"
         "PREFIX-triples.jsonl)"},
        {"--out", "PREFIX", "output path prefix"},
        {"--instruction", "TEXT", "sick: the instruction given to every query (default none)"},
        {"--shard-tokens", "N", "start a new shard after N tokens (default 268435456)"},
        {"--skip-bad-lines", "", "report bad input lines and skip them (default: stop at the first)"},
        {"--quiet", "", "no progress line"}},
       run_prepare_command},
      {"train",
       "one stage of the LLM2Vec recipe (mntp, simcse, supervised) from a JSON config and\n"
       "--key value overrides; see the keys below",
       train_options(),
       run_train},
      {"plan",
       "the memory of one training step item by item (weights, adapter, optimizer,\n"
       "activations, recomputation, scratch), its FLOPs, and the least recomputation that\n"
       "fits --gpu_memory_gb; from the model's config.json and train's keys alone; status 1\n"
       "when it cannot fit",
       options_without_data("plan"),
       run_plan},
      {"bench-step",
       "the speed of MNTP training steps at a configuration's real size with random weights\n"
       "and random tokens (no checkpoint, tokenizer or data: a config.json is enough):\n"
       "ms per step, tokens/s, model TFLOP/s and MFU where the GPU's peak is known; train's\n"
       "keys, --max_steps timed steps (default 5) after a first, untimed one",
       options_without_data("bench-step"),
       run_bench_step},
      {"embed",
       "embed texts (one per line, or instruction<TAB>text with --instructions) with a\n"
       "trained model or a base checkpoint",
       encoder_options({{"--no-skip-instruction", "", "pool the instruction tokens too"},
                        {"--input", "FILE", "texts, one per line; - for stdin"},
                        {"--instructions", "", "input lines are instruction<TAB>text"},
                        {"--output", "FILE", "embeddings: .npy (float32 [n, dim]) or .jsonl"},
                        {"--normalize", "", "L2-normalise the embeddings"},
                        {"--batch-size", "N", "texts per forward pass (default 16)"}}),
       run_embed},
      {"export",
       "write a trained model (adapters merged) as a sentence-transformers directory:\n"
       "SentenceTransformer(DIR) embeds as `embed` does (see the README for what differs)",
       export_options(),
       run_export},
      {"eval sts",
       "Spearman correlation between cosine similarities and gold scores of sentence\n"
       "pairs (SICK-R and STS-style TSV)",
       encoder_options({{"--data", "FILE", "SICK.txt (or SICK_semeval2014_all.txt with --split ALL), or a TSV"},
                        {"--format", "F", "sick | tsv (sentence1<TAB>sentence2<TAB>score) (default: sick when the first\n"
                                          "line is a SICK header, else tsv)"},
                        {"--split", "S", "sick: TRAIN | TRIAL | TEST (default) | ALL"},
                        {"--json-out", "FILE", "also write the result as JSON"},
                        {"--batch-size", "N", "sentences per forward pass (default 32)"}}),
       run_eval_sts},
      {"eval clustering",
       "V-measure of k-means clusters of the texts' embeddings against their labels\n"
       "(MTEB's clustering score)",
       encoder_options({{"--data", "FILE", "JSON lines {\"text\": ..., \"label\": string or integer}"},
                        {"--instruction", "TEXT", "instruction before every text (not pooled), as llm2vec's encode"},
                        {"--clusters", "K", "number of clusters (default: the number of distinct labels)"},
                        {"--n_init", "N", "k-means++ seedings; the lowest inertia is kept (default 10)"},
                        {"--seed", "S", "seed of the seedings (default 42)"},
                        {"--json-out", "FILE", "also write the result as JSON"},
                        {"--batch-size", "N", "texts per forward pass (default 32)"}}),
       run_eval_clustering},
      {"eval retrieval",
       "nDCG@10, MRR@10, Recall@100 and MAP@100 (trec_eval's definitions) of exact\n"
       "cosine search over a BEIR-layout collection",
       encoder_options({{"--data", "DIR", "corpus.jsonl ({_id, title, text}), queries.jsonl ({_id, text}) and\n"
                                          "qrels/<split>.tsv (query-id, corpus-id, score; a header line)"},
                        {"--split", "S", "the qrels file to score (default test)"},
                        {"--query_instruction", "TEXT", "instruction before every query (not pooled), as llm2vec's encode"},
                        {"--cache_dir", "DIR", "where the corpus's embeddings are cached, keyed by a fingerprint of\n"
                                               "the model files' contents, the settings and the texts\n"
                                               "(default: the --data directory's llm2vec_cache/)"},
                        {"--no-cache", "", "embed the corpus without reading or writing the cache"},
                        {"--json-out", "FILE", "also write the result as JSON"},
                        {"--batch-size", "N", "texts per forward pass (default 32)"}}),
       run_eval_retrieval},
      {"eval classification",
       "accuracy and macro-F1 of a logistic regression on the embeddings of a few training\n"
       "texts per label (MTEB's classification protocol), averaged over samplings",
       encoder_options({{"--train", "FILE", "training texts: JSON lines {\"text\": ..., \"label\": string or integer}"},
                        {"--test", "FILE", "test texts, the same format (every label must occur in --train)"},
                        {"--samples_per_label", "N", "training texts per label in each experiment (default 8)"},
                        {"--n_experiments", "N", "samplings of the training texts, each fitted and scored (default 10)"},
                        {"--seed", "S", "seed of the first sampling (default 42; experiment e uses S + e)"},
                        {"--instruction", "TEXT", "instruction before every text (not pooled), as llm2vec's encode"},
                        {"--json-out", "FILE", "also write the result as JSON"},
                        {"--batch-size", "N", "texts per forward pass (default 32)"}}),
       run_eval_classification},
  };
  return table;
}

// The commands whose name starts with `prefix`, named without it, their summaries indented.
std::string command_list(const std::string& prefix) {
  // Names in a column as wide as the longest plus two spaces; summaries' later lines indented to it.
  size_t width = 0;
  for (const Command& c : commands())
    if (std::string(c.name).rfind(prefix, 0) == 0) width = std::max(width, std::strlen(c.name) - prefix.size());
  std::string out;
  for (const Command& c : commands()) {
    if (std::string(c.name).rfind(prefix, 0) != 0) continue;
    std::string summary = c.summary;
    for (size_t p = summary.find('\n'); p != std::string::npos; p = summary.find('\n', p + 1))
      summary.insert(p + 1, std::string(width + 4, ' '));
    const std::string name = c.name + prefix.size();
    out += "  " + name + std::string(width + 2 - name.size(), ' ') + summary + "\n";
  }
  return out;
}

std::string usage() {
  std::string out = "usage: llm2vec <command> [options]    (llm2vec <command> --help for its options)\n\ncommands:\n" +
                    command_list("");
  return out + "\nBackends: cpu (fp32 reference ops, OpenBLAS + OpenMP)" +
         (std::string(kDefaultBackend) == "cuda" ? ", cuda (default)" : " (this build has no CUDA)") + ".\n";
}

}  // namespace
}  // namespace l2v

int main(int argc, char** argv) {
  using namespace l2v;
  std::string name = argc > 1 ? argv[1] : "";
  int first = 2;
  if (name == "eval" && argc > 2 && argv[2][0] != '-') {  // two-word commands: "eval sts"
    name += std::string(" ") + argv[2];
    first = 3;
  }
  if (name == "-h" || name == "--help") {
    std::fputs(usage().c_str(), stdout);
    return 0;
  }
  if (name == "eval") {  // the group without a task: list its tasks (on stdout when asked for)
    const bool asked = argc > 2 && (std::string(argv[2]) == "--help" || std::string(argv[2]) == "-h");
    const std::string tasks = "usage: llm2vec eval <task> [options]    (llm2vec eval <task> --help for its options)\n\n"
                              "tasks:\n" + command_list("eval ");
    std::fprintf(asked ? stdout : stderr, "%s%s", asked ? "" : "llm2vec eval: missing task\n\n", tasks.c_str());
    return asked ? 0 : 2;
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
    ParsedOptions opts = parse_options(argc, argv, first, cmd->options);
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
