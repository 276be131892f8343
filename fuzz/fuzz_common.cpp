#include "fuzz/fuzz_common.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <stdexcept>
#include <vector>

namespace l2v::fuzz {
namespace fs = std::filesystem;

namespace {

struct ProcessDir {
  fs::path path;
  ProcessDir() {
    path = fs::temp_directory_path() / ("l2v_fuzz_" + std::to_string(::getpid()));
    fs::create_directories(path);
  }
  ~ProcessDir() {
    std::error_code ec;
    fs::remove_all(path, ec);
  }
};

}  // namespace

std::string input_file(const uint8_t* data, size_t size, const std::string& name) {
  static ProcessDir dir;
  const std::string path = (dir.path / name).string();
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out.write(reinterpret_cast<const char*>(data), static_cast<std::streamsize>(size));
  out.close();
  check(out.good(), path + ": cannot write the fuzz input");
  return path;
}

void parse_or_refuse(const std::string& path, const std::function<void()>& parse) {
  try {
    parse();
  } catch (const std::runtime_error& e) {
    check(std::string(e.what()).find(path) != std::string::npos,
          std::string("the error does not name the file ") + path + ": " + e.what());
  }
}

void check(bool ok, const std::string& what) {
  if (ok) return;
  std::fprintf(stderr, "FUZZ FINDING: %s\n", what.c_str());
  std::abort();
}

}  // namespace l2v::fuzz

namespace l2v::fuzz {

void read_every_tensor(const TensorSource& source) {
  for (const std::string& name : source.names()) {
    size_t n = 1;
    for (int64_t d : source.shape(name)) n *= static_cast<size_t>(d);
    std::vector<float> values(n);
    source.read_f32(name, values.data(), n);
  }
}

}  // namespace l2v::fuzz

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string path = l2v::fuzz::input_file(data, size, l2v::fuzz::kInputName);
  l2v::fuzz::parse_or_refuse(path, [&] { l2v::fuzz::fuzz_input(path, data, size); });
  return 0;
}
