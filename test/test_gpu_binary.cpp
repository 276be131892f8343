// The nvcc-built binary (build/llm2vec_cuda, made by `make` whenever nvcc is present) on a machine
// without a GPU must stop with a clear message and a non-zero exit status, not crash; built with cuDNN
// it takes --attention_impl cudnn (and runs the demo on it where a GPU is present).
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace {

const std::string kBin = "build/llm2vec_cuda";

struct DemoRun {
  int status;  // pclose's
  std::string output;
};

// `kBin demo` on the bundled model with `extra` options, stdout and stderr together.
DemoRun run_demo(const std::string& extra) {
  const std::string cmd = kBin +
                          " demo --model assets/stories260K/stories260K.bin --tokenizer assets/stories260K/tok512.bin"
                          " --text assets/stories260K/sentences.txt" +
                          extra + " 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return {-1, "popen failed"};
  DemoRun run{0, ""};
  char buf[512];
  while (std::fgets(buf, sizeof buf, pipe)) run.output += buf;
  run.status = pclose(pipe);
  return run;
}

TEST(CudaBinary, WithoutAGpuItExplainsAndExitsNonZero) {
  if (!std::ifstream(kBin)) GTEST_SKIP() << kBin << " was not built (no nvcc on this machine)";
  const DemoRun run = run_demo("");
  ASSERT_TRUE(WIFEXITED(run.status)) << "the binary did not exit normally (crashed?):\n" << run.output;
  if (WEXITSTATUS(run.status) == 0) GTEST_SKIP() << "this machine has a usable GPU";
  EXPECT_EQ(1, WEXITSTATUS(run.status)) << run.output;
  EXPECT_NE(std::string::npos, run.output.find("no CUDA GPU is available")) << run.output;
  EXPECT_NE(std::string::npos, run.output.find("--backend cpu")) << run.output;
}

// A build with cuDNN takes --attention_impl cudnn: on a GPU the demo runs on cuDNN SDPA, without one it
// stops at the missing GPU (not at the option).
TEST(CudaBinary, TakesAttentionImplCudnnWhenBuiltWithCudnn) {
  if (!std::ifstream(kBin)) GTEST_SKIP() << kBin << " was not built (no nvcc on this machine)";
  const DemoRun run = run_demo(" --attention_impl cudnn");
  ASSERT_TRUE(WIFEXITED(run.status)) << "the binary did not exit normally (crashed?):\n" << run.output;
  if (run.output.find("'cudnn' is not built") != std::string::npos)
    GTEST_SKIP() << kBin << " was built without cuDNN: " << run.output;
  if (WEXITSTATUS(run.status) == 0) {
    EXPECT_NE(std::string::npos, run.output.find("attention: cudnn")) << run.output;
    return;
  }
  EXPECT_NE(std::string::npos, run.output.find("no CUDA GPU is available")) << run.output;
}

}  // namespace
