#include "data/gguf.h"

#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <stdexcept>

namespace l2v {
namespace {

float f16_to_f32(uint16_t h) {
  const uint32_t sign = (uint32_t)(h >> 15) << 31, exp = (h >> 10) & 0x1F, mant = h & 0x3FF;
  uint32_t bits;
  if (exp == 0x1F) {
    bits = sign | 0x7F800000u | (mant << 13);  // inf, NaN
  } else if (exp != 0) {
    bits = sign | ((exp + 112) << 23) | (mant << 13);
  } else if (mant == 0) {
    bits = sign;  // +-0
  } else {        // subnormal: normalise
    int e = 113;
    uint32_t m = mant;
    while (!(m & 0x400)) {
      m <<= 1;
      --e;
    }
    bits = sign | ((uint32_t)e << 23) | ((m & 0x3FF) << 13);
  }
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

uint16_t u16(const uint8_t* p) { return (uint16_t)(p[0] | p[1] << 8); }
uint32_t u32(const uint8_t* p) { return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24; }
float half(const uint8_t* p) { return f16_to_f32(u16(p)); }

struct TypeInfo {
  size_t block, bytes;  // elements and bytes per block
};
TypeInfo type_info(uint32_t type) {
  switch ((GgmlType)type) {
    case GgmlType::kF32: return {1, 4};
    case GgmlType::kF16: return {1, 2};
    case GgmlType::kBF16: return {1, 2};
    case GgmlType::kQ4_0: return {32, 18};
    case GgmlType::kQ4_1: return {32, 20};
    case GgmlType::kQ5_0: return {32, 22};
    case GgmlType::kQ5_1: return {32, 24};
    case GgmlType::kQ8_0: return {32, 34};
    case GgmlType::kQ4_K: return {256, 144};
    case GgmlType::kQ5_K: return {256, 176};
    case GgmlType::kQ6_K: return {256, 210};
  }
  throw std::invalid_argument("ggml type " + ggml_type_name(type) + " is not supported");
}

// The 6-bit scale and min of sub-block j of a Q4_K / Q5_K super-block (12 packed bytes).
void scale_min_k4(const uint8_t* s, int j, uint8_t* sc, uint8_t* m) {
  if (j < 4) {
    *sc = s[j] & 63;
    *m = s[j + 4] & 63;
  } else {
    *sc = (s[j + 4] & 0xF) | ((s[j - 4] >> 6) << 4);
    *m = (s[j + 4] >> 4) | ((s[j] >> 6) << 4);
  }
}

}  // namespace

std::string ggml_type_name(uint32_t type) {
  switch ((GgmlType)type) {
    case GgmlType::kF32: return "F32";
    case GgmlType::kF16: return "F16";
    case GgmlType::kBF16: return "BF16";
    case GgmlType::kQ4_0: return "Q4_0";
    case GgmlType::kQ4_1: return "Q4_1";
    case GgmlType::kQ5_0: return "Q5_0";
    case GgmlType::kQ5_1: return "Q5_1";
    case GgmlType::kQ8_0: return "Q8_0";
    case GgmlType::kQ4_K: return "Q4_K";
    case GgmlType::kQ5_K: return "Q5_K";
    case GgmlType::kQ6_K: return "Q6_K";
  }
  return "type " + std::to_string(type);
}

size_t ggml_bytes(uint32_t type, size_t n) {
  const TypeInfo t = type_info(type);
  if (n % t.block) throw std::invalid_argument(std::to_string(n) + " elements are not whole " + ggml_type_name(type) + " blocks");
  return n / t.block * t.bytes;
}

void dequantize_ggml(uint32_t type, const uint8_t* data, size_t n, float* out) {
  const TypeInfo info = type_info(type);
  ggml_bytes(type, n);  // checks n
  const size_t blocks = n / info.block;
  for (size_t b = 0; b < blocks; ++b) {
    const uint8_t* p = data + b * info.bytes;
    float* y = out + b * info.block;
    switch ((GgmlType)type) {
      case GgmlType::kF32: std::memcpy(y, p, 4); break;
      case GgmlType::kF16: y[0] = half(p); break;
      case GgmlType::kBF16: {
        const uint32_t bits = (uint32_t)u16(p) << 16;
        std::memcpy(y, &bits, 4);
        break;
      }
      case GgmlType::kQ4_0: {
        const float d = half(p);
        for (int j = 0; j < 16; ++j) {
          y[j] = d * (float)((p[2 + j] & 0xF) - 8);
          y[j + 16] = d * (float)((p[2 + j] >> 4) - 8);
        }
        break;
      }
      case GgmlType::kQ4_1: {
        const float d = half(p), m = half(p + 2);
        for (int j = 0; j < 16; ++j) {
          y[j] = d * (float)(p[4 + j] & 0xF) + m;
          y[j + 16] = d * (float)(p[4 + j] >> 4) + m;
        }
        break;
      }
      case GgmlType::kQ5_0:
      case GgmlType::kQ5_1: {
        const bool q51 = (GgmlType)type == GgmlType::kQ5_1;
        const float d = half(p), m = q51 ? half(p + 2) : 0.0f;
        const uint32_t qh = u32(p + (q51 ? 4 : 2));
        const uint8_t* qs = p + (q51 ? 8 : 6);
        for (int j = 0; j < 16; ++j) {
          const int lo = (qs[j] & 0xF) | (int)((qh >> j) & 1) << 4;
          const int hi = (qs[j] >> 4) | (int)((qh >> (j + 16)) & 1) << 4;
          if (q51) {
            y[j] = d * (float)lo + m;
            y[j + 16] = d * (float)hi + m;
          } else {
            y[j] = d * (float)(lo - 16);
            y[j + 16] = d * (float)(hi - 16);
          }
        }
        break;
      }
      case GgmlType::kQ8_0: {
        const float d = half(p);
        for (int j = 0; j < 32; ++j) y[j] = (float)(int8_t)p[2 + j] * d;
        break;
      }
      case GgmlType::kQ4_K:
      case GgmlType::kQ5_K: {
        // d, dmin, 12 bytes of 6-bit scales and mins, (Q5_K: 32 bytes of fifth bits,) 128 bytes of nibbles:
        // sub-block 2i the low nibbles of qs[32i .. 32i+31], 2i+1 the high ones; Q5_K's bit for sub-block s
        // is bit s of qh[l]. value = (d sc) q - (dmin m), each product in fp32.
        const bool q5 = (GgmlType)type == GgmlType::kQ5_K;
        const float d = half(p), dmin = half(p + 2);
        const uint8_t* scales = p + 4;
        const uint8_t* qh = p + 16;
        const uint8_t* qs = p + (q5 ? 48 : 16);
        for (int s = 0; s < 8; ++s) {
          uint8_t sc, m;
          scale_min_k4(scales, s, &sc, &m);
          const float dl = d * (float)sc, ml = dmin * (float)m;
          for (int l = 0; l < 32; ++l) {
            const uint8_t byte = qs[32 * (s / 2) + l];
            int q = s % 2 ? byte >> 4 : byte & 0xF;
            if (q5) q |= ((qh[l] >> s) & 1) << 4;
            y[32 * s + l] = dl * (float)q - ml;
          }
        }
        break;
      }
      case GgmlType::kQ6_K: {
        // ql[128], qh[64], int8 scales[16], d: value v of sub-block b = v / 32 (half h = b / 4) takes the
        // nibble (b % 4) / 2 of ql[64h + 32 (b % 2) + l] and bits 2 (b % 4) of qh[32h + l], minus 32;
        // value = (d scale[v / 16]) q.
        const uint8_t* ql = p;
        const uint8_t* qh = p + 128;
        const int8_t* sc = (const int8_t*)(p + 192);
        const float d = half(p + 208);
        for (int v = 0; v < 256; ++v) {
          const int blk = v / 32, l = v % 32, h = blk / 4, k = blk % 4;
          const uint8_t lbyte = ql[64 * h + 32 * (k % 2) + l];
          const int lo = k / 2 ? lbyte >> 4 : lbyte & 0xF;
          const int hi = (qh[32 * h + l] >> (2 * k)) & 3;
          const float dl = d * (float)sc[v / 16];
          y[v] = dl * (float)((lo | hi << 4) - 32);
        }
        break;
      }
    }
  }
}

uint64_t GgufTensor::elements() const {
  uint64_t n = 1;
  for (uint64_t d : dims) n *= d;
  return n;
}

namespace {

// A bounds-checked little-endian reader over the mapped file.
struct Cursor {
  const uint8_t* data;
  size_t size, pos = 0;
  const std::string& path;

  [[noreturn]] void fail(const std::string& what) const {
    throw std::runtime_error(path + ": " + what + " (at byte " + std::to_string(pos) + " of " + std::to_string(size) +
                             ")");
  }
  const uint8_t* take(size_t n, const std::string& what) {
    if (n > size - pos) fail("truncated: " + what + " runs past the end of the file");
    const uint8_t* p = data + pos;
    pos += n;
    return p;
  }
  template <typename T>
  T get(const std::string& what) {
    T v;
    std::memcpy(&v, take(sizeof(T), what), sizeof(T));
    return v;
  }
  std::string string(const std::string& what) {
    const uint64_t n = get<uint64_t>(what + "'s length");
    if (n > size - pos) fail(what + ": a string of " + std::to_string(n) + " bytes runs past the end of the file");
    const uint8_t* p = take((size_t)n, what);
    return std::string((const char*)p, (size_t)n);
  }
  nlohmann::json value(uint32_t type, const std::string& key, int depth) {
    switch (type) {
      case 0: return get<uint8_t>(key);
      case 1: return get<int8_t>(key);
      case 2: return get<uint16_t>(key);
      case 3: return get<int16_t>(key);
      case 4: return get<uint32_t>(key);
      case 5: return get<int32_t>(key);
      case 6: return get<float>(key);
      case 7: {
        const uint8_t b = get<uint8_t>(key);
        if (b > 1) fail(key + ": a bool that is neither 0 nor 1");
        return b == 1;
      }
      case 8: return string(key);
      case 9: {
        if (depth > 0) fail(key + ": nested arrays are not supported");
        const uint32_t elem = get<uint32_t>(key + "'s element type");
        const uint64_t n = get<uint64_t>(key + "'s element count");
        if (n > size - pos) fail(key + ": an array of " + std::to_string(n) + " elements cannot fit in the file");
        nlohmann::json a = nlohmann::json::array();
        for (uint64_t i = 0; i < n; ++i) a.push_back(value(elem, key + "[" + std::to_string(i) + "]", depth + 1));
        return a;
      }
      case 10: return get<uint64_t>(key);
      case 11: return get<int64_t>(key);
      case 12: return get<double>(key);
    }
    fail(key + ": unknown value type " + std::to_string(type));
  }
};

}  // namespace

GgufFile::GgufFile(const std::string& path) : path_(path) {
  const int fd = ::open(path.c_str(), O_RDONLY);
  if (fd < 0) throw std::runtime_error(path + ": cannot open a GGUF file: " + std::strerror(errno));
  struct stat st {};
  if (::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode)) {
    ::close(fd);
    throw std::runtime_error(path + ": not a regular file");
  }
  size_ = (size_t)st.st_size;
  if (size_ > 0) {
    void* m = ::mmap(nullptr, size_, PROT_READ, MAP_PRIVATE, fd, 0);
    if (m == MAP_FAILED) {
      ::close(fd);
      throw std::runtime_error(path + ": cannot map: " + std::strerror(errno));
    }
    data_ = static_cast<const uint8_t*>(m);
  }
  ::close(fd);
  try {
    Cursor c{data_, size_, 0, path_};
    const uint8_t* magic = c.take(4, "the magic");
    if (std::memcmp(magic, "GGUF", 4) != 0) c.fail("not a GGUF file (the first bytes are not \"GGUF\")");
    version_ = c.get<uint32_t>("the version");
    if (version_ != 2 && version_ != 3)
      c.fail("GGUF version " + std::to_string(version_) + " is not supported (2 and 3 are; a big-endian file reads as a huge version)");
    const uint64_t n_tensors = c.get<uint64_t>("the tensor count"), n_kv = c.get<uint64_t>("the metadata count");
    if (n_tensors > size_ || n_kv > size_) c.fail("tensor or metadata count larger than the file");
    metadata_ = nlohmann::json::object();
    for (uint64_t i = 0; i < n_kv; ++i) {
      const std::string key = c.string("metadata key " + std::to_string(i));
      const uint32_t type = c.get<uint32_t>(key + "'s type");
      if (metadata_.contains(key)) c.fail("duplicate metadata key " + key);
      metadata_[key] = c.value(type, key, 0);
    }
    uint64_t alignment = 32;
    if (metadata_.contains("general.alignment")) {
      const nlohmann::json& a = metadata_.at("general.alignment");
      if (!a.is_number_unsigned() || a.get<uint64_t>() == 0 || (a.get<uint64_t>() & (a.get<uint64_t>() - 1)))
        c.fail("general.alignment must be a power of two");
      alignment = a.get<uint64_t>();
    }
    for (uint64_t i = 0; i < n_tensors; ++i) {
      GgufTensor t;
      t.name = c.string("tensor name " + std::to_string(i));
      const uint32_t n_dims = c.get<uint32_t>(t.name + "'s dimension count");
      if (n_dims == 0 || n_dims > 4) c.fail("tensor " + t.name + ": " + std::to_string(n_dims) + " dimensions");
      uint64_t elements = 1;
      for (uint32_t d = 0; d < n_dims; ++d) {
        const uint64_t dim = c.get<uint64_t>(t.name + "'s dimensions");
        if (dim == 0 || elements > (uint64_t(1) << 48) / dim) c.fail("tensor " + t.name + ": bad dimension " + std::to_string(dim));
        elements *= dim;
        t.dims.push_back(dim);
      }
      t.type = c.get<uint32_t>(t.name + "'s type");
      t.offset = c.get<uint64_t>(t.name + "'s offset");
      try {
        type_info(t.type);
        if (t.dims[0] % type_info(t.type).block)
          c.fail("tensor " + t.name + ": rows of " + std::to_string(t.dims[0]) + " are not whole " +
                 ggml_type_name(t.type) + " blocks");
        t.bytes = ggml_bytes(t.type, elements);
      } catch (const std::invalid_argument& e) {
        c.fail("tensor " + t.name + ": " + e.what());
      }
      if (t.offset % alignment) c.fail("tensor " + t.name + ": offset not a multiple of the alignment");
      for (const GgufTensor& other : tensors_)
        if (other.name == t.name) c.fail("duplicate tensor name " + t.name);
      tensors_.push_back(std::move(t));
    }
    const uint64_t data_start = (c.pos + alignment - 1) / alignment * alignment;
    for (GgufTensor& t : tensors_) {
      if (t.offset > size_ || data_start > size_ - t.offset || t.bytes > size_ - data_start - t.offset)
        throw std::runtime_error(path_ + ": tensor " + t.name + " (" + std::to_string(t.bytes) +
                                 " bytes) lies past the end of the file");
      t.offset += data_start;
    }
  } catch (...) {
    if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
    throw;
  }
}

GgufFile::~GgufFile() {
  if (data_) ::munmap(const_cast<uint8_t*>(data_), size_);
}

const GgufTensor& GgufFile::tensor(const std::string& name) const {
  for (const GgufTensor& t : tensors_)
    if (t.name == name) return t;
  throw std::runtime_error(path_ + ": no tensor named " + name);
}

std::vector<float> GgufFile::dequantize(const GgufTensor& t) const {
  std::vector<float> out(t.elements());
  dequantize_ggml(t.type, data_ + t.offset, out.size(), out.data());
  return out;
}

}  // namespace l2v
