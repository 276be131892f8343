#include "data/file_io.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstdio>
#include <algorithm>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <vector>
#include <stdexcept>

namespace l2v {

void write_file_atomic(const std::string& path, const std::string& content) {
  const std::string tmp = path + ".tmp." + std::to_string(getpid());
  const int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0) throw std::runtime_error(path + ": cannot create " + tmp + ": " + std::strerror(errno));
  size_t done = 0;
  while (done < content.size()) {
    const ssize_t w = ::write(fd, content.data() + done, content.size() - done);
    if (w < 0 && errno == EINTR) continue;
    if (w <= 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      ::unlink(tmp.c_str());
      throw std::runtime_error(path + ": write failed: " + why);
    }
    done += (size_t)w;
  }
  if (::fsync(fd) != 0 || ::close(fd) != 0) {
    ::unlink(tmp.c_str());
    throw std::runtime_error(path + ": fsync/close failed: " + std::strerror(errno));
  }
  if (::rename(tmp.c_str(), path.c_str()) != 0) {
    const std::string why = std::strerror(errno);
    ::unlink(tmp.c_str());
    throw std::runtime_error(path + ": rename failed: " + why);
  }
}

void remove_atomic_write_leftovers(const std::string& path) {
  namespace fs = std::filesystem;
  const fs::path p(path);
  const fs::path dir = p.parent_path().empty() ? fs::path(".") : p.parent_path();
  const std::string stem = p.filename().string() + ".tmp.";
  std::error_code ec;
  for (const auto& e : fs::directory_iterator(dir, ec)) {
    const std::string name = e.path().filename().string();
    if (name.size() > stem.size() && name.compare(0, stem.size(), stem) == 0 &&
        name.find_first_not_of("0123456789", stem.size()) == std::string::npos)
      fs::remove(e.path(), ec);
  }
}

std::ifstream open_input_file(const std::string& path, const std::string& what) {
  if (std::filesystem::is_directory(path)) throw std::runtime_error(path + ": is a directory, not " + what);
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error(path + ": cannot open " + what + ": " + std::strerror(errno));
  return in;
}

nlohmann::json read_json_file(const std::string& path, const std::string& what) {
  std::ifstream in = open_input_file(path, what);
  try {
    return nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    throw std::runtime_error(path + ": not valid JSON: " + e.what());
  }
}

void for_each_json_line(const std::string& path, const std::string& what,
                        const std::function<void(const nlohmann::json&, const std::string&)>& fn) {
  std::ifstream in = open_input_file(path, what);
  size_t line_no = 0;
  for (std::string line; std::getline(in, line);) {
    ++line_no;
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.find_first_not_of(" \t") == std::string::npos) continue;
    const std::string at = path + ":" + std::to_string(line_no) + ": ";
    nlohmann::json j;
    try {
      j = nlohmann::json::parse(line);
    } catch (const nlohmann::json::exception& e) {
      throw std::runtime_error(at + "not valid JSON: " + e.what());
    }
    if (!j.is_object()) throw std::runtime_error(at + "expected a JSON object");
    fn(j, at);
  }
}

namespace {

constexpr uint64_t kPrime1 = 0x9E3779B185EBCA87ull, kPrime2 = 0xC2B2AE3D27D4EB4Full, kPrime3 = 0x165667B19E3779F9ull,
                   kPrime4 = 0x85EBCA77C2B2AE63ull, kPrime5 = 0x27D4EB2F165667C5ull;

uint64_t rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }
uint64_t round64(uint64_t acc, uint64_t word) { return rotl(acc + word * kPrime2, 31) * kPrime1; }
uint64_t load64(const unsigned char* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];  // little-endian on every host
  return v;
}

// The streaming state: whole 32-byte stripes go through the lanes as they arrive; the last partial
// stripe and the total length meet the finalisation, so any chunking gives checksum64 of the whole.
struct Checksum64 {
  uint64_t lane[4] = {kPrime1 + kPrime2, kPrime2, 0, 0 - kPrime1};
  unsigned char pending[32];
  size_t npending = 0, total = 0;

  void update(const unsigned char* p, size_t n) {
    total += n;
    while (n > 0) {
      if (npending == 0 && n >= 32) {
        for (int l = 0; l < 4; ++l) lane[l] = round64(lane[l], load64(p + 8 * l));
        p += 32;
        n -= 32;
        continue;
      }
      const size_t take = std::min(n, 32 - npending);
      std::memcpy(pending + npending, p, take);
      npending += take;
      p += take;
      n -= take;
      if (npending == 32) {
        for (int l = 0; l < 4; ++l) lane[l] = round64(lane[l], load64(pending + 8 * l));
        npending = 0;
      }
    }
  }
  uint64_t final() const {
    uint64_t h = rotl(lane[0], 1) + rotl(lane[1], 7) + rotl(lane[2], 12) + rotl(lane[3], 18) + (uint64_t)total;
    for (int l = 0; l < 4; ++l) h = (h ^ round64(0, lane[l])) * kPrime1 + kPrime4;
    for (size_t i = 0; i < npending; ++i) h = rotl(h ^ (pending[i] * kPrime5), 11) * kPrime1;
    h ^= h >> 33;
    h *= kPrime2;
    h ^= h >> 29;
    h *= kPrime3;
    return h ^ (h >> 32);
  }
};

}  // namespace

uint64_t checksum64(const void* data, size_t size) {
  Checksum64 c;
  c.update(static_cast<const unsigned char*>(data), size);
  return c.final();
}

uint64_t file_checksum64(const std::string& path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(path + ": cannot open for its checksum: " + std::strerror(errno));
  Checksum64 c;
  std::vector<unsigned char> buf(1 << 20);
  for (;;) {
    const ssize_t n = ::read(fd, buf.data(), buf.size());
    if (n < 0 && errno == EINTR) continue;
    if (n < 0) {
      const std::string why = std::strerror(errno);
      ::close(fd);
      throw std::runtime_error(path + ": read failed: " + why);
    }
    if (n == 0) break;
    c.update(buf.data(), (size_t)n);
  }
  ::close(fd);
  return c.final();
}

std::string checksum_hex(uint64_t value) {
  char buf[24];
  std::snprintf(buf, sizeof buf, "0x%016llx", (unsigned long long)value);
  return buf;
}

FileLock::FileLock(const std::string& path, const std::string& what) {
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd_ < 0) throw std::runtime_error(path + ": cannot create the lock file of " + what + ": " + std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char pid[32] = {0};
    const ssize_t n = ::pread(fd_, pid, sizeof pid - 1, 0);
    ::close(fd_);
    fd_ = -1;
    if (err != EWOULDBLOCK)
      throw std::runtime_error(path + ": cannot lock " + what + ": " + std::strerror(err));
    std::string holder = n > 0 ? std::string(pid, (size_t)n) : "unknown";
    while (!holder.empty() && (holder.back() == '\n' || holder.back() == ' ')) holder.pop_back();
    throw std::runtime_error(what + " is in use by another process (pid " + holder + ", lock file " + path +
                             "): wait for it to finish or stop it first");
  }
  // The pid is for the other process's message only: the lock holds even if it cannot be written.
  const std::string me = std::to_string(::getpid()) + "\n";
  const bool pid_written = ::ftruncate(fd_, 0) == 0 && ::pwrite(fd_, me.data(), me.size(), 0) == (ssize_t)me.size();
  (void)pid_written;
}

FileLock::~FileLock() {
  if (fd_ >= 0) ::close(fd_);
}

}  // namespace l2v
