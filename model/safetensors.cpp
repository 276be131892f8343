#include "model/safetensors.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <set>
#include <stdexcept>
#include <tuple>

namespace l2v {

// safetensors stores little-endian data and the readers below reinterpret it in place.
static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "safetensors I/O assumes a little-endian host");

namespace fs = std::filesystem;

namespace {

// The same bound the reference implementation uses: a header beyond it is a corrupt length field, and
// refusing it early avoids trying to parse gigabytes of tensor data as JSON.
constexpr uint64_t kMaxHeaderBytes = 100'000'000;

[[noreturn]] void fail(const std::string& msg) { throw std::runtime_error(msg); }

std::string errno_text() { return std::strerror(errno); }

// Element size of every fixed-size safetensors dtype. Sub-byte dtypes (F4, F6) are absent on purpose:
// nothing this project loads uses them, and they would be reported as unknown rather than misread.
int dtype_size(const std::string& d) {
  static const std::map<std::string, int> sizes = {
      {"BOOL", 1}, {"U8", 1},  {"I8", 1},  {"F8_E5M2", 1}, {"F8_E4M3", 1}, {"F8_E8M0", 1},
      {"I16", 2},  {"U16", 2}, {"F16", 2}, {"BF16", 2},    {"I32", 4},     {"U32", 4},
      {"F32", 4},  {"I64", 8}, {"U64", 8}, {"F64", 8}};
  auto it = sizes.find(d);
  return it == sizes.end() ? 0 : it->second;
}

bool mul_ok(uint64_t a, uint64_t b, uint64_t* out) { return !__builtin_mul_overflow(a, b, out); }

// Large tensors are converted by several threads; small ones are not worth the fork/join.
constexpr int64_t kParallelThreshold = 1 << 18;

}  // namespace

float bf16_to_f32(uint16_t bits) {
  // bf16 is exactly the upper half of an IEEE binary32, so widening is a shift.
  uint32_t u = static_cast<uint32_t>(bits) << 16;
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

float f16_to_f32(uint16_t bits) {
  // binary16: 1 sign bit, 5 exponent bits (bias 15), 10 mantissa bits. Every binary16 value is exactly
  // representable in binary32 (bias 127, 23 mantissa bits), including the subnormals, which become
  // normal numbers after renormalisation.
  uint32_t sign = static_cast<uint32_t>(bits & 0x8000u) << 16;
  uint32_t exp = (bits >> 10) & 0x1Fu;
  uint32_t mant = bits & 0x3FFu;
  uint32_t u;
  if (exp == 0x1F) {
    u = sign | 0x7F800000u | (mant << 13);  // inf, or NaN with its payload kept
  } else if (exp != 0) {
    u = sign | ((exp - 15 + 127) << 23) | (mant << 13);
  } else if (mant == 0) {
    u = sign;  // signed zero
  } else {
    // Subnormal: value = mant * 2^-24. Shift the leading one up to the implicit-bit position (bit 10),
    // lowering the exponent by one per shift, starting from the subnormal exponent -14.
    int e = -14;
    while ((mant & 0x400u) == 0) {
      mant <<= 1;
      --e;
    }
    u = sign | (static_cast<uint32_t>(e + 127) << 23) | ((mant & 0x3FFu) << 13);
  }
  float f;
  std::memcpy(&f, &u, sizeof f);
  return f;
}

// ---------------------------------------------------------------------------------------------------
// MappedFile

MappedFile::MappedFile(const std::string& path) : path_(path) {
  int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) fail(path + ": cannot open: " + errno_text());
  struct stat st;
  if (::fstat(fd, &st) != 0) {
    std::string e = errno_text();
    ::close(fd);
    fail(path + ": cannot stat: " + e);
  }
  if (!S_ISREG(st.st_mode)) {
    ::close(fd);
    fail(path + ": not a regular file");
  }
  size_ = static_cast<uint64_t>(st.st_size);
  if (size_ > 0) {
    void* p = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (p == MAP_FAILED) {
      std::string e = errno_text();
      ::close(fd);
      fail(path + ": cannot mmap " + std::to_string(size_) + " bytes: " + e);
    }
    data_ = static_cast<const uint8_t*>(p);
  }
  // The mapping stays valid after the descriptor is closed.
  ::close(fd);
}

MappedFile::~MappedFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

// ---------------------------------------------------------------------------------------------------
// SafetensorsCheckpoint

SafetensorsCheckpoint::~SafetensorsCheckpoint() = default;

SafetensorsCheckpoint::SafetensorsCheckpoint(const std::string& path) {
  std::error_code ec;
  if (fs::is_directory(path, ec)) {
    fs::path single = fs::path(path) / "model.safetensors";
    fs::path index = fs::path(path) / "model.safetensors.index.json";
    if (fs::exists(single, ec)) {
      origin_ = single.string();
      metadata_ = add_shard(origin_);
    } else if (fs::exists(index, ec)) {
      open_index(index.string());
    } else {
      fail(path + ": directory holds neither model.safetensors nor model.safetensors.index.json");
    }
  } else if (path.size() >= 5 && path.compare(path.size() - 5, 5, ".json") == 0) {
    open_index(path);
  } else {
    origin_ = path;
    metadata_ = add_shard(path);
  }
}

nlohmann::json SafetensorsCheckpoint::add_shard(const std::string& file) {
  auto map = std::make_unique<MappedFile>(file);
  const uint64_t fsize = map->size();
  if (fsize < 8)
    fail(file + ": not a safetensors file: " + std::to_string(fsize) +
         " bytes, shorter than the 8-byte header length");
  uint64_t hlen = 0;
  std::memcpy(&hlen, map->data(), 8);
  if (hlen > kMaxHeaderBytes)
    fail(file + ": safetensors header length " + std::to_string(hlen) +
         " bytes exceeds the 100 MB limit (corrupt or not a safetensors file)");
  if (hlen > fsize - 8)
    fail(file + ": safetensors header length " + std::to_string(hlen) + " bytes runs past the end of the " +
         std::to_string(fsize) + "-byte file (truncated?)");

  const char* hbegin = reinterpret_cast<const char*>(map->data() + 8);
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(hbegin, hbegin + hlen);
  } catch (const nlohmann::json::exception& e) {
    fail(file + ": safetensors header is not valid JSON: " + e.what());
  }
  if (!header.is_object()) fail(file + ": safetensors header is not a JSON object");

  const uint8_t* data_section = map->data() + 8 + hlen;
  const uint64_t data_size = fsize - 8 - hlen;
  const size_t shard_index = shards_.size();
  nlohmann::json metadata = nlohmann::json::object();
  struct Extent {
    uint64_t begin, end;
    std::string name;
  };
  std::vector<Extent> extents;

  for (auto it = header.begin(); it != header.end(); ++it) {
    const std::string& name = it.key();
    const nlohmann::json& v = it.value();
    if (name == "__metadata__") {
      if (!v.is_object()) fail(file + ": \"__metadata__\" is not a JSON object");
      for (auto m = v.begin(); m != v.end(); ++m)
        if (!m.value().is_string())
          fail(file + ": \"__metadata__\" value for key '" + m.key() + "' is not a string");
      metadata = v;
      continue;
    }
    const std::string what = file + ": tensor '" + name + "'";
    if (!v.is_object()) fail(what + ": header entry is not a JSON object");
    for (const char* key : {"dtype", "shape", "data_offsets"})
      if (!v.contains(key)) fail(what + ": header entry has no \"" + key + "\"");

    Tensor t;
    if (!v["dtype"].is_string()) fail(what + ": \"dtype\" is not a string");
    t.dtype = v["dtype"].get<std::string>();
    const int esize = dtype_size(t.dtype);
    if (esize == 0) fail(what + ": unknown dtype '" + t.dtype + "'");

    const nlohmann::json& shp = v["shape"];
    if (!shp.is_array()) fail(what + ": \"shape\" is not an array");
    t.numel = 1;
    for (const auto& d : shp) {
      if (!d.is_number_unsigned() || d.get<uint64_t>() > static_cast<uint64_t>(INT64_MAX))
        fail(what + ": \"shape\" holds a value that is not a non-negative integer");
      uint64_t dim = d.get<uint64_t>();
      t.shape.push_back(static_cast<int64_t>(dim));
      if (!mul_ok(t.numel, dim, &t.numel)) fail(what + ": element count of shape overflows 64 bits");
    }

    const nlohmann::json& off = v["data_offsets"];
    if (!off.is_array() || off.size() != 2 || !off[0].is_number_unsigned() || !off[1].is_number_unsigned())
      fail(what + ": \"data_offsets\" is not a pair of non-negative integers");
    const uint64_t begin = off[0].get<uint64_t>(), end = off[1].get<uint64_t>();
    if (end < begin)
      fail(what + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
           "] end before begin");
    if (end > data_size)
      fail(what + ": data_offsets [" + std::to_string(begin) + ", " + std::to_string(end) +
           "] run past the " + std::to_string(data_size) + "-byte data section");
    uint64_t expected = 0;
    if (!mul_ok(t.numel, static_cast<uint64_t>(esize), &expected))
      fail(what + ": byte size of shape overflows 64 bits");
    if (end - begin != expected)
      fail(what + ": " + std::to_string(end - begin) + " bytes in the file but shape " + shape_str(t.shape) +
           " of " + t.dtype + " needs " + std::to_string(expected));

    t.shard = shard_index;
    t.data = data_section + begin;
    t.nbytes = end - begin;
    auto prev = tensors_.find(name);
    if (prev != tensors_.end())
      fail("tensor '" + name + "' appears in both " + where(prev->second) + " and " + file);
    tensors_.emplace(name, std::move(t));
    extents.push_back({begin, end, name});
  }
  // The reference implementation's layout rule: in order of their offsets, the tensors tile the data
  // section exactly, from its first byte to its last, with neither gaps nor overlaps. Anything else is a
  // damaged file (a header length off by one, aliased or shifted offsets) that would load as garbage.
  std::sort(extents.begin(), extents.end(),
            [](const Extent& a, const Extent& b) { return std::tie(a.begin, a.end) < std::tie(b.begin, b.end); });
  uint64_t covered = 0;
  for (size_t i = 0; i < extents.size(); ++i) {
    const Extent& e = extents[i];
    if (e.begin == covered) {
      covered = e.end;
      continue;
    }
    const std::string what = file + ": tensor '" + e.name + "': data_offsets [" + std::to_string(e.begin) + ", " +
                             std::to_string(e.end) + "] ";
    if (i == 0) fail(what + "leave a gap of " + std::to_string(e.begin) + " bytes at the start of the data section");
    const Extent& p = extents[i - 1];
    const std::string prev = "tensor '" + p.name + "' [" + std::to_string(p.begin) + ", " + std::to_string(p.end) + "]";
    if (e.begin < covered) fail(what + "overlap " + prev);
    fail(what + "leave a gap of " + std::to_string(e.begin - covered) + " bytes after " + prev);
  }
  if (covered != data_size)
    fail(file + ": the tensors cover " + std::to_string(covered) + " bytes of the " + std::to_string(data_size) +
         "-byte data section" +
         (extents.empty() ? std::string(" (no tensors)") : ", ending with tensor '" + extents.back().name + "'") +
         ": " + std::to_string(data_size - covered) + " bytes after them belong to no tensor");
  shards_.push_back(std::move(map));
  return metadata;
}

void SafetensorsCheckpoint::open_index(const std::string& index_path) {
  origin_ = index_path;
  std::ifstream in(index_path, std::ios::binary);
  if (!in) fail(index_path + ": cannot open safetensors index: " + errno_text());
  // ordered_json keeps the file's order, so "the first shard" and error messages follow the index.
  nlohmann::ordered_json index;
  try {
    index = nlohmann::ordered_json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail(index_path + ": safetensors index is not valid JSON: " + e.what());
  }
  if (!index.is_object() || !index.contains("weight_map") || !index["weight_map"].is_object())
    fail(index_path + ": safetensors index has no \"weight_map\" object");
  const nlohmann::ordered_json& wm = index["weight_map"];
  if (wm.empty()) fail(index_path + ": \"weight_map\" is empty");

  // Each shard is opened once, in the order the index first mentions it.
  std::vector<std::string> shard_files;
  std::set<std::string> seen;
  for (auto it = wm.begin(); it != wm.end(); ++it) {
    if (!it.value().is_string() || it.value().get<std::string>().empty())
      fail(index_path + ": weight_map entry for tensor '" + it.key() + "' is not a file name");
    const std::string f = it.value().get<std::string>();
    if (seen.insert(f).second) shard_files.push_back(f);
  }

  const fs::path dir = fs::path(index_path).parent_path();
  std::map<std::string, size_t> shard_of_file;
  for (const std::string& f : shard_files) {
    const std::string shard_path = (dir / f).string();
    std::error_code ec;
    if (!fs::exists(shard_path, ec))
      fail(index_path + ": shard file '" + f + "' (" + shard_path + ") does not exist");
    shard_of_file[f] = shards_.size();
    nlohmann::json md = add_shard(shard_path);
    if (shards_.size() == 1) metadata_ = std::move(md);
  }

  for (auto it = wm.begin(); it != wm.end(); ++it) {
    const std::string f = it.value().get<std::string>();
    auto t = tensors_.find(it.key());
    if (t == tensors_.end() || t->second.shard != shard_of_file[f])
      fail(index_path + ": weight_map puts tensor '" + it.key() + "' in " + shards_[shard_of_file[f]]->path() +
           ", which does not contain it");
  }
}

const SafetensorsCheckpoint::Tensor& SafetensorsCheckpoint::find(const std::string& name) const {
  auto it = tensors_.find(name);
  if (it == tensors_.end()) fail(origin_ + ": no tensor named '" + name + "'");
  return it->second;
}

std::string SafetensorsCheckpoint::where(const Tensor& t) const { return shards_[t.shard]->path(); }

bool SafetensorsCheckpoint::has(const std::string& name) const { return tensors_.count(name) != 0; }

std::vector<int64_t> SafetensorsCheckpoint::shape(const std::string& name) const { return find(name).shape; }

std::string SafetensorsCheckpoint::dtype(const std::string& name) const { return find(name).dtype; }

std::vector<std::string> SafetensorsCheckpoint::names() const {
  std::vector<std::string> r;
  r.reserve(tensors_.size());
  for (const auto& kv : tensors_) r.push_back(kv.first);
  return r;
}

std::string SafetensorsCheckpoint::describe() const { return origin_; }

void SafetensorsCheckpoint::read_f32(const std::string& name, float* dst, size_t count) const {
  const Tensor& t = find(name);
  if (count != t.numel)
    fail(where(t) + ": tensor '" + name + "' has " + std::to_string(t.numel) + " elements (shape " +
         shape_str(t.shape) + ") but the caller asked for " + std::to_string(count));
  const uint8_t* src = t.data;
  const int64_t n = static_cast<int64_t>(count);
  // Elements are copied through memcpy because the data section need not be aligned for the dtype.
  if (t.dtype == "F32") {
    // In pieces on every thread: the copy also pages in the file's mapping and the destination.
    constexpr int64_t kPiece = kParallelThreshold;
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
    for (int64_t at = 0; at < n; at += kPiece)
      std::memcpy(dst + at, src + at * sizeof(float), (size_t)std::min(kPiece, n - at) * sizeof(float));
  } else if (t.dtype == "BF16" || t.dtype == "F16") {
    const bool bf = t.dtype == "BF16";
#pragma omp parallel for schedule(static) if (n > kParallelThreshold)
    for (int64_t i = 0; i < n; ++i) {
      uint16_t b;
      std::memcpy(&b, src + 2 * i, 2);
      dst[i] = bf ? bf16_to_f32(b) : f16_to_f32(b);
    }
  } else {
    fail(where(t) + ": tensor '" + name + "' has dtype " + t.dtype +
         ", which cannot be read as fp32 (supported: F32, BF16, F16)");
  }
}

std::vector<int64_t> SafetensorsCheckpoint::read_i64(const std::string& name) const {
  const Tensor& t = find(name);
  std::vector<int64_t> out(t.numel);
  if (t.dtype == "I64") {
    if (t.numel) std::memcpy(out.data(), t.data, t.nbytes);
  } else if (t.dtype == "I32") {
    for (uint64_t i = 0; i < t.numel; ++i) {
      int32_t v;
      std::memcpy(&v, t.data + 4 * i, 4);
      out[i] = v;
    }
  } else {
    fail(where(t) + ": tensor '" + name + "' has dtype " + t.dtype +
         ", which cannot be read as integers (supported: I64, I32)");
  }
  return out;
}

// ---------------------------------------------------------------------------------------------------
// Writer

namespace {

// Writes all of buf, retrying short writes and EINTR.
void write_all(int fd, const void* buf, uint64_t n, const std::string& tmp) {
  const uint8_t* p = static_cast<const uint8_t*>(buf);
  while (n > 0) {
    ssize_t w = ::write(fd, p, n > (1u << 30) ? (1u << 30) : n);
    if (w < 0) {
      if (errno == EINTR) continue;
      fail(tmp + ": write failed: " + errno_text());
    }
    p += w;
    n -= static_cast<uint64_t>(w);
  }
}

}  // namespace

void write_safetensors(const std::string& path, const std::vector<SafetensorsEntry>& tensors,
                       const std::map<std::string, std::string>& metadata) {
  // ordered_json keeps the header in the order the tensors are given, matching the data order.
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) {
    nlohmann::ordered_json md = nlohmann::ordered_json::object();
    for (const auto& kv : metadata) md[kv.first] = kv.second;
    header["__metadata__"] = md;
  }
  std::vector<uint64_t> sizes;
  uint64_t offset = 0;
  for (const SafetensorsEntry& e : tensors) {
    const std::string what = path + ": tensor '" + e.name + "'";
    if (e.name.empty() || e.name == "__metadata__") fail(path + ": invalid tensor name '" + e.name + "'");
    if (header.contains(e.name)) fail(what + " is given twice");
    const int esize = dtype_size(e.dtype);
    if (esize == 0) fail(what + ": unknown dtype '" + e.dtype + "'");
    uint64_t bytes = static_cast<uint64_t>(esize);
    for (int64_t d : e.shape) {
      if (d < 0) fail(what + ": negative dimension in shape " + shape_str(e.shape));
      if (!mul_ok(bytes, static_cast<uint64_t>(d), &bytes)) fail(what + ": byte size overflows 64 bits");
    }
    if (bytes > 0 && e.data == nullptr) fail(what + ": data pointer is null");
    header[e.name] = {{"dtype", e.dtype}, {"shape", e.shape}, {"data_offsets", {offset, offset + bytes}}};
    sizes.push_back(bytes);
    offset += bytes;
  }

  std::string hjson;
  try {
    hjson = header.dump();
  } catch (const nlohmann::json::exception& e) {
    fail(path + ": cannot encode the safetensors header (tensor names and metadata must be UTF-8): " +
         e.what());
  }
  // Padding the header to a multiple of 8 keeps the data section 8-byte aligned in the file, so readers
  // that map it can use the tensors in place.
  hjson.append((8 - hjson.size() % 8) % 8, ' ');
  const uint64_t hlen = hjson.size();

  const std::string tmp = path + ".tmp." + std::to_string(::getpid());
  int fd = ::open(tmp.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
  if (fd < 0) fail(tmp + ": cannot create (writing " + path + "): " + errno_text());
  try {
    write_all(fd, &hlen, 8, tmp);
    write_all(fd, hjson.data(), hlen, tmp);
    for (size_t i = 0; i < tensors.size(); ++i)
      if (sizes[i] > 0) write_all(fd, tensors[i].data, sizes[i], tmp);
    // The data must be on disk before the rename publishes it; otherwise a crash could leave the final
    // name pointing at a file whose blocks were never written.
    if (::fsync(fd) != 0) fail(tmp + ": fsync failed: " + errno_text());
    if (::close(fd) != 0) {
      fd = -1;
      fail(tmp + ": close failed: " + errno_text());
    }
    fd = -1;
    if (::rename(tmp.c_str(), path.c_str()) != 0)
      fail(tmp + ": cannot rename to " + path + ": " + errno_text());
  } catch (...) {
    if (fd >= 0) ::close(fd);
    ::unlink(tmp.c_str());
    throw;
  }
  // Persist the rename itself. Best effort: some filesystems refuse fsync on directories, and the file is
  // already complete under its final name, so a failure here cannot expose a truncated checkpoint.
  fs::path dir = fs::path(path).parent_path();
  int dfd = ::open(dir.empty() ? "." : dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
  if (dfd >= 0) {
    (void)::fsync(dfd);
    ::close(dfd);
  }
}

}  // namespace l2v
