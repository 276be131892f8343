// Data parallelism end to end: the real binaries under `mpirun -np 2` (Open MPI; --oversubscribe for
// CI's two cores, --allow-run-as-root for containers) against one process holding both ranks' rows.
//   - MNTP, SimCSE and supervised (hard negatives, the latent-attention head, attention and LoRA
//     dropout, gradient accumulation, embedding chunks): the per-step losses and gradient norms, and
//     every trainable tensor with its AdamW moments after the last step, equal the one process's within
//     the fp32 reduction-order bound below; gather_negatives=false changes the loss (the ablation acts);
//   - a checkpoint written by 2 ranks resumes in 1 process with the same global batch and finishes the
//     same run; another global batch is refused with a message naming both; resumed on 2 ranks, the
//     run ends bit-identical to an uninterrupted one;
//   - SIGUSR1 to mpirun (forwarded to every rank) stops all ranks at the same point with a checkpoint,
//     and the resumed run ends bit-identical to an uninterrupted one;
//   - faults: a rank with another configuration stops every rank with one message naming the rank and
//     the key; a rank killed with SIGKILL ends the run within a bound instead of hanging it;
//   - the NCCL code path (cuda/comm_nccl.cu) runs: the CUDA backend on the CPU emulator
//     (build/emu/llm2vec_cuda, NCCL served over MPI by host/emu/nccl.cpp) under mpirun -np 2 trains the
//     same MNTP and SimCSE steps as that backend in one process.
//
// Tolerance. The ranks compute every row's forward and backward exactly as the one process does (the
// same padding, dropout keys and loss normaliser: test_loader checks the rows); what differs is the order
// of the fp32 sums over rows — each weight gradient is a sum over the B·T rows of the global batch, which
// two ranks split in two and add — and the loss, which each rank rounds to fp32 for its own part (so the
// first loss is within 2u of the one process's: each part and the whole rounded once). Two orders of an
// n-term fp32 sum differ by at most 2·γ_n·Σ|terms| with γ_n ≈ n·u, u = 2^-24; with n = B·T ≤ 512 rows
// that is 2 · 512 · 2^-24 ≈ 6.1e-5 of Σ|terms|. We assert 6.1e-5 relative to the value (loss, gradient
// norm) or to the tensor's L2 norm (parameters, moments): Σ|terms| exceeds |Σ| where terms cancel, so
// this is not a guaranteed bound, but every bug it guards against moves these numbers by orders of
// magnitude more — rows dropped or doubled, dropout keyed by the local row (another mask: ~1e-2 on the
// loss), the loss normalised per rank (a factor of 2 on some gradients), gradients not reduced.
// For the bound to carry over to the parameters, every run uses adam_epsilon 1: AdamW divides each
// element's update by sqrt(v) + eps, and with eps = 1e-8 (the default) an element whose gradient sum
// nearly cancels moves by about lr whatever its rounding error (the update is close to lr·sign(g)), so
// the parameters' relative differences depend on the gradients' distribution, not on the sums' bound
// (measured up to 1.2e-4 on an AMD EPYC, 5.5e-6 on a Sapphire Rapids). With eps = 1, far above the
// clipped gradients' |g| ≈ 1e-2, the update is lr·m/(1 + sqrt(v)) ≈ lr·m: linear in the gradients,
// whose bound the parameters then inherit.
#include <gtest/gtest.h>

#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>


#include <nlohmann/json.hpp>

#include "model/safetensors.h"
#include "test/run_command.h"
#include "test/temp_dir.h"

namespace l2v {
namespace {

namespace fs = std::filesystem;
using test::TempDir;

const std::string kBin = "build/llm2vec";
const std::string kEmuBin = "build/emu/llm2vec_cuda";
const std::string kTok = "assets/stories260K/tok512.bin";
const std::string kModel = "assets/stories260K/stories260K.bin";
// CMA (single-copy) needs ptrace rights that containers often lack; the copy-in/copy-out path works anywhere.
const std::string kMpirun = "mpirun --allow-run-as-root --oversubscribe --mca btl_vader_single_copy_mechanism none";
constexpr double kTol = 2.0 * 512 / 16777216.0;  // 2·n·u, n = 512 rows (see the header)

struct Outcome {
  int status = -1;
  std::string output;
  double seconds = 0;
};

// Runs a shell command (stdout and stderr together), at most `limit_s` seconds.
Outcome run(const std::string& cmd, int limit_s = 300) {
  const auto t0 = std::chrono::steady_clock::now();
  const test::CommandResult c = test::run_command("timeout -s KILL " + std::to_string(limit_s) + " " + cmd + " 2>&1");
  return {c.status, c.output, std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()};
}

// A shell script that runs `rank0` on rank 0 and `rank1` on rank 1 (mpirun -np 2 sh <script>).
std::string per_rank_script(const TempDir& dir, const std::string& rank0, const std::string& rank1) {
  const std::string path = dir / "per_rank.sh";
  std::ofstream(path) << "if [ \"$OMPI_COMM_WORLD_RANK\" = 1 ]; then exec " << rank1 << "; else exec " << rank0
                      << "; fi\n";
  return path;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t at = s.find(what); at != std::string::npos; at = s.find(what, at + 1)) ++n;
  return n;
}

// The prepared data, once for the suite.
class DataParallel : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    data_ = new TempDir("dp_data");
    const std::string d = data_->path.string();
    ASSERT_EQ(0, run(kBin + " prepare --quiet --tokenizer " + kTok + " --input assets/wikitext-2/wiki.valid.raw --out " +
                     d + "/wiki").status);
    std::ofstream lines(d + "/sentences.txt");
    std::ifstream wiki("assets/wikitext-2/wiki.valid.raw");
    int n = 0;
    for (std::string line; std::getline(wiki, line) && n < 400;)
      if (line.size() > 40 && line.size() < 400 && line[1] != '=') {
        lines << line.substr(1, 30 + (n * 37) % 200) << "\n";  // lengths vary: padding differs per rank
        ++n;
      }
    lines.close();
    ASSERT_EQ(0, run(kBin + " prepare --quiet --tokenizer " + kTok + " --format sentences --input " + d +
                     "/sentences.txt --out " + d + "/sentences").status);
    ASSERT_EQ(0, run(kBin + " prepare --quiet --tokenizer " + kTok + " --format sick --input assets/sick/SICK.txt --out " +
                     d + "/sick").status);
  }
  static void TearDownTestSuite() { delete data_; }

  static std::string data(const std::string& name) { return (data_->path / name).string(); }

  // The options every run here shares; `extra` adds the stage's. The fp32 reference precision unless
  // `extra` names one (the CPU's default is bf16 where it has AMX).
  static std::string train_args(const std::string& out, const std::string& extra, int seed = 3,
                                bool overwrite = true) {
    const std::string precision = extra.find("--torch_dtype") == std::string::npos ? " --torch_dtype float32" : "";
    return " train --model_name_or_path " + kModel + " --tokenizer " + kTok + " --seed " + std::to_string(seed) + precision +
           " --overwrite_output_dir " + (overwrite ? "true" : "false") +
           " --save_merged_model false --logging_steps 1 --lora_r 4 --learning_rate 1e-3 --save_steps 0 --adam_epsilon 1"
           " --output_dir " + out + " " + extra;
  }

  // Trains `stage` in one process (options `one`) and on two ranks (options `two`) into out/one and
  // out/two; returns the two ranks' output.
  static std::string train_one_and_two(const TempDir& out, const std::string& stage, const std::string& one,
                                       const std::string& two) {
    const Outcome a = run(kBin + train_args(out / "one", stage + " " + one));
    EXPECT_EQ(0, a.status) << a.output;
    const Outcome b = run(kMpirun + " -np 2 " + kBin + train_args(out / "two", stage + " " + two));
    EXPECT_EQ(0, b.status) << b.output;
    return b.output;
  }

  static TempDir* data_;
};
TempDir* DataParallel::data_ = nullptr;

struct Step {
  double loss, grad_norm;
};

std::vector<Step> log_of(const fs::path& out) {
  std::vector<Step> steps;
  std::ifstream in(out / "train_log.jsonl");
  for (std::string line; std::getline(in, line);) {
    const nlohmann::json j = nlohmann::json::parse(line);
    steps.push_back({j.at("loss").get<double>(), j.at("grad_norm").get<double>()});
  }
  return steps;
}

// The relative L2 distance of two tensors.
double relative_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double d = 0, n = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    d += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    n += (double)a[i] * a[i];
  }
  return n > 0 ? std::sqrt(d / n) : std::sqrt(d);
}

// Two runs of `steps` steps are the same run: losses, gradient norms, and the final checkpoint's
// trainable tensors and AdamW moments.
void expect_same_run(const fs::path& a, const fs::path& b, int steps) {
  const std::vector<Step> la = log_of(a), lb = log_of(b);
  ASSERT_EQ(la.size(), (size_t)steps) << a;
  ASSERT_EQ(lb.size(), (size_t)steps) << b;
  for (int s = 0; s < steps; ++s) {
    EXPECT_NEAR(la[s].loss, lb[s].loss, kTol * std::abs(la[s].loss)) << "loss of step " << s + 1;
    EXPECT_NEAR(la[s].grad_norm, lb[s].grad_norm, kTol * la[s].grad_norm) << "gradient norm of step " << s + 1;
  }
  const std::string ckpt = "checkpoint-" + std::to_string(steps) + "/state.safetensors";
  SafetensorsCheckpoint ta((a / ckpt).string()), tb((b / ckpt).string());
  ASSERT_EQ(ta.names(), tb.names());
  double worst = 0;
  for (const std::string& name : ta.names()) {
    size_t n = 1;
    for (int64_t d : ta.shape(name)) n *= (size_t)d;
    std::vector<float> x(n), y(n);
    ta.read_f32(name, x.data(), n);
    tb.read_f32(name, y.data(), n);
    const double e = relative_l2(x, y);
    worst = std::max(worst, e);
    EXPECT_LE(e, kTol) << name;
  }
  std::printf("  worst relative L2 difference of a trainable tensor or moment: %.3g (bound %.3g)\n", worst, kTol);
}

TEST_F(DataParallel, MntpOnTwoRanksIsOneProcessWithBothRanksRows) {
  TempDir out("dp_mntp");
  const std::string stage = "--stage mntp --dataset_file_path '" + data("wiki-*.bin") +
                            "' --max_seq_length 32 --mask_token_type '<0x5F>' --attention_dropout 0.1"
                            " --gradient_accumulation_steps 2 --max_steps 4";
  const std::string two =
      train_one_and_two(out, stage, "--per_device_train_batch_size 4", "--per_device_train_batch_size 2");
  EXPECT_NE(two.find("x 2 per device x 2 accumulation = global batch 8"),
            std::string::npos)
      << two;
  EXPECT_EQ(1u, count(two, "step 4/4")) << "progress lines from rank 0 only";
  // The first step's loss: every row computed as in the one process; each rank's part and the one
  // process's whole rounded to fp32 once (mntp_loss), the parts then summed in double: within 2u.
  const double first = log_of(out.path / "one")[0].loss;
  EXPECT_NEAR(first, log_of(out.path / "two")[0].loss, 2 * std::ldexp(1.0, -24) * first);
  expect_same_run(out.path / "one", out.path / "two", 4);
}

TEST_F(DataParallel, SimcseGathersNegativesFromEveryRankAndChunksChangeNothing) {
  TempDir out("dp_simcse");
  const std::string stage = "--stage simcse --dataset_file_path '" + data("sentences-*.bin") +
                            "' --max_seq_length 48 --gradient_accumulation_steps 2 --max_steps 3";
  train_one_and_two(out, stage, "--per_device_train_batch_size 8",
                    "--per_device_train_batch_size 4 --embedding_chunk_size 3");
  expect_same_run(out.path / "one", out.path / "two", 3);
  // Each rank's own rows as the only negatives: another loss (the ablation flag acts).
  const Outcome own = run(kMpirun + " -np 2 " + kBin +
                      train_args(out / "own", stage + " --per_device_train_batch_size 4 --gather_negatives false"));
  ASSERT_EQ(0, own.status) << own.output;
  EXPECT_GT(std::abs(log_of(out.path / "own")[0].loss - log_of(out.path / "one")[0].loss), 1e-3);
}

TEST_F(DataParallel, OneTextPerRankIsEnoughWhenTheNegativesAreGathered) {
  TempDir out("dp_one");
  const std::string stage = "--stage simcse --dataset_file_path '" + data("sentences-*.bin") +
                            "' --max_seq_length 48 --max_steps 1 --per_device_train_batch_size 1";
  const Outcome gathered = run(kMpirun + " -np 2 " + kBin + train_args(out / "gathered", stage));
  EXPECT_EQ(0, gathered.status) << gathered.output;
  // Each rank alone: one candidate per query, the loss 0 whatever the weights. Refused once, by rank 0.
  const Outcome own = run(kMpirun + " -np 2 " + kBin + train_args(out / "own", stage + " --gather_negatives false"));
  EXPECT_NE(0, own.status);
  EXPECT_EQ(1u, count(own.output, "gives each query one candidate")) << own.output;
}

TEST_F(DataParallel, SupervisedWithHardNegativesLatentHeadDropoutAndAccumulation) {
  TempDir out("dp_sup");
  const std::string stage = "--stage supervised --dataset_file_path '" + data("sick-*.bin") +
                            "' --gradient_accumulation_steps 2 --max_steps 3 --warmup_steps 1"
                            " --pooling_mode latent_attention --latent_num_latents 8 --latent_heads 2"
                            " --attention_dropout 0.1";
  train_one_and_two(out, stage, "--per_device_train_batch_size 4",
                    "--per_device_train_batch_size 2 --embedding_chunk_size 1");
  expect_same_run(out.path / "one", out.path / "two", 3);
}

TEST_F(DataParallel, TwoRanksCheckpointResumesInOneProcessWithTheSameGlobalBatch) {
  TempDir out("dp_resume");
  const std::string stage = "--stage mntp --dataset_file_path '" + data("wiki-*.bin") +
                            "' --max_seq_length 32 --mask_token_type '<0x5F>' --max_steps 4"
                            " --lr_scheduler_type constant";  // the first run's schedule must not end at step 2
  ASSERT_EQ(0, run(kBin + train_args(out / "one", stage + " --per_device_train_batch_size 4")).status);
  const Outcome first = run(kMpirun + " -np 2 " + kBin +
                        train_args(out / "resumed", stage + " --per_device_train_batch_size 2 --stop_after_n_steps 2"));
  ASSERT_EQ(0, first.status) << first.output;
  ASSERT_TRUE(fs::exists(out.path / "resumed/checkpoint-2"));
  const std::string resume = " --resume_from_checkpoint latest";
  const Outcome refused =
      run(kBin + train_args(out / "resumed", stage + " --per_device_train_batch_size 2" + resume, 3, false));
  EXPECT_NE(0, refused.status);
  EXPECT_NE(refused.output.find("the checkpoint was trained with a global batch of 4 (2 ranks x 2 per device), this "
                                "run has 2 (1 x 2)"),
            std::string::npos)
      << refused.output;
  const Outcome second =
      run(kBin + train_args(out / "resumed", stage + " --per_device_train_batch_size 4" + resume, 3, false));
  ASSERT_EQ(0, second.status) << second.output;
  expect_same_run(out.path / "one", out.path / "resumed", 4);

  // At the same world size the continuation is bit-exact: the same reductions in the same order.
  const std::string two = kMpirun + " -np 2 " + kBin;
  ASSERT_EQ(0, run(two + train_args(out / "two", stage + " --per_device_train_batch_size 2")).status);
  ASSERT_EQ(0, run(two + train_args(out / "two_resumed", stage + " --per_device_train_batch_size 2 --stop_after_n_steps 2"))
                   .status);
  const Outcome again =
      run(two + train_args(out / "two_resumed", stage + " --per_device_train_batch_size 2" + resume, 3, false));
  ASSERT_EQ(0, again.status) << again.output;
  for (const char* f : {"checkpoint-4/state.safetensors", "adapter_model.safetensors"}) {
    std::ifstream a(out.path / "two" / f, std::ios::binary), b(out.path / "two_resumed" / f, std::ios::binary);
    const std::string x((std::istreambuf_iterator<char>(a)), {}), y((std::istreambuf_iterator<char>(b)), {});
    EXPECT_FALSE(x.empty()) << f;
    EXPECT_TRUE(x == y) << f << " differs after a resume at the same world size";
  }
}

TEST_F(DataParallel, SigusrToMpirunStopsEveryRankWithACheckpointAndTheResumeFinishesTheSameRun) {
  TempDir out("dp_signal");
  const std::string stage = "--stage mntp --dataset_file_path '" + data("wiki-*.bin") +
                            "' --max_seq_length 32 --mask_token_type '<0x5F>' --max_steps 300"
                            " --per_device_train_batch_size 2 --lr_scheduler_type constant";
  const std::string two = kMpirun + " -np 2 " + kBin;
  ASSERT_EQ(0, run(two + train_args(out / "whole", stage)).status);
  // mpirun forwards SIGUSR1 to every rank; it arrives mid-run (300 steps take several seconds).
  const std::string script = out / "signal.sh";
  std::ofstream(script) << two << train_args(out / "stopped", stage) << " &\np=$!\nsleep 2\nkill -USR1 $p\nwait $p\n"
                        << "echo exit status $?\n";
  const Outcome stopped = run("sh " + script, 120);
  ASSERT_NE(stopped.output.find("exit status 130"), std::string::npos) << stopped.output;
  ASSERT_NE(stopped.output.find("continue with --resume_from_checkpoint latest"), std::string::npos) << stopped.output;
  ASSERT_FALSE(fs::exists(out.path / "stopped/adapter_model.safetensors")) << "the run was not interrupted";
  const Outcome resumed = run(two + train_args(out / "stopped", stage + " --resume_from_checkpoint latest", 3, false));
  ASSERT_EQ(0, resumed.status) << resumed.output;
  std::ifstream a(out.path / "whole/adapter_model.safetensors", std::ios::binary),
      b(out.path / "stopped/adapter_model.safetensors", std::ios::binary);
  const std::string x((std::istreambuf_iterator<char>(a)), {}), y((std::istreambuf_iterator<char>(b)), {});
  EXPECT_FALSE(x.empty());
  EXPECT_TRUE(x == y) << "the stopped and resumed run ends elsewhere than the uninterrupted one";
}

TEST_F(DataParallel, ARankWithAnotherConfigurationStopsEveryRankWithOneMessage) {
  TempDir out("dp_config");
  const std::string stage = "--stage mntp --dataset_file_path '" + data("wiki-*.bin") +
                            "' --max_seq_length 32 --mask_token_type '<0x5F>' --max_steps 2 --per_device_train_batch_size 2";
  // Rank 1 is given another seed.
  const Outcome r = run(kMpirun + " -np 2 sh " +
                        per_rank_script(out, kBin + train_args(out / "run", stage), kBin + train_args(out / "run", stage, 4)),
                    120);
  EXPECT_NE(0, r.status) << r.output;
  EXPECT_EQ(1u, count(r.output, "error:")) << r.output;
  EXPECT_NE(r.output.find("llm2vec train: rank 1 of 2: error: rank 1: the configuration differs from rank 0's: seed = 4 "
                          "here, 3 on rank 0"),
            std::string::npos)
      << r.output;
  EXPECT_FALSE(fs::exists(out.path / "run/checkpoint-1")) << "a run with mismatched ranks trained";
}

TEST_F(DataParallel, AKilledRankEndsTheRunInsteadOfHangingIt) {
  TempDir out("dp_kill");
  const std::string stage = "--stage mntp --dataset_file_path '" + data("wiki-*.bin") +
                            "' --max_seq_length 32 --mask_token_type '<0x5F>' --max_steps 100000 "
                            "--per_device_train_batch_size 2";
  // Rank 1 is killed with SIGKILL after 3 seconds of training; rank 0 would wait for it forever.
  const std::string cmd = kBin + train_args(out / "run", stage);
  const Outcome r = run(kMpirun + " -np 2 sh " + per_rank_script(out, cmd, "timeout -s KILL 3 " + cmd), 120);
  EXPECT_NE(0, r.status) << r.output;
  EXPECT_LT(r.seconds, 60) << "the surviving rank was not ended promptly:\n" << r.output;
  EXPECT_NE(r.output.find("signal 9"), std::string::npos) << "mpirun names the killed rank's signal:\n" << r.output;
}

// MNTP (gradients summed by ncclAllReduce) and SimCSE (the pooled rows of both ranks gathered by
// ncclAllGather on the device, the loss over them on each rank).
TEST_F(DataParallel, NcclPathOnTheEmulatorTrainsAsOneProcess) {
  if (!fs::exists(kEmuBin)) GTEST_SKIP() << kEmuBin << " is not built (make builds it with the emulator)";
  TempDir out("dp_nccl");
  const std::string cuda = " --backend cuda --torch_dtype float32";
  const std::string stages[] = {
      "--stage mntp --dataset_file_path '" + data("wiki-*.bin") +
          "' --max_seq_length 16 --mask_token_type '<0x5F>' --max_steps 2 --attention_dropout 0.1",
      "--stage simcse --dataset_file_path '" + data("sentences-*.bin") + "' --max_seq_length 16 --max_steps 2"};
  for (size_t i = 0; i < 2; ++i) {
    const std::string one_dir = out / ("one" + std::to_string(i)), two_dir = out / ("nccl" + std::to_string(i));
    const Outcome one = run(kEmuBin + train_args(one_dir, stages[i] + cuda + " --per_device_train_batch_size 4"), 600);
    ASSERT_EQ(0, one.status) << one.output;
    const Outcome two = run(
        kMpirun + " -np 2 " + kEmuBin + train_args(two_dir, stages[i] + cuda + " --per_device_train_batch_size 2"), 600);
    ASSERT_EQ(0, two.status) << two.output;
    EXPECT_EQ(0u, count(one.output + two.output, "cpu")) << "the runs were not on the cuda backend";
    expect_same_run(one_dir, two_dir, 2);
  }
}

}  // namespace
}  // namespace l2v
