#include "train/trainer.h"

#include <atomic>
#include <chrono>
#include <cmath>
#include <csignal>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <memory>
#include <sstream>
#include <stdexcept>

#include <omp.h>
#include <unistd.h>

#include "data/loader.h"
#include "data/shard.h"
#include "data/shard_manifest.h"
#include "data/tokenizer.h"
#include "data/file_io.h"
#include "model/backend_buffer.h"
#include "model/checkpoint.h"
#include "model/peft.h"
#include "model/pooler.h"
#include "model/safetensors.h"
#include "train/comm.h"
#include "train/optimizer.h"
#include "train/plan.h"

namespace l2v {
namespace fs = std::filesystem;

namespace {

std::atomic<bool> g_interrupted{false};
// The first SIGINT/SIGTERM/SIGUSR1 asks the run to stop at the next micro-batch boundary with a
// checkpoint (under mpirun: SIGUSR1 to mpirun, which forwards it to every rank; mpirun itself ends the
// ranks on SIGINT/SIGTERM); a second one ends the process at once (every file is written atomically, so what is on disk stays
// consistent: at worst the newest checkpoint is the previous one).
extern "C" void on_stop_signal(int) {
  if (g_interrupted.exchange(true)) {
    static const char msg[] = "\nsecond stop signal: exiting now without a checkpoint\n";
    ssize_t ignored = ::write(2, msg, sizeof msg - 1);
    (void)ignored;
    ::_exit(130);
  }
}

// Installs the stop handlers for a scope and restores the previous ones.
struct SignalScope {
  struct sigaction old_int {}, old_term {}, old_usr1 {};
  SignalScope() {
    g_interrupted = false;
    struct sigaction sa {};
    sa.sa_handler = on_stop_signal;
    sigemptyset(&sa.sa_mask);
    sigaction(SIGINT, &sa, &old_int);
    sigaction(SIGTERM, &sa, &old_term);
    sigaction(SIGUSR1, &sa, &old_usr1);
  }
  ~SignalScope() {
    sigaction(SIGINT, &old_int, nullptr);
    sigaction(SIGTERM, &old_term, nullptr);
    sigaction(SIGUSR1, &old_usr1, nullptr);
  }
};

uint64_t splitmix64(uint64_t x) {
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

std::string format_duration(double seconds) {
  const long s = (long)std::llround(std::max(0.0, seconds));
  char buf[32];
  if (s >= 3600) std::snprintf(buf, sizeof buf, "%ldh%02ldm", s / 3600, s / 60 % 60);
  else std::snprintf(buf, sizeof buf, "%ldm%02lds", s / 60, s % 60);
  return buf;
}

// A path as seen from `dir` (for files that must stay valid when the directory moves with its inputs).
std::string relative_to(const std::string& path, const std::string& dir) {
  return fs::relative(fs::absolute(path), fs::absolute(dir)).string();
}

// Removes instruction tokens from each query (use_instructions=false): the leading BOS stays, the
// positions between it and the first pooled position go, and the batch is padded again.
EmbedBatch without_instructions(const EmbedBatch& b, const Tokenizer& tok, const PadOptions& pad) {
  std::vector<std::vector<int>> texts(b.B);
  for (int r = 0; r < b.B; ++r) {
    bool pooled_seen = false, first = true;
    for (int t = 0; t < b.T; ++t) {
      const size_t i = (size_t)r * b.T + t;
      if (!b.key_mask[i]) continue;
      const bool bos = first && b.ids[i] == tok.bos_id();
      first = false;
      pooled_seen |= b.embed_mask[i] != 0;
      if (bos || pooled_seen) texts[r].push_back(b.ids[i]);
    }
  }
  return build_embed_batch(texts, {}, tok, pad);
}

// skip_instruction=false: the instruction is pooled too (everything but a leading BOS).
void pool_instructions_too(EmbedBatch& b, const Tokenizer& tok) {
  for (int r = 0; r < b.B; ++r) {
    bool first = true;
    for (int t = 0; t < b.T; ++t) {
      const size_t i = (size_t)r * b.T + t;
      if (!b.key_mask[i]) continue;
      b.embed_mask[i] = !(first && b.ids[i] == tok.bos_id());
      first = false;
    }
  }
}

// A fingerprint of the weights a stage trains on (the base with the previous stages merged): every
// tensor's name, shape and a sample of its values. Stored in checkpoints, so a resume on another base
// model or another adapter chain is refused instead of silently continuing from the wrong weights.
uint64_t weights_fingerprint(const Model& m) {
  std::string bytes;
  for (const NamedWeight& w : model_weights(m)) {
    size_t n = 1;
    for (int64_t d : w.shape) n *= (size_t)d;
    const std::vector<float> values = download_weight(m, w);
    bytes += w.name;
    for (int64_t d : w.shape) bytes += "," + std::to_string(d);
    const size_t step = std::max<size_t>(1, n / 4096);  // about 4096 values per tensor
    for (size_t i = 0; i < n; i += step) bytes.append(reinterpret_cast<const char*>(&values[i]), sizeof(float));
  }
  return fnv1a64(bytes.data(), bytes.size());
}

long count_tokens(const std::vector<int>& key_mask) {
  long n = 0;
  for (int k : key_mask) n += k;
  return n;
}

class Trainer {
 public:
  Trainer(const TrainConfig& cfg, Backend& backend, const TrainHooks& hooks, Comm& comm)
      : cfg_(cfg), backend_(backend), hooks_(hooks), comm_(&comm), progress_(hooks.progress && comm.rank() == 0) {}

  TrainResult run();

 private:
  void check_output_dir() const;
  void clean_output_dir(bool starting_over);
  void load_model_and_data();
  void check_ranks_agree();
  // One micro-batch's forward, loss and backward, queued: its loss goes to *loss (one double in backend
  // memory), read with the step's other values after the optimizer step is queued.
  // The first micro-batch of a step also zeroes the gradients.
  void micro_step(uint64_t micro, bool first_of_step, bool last_of_step, long* tokens, double* loss);
  void mntp_micro_step(uint64_t micro, bool first_of_step, bool last_of_step, long* tokens, double* loss);
  void contrastive_micro_step(uint64_t micro, bool first_of_step, bool last_of_step, long* tokens, double* loss);
  // Queues `work` — the device work of a micro-batch or of the optimizer step, everything it does on the
  // host being safe to repeat — as one CUDA graph when graphs are on (Backend::run_as_graph), else, or when
  // the backend abandons the capture (the first steps grow buffers), directly. A slot whose captures keep
  // being abandoned is left to direct launches, said once.
  void device_work(int slot, const std::function<void()>& work);
  enum GraphSlot { kFirstMicroBatchGraph, kMicroBatchGraph, kOptimizerGraph, kGraphSlots };
  void forward(const std::vector<int>& ids, const std::vector<int>& key_mask, int B, int T, uint64_t seed,
               int row0);
  void forward(const EmbedBatch& b, uint64_t seed) { forward(b.ids, b.key_mask, b.B, b.T, seed, b.row0); }
  void backward(ConstTensor d_hidden, bool last_of_step);
  std::function<void(int)> layer_callback(bool last_of_step);
  Tensor d_hidden_buffer(size_t elements);
  // Queues the contrastive loss over the pooled rows (fp32 in backend memory; group g's rows start at row
  // first[g], one group of interleaved pairs for SimCSE, else queries, positives and maybe hard
  // negatives) — gathered across ranks unless gather_negatives is false — and writes its gradient w.r.t.
  // this rank's rows to d_pooled (same layout); the loss goes to *loss (one double in backend memory).
  void contrastive(const float* pooled, float* d_pooled, const std::vector<int>& first, const std::vector<int>& rows,
                   double* loss);
  nlohmann::json loader_state() const;
  // True when the step's loss is the same on every rank: a contrastive loss over the gathered batch.
  bool loss_is_global() const {
    return cfg_.stage != Stage::kMntp && (cfg_.gather_negatives || comm_->world_size() == 1);
  }
  void restore(const std::string& checkpoint_dir);
  std::string save_checkpoint(int step, const nlohmann::json& loader);
  void rotate_checkpoints();
  nlohmann::json input_fingerprints() const;
  void export_outputs();
  void log_step(const nlohmann::json& entry);

  const TrainConfig& cfg_;
  Backend& backend_;
  TrainHooks hooks_;
  Comm* comm_;
  bool progress_;  // progress lines: rank 0 only
  Checkpoint base_;
  std::unique_ptr<Tokenizer> tok_;
  Model m_;
  PoolingHead head_;
  AdamWState adam_;
  std::unique_ptr<ShardSet> shards_;
  std::unique_ptr<MntpLoader> mntp_;
  std::unique_ptr<SimcseLoader> simcse_;
  std::unique_ptr<SupervisedLoader> supervised_;
  PadOptions pad_;
  std::unique_ptr<FileLock> lock_;  // output_dir's, for the whole run
  int start_step_ = 0;
  int recompute_layers_ = 0;  // ForwardOptions::recompute_layers of every forward (train/plan.h)
  bool use_graphs_ = false;   // cuda_graphs, on a backend with graphs, in one process
  int graph_failures_[kGraphSlots] = {};  // consecutive abandoned captures per slot (kGraphGiveUp: given up)
  double step_flops_ = 0;     // model FLOPs of one optimizer step (for MFU)
  uint64_t base_fingerprint_ = 0;
  uint64_t data_fingerprint_ = 0;  // of the shards' contents (open_shard_dataset)
  // The contrastive stages' buffers: the gradient w.r.t. the final hidden states, the pooled rows and their
  // gradient, the gathered rows of every rank and their gradient.
  BackendBuffer d_hidden_{backend_}, pooled_{backend_}, d_pooled_{backend_}, gathered_{backend_},
      d_gathered_{backend_};
  // What the host reads after each step, in one download: the micro-batches' losses (doubles), the norm.
  BackendBuffer readback_{backend_};
  PoolCache pool_cache_;  // what a contrastive backward needs from its pooling (kept: no allocation per step)
  std::ofstream log_;
};

// The checkpoint-N directories of `dir` by step. Each one is complete (written as .tmp-checkpoint-N and
// renamed), so the newest is what `latest` means, whether or not the file `latest` was updated before
// a kill (it is written after the rename, for people and tools that read it).
std::vector<std::pair<int, fs::path>> checkpoints(const fs::path& dir) {
  std::vector<std::pair<int, fs::path>> all;
  for (const auto& e : fs::directory_iterator(dir)) {
    const std::string f = e.path().filename().string();
    if (f.rfind("checkpoint-", 0) == 0 && f.size() > 11 && f.find_first_not_of("0123456789", 11) == std::string::npos)
      all.push_back({std::atoi(f.c_str() + 11), e.path()});
  }
  std::sort(all.begin(), all.end());
  return all;
}

// The outputs of a finished run, moved into output_dir together at its end (export_outputs).
const char* const kOutputs[] = {"adapter_config.json", "adapter_model.safetensors", "llm2vec_config.json",
                                "pooling_head.safetensors", "merged", "llm2vec_run.json"};

// Refusals that need nothing loaded; nothing in output_dir changes before every input has been checked.
void Trainer::check_output_dir() const {
  const fs::path out(cfg_.output_dir);
  for (const std::string& adapter : cfg_.peft_model_name_or_path)
    if (fs::exists(adapter) && fs::equivalent(adapter, out))
      throw std::runtime_error(cfg_.output_dir + " is also an adapter to merge (peft_model_name_or_path): give the " +
                               std::string(stage_name(cfg_.stage)) + " stage its own output_dir");
  bool has_state = fs::exists(out / "latest") || fs::exists(out / "llm2vec_run.json");
  for (const auto& e : fs::directory_iterator(out))
    has_state |= e.path().filename().string().rfind("checkpoint-", 0) == 0;
  if (has_state && cfg_.resume_from_checkpoint.empty() && !cfg_.overwrite_output_dir)
    throw std::runtime_error(cfg_.output_dir +
                             " holds an earlier run: pass --resume_from_checkpoint latest to continue it "
                             "or --overwrite_output_dir true to start over (config keys resume_from_checkpoint, overwrite_output_dir)");
}

// The first change this run makes to output_dir, once the model, the data and any checkpoint to resume
// have been read and accepted. Starting over (overwrite_output_dir without a resume) removes the old
// checkpoints and log; the outputs of an earlier finished run always go, since they would disagree
// with the checkpoints this run writes; so do the leftovers of a killed run (a checkpoint or export
// being written, temporary files of atomic writes).
void Trainer::clean_output_dir(bool starting_over) {
  const fs::path out(cfg_.output_dir);
  for (const auto& e : fs::directory_iterator(out)) {
    const std::string f = e.path().filename().string();
    if (f.rfind(".tmp-checkpoint-", 0) == 0 || (starting_over && cfg_.overwrite_output_dir && f.rfind("checkpoint-", 0) == 0))
      fs::remove_all(e.path());
  }
  if (starting_over && cfg_.overwrite_output_dir)
    for (const char* f : {"latest", "train_log.jsonl"}) fs::remove(out / f);
  // Removing a finished run's outputs happens under the marker too: a kill midway leaves a set the
  // loaders refuse, never an llm2vec_run.json whose adapter is gone. The marker goes last.
  bool any_output = false;
  for (const char* f : kOutputs) any_output |= fs::exists(out / f);
  if (any_output) write_file_atomic((out / kExportIncomplete).string(), "the outputs of this directory are being removed\n");
  for (const char* f : kOutputs) fs::remove_all(out / f);
  fs::remove_all(out / ".export");
  for (const char* f : {"latest", "train_config.json", "train_log.jsonl", kExportIncomplete})
    remove_atomic_write_leftovers((out / f).string());
  fs::remove(out / kExportIncomplete);
}

void Trainer::load_model_and_data() {
  if (cfg_.tokenizer == cfg_.model_name_or_path && fs::is_regular_file(cfg_.model_name_or_path))
    throw std::runtime_error(cfg_.model_name_or_path +
                             " is a llama2.c checkpoint, which holds no tokenizer: set tokenizer (--tokenizer PATH)");
  base_ = open_checkpoint(cfg_.model_name_or_path);
  tok_ = load_tokenizer(cfg_.tokenizer);
  if (tok_->vocab_size() > base_.config.vocab_size)
    throw std::runtime_error(cfg_.tokenizer + ": the tokenizer has " + std::to_string(tok_->vocab_size()) +
                             " ids but the model's vocabulary has " + std::to_string(base_.config.vocab_size));
  if (cfg_.max_seq_length > base_.config.max_position_embeddings)
    throw std::runtime_error(cfg_.model_name_or_path + ": max_seq_length " + std::to_string(cfg_.max_seq_length) +
                             " exceeds the model's max_position_embeddings " +
                             std::to_string(base_.config.max_position_embeddings));
  // The recomputation, from the memory plan when there is a budget: refused here, before anything is
  // loaded or written, when the step cannot fit.
  MemoryPlan plan;
  recompute_layers_ = choose_recompute_layers(cfg_, base_.config, !backend_.is_host_memory(),
                                              backend_.tensor_element_bytes(), backend_.packs_bf16_weights(), &plan,
                                              comm_->world_size());
  // The model FLOPs of one optimizer step: the forward and backward of a whole group (chunks add no
  // model FLOPs), times the groups of a micro-batch (supervised: queries, positives, hard negatives)
  // and the accumulation.
  TrainConfig whole = cfg_;
  whole.embedding_chunk_size = 0;
  const int groups = cfg_.stage == Stage::kSupervised ? (cfg_.hard_negatives ? 3 : 2) : 1;
  step_flops_ = plan_memory(base_.config, plan_inputs(whole, base_.config, false, 4, false)).model_flops * groups *
                cfg_.gradient_accumulation_steps;
  if (progress_) {
    char budget[64] = "";
    if (cfg_.gpu_memory_gb > 0) std::snprintf(budget, sizeof budget, " of %.2f GB", cfg_.gpu_memory_gb);
    std::printf("memory plan: %.2f GB%s, %d of %d layers recomputed; %.3g model FLOPs per step (llm2vec plan lists "
                "the items)\n",
                plan.total() / 1e9, budget, recompute_layers_, base_.config.num_hidden_layers, step_flops_);
  }
  load_model(m_, base_.config, *base_.tensors, backend_);
  for (const std::string& dir : cfg_.peft_model_name_or_path) {
    load_peft_adapter(m_, dir);
    merge_and_unload_lora(m_);
  }
  base_fingerprint_ = weights_fingerprint(m_);
  add_lora(m_, cfg_.lora, cfg_.seed);
  if (cfg_.stage != Stage::kMntp) {
    head_.mode = cfg_.pooling;
    head_.latent = cfg_.latent;
    add_pooling_head(m_, head_, splitmix64(cfg_.seed ^ 0x6c6174656e74ull));
  }
  adam_ = adamw_init(m_);

  shards_ = open_shard_dataset(cfg_.dataset_file_path, &data_fingerprint_);
  const ShardKind want = cfg_.stage == Stage::kMntp ? ShardKind::kDocuments
                         : cfg_.stage == Stage::kSimcse ? ShardKind::kSentences
                                                        : ShardKind::kTriples;
  if (shards_->kind() != want)
    throw std::runtime_error(cfg_.dataset_file_path + ": the " + stage_name(cfg_.stage) + " stage needs " +
                             (want == ShardKind::kDocuments ? "document shards (prepare --format wikitext or lines)"
                              : want == ShardKind::kSentences ? "sentence shards (prepare --format sentences)"
                                                              : "supervised triple shards (prepare --format supervised)"));
  LoaderConfig lc;
  lc.batch_size = (uint64_t)cfg_.batch_size;
  lc.seed = cfg_.seed;
  lc.world_size = comm_->world_size();
  lc.rank = comm_->rank();
  pad_.max_length = cfg_.max_seq_length;
  pad_.padding_side = parse_padding_side(cfg_.padding_side);
  pad_.append_eos = cfg_.pooling == PoolingMode::kEosToken;
  MntpOptions mo;
  if (cfg_.stage == Stage::kMntp) {
    mo.mask_probability = cfg_.mlm_probability;
    mo.collator = parse_mntp_collator(cfg_.data_collator_type);
    mo.mask_token_id = resolve_mask_token(*tok_, cfg_.mask_token_type);
  }
  // The loaders refuse with invalid_argument what the data cannot serve (e.g. too few items for a batch).
  try {
    if (cfg_.stage == Stage::kMntp) {
      mntp_ = std::make_unique<MntpLoader>(*shards_, *tok_, (uint64_t)cfg_.max_seq_length, mo, lc);
    } else if (cfg_.stage == Stage::kSimcse) {
      simcse_ = std::make_unique<SimcseLoader>(*shards_, *tok_, pad_, lc);
    } else {
      supervised_ = std::make_unique<SupervisedLoader>(*shards_, *tok_, pad_, lc);
    }
  } catch (const std::invalid_argument& e) {
    throw std::runtime_error(cfg_.dataset_file_path + ": the data cannot serve per_device_train_batch_size " +
                             std::to_string(cfg_.batch_size) + " with max_seq_length " + std::to_string(cfg_.max_seq_length) +
                             ": " + e.what());
  }
}

// The start of a data-parallel run: every rank has the same configuration (compared key by key
// against rank 0's), the same inputs and the same initial trainable weights (seeded; a checksum of
// every value), so the ranks' steps are those of one model.
void Trainer::check_ranks_agree() {
  if (comm_->world_size() == 1) return;
  nlohmann::json mine = cfg_.resolved;
  const nlohmann::json rank0 = nlohmann::json::parse(comm_->broadcast(mine.dump()));
  std::string detail;
  for (auto it = mine.begin(); it != mine.end() && detail.empty(); ++it)
    if (!rank0.contains(it.key()) || rank0.at(it.key()) != it.value())
      detail = it.key() + " = " + it.value().dump() + " here, " +
               (rank0.contains(it.key()) ? rank0.at(it.key()).dump() : "(unset)") + " on rank 0";
  const std::string config = mine.dump();
  require_same_on_every_rank(*comm_, "the configuration", fnv1a64(config.data(), config.size()),
                             detail + " (every rank must get the same command line and config file)");
  const std::string inputs = input_fingerprints().dump();
  require_same_on_every_rank(*comm_, "the inputs (weights, tokenizer or data)", fnv1a64(inputs.data(), inputs.size()),
                             "the files under the same paths differ between nodes");
  std::string values;
  for (const TrainableParam& p : m_.trainable) {
    const std::vector<float> v = download_floats(m_, p.value, p.count);
    values.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(float));
  }
  require_same_on_every_rank(*comm_, "the initial trainable weights", fnv1a64(values.data(), values.size()));
}

Tensor Trainer::d_hidden_buffer(size_t elements) {
  return static_cast<Tensor>(d_hidden_.get(elements * backend_.tensor_element_bytes()));
}

void Trainer::forward(const std::vector<int>& ids, const std::vector<int>& key_mask, int B, int T, uint64_t seed,
                      int row0) {
  ForwardOptions opt;
  opt.causal = !cfg_.bidirectional;
  opt.training = true;
  opt.attn_dropout = cfg_.attention_dropout;
  opt.seed = seed;
  opt.row0 = (uint64_t)row0;
  opt.recompute_layers = recompute_layers_;
  model_forward(m_, ids.data(), key_mask.data(), B, T, opt);
}

// The step's last backward pass tells the communicator as each layer's gradients are complete (empty:
// no callback).
std::function<void(int)> Trainer::layer_callback(bool last_of_step) {
  if (!last_of_step || comm_->world_size() == 1) return {};
  return [this](int layer) { comm_->layer_grads_ready(m_, layer); };
}

void Trainer::backward(ConstTensor d_hidden, bool last_of_step) {
  model_backward(m_, d_hidden, layer_callback(last_of_step));
}

// Consecutive abandoned captures after which a slot's work is launched directly for the rest of the run.
constexpr int kGraphGiveUp = 8;

void Trainer::device_work(int slot, const std::function<void()>& work) {
  if (use_graphs_ && graph_failures_[slot] < kGraphGiveUp) {
    if (backend_.run_as_graph(slot, work)) {
      graph_failures_[slot] = 0;
      return;
    }
    if (++graph_failures_[slot] == kGraphGiveUp && progress_)
      std::printf("CUDA graphs: the %s work is launched kernel by kernel from now on: %d captures in a row were "
                  "abandoned, the last because of: %s\n",
                  slot == kOptimizerGraph ? "optimizer step's" : "micro-batches'", kGraphGiveUp,
                  backend_.graph_stats().last_break.c_str());
  }
  work();
}

// The seed of micro-batch `micro`'s dropout: a function of the global micro-batch number only.
uint64_t micro_seed(uint64_t seed, uint64_t micro) { return splitmix64(seed ^ splitmix64(micro)); }

void Trainer::mntp_micro_step(uint64_t micro, bool first_of_step, bool last_of_step, long* tokens, double* loss) {
  const MntpBatch b = mntp_->next();
  *tokens += count_tokens(b.key_mask);
  device_work(first_of_step ? kFirstMicroBatchGraph : kMicroBatchGraph, [&] {
    if (first_of_step) zero_grads(m_);
    forward(b.ids, b.key_mask, b.B, b.T, micro_seed(cfg_.seed, micro), b.row0);
    // Normalised by the global batch's labels: the ranks' parts sum to one process's loss and gradient.
    queue_mntp_loss(m_, b.labels.data(), true, b.global_labels, loss, layer_callback(last_of_step));
  });
}

void Trainer::contrastive(const float* pooled, float* d_pooled, const std::vector<int>& first,
                          const std::vector<int>& rows, double* loss) {
  const int C = m_.config.hidden_size;
  // The roles inside a buffer of groups: SimCSE's queries are the even rows of its one group, their
  // positives the odd rows (ld = 2C); otherwise one group per role (ld = C).
  auto run = [&](const float* base, float* d_base, const std::vector<int>& at, const std::vector<int>& count) {
    const float* group[3] = {};
    float* d_group[3] = {};
    for (size_t g = 0; g < at.size(); ++g) {
      group[g] = base + (size_t)at[g] * C;
      d_group[g] = d_base + (size_t)at[g] * C;
    }
    if (simcse_)
      backend_.contrastive_loss(loss, d_group[0], d_group[0] + C, nullptr, group[0], group[0] + C, nullptr,
                                count[0] / 2, C, 2 * C, cfg_.loss_scale, cfg_.in_batch_negatives);
    else
      backend_.contrastive_loss(loss, d_group[0], d_group[1], d_group[2], group[0], group[1], group[2], count[0], C,
                                C, cfg_.loss_scale, cfg_.in_batch_negatives);
  };
  if (!cfg_.gather_negatives || comm_->world_size() == 1) return run(pooled, d_pooled, first, rows);
  // Every rank's rows, group by group, gathered in backend memory (NCCL: on the device; otherwise through
  // the host): rank q's rows of group g at at[g] + q * rows[g]. The gradient of this rank's rows is copied
  // back out of the gathered gradient.
  const int W = comm_->world_size();
  const size_t local_rows = (size_t)first.back() + rows.back();
  for (uint64_t r : comm_->all_gather(local_rows))
    if (r != local_rows)
      throw std::runtime_error("the ranks' contrastive batches differ in size (" + std::to_string(r) + " and " +
                               std::to_string(local_rows) + " pooled rows): every rank needs the same batch");
  std::vector<int> at, count;
  int total = 0;
  for (size_t g = 0; g < first.size(); ++g) {
    at.push_back(total);
    count.push_back(W * rows[g]);
    total += W * rows[g];
  }
  float* gathered = gathered_.floats((size_t)total * C);
  float* d_gathered = d_gathered_.floats((size_t)total * C);
  for (size_t g = 0; g < first.size(); ++g)
    comm_->all_gather_device(backend_, pooled + (size_t)first[g] * C, gathered + (size_t)at[g] * C,
                             (size_t)rows[g] * C);
  run(gathered, d_gathered, at, count);
  for (size_t g = 0; g < first.size(); ++g)
    backend_.copy(d_pooled + (size_t)first[g] * C, d_gathered + (size_t)(at[g] + comm_->rank() * rows[g]) * C,
                  (size_t)rows[g] * C * sizeof(float));
}

void Trainer::contrastive_micro_step(uint64_t micro, bool first_of_step, bool last_of_step, long* tokens,
                                     double* loss) {
  std::vector<EmbedBatch> groups;
  std::vector<uint64_t> seeds;
  if (simcse_) {
    groups.push_back(simcse_->next().rows);
    seeds.push_back(micro_seed(cfg_.seed, micro));
  } else {
    SupervisedBatch b = supervised_->next();
    if (!cfg_.use_instructions) b.queries = without_instructions(b.queries, *tok_, pad_);
    if (!cfg_.skip_instruction) pool_instructions_too(b.queries, *tok_);
    groups = {b.queries, b.positives};
    if (cfg_.hard_negatives && b.negatives.B > 0) groups.push_back(b.negatives);
    if (!cfg_.in_batch_negatives && groups.size() < 3)
      throw std::runtime_error(cfg_.dataset_file_path + ": in_batch_negatives=false needs hard negatives in the data");
    for (size_t g = 0; g < groups.size(); ++g) seeds.push_back(micro_seed(cfg_.seed, micro * 4 + g));
  }
  const int C = m_.config.hidden_size;
  // The chunks of each group: [first row, rows).
  std::vector<std::vector<std::pair<int, int>>> chunks(groups.size());
  for (size_t g = 0; g < groups.size(); ++g) {
    const int step = cfg_.embedding_chunk_size > 0 ? cfg_.embedding_chunk_size : groups[g].B;
    for (int r = 0; r < groups[g].B; r += step) chunks[g].push_back({r, std::min(step, groups[g].B - r)});
  }
  auto chunk_of = [&](size_t g, size_t c) {
    const auto [r0, n] = chunks[g][c];
    return chunks[g].size() == 1 ? groups[g] : slice_rows(groups[g], r0, n);
  };
  // Group g's pooled rows (and their gradient) start at row first[g] of one buffer in backend memory.
  std::vector<int> first, rows;
  int total_rows = 0;
  for (const EmbedBatch& g : groups) {
    first.push_back(total_rows);
    rows.push_back(g.B);
    total_rows += g.B;
  }
  for (const EmbedBatch& g : groups) *tokens += count_tokens(g.key_mask);
  device_work(first_of_step ? kFirstMicroBatchGraph : kMicroBatchGraph, [&] {
    if (first_of_step) zero_grads(m_);
    float* pooled = pooled_.floats((size_t)total_rows * C);
    float* d_pooled = d_pooled_.floats((size_t)total_rows * C);
    PoolCache& cache = pool_cache_;  // the last chunk's, then each recomputed chunk's
    for (size_t g = 0; g < groups.size(); ++g) {
      for (size_t c = 0; c < chunks[g].size(); ++c) {
        const bool last = g + 1 == groups.size() && c + 1 == chunks[g].size();
        const EmbedBatch chunk = chunk_of(g, c);
        forward(chunk, seeds[g]);
        pool_forward(m_, head_, chunk, tok_->bos_id(), tok_->eos_id(),
                     pooled + (size_t)(first[g] + chunks[g][c].first) * C, last ? &cache : nullptr);
      }
    }
    contrastive(pooled, d_pooled, first, rows, loss);
    for (size_t g = groups.size(); g-- > 0;) {
      for (size_t c = chunks[g].size(); c-- > 0;) {
        const bool last = g + 1 == groups.size() && c + 1 == chunks[g].size();
        const EmbedBatch chunk = chunk_of(g, c);
        const float* d_chunk = d_pooled + (size_t)(first[g] + chunks[g][c].first) * C;
        if (!last) {
          // The same forward and pooled rows as before (same seed and row0); they overwrite what the loss used.
          // The last chunk's backward is done: its cache is reused.
          forward(chunk, seeds[g]);
          pool_forward(m_, head_, chunk, tok_->bos_id(), tok_->eos_id(),
                       pooled + (size_t)(first[g] + chunks[g][c].first) * C, &cache);
        }
        Tensor dh = d_hidden_buffer((size_t)chunk.B * chunk.T * C);
        pool_backward(m_, head_, cache, d_chunk, dh);
        backward(dh, last_of_step && g == 0 && c == 0);
      }
    }
  });
}

void Trainer::micro_step(uint64_t micro, bool first_of_step, bool last_of_step, long* tokens, double* loss) {
  if (cfg_.stage == Stage::kMntp)
    mntp_micro_step(micro, first_of_step, last_of_step, tokens, loss);
  else
    contrastive_micro_step(micro, first_of_step, last_of_step, tokens, loss);
}

nlohmann::json Trainer::loader_state() const {
  if (mntp_) return mntp_->save();
  if (simcse_) return simcse_->save();
  return supervised_->save();
}

// The config keys a resumed run may change without breaking the continuation.
// (embedding_chunk_size changes memory, not results; per_device_train_batch_size is compared as part
// of the global batch, which a resume on another world size keeps.)
bool resumable_difference(const std::string& key) {
  return key == "resume_from_checkpoint" || key == "overwrite_output_dir" || key == "logging_steps" ||
         key == "save_steps" || key == "save_total_limit" || key == "max_steps" || key == "stop_after_n_steps" ||
         key == "embedding_chunk_size" || key == "per_device_train_batch_size" || key == "recompute_layers" ||
         key == "gpu_memory_gb" || key == "cuda_graphs";
}

// The config keys that name inputs by path. A resume compares what they hold (the weights, tokenizer
// and shard fingerprints), not how they are spelled: `dir`, `dir/` and /abs/dir, or data moved
// elsewhere, are the same inputs. output_dir is where the checkpoint was found.
bool path_key(const std::string& key) {
  return key == "model_name_or_path" || key == "peft_model_name_or_path" || key == "tokenizer" ||
         key == "dataset_file_path" || key == "output_dir";
}

nlohmann::json Trainer::input_fingerprints() const {
  return {{"weights", checksum_hex(base_fingerprint_)},
          {"tokenizer", checksum_hex(tok_->fingerprint())},
          {"data", checksum_hex(data_fingerprint_)}};
}

void Trainer::restore(const std::string& dir) {
  const std::string state_path = (fs::path(dir) / "trainer_state.json").string();
  const std::string tensors_path = (fs::path(dir) / "state.safetensors").string();
  const nlohmann::json st = read_json_file(state_path, "(not a checkpoint directory?)");
  try {
    const nlohmann::json& old = st.at("config");
    for (auto it = cfg_.resolved.begin(); it != cfg_.resolved.end(); ++it) {
      if (resumable_difference(it.key()) || path_key(it.key())) continue;
      if (!old.contains(it.key()) || old.at(it.key()) != it.value())
        throw std::runtime_error(state_path + ": the checkpoint was trained with " + it.key() + " = " +
                                 (old.contains(it.key()) ? old.at(it.key()).dump() : "(unset)") + ", this run has " +
                                 it.value().dump() + "; resume with the same configuration");
    }
    // The data order and every random choice follow the global batch, so a resume on another number of
    // ranks continues the same run when the global batch is unchanged (world size x per-device batch).
    const int old_world = st.contains("world_size") ? st.at("world_size").get<int>() : 1;
    const int old_batch = old.at("per_device_train_batch_size").get<int>();
    if (old_world * old_batch != comm_->world_size() * cfg_.batch_size)
      throw std::runtime_error(state_path + ": the checkpoint was trained with a global batch of " +
                               std::to_string(old_world * old_batch) + " (" + std::to_string(old_world) + " ranks x " +
                               std::to_string(old_batch) + " per device), this run has " +
                               std::to_string(comm_->world_size() * cfg_.batch_size) + " (" +
                               std::to_string(comm_->world_size()) + " x " + std::to_string(cfg_.batch_size) +
                               "); resume with the same global batch (per_device_train_batch_size)");
    const nlohmann::json& was = st.at("input_fingerprints");
    const nlohmann::json now = input_fingerprints();
    const char* what[3][2] = {{"weights", "other base weights (model_name_or_path or the merged peft_model_name_or_path adapters changed since)"},
                              {"tokenizer", "another tokenizer (tokenizer)"},
                              {"data", "other data (the shards of dataset_file_path differ in content)"}};
    for (const auto& [key, message] : what)
      if (was.at(key) != now.at(key))
        throw std::runtime_error(state_path + ": the checkpoint was trained on " + message + "; resume with the same ones");
    if (file_checksum64(tensors_path) != std::stoull(st.at("state_checksum").get<std::string>().substr(2), nullptr, 16))
      throw std::runtime_error(tensors_path + ": its checksum differs from the one in " + state_path +
                               ": the checkpoint is damaged; resume from an earlier checkpoint-N (--resume_from_checkpoint DIR)");
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(state_path + ": not a trainer state of this version: " + e.what());
  }
  SafetensorsCheckpoint tensors(tensors_path);
  for (size_t i = 0; i < m_.trainable.size(); ++i) {
    const TrainableParam& p = m_.trainable[i];
    std::vector<float> host(p.count);
    const std::pair<const char*, float*> parts[3] = {{"", p.value}, {".exp_avg", adam_.m[i]}, {".exp_avg_sq", adam_.v[i]}};
    for (const auto& [suffix, dst] : parts) {
      const std::string name = p.name + suffix;
      if (!tensors.has(name) || tensors.shape(name) != p.shape)
        throw std::runtime_error(dir + "/state.safetensors: missing or mis-shaped '" + name + "'");
      tensors.read_f32(name, host.data(), p.count);
      backend_.upload(dst, host.data(), p.count * sizeof(float));
    }
  }
  try {
    adam_.step = st.at("adam_step").get<int>();
    start_step_ = st.at("step").get<int>();
    if (mntp_) mntp_->restore(st.at("loader"), state_path);
    if (simcse_) simcse_->restore(st.at("loader"), state_path);
    if (supervised_) supervised_->restore(st.at("loader"), state_path);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(state_path + ": not a trainer state of this version: " + e.what());
  }
  if (start_step_ > cfg_.max_steps)
    throw std::runtime_error(state_path + ": the checkpoint is at step " + std::to_string(start_step_) +
                             ", beyond max_steps " + std::to_string(cfg_.max_steps));
}

// `loader` is the data loaders' state after `step` optimizer steps.
std::string Trainer::save_checkpoint(int step, const nlohmann::json& loader) {
  const std::string name = "checkpoint-" + std::to_string(step);
  const fs::path final_dir = fs::path(cfg_.output_dir) / name;
  // The state is the same on every rank (parameters, moments, and the loaders' global position).
  if (comm_->rank() != 0) return final_dir.string();
  const fs::path tmp = fs::path(cfg_.output_dir) / (".tmp-" + name);
  fs::remove_all(tmp);
  fs::create_directories(tmp);
  std::vector<std::vector<float>> data;
  data.reserve(m_.trainable.size() * 3);
  std::vector<SafetensorsEntry> entries;
  for (size_t i = 0; i < m_.trainable.size(); ++i) {
    const TrainableParam& p = m_.trainable[i];
    const std::pair<const char*, const float*> parts[3] = {{"", p.value}, {".exp_avg", adam_.m[i]}, {".exp_avg_sq", adam_.v[i]}};
    for (const auto& [suffix, src] : parts) {
      data.push_back(download_floats(m_, src, p.count));
      entries.push_back({p.name + suffix, "F32", p.shape, data.back().data()});
    }
  }
  write_safetensors((tmp / "state.safetensors").string(), entries, {{"format", "pt"}});
  nlohmann::json st = {{"step", step},
                       {"adam_step", adam_.step},
                       {"world_size", comm_->world_size()},
                       {"loader", loader},
                       {"config", cfg_.resolved},
                       {"input_fingerprints", input_fingerprints()},
                       {"state_checksum", checksum_hex(file_checksum64((tmp / "state.safetensors").string()))}};
  write_file_atomic((tmp / "trainer_state.json").string(), st.dump(2) + "\n");
  fs::remove_all(final_dir);  // only after a crash between this rename and `latest`: a complete copy
  fs::rename(tmp, final_dir);
  write_file_atomic((fs::path(cfg_.output_dir) / "latest").string(), name + "\n");
  rotate_checkpoints();
  return final_dir.string();
}

// Keeps the newest save_total_limit checkpoints. Also called at the end of a run, so a kill between a
// checkpoint's rename and the rotation leaves no extra checkpoint in a finished run.
void Trainer::rotate_checkpoints() {
  const std::vector<std::pair<int, fs::path>> all = checkpoints(cfg_.output_dir);
  for (size_t i = 0; i + cfg_.save_total_limit < all.size(); ++i) fs::remove_all(all[i].second);
}

void Trainer::log_step(const nlohmann::json& entry) {
  log_ << entry.dump() << "\n";
  log_.flush();
}

// The outputs are written into output_dir/.export, then moved into place under kExportIncomplete, which
// the loaders refuse: a kill at any point leaves either no outputs or a set they will not load, and a
// resume (at max_steps it goes straight here) writes them again.
void Trainer::export_outputs() {
  const fs::path out(cfg_.output_dir), stage = out / ".export";
  fs::remove_all(stage);
  fs::create_directories(stage);
  save_peft_adapter(m_, stage.string(), cfg_.model_name_or_path, parse_peft_layout(cfg_.adapter_layout));
  nlohmann::json l2v_cfg = {{"pooling_mode", pooling_mode_name(cfg_.pooling)},
                            {"max_length", cfg_.max_seq_length},
                            {"skip_instruction", cfg_.skip_instruction}};
  write_file_atomic((stage / "llm2vec_config.json").string(), l2v_cfg.dump(2) + "\n");
  // Paths in llm2vec_run.json are relative to output_dir, where the file ends up.
  nlohmann::json run = {{"stage", stage_name(cfg_.stage)},
                        {"model_name_or_path", relative_to(cfg_.model_name_or_path, out)},
                        {"tokenizer", relative_to(cfg_.tokenizer, out)},
                        {"bidirectional", cfg_.bidirectional},
                        {"pooling_mode", pooling_mode_name(cfg_.pooling)},
                        {"max_length", cfg_.max_seq_length},
                        {"skip_instruction", cfg_.skip_instruction},
                        {"padding_side", cfg_.padding_side}};
  nlohmann::json adapters = nlohmann::json::array();
  for (const std::string& a : cfg_.peft_model_name_or_path) adapters.push_back(relative_to(a, out));
  adapters.push_back(".");
  run["adapters"] = adapters;
  if (head_.mode == PoolingMode::kLatentAttention) {
    save_pooling_head(m_, head_, (stage / "pooling_head.safetensors").string());
    run["pooling_head"] = "pooling_head.safetensors";
  }
  write_file_atomic((stage / "llm2vec_run.json").string(), run.dump(2) + "\n");
  if (cfg_.save_merged_model) {
    merge_and_unload_lora(m_);
    save_model_hf(m_, (stage / "merged").string());
  }
  write_file_atomic((out / kExportIncomplete).string(), "the outputs of this directory are being moved into place\n");
  for (const char* f : kOutputs) {
    if (!fs::exists(stage / f)) continue;
    if (hooks_.before_output_moved) hooks_.before_output_moved(f);
    fs::remove_all(out / f);
    fs::rename(stage / f, out / f);
  }
  fs::remove(out / kExportIncomplete);
  fs::remove_all(stage);
}

TrainResult Trainer::run() {
  const fs::path out(cfg_.output_dir);
  // Rank 0 owns output_dir: it alone locks, checks, cleans and writes it. The other ranks read a
  // checkpoint to resume from it (on a file system every node sees).
  const bool writer = comm_->rank() == 0;
  // With a single candidate per query the softmax is 1 and the loss 0 whatever the weights: nothing
  // would train. The candidates are the gathered rows of every rank (gather_negatives) or this rank's.
  const int rows = cfg_.batch_size * (cfg_.gather_negatives ? comm_->world_size() : 1);
  if (rows < 2 && (cfg_.stage == Stage::kSimcse || (cfg_.stage == Stage::kSupervised && !cfg_.hard_negatives)))
    throw SameOnEveryRank("per_device_train_batch_size " + std::to_string(cfg_.batch_size) +
                          (comm_->world_size() == 1 ? ""
                           : cfg_.gather_negatives ? " x " + std::to_string(comm_->world_size()) + " ranks"
                                                   : " (gather_negatives false: each rank's own rows)") +
                          " gives each query one candidate (the loss is 0 whatever the weights): it must be >= 2 "
                          "when the other in-batch rows are the only negatives");
  if (writer) {
    std::error_code ec;
    fs::create_directories(out, ec);
    if (ec) throw std::runtime_error(cfg_.output_dir + ": cannot create the output directory: " + ec.message());
    lock_ = std::make_unique<FileLock>((out / ".lock").string(), "the output_dir " + cfg_.output_dir);
    check_output_dir();
  }
  load_model_and_data();
  check_ranks_agree();
  std::string resume_dir;
  if (writer && cfg_.resume_from_checkpoint == "latest") {
    const std::vector<std::pair<int, fs::path>> all = checkpoints(out);
    if (all.empty()) throw std::runtime_error(cfg_.output_dir + ": no checkpoint-N directory to resume from");
    resume_dir = all.back().second.string();
  } else if (!cfg_.resume_from_checkpoint.empty() && cfg_.resume_from_checkpoint != "latest") {
    resume_dir = cfg_.resume_from_checkpoint;
  }
  resume_dir = comm_->broadcast(resume_dir);
  if (!resume_dir.empty()) restore(resume_dir);
  // Every rank has read the checkpoint before rank 0 changes anything in output_dir.
  comm_->any(false);
  if (writer) {
    clean_output_dir(resume_dir.empty());
    write_file_atomic((out / "train_config.json").string(), cfg_.resolved.dump(2) + "\n");
    // A kill between a checkpoint's rename and the write of `latest` left the file naming the one
    // before: name the checkpoint this run resumes from (a run with no step left writes no other).
    if (cfg_.resume_from_checkpoint == "latest")
      write_file_atomic((out / "latest").string(), fs::path(resume_dir).filename().string() + "\n");
  }

  // The log keeps the steps up to the checkpoint being resumed (a crashed run may have logged more).
  const std::string log_path = (out / "train_log.jsonl").string();
  if (writer) {
    std::string kept;
    std::ifstream old(log_path);
    for (std::string line; std::getline(old, line);) {
      try {
        if (nlohmann::json::parse(line).at("step").get<int>() <= start_step_) kept += line + "\n";
      } catch (const std::exception&) {
      }
    }
    write_file_atomic(log_path, kept);
  }
  if (writer) {
    log_.open(log_path, std::ios::app);
    if (!log_) throw std::runtime_error(log_path + ": cannot open for writing");
  }

  size_t trainable_count = 0;
  for (const TrainableParam& p : m_.trainable) trainable_count += p.count;
  if (progress_)
  {
    std::printf("%s stage: %s, %s attention, %zu trainable parameters (LoRA r=%d%s), %llu %s, steps %d..%d\n",
                stage_name(cfg_.stage), cfg_.model_name_or_path.c_str(), cfg_.bidirectional ? "bidirectional" : "causal",
                trainable_count, cfg_.lora.r,
                head_.mode == PoolingMode::kLatentAttention ? " + latent-attention head" : "",
                (unsigned long long)(cfg_.stage == Stage::kSupervised ? shards_->num_triples() : shards_->num_docs()),
                cfg_.stage == Stage::kSupervised ? "triples" : cfg_.stage == Stage::kSimcse ? "sentences" : "documents",
                start_step_ + 1, cfg_.max_steps);
    if (comm_->world_size() > 1)
      std::printf("data parallel: %d ranks (%d CPU threads each) x %d per device x %d accumulation = global batch %d%s\n",
                  comm_->world_size(), omp_get_max_threads(), cfg_.batch_size, cfg_.gradient_accumulation_steps,
                  comm_->world_size() * cfg_.batch_size * cfg_.gradient_accumulation_steps,
                  cfg_.stage == Stage::kMntp ? ""
                  : cfg_.gather_negatives    ? "; contrastive negatives gathered from every rank"
                                             : "; contrastive negatives from each rank's own rows");
  }

  AdamWConfig ac;
  ac.beta1 = cfg_.adam_beta1;
  ac.beta2 = cfg_.adam_beta2;
  ac.eps = cfg_.adam_epsilon;
  ac.weight_decay = cfg_.weight_decay;
  ac.max_grad_norm = cfg_.max_grad_norm;

  use_graphs_ = cfg_.cuda_graphs && !backend_.is_host_memory() && comm_->world_size() == 1;
  if (progress_ && !backend_.is_host_memory())
    std::printf("CUDA graphs: %s\n",
                use_graphs_ ? "each micro-batch's and optimizer step's kernels captured and launched as one graph"
                : !cfg_.cuda_graphs ? "off (cuda_graphs false): kernels launched one by one"
                                    : "off under mpirun (the NCCL streams are not captured): kernels launched one by one");
  SignalScope signals;
  TrainResult result;
  result.steps_done = start_step_;
  const auto t0 = std::chrono::steady_clock::now();
  double window_tokens = 0, window_start = 0;
  int window_steps = 0;
  std::string last_checkpoint;
  int saved_step = start_step_;  // the steps the newest checkpoint holds (0: none to keep)
  // The step's one wait: the micro-batches' losses (doubles) and the gradient norm are read together, after
  // the optimizer step is queued.
  const int K = cfg_.gradient_accumulation_steps;
  const size_t readback_bytes = K * sizeof(double) + sizeof(float);
  char* readback = static_cast<char*>(readback_.get(readback_bytes));
  double* losses_dev = reinterpret_cast<double*>(readback);
  float* norm_dev = reinterpret_cast<float*>(readback + K * sizeof(double));
  std::vector<char> readback_host(readback_bytes);
  for (int step = start_step_; step < cfg_.max_steps; ++step) {
    long tokens = 0;
    // A stop signal between micro-batches abandons this step: the checkpoint is that of the steps
    // done, with the loaders where this step began, so a resume redoes the step from its start.
    const nlohmann::json loader_at_step_start = loader_state();
    for (int k = 0; k < cfg_.gradient_accumulation_steps; ++k) {
      // Every rank stops at the same micro-batch when any has been signalled.
      if (comm_->any(g_interrupted)) {
        if (step > saved_step) {
          last_checkpoint = save_checkpoint(step, loader_at_step_start);
          result.last_checkpoint = last_checkpoint;
        }
        result.interrupted = true;
        if (progress_)
          std::printf("stopped during step %d: %s; continue with --resume_from_checkpoint latest\n", step + 1,
                      step == 0 ? "no step had been completed, nothing to save"
                                : ("the checkpoint of step " + std::to_string(step) + " is written").c_str());
        return result;
      }
      const uint64_t micro = (uint64_t)step * cfg_.gradient_accumulation_steps + k;
      try {
        micro_step(micro, k == 0, k + 1 == cfg_.gradient_accumulation_steps, &tokens, losses_dev + k);
      } catch (const std::exception& e) {
        throw std::runtime_error("step " + std::to_string(step + 1) + ": " + e.what() +
                                 "; stopped before updating the parameters" +
                                 (last_checkpoint.empty() ? std::string() : "; " + last_checkpoint + " is intact"));
      }
    }
    comm_->allreduce_sum_grads(m_);
    // The summed gradients are those of one process holding the global batch (MNTP: every rank's part is
    // normalised by the global label count; contrastive: each rank holds the gradient of the global loss
    // w.r.t. its own rows); averaged over micro-batches (each one's loss is a mean), and over ranks when
    // each rank has a contrastive loss of its own (gather_negatives false).
    const int W = comm_->world_size();
    const bool per_rank_losses = cfg_.stage != Stage::kMntp && !loss_is_global();
    float grad_scale = 1.0f / cfg_.gradient_accumulation_steps;
    if (per_rank_losses) grad_scale /= W;
    const double lr = learning_rate_at(cfg_, step);
    device_work(kOptimizerGraph, [&] { queue_adamw_step(m_, adam_, ac, (float)lr, grad_scale, norm_dev); });
    backend_.download(readback_host.data(), readback, readback_bytes);
    const std::string intact = last_checkpoint.empty() ? std::string() : "; " + last_checkpoint + " is intact";
    // A non-finite loss comes with non-finite gradients (the cross-entropy of non-finite logits; a
    // contrastive loss over an undefined cosine gives NaN gradients), so once the gradients are summed
    // every rank's optimizer saw a non-finite norm and wrote nothing.
    double loss_sum = 0.0;
    for (int k = 0; k < K; ++k) {
      double loss;
      std::memcpy(&loss, readback_host.data() + k * sizeof(double), sizeof(double));
      if (!std::isfinite(loss)) {
        const std::string why = cfg_.stage == Stage::kMntp ? ""
                                : " (a pooled embedding is not finite, or is the zero vector: cosine undefined)";
        const std::string msg = "step " + std::to_string(step + 1) + ": the loss is " + std::to_string(loss) + why +
                                "; stopped before updating the parameters" + intact;
        // A gathered contrastive loss is the same on every rank: one report (rank 0's) is enough.
        if (loss_is_global()) throw SameOnEveryRank(msg);
        throw std::runtime_error(msg);
      }
      loss_sum += loss;
    }
    float grad_norm;
    try {
      float norm;
      std::memcpy(&norm, readback_host.data() + K * sizeof(double), sizeof(float));
      grad_norm = finish_adamw_step(adam_, norm);
    } catch (const std::exception& e) {
      // The reduced gradients are the same on every rank, so is this failure.
      throw SameOnEveryRank("step " + std::to_string(step + 1) + ": " + e.what() + intact);
    }
    double loss = loss_is_global() ? loss_sum : comm_->allreduce_sum(loss_sum);
    loss /= cfg_.gradient_accumulation_steps * (per_rank_losses ? W : 1);
    tokens = (long)comm_->allreduce_sum((double)tokens);
    const int done = step + 1;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (writer) log_step({{"step", done}, {"loss", loss}, {"lr", lr}, {"grad_norm", grad_norm}, {"tokens", tokens},
              {"seconds", elapsed}});
    window_tokens += tokens;
    ++window_steps;
    result.steps_done = done;
    result.last_loss = loss;
    if (progress_ && (done % cfg_.logging_steps == 0 || done == cfg_.max_steps || done == start_step_ + 1)) {
      const double per_step = elapsed / (done - start_step_), window = std::max(1e-9, elapsed - window_start);
      // Model FLOP utilisation on a GPU whose peak is known: the plan's FLOPs of this rank's steps in the
      // window over its time.
      char mfu[32] = "";
      if (backend_.peak_flops() > 0)
        std::snprintf(mfu, sizeof mfu, " | MFU %.1f%%",
                      100.0 * step_flops_ * window_steps / window / backend_.peak_flops());
      std::printf("step %*d/%d | loss %.4f | lr %.3g | grad norm %.3g | %.0f tok/s%s | elapsed %s | ETA %s\n",
                  (int)std::to_string(cfg_.max_steps).size(), done, cfg_.max_steps, loss, lr, grad_norm,
                  window_tokens / window, mfu, format_duration(elapsed).c_str(),
                  format_duration(per_step * (cfg_.max_steps - done)).c_str());
      std::fflush(stdout);
      window_tokens = 0;
      window_steps = 0;
      window_start = elapsed;
    }
    // Agreed by every rank, as at the micro-batch boundaries (one rank may have the signal already).
    const bool stop = comm_->any(g_interrupted) || (hooks_.stop_after && hooks_.stop_after(done));
    if (stop || done == cfg_.max_steps || (cfg_.save_steps > 0 && done % cfg_.save_steps == 0)) {
      last_checkpoint = save_checkpoint(done, loader_state());
      result.last_checkpoint = last_checkpoint;
      saved_step = done;
    }
    if (stop && done < cfg_.max_steps) {
      result.interrupted = true;
      if (progress_)
        std::printf("stopped after step %d: %s written; continue with --resume_from_checkpoint latest\n", done,
                    last_checkpoint.c_str());
      return result;
    }
  }
  if (result.last_checkpoint.empty() && start_step_ == cfg_.max_steps) result.last_checkpoint = resume_dir;
  if (progress_ && use_graphs_) {
    const GraphStats g = backend_.graph_stats();
    std::printf("CUDA graphs: %ld launched (%ld instantiated, %ld updated in place), %ld captures abandoned and "
                "run directly%s%s\n",
                g.launches, g.instantiations, g.updates, g.broken, g.broken ? " (the last because of: " : "",
                g.broken ? (g.last_break + ")").c_str() : "");
  }
  if (writer) {
    rotate_checkpoints();
    export_outputs();
  }
  if (progress_) std::printf("wrote the adapter, llm2vec_run.json%s to %s\n",
                                   cfg_.save_merged_model ? " and merged/" : "", cfg_.output_dir.c_str());
  return result;
}

}  // namespace

TrainResult run_training(const TrainConfig& cfg, Backend& backend, const TrainHooks& hooks, Comm* comm) {
  std::unique_ptr<Comm> single;
  if (!comm) single = make_single_process_comm();
  Trainer t(cfg, backend, hooks, comm ? *comm : *single);
  return t.run();
}

}  // namespace l2v
