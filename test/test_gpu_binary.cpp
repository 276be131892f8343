// The nvcc-built binary (build/llm2vec_cuda, made by `make` whenever nvcc is present) on a machine
// without a GPU must stop with a clear message and a non-zero exit status, not crash.
#include <gtest/gtest.h>

#include <sys/wait.h>

#include <cstdio>
#include <fstream>
#include <string>

namespace {

TEST(CudaBinary, WithoutAGpuItExplainsAndExitsNonZero) {
  const std::string bin = "build/llm2vec_cuda";
  if (!std::ifstream(bin)) GTEST_SKIP() << bin << " was not built (no nvcc on this machine)";
  const std::string cmd = bin +
                          " demo --model assets/stories260K/stories260K.bin --tokenizer assets/stories260K/tok512.bin"
                          " --text assets/stories260K/sentences.txt 2>&1";
  FILE* pipe = popen(cmd.c_str(), "r");
  ASSERT_NE(nullptr, pipe);
  std::string output;
  char buf[512];
  while (std::fgets(buf, sizeof buf, pipe)) output += buf;
  const int status = pclose(pipe);
  ASSERT_TRUE(WIFEXITED(status)) << "the binary did not exit normally (crashed?):\n" << output;
  if (WEXITSTATUS(status) == 0) GTEST_SKIP() << "this machine has a usable GPU";
  EXPECT_EQ(1, WEXITSTATUS(status)) << output;
  EXPECT_NE(std::string::npos, output.find("no CUDA GPU is available")) << output;
  EXPECT_NE(std::string::npos, output.find("--backend cpu")) << output;
}

}  // namespace
