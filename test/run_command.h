// Runs a shell command for the tests that drive the binary (test_cli, test_data_parallel): its exit
// status (-1 when it did not exit normally) and its standard output.
#pragma once
#include <sys/wait.h>

#include <cstdio>
#include <string>

namespace l2v::test {

struct CommandResult {
  int status = -1;
  std::string output;
};

inline CommandResult run_command(const std::string& cmd) {
  CommandResult r;
  FILE* pipe = popen(cmd.c_str(), "r");
  if (!pipe) return {-1, "popen failed: " + cmd};
  char buf[4096];
  for (size_t n; (n = fread(buf, 1, sizeof buf, pipe)) > 0;) r.output.append(buf, n);
  const int st = pclose(pipe);
  r.status = WIFEXITED(st) ? WEXITSTATUS(st) : -1;
  return r;
}

}  // namespace l2v::test
