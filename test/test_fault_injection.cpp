// Fault injection on the real binary (build/llm2vec, run as a child process), as a user's machine
// would inflict it:
//   - kill -9 at random moments of training, of the export of its outputs and of `prepare`, then the
//     run is restarted (resumed when a checkpoint exists) until it finishes: the outputs are byte-
//     identical to an uninterrupted run's, and after every kill nothing partial is accepted (outputs are
//     complete and equal to the reference or refused; a shard set is the old one, the new one or refused);
//   - a full disk during every kind of write, injected with RLIMIT_FSIZE (a write past the limit fails
//     with EFBIG): the run fails with a message naming the file, and the next run without the limit
//     produces the reference outputs (prepare: the earlier set stays intact);
//   - SIGINT in the middle of a long accumulated step stops the run at the next micro-batch boundary, and
//     a second SIGINT ends it at once.
// Each loop is bounded in attempts and wall time; the kill times are drawn from a fixed seed.
#include <gtest/gtest.h>

#include <cstdlib>

#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "data/shard_manifest.h"
#include "model/peft.h"
#include "test/temp_dir.h"

namespace l2v {
namespace {

namespace fs = std::filesystem;
using test::TempDir;
using Clock = std::chrono::steady_clock;

// L2V_BIN: another build of the binary (make test-sanitize runs its ASan + UBSan build here).
const std::string kBin = std::getenv("L2V_BIN") ? std::getenv("L2V_BIN") : "build/llm2vec";
const std::string kModel = "assets/stories260K/stories260K.bin";
const std::string kTok = "assets/stories260K/tok512.bin";

std::string read_file(const fs::path& p) {
  std::ifstream in(p, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>());
}

// Every file under dir (relative path -> bytes), except those whose name is in `skip`.
std::map<std::string, std::string> tree(const fs::path& dir, const std::vector<std::string>& skip = {}) {
  std::map<std::string, std::string> out;
  if (!fs::exists(dir)) return out;
  for (const auto& e : fs::recursive_directory_iterator(dir)) {
    if (!e.is_regular_file()) continue;
    const std::string name = e.path().filename().string();
    if (std::find(skip.begin(), skip.end(), name) != skip.end()) continue;
    out[fs::relative(e.path(), dir).string()] = read_file(e.path());
  }
  return out;
}

// The names of the files that differ between two trees (for failure messages).
std::string diff(const std::map<std::string, std::string>& a, const std::map<std::string, std::string>& b) {
  std::string s;
  for (const auto& [f, bytes] : a)
    if (!b.count(f)) s += "-" + f + " ";
    else if (b.at(f) != bytes) s += "~" + f + " ";
  for (const auto& [f, bytes] : b)
    if (!a.count(f)) s += "+" + f + " ";
  return s;
}

bool has_checkpoint(const fs::path& out) {
  if (!fs::exists(out)) return false;
  for (const auto& e : fs::directory_iterator(out))
    if (e.path().filename().string().rfind("checkpoint-", 0) == 0) return true;
  return false;
}

struct Child {
  pid_t pid = -1;
  std::string log;  // stdout + stderr
};

// Starts build/llm2vec with `args`; output goes to `log`. file_size_limit > 0 sets RLIMIT_FSIZE (and
// ignores SIGXFSZ, so an oversized write fails with EFBIG instead of killing the process).
Child spawn(const std::vector<std::string>& args, const std::string& log, rlim_t file_size_limit = 0) {
  Child c;
  c.log = log;
  c.pid = ::fork();
  if (c.pid == 0) {
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    ::dup2(fd, 1);
    ::dup2(fd, 2);
    if (file_size_limit > 0) {
      ::signal(SIGXFSZ, SIG_IGN);
      const struct rlimit lim = {file_size_limit, file_size_limit};
      ::setrlimit(RLIMIT_FSIZE, &lim);
    }
    // One thread: the run is tiny, and OpenMP threads spinning on a busy machine only add jitter.
    ::setenv("OMP_NUM_THREADS", "1", 1);
    std::vector<char*> argv;
    argv.push_back(const_cast<char*>(kBin.c_str()));
    for (const std::string& a : args) argv.push_back(const_cast<char*>(a.c_str()));
    argv.push_back(nullptr);
    ::execv(kBin.c_str(), argv.data());
    ::_exit(127);
  }
  return c;
}

// Waits for the child; returns its exit status, or -signal if a signal ended it.
int wait_for(const Child& c) {
  int status = 0;
  while (::waitpid(c.pid, &status, 0) < 0 && errno == EINTR) {
  }
  return WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
}

// Kills the child with SIGKILL after `delay` unless it finished before; returns true if it was killed.
bool kill_after(const Child& c, std::chrono::microseconds delay, int* rc) {
  const auto deadline = Clock::now() + delay;
  int status = 0;
  while (Clock::now() < deadline) {
    if (::waitpid(c.pid, &status, WNOHANG) == c.pid) {
      *rc = WIFEXITED(status) ? WEXITSTATUS(status) : -WTERMSIG(status);
      return false;
    }
    std::this_thread::sleep_for(std::chrono::microseconds(200));
  }
  ::kill(c.pid, SIGKILL);
  *rc = wait_for(c);
  return *rc == -SIGKILL;
}

class FaultInjection : public ::testing::Test {
 protected:
  TempDir dir{"faults"};
  std::string shards;  // the MNTP data, prepared once per test

  void SetUp() override {
    ASSERT_TRUE(fs::exists(kBin)) << kBin << " is built by `make test` before the tests run";
    {
      std::ifstream in("assets/wikitext-2/wiki.valid.raw");
      std::ofstream out(dir / "wiki.txt");
      std::string line;
      for (int i = 0; i < 400 && std::getline(in, line); ++i) out << line << "\n";
    }
    ASSERT_EQ(0, wait_for(spawn(prepare_args(dir / "wiki.txt", dir / "data/wiki", 4000), dir / "prep.log")))
        << read_file(dir / "prep.log");
    shards = dir / "data/wiki-*.bin";
  }

  static std::vector<std::string> prepare_args(const std::string& input, const std::string& out, int shard_tokens) {
    return {"prepare", "--tokenizer", kTok, "--input", input, "--out", out, "--shard-tokens",
            std::to_string(shard_tokens), "--quiet"};
  }
  // A small MNTP run; `changed` replaces or adds options.
  std::vector<std::string> train_args(const std::string& out, bool resume,
                                      const std::map<std::string, std::string>& changed = {}) const {
    std::map<std::string, std::string> o = {{"stage", "mntp"}, {"model_name_or_path", kModel}, {"tokenizer", kTok},
                                            {"dataset_file_path", shards}, {"output_dir", out},
                                            {"mask_token_type", "<0x5F>"}, {"max_seq_length", "32"},
                                            {"per_device_train_batch_size", "4"}, {"max_steps", "8"},
                                            {"save_steps", "1"}, {"logging_steps", "1000"}};
    if (resume) o["resume_from_checkpoint"] = "latest";
    for (const auto& [k, v] : changed) o[k] = v;
    std::vector<std::string> a = {"train"};
    for (const auto& [k, v] : o) a.insert(a.end(), {"--" + k, v});
    return a;
  }
  // The run's outputs and checkpoint tensors, without what differs between runs by design: timings in
  // the log, and the configs that record output_dir and resume_from_checkpoint.
  static std::map<std::string, std::string> outputs(const fs::path& out) {
    return tree(out, {".lock", "train_log.jsonl", "train_config.json", "trainer_state.json"});
  }
  static std::vector<double> losses(const fs::path& out) {
    std::vector<double> l;
    std::ifstream in(out / "train_log.jsonl");
    for (std::string line; std::getline(in, line);) {
      const size_t at = line.find("\"loss\":");
      if (at != std::string::npos) l.push_back(std::stod(line.substr(at + 7)));
    }
    return l;
  }
  // After any interruption: the outputs are either absent, refused (EXPORT_INCOMPLETE), or complete and
  // equal to the reference's.
  static void expect_nothing_partial_accepted(const fs::path& out, const std::map<std::string, std::string>& ref,
                                              const std::string& when) {
    if (!fs::exists(out / "llm2vec_run.json") || fs::exists(out / kExportIncomplete)) return;
    for (const char* f : {"adapter_config.json", "adapter_model.safetensors", "llm2vec_run.json", "llm2vec_config.json",
                          "merged/model.safetensors", "merged/config.json"})
      EXPECT_EQ(ref.at(f), read_file(out / f)) << when << ": " << f << " accepted but not the finished run's";
  }
};

TEST_F(FaultInjection, KillNineDuringTrainingAndExportThenResumeGivesIdenticalOutputs) {
  const fs::path ref = dir.path / "ref";
  const auto t0 = Clock::now();
  ASSERT_EQ(0, wait_for(spawn(train_args(ref.string(), false), dir / "ref.log"))) << read_file(dir / "ref.log");
  const auto run_time = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0);
  const auto reference = outputs(ref);
  ASSERT_TRUE(reference.count("merged/model.safetensors"));
  std::mt19937 rng(2026);
  // Kill times spread over a whole run, the export at its end included. Each episode starts a fresh
  // directory and restarts (resuming when a checkpoint exists) after every kill until a run finishes.
  std::uniform_int_distribution<long> delay(0, run_time.count() * 11 / 10);
  int kills = 0, attempts = 0, episodes = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(60);
  while (kills < 25 && Clock::now() < deadline) {
    const fs::path out = dir.path / ("run" + std::to_string(++episodes));
    for (int rc = -1; rc != 0;) {
      ++attempts;
      const Child c = spawn(train_args(out.string(), has_checkpoint(out)), dir / "run.log");
      if (!kill_after(c, std::chrono::microseconds(delay(rng)), &rc)) {
        ASSERT_EQ(0, rc) << "attempt " << attempts << ":\n" << read_file(dir / "run.log");
        break;
      }
      ++kills;
      expect_nothing_partial_accepted(out, reference, "after kill " + std::to_string(kills));
    }
    EXPECT_EQ("", diff(reference, outputs(out))) << "episode " << episodes;
    EXPECT_EQ(losses(ref), losses(out)) << "episode " << episodes;
  }
  std::printf("  %d kill -9 in %d episodes, %d runs (reference run %.0f ms)\n", kills, episodes, attempts,
              run_time.count() / 1e3);
  EXPECT_GE(kills, 10);
}

// The shard set PREFIX as files: the shards and the manifest (not the lock or a staging directory).
std::map<std::string, std::string> shard_set(const fs::path& dir) {
  std::map<std::string, std::string> out;
  for (const auto& [f, bytes] : tree(dir))
    if (f.rfind("wiki", 0) == 0) out[f] = bytes;
  return out;
}

std::string names(const std::map<std::string, std::string>& files) {
  std::string s;
  for (const auto& [f, bytes] : files) s += f + " (" + std::to_string(bytes.size()) + ") ";
  return s;
}

TEST_F(FaultInjection, KillNineDuringPrepareLeavesTheOldSetTheNewSetOrNothingAccepted) {
  // The old set: the first 100 lines in shards of 3000 tokens; the new one: all 400 lines, other shards.
  {
    std::ifstream in(dir / "wiki.txt");
    std::ofstream out(dir / "short.txt");
    std::string line;
    for (int i = 0; i < 100 && std::getline(in, line); ++i) out << line << "\n";
  }
  const std::string old_input = dir / "short.txt", new_input = dir / "wiki.txt";
  ASSERT_EQ(0, wait_for(spawn(prepare_args(old_input, dir / "old/wiki", 3000), dir / "p.log"))) << read_file(dir / "p.log");
  const auto t0 = Clock::now();
  ASSERT_EQ(0, wait_for(spawn(prepare_args(new_input, dir / "new/wiki", 3000), dir / "p.log"))) << read_file(dir / "p.log");
  const auto run_time = std::chrono::duration_cast<std::chrono::microseconds>(Clock::now() - t0);
  const auto old_set = shard_set(dir.path / "old"), new_set = shard_set(dir.path / "new");
  ASSERT_NE(names(old_set), names(new_set));
  std::mt19937 rng(7);
  std::uniform_int_distribution<long> delay(0, run_time.count() * 11 / 10);
  int kills = 0, attempts = 0, episodes = 0;
  const auto deadline = Clock::now() + std::chrono::seconds(30);
  while (kills < 25 && Clock::now() < deadline) {
    // Each episode starts from the old set in place and re-runs the new prepare after every kill.
    ++episodes;
    ASSERT_EQ(0, wait_for(spawn(prepare_args(old_input, dir / "data/wiki", 3000), dir / "p.log")));
    for (int rc = -1; rc != 0;) {
      ++attempts;
      const Child c = spawn(prepare_args(new_input, dir / "data/wiki", 3000), dir / "p.log");
      if (!kill_after(c, std::chrono::microseconds(delay(rng)), &rc)) {
        ASSERT_EQ(0, rc) << read_file(dir / "p.log");
        break;
      }
      ++kills;
      // What the loader accepts is exactly the old set or exactly the new one.
      std::string error;
      try {
        open_shard_dataset(shards);
      } catch (const std::exception& e) {
        error = e.what();
      }
      const auto now = shard_set(dir.path / "data");
      if (error.empty())
        EXPECT_TRUE(now == old_set || now == new_set)
            << "kill " << kills << ": a mixed set was accepted: vs old " << diff(old_set, now) << "; vs new " << diff(new_set, now);
      else  // refused for the missing manifest, or (killed between removing the old shards and renaming
            // the new ones in) for having no shard at all
        EXPECT_TRUE(error.find("manifest") != std::string::npos || error.find("matches no file") != std::string::npos)
            << error;
    }
    EXPECT_EQ("", diff(new_set, shard_set(dir.path / "data")));
  }
  std::printf("  %d kill -9 in %d episodes, %d runs (prepare %.0f ms)\n", kills, episodes, attempts, run_time.count() / 1e3);
  EXPECT_GE(kills, 10);
}

TEST_F(FaultInjection, AFullDiskDuringAnyWriteFailsCleanlyAndTheNextRunRecovers) {
  const fs::path ref = dir.path / "ref";
  ASSERT_EQ(0, wait_for(spawn(train_args(ref.string(), false), dir / "ref.log")));
  const auto reference = outputs(ref);
  size_t largest = 0;
  for (const auto& [f, bytes] : reference) largest = std::max(largest, bytes.size());
  // Limits below each kind of file the run writes: the config and log, checkpoint state, adapter, merged model.
  int failures = 0;
  for (rlim_t limit : {(rlim_t)512, (rlim_t)8192, (rlim_t)100000, (rlim_t)(largest - 1)}) {
    const fs::path out = dir.path / ("full-" + std::to_string(limit));
    const int rc = wait_for(spawn(train_args(out.string(), false), dir / "full.log", limit));
    const std::string log = read_file(dir / "full.log");
    if (rc != 0) {
      ++failures;
      EXPECT_EQ(1, rc) << "limit " << limit << ": a clean error, not a crash:\n" << log;
      EXPECT_NE(std::string::npos, log.find(out.string())) << "limit " << limit << ": the message names the file:\n" << log;
      expect_nothing_partial_accepted(out, reference, "limit " + std::to_string(limit));
    }
    // Space again: the run completes (resuming what was saved) with the reference's outputs.
    ASSERT_EQ(0, wait_for(spawn(train_args(out.string(), has_checkpoint(out)), dir / "full.log")))
        << "limit " << limit << ":\n" << read_file(dir / "full.log");
    EXPECT_TRUE(outputs(out) == reference) << "limit " << limit;
  }
  EXPECT_EQ(4, failures);
  // prepare with a full disk: the earlier set stays as it was.
  const auto before = tree(dir.path / "data", {".wiki.lock"});
  const int rc = wait_for(spawn(prepare_args(dir / "wiki.txt", dir / "data/wiki", 3000), dir / "p.log", 4096));
  EXPECT_EQ(1, rc) << read_file(dir / "p.log");
  EXPECT_TRUE(tree(dir.path / "data", {".wiki.lock"}) == before);
  EXPECT_NO_THROW(open_shard_dataset(shards));
}

TEST_F(FaultInjection, SigintStopsALongStepAtAMicroBatchAndASecondOneExitsAtOnce) {
  // A step of a million micro-batches: only the micro-batch boundary check can stop it.
  const Child c = spawn(train_args(dir / "long", false, {{"gradient_accumulation_steps", "1000000"}}), dir / "long.log");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  ::kill(c.pid, SIGINT);
  const auto t0 = Clock::now();
  EXPECT_EQ(130, wait_for(c)) << read_file(dir / "long.log");
  EXPECT_LT(std::chrono::duration<double>(Clock::now() - t0).count(), 10.0);
  EXPECT_NE(std::string::npos, read_file(dir / "long.log").find("stopped during step 1")) << read_file(dir / "long.log");
  // Micro-batches of 16 x 512 tokens take seconds, so two signals 300 ms apart land inside one (sent
  // back to back, the kernel may merge them into one pending signal).
  const Child b = spawn(train_args(dir / "big", false, {{"gradient_accumulation_steps", "1000"},
                                                       {"per_device_train_batch_size", "16"},
                                                       {"max_seq_length", "512"}}),
                        dir / "big.log");
  std::this_thread::sleep_for(std::chrono::milliseconds(1500));
  ::kill(b.pid, SIGINT);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ::kill(b.pid, SIGINT);
  EXPECT_EQ(130, wait_for(b)) << read_file(dir / "big.log");
  EXPECT_NE(std::string::npos, read_file(dir / "big.log").find("second stop signal")) << read_file(dir / "big.log");
}

}  // namespace
}  // namespace l2v
