#include "data/npy.h"

#include "data/file_io.h"


#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <iterator>
#include <limits>
#include <stdexcept>

namespace l2v {

#if !defined(__BYTE_ORDER__) || __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "data/npy.cpp writes and reads '<f4' data by memcpy: it assumes a little-endian host"
#endif

namespace {

constexpr char kMagic[] = "\x93NUMPY";  // 6 bytes
constexpr size_t kMagicLen = 6;
constexpr size_t kAlign = 64;            // numpy's ARRAY_ALIGN
constexpr size_t kGrowthAxisDigits = 21;  // numpy's GROWTH_AXIS_MAX_DIGITS

[[noreturn]] void fail(const std::string& path, const std::string& what) {
  throw std::runtime_error(path + ": " + what);
}

// The header dict of a .npy file: {'key': value, ...} with Python literal values. Only what numpy.save
// writes is understood: string values, True/False, and tuples of non-negative integers.
struct NpyHeader {
  std::string descr;
  bool fortran_order = false;
  std::vector<uint64_t> shape;
  bool has_descr = false, has_fortran = false, has_shape = false;
};

class HeaderParser {
 public:
  HeaderParser(const std::string& path, const std::string& s) : path_(path), s_(s) {}

  NpyHeader parse() {
    NpyHeader h;
    skip_ws();
    expect('{');
    for (;;) {
      skip_ws();
      if (peek() == '}') {
        ++i_;
        break;
      }
      std::string key = string_literal();
      skip_ws();
      expect(':');
      skip_ws();
      if (key == "descr") {
        h.descr = string_literal();
        h.has_descr = true;
      } else if (key == "fortran_order") {
        h.fortran_order = boolean();
        h.has_fortran = true;
      } else if (key == "shape") {
        h.shape = int_tuple();
        h.has_shape = true;
      } else {
        bad("unexpected key '" + key + "'");
      }
      skip_ws();
      if (peek() == ',') {
        ++i_;
        continue;
      }
      skip_ws();
      expect('}');
      break;
    }
    skip_ws();
    if (i_ != s_.size()) bad("trailing characters after the dict");
    if (!h.has_descr || !h.has_fortran || !h.has_shape) bad("needs the keys 'descr', 'fortran_order' and 'shape'");
    return h;
  }

 private:
  [[noreturn]] void bad(const std::string& what) const {
    fail(path_, "malformed .npy header (" + what + "): " + s_);
  }
  char peek() const { return i_ < s_.size() ? s_[i_] : '\0'; }
  void skip_ws() {
    while (i_ < s_.size() && (s_[i_] == ' ' || s_[i_] == '\n' || s_[i_] == '\t')) ++i_;
  }
  void expect(char c) {
    if (peek() != c) bad(std::string("expected '") + c + "' at offset " + std::to_string(i_));
    ++i_;
  }
  std::string string_literal() {
    const char q = peek();
    if (q != '\'' && q != '"') bad("expected a quoted string at offset " + std::to_string(i_));
    size_t end = s_.find(q, i_ + 1);
    if (end == std::string::npos) bad("unterminated string");
    std::string out = s_.substr(i_ + 1, end - i_ - 1);
    i_ = end + 1;
    return out;
  }
  bool boolean() {
    if (s_.compare(i_, 4, "True") == 0) {
      i_ += 4;
      return true;
    }
    if (s_.compare(i_, 5, "False") == 0) {
      i_ += 5;
      return false;
    }
    bad("expected True or False at offset " + std::to_string(i_));
  }
  std::vector<uint64_t> int_tuple() {
    expect('(');
    std::vector<uint64_t> out;
    for (;;) {
      skip_ws();
      if (peek() == ')') {
        ++i_;
        return out;
      }
      if (peek() < '0' || peek() > '9') bad("expected a dimension at offset " + std::to_string(i_));
      uint64_t v = 0;
      while (peek() >= '0' && peek() <= '9') {
        const uint64_t d = (uint64_t)(peek() - '0');
        if (v > (std::numeric_limits<uint64_t>::max() - d) / 10) bad("dimension too large");
        v = v * 10 + d;
        ++i_;
      }
      out.push_back(v);
      skip_ws();
      if (peek() == ',') ++i_;
      else if (peek() != ')') bad("expected ',' or ')' at offset " + std::to_string(i_));
    }
  }

  const std::string& path_;
  const std::string& s_;
  size_t i_ = 0;
};

}  // namespace

void write_npy_f32(const std::string& path, const float* data, size_t rows, size_t cols) {
  if (cols != 0 && rows > std::numeric_limits<size_t>::max() / sizeof(float) / cols)
    fail(path, "array too large");
  std::string dict = "{'descr': '<f4', 'fortran_order': False, 'shape': (" + std::to_string(rows) + ", " +
                     std::to_string(cols) + "), }";
  // numpy leaves room for the first axis to grow to 21 digits, then pads with spaces and a final newline
  // so that magic + version + length + header is a multiple of 64 (a full 64 when it already was).
  dict.append(kGrowthAxisDigits - std::to_string(rows).size(), ' ');
  const size_t hlen = dict.size() + 1;
  const size_t padlen = kAlign - ((kMagicLen + 2 + 2 + hlen) % kAlign);
  const size_t header_len = hlen + padlen;  // fits uint16: the dict is < 100 bytes
  const size_t data_bytes = rows * cols * sizeof(float);
  std::string bytes;
  bytes.reserve(kMagicLen + 4 + header_len + data_bytes);
  bytes.append(kMagic, kMagicLen);
  bytes.push_back('\x01');
  bytes.push_back('\x00');
  bytes.push_back((char)(header_len & 0xff));
  bytes.push_back((char)(header_len >> 8));
  bytes += dict;
  bytes.append(padlen, ' ');
  bytes.push_back('\n');
  if (data_bytes) bytes.append(reinterpret_cast<const char*>(data), data_bytes);
  write_file_atomic(path, bytes);
}

std::vector<float> read_npy_f32(const std::string& path, size_t* rows, size_t* cols) {
  std::ifstream in = open_input_file(path, "a .npy file");
  const std::string file((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  if (in.bad()) fail(path, "read error");
  if (file.size() < kMagicLen + 2 || file.compare(0, kMagicLen, kMagic, kMagicLen) != 0)
    fail(path, "not a .npy file (no \\x93NUMPY magic)");
  const unsigned major = (unsigned char)file[6], minor = (unsigned char)file[7];
  if (minor != 0 || major < 1 || major > 3)
    fail(path, "unsupported .npy format version " + std::to_string(major) + "." + std::to_string(minor));
  const size_t len_bytes = major == 1 ? 2 : 4;
  const size_t prefix = kMagicLen + 2 + len_bytes;
  if (file.size() < prefix) fail(path, "truncated .npy header");
  size_t header_len = 0;
  for (size_t i = 0; i < len_bytes; ++i) header_len |= (size_t)(unsigned char)file[8 + i] << (8 * i);
  if (file.size() - prefix < header_len) fail(path, "truncated .npy header");
  const NpyHeader h = HeaderParser(path, file.substr(prefix, header_len)).parse();
  if (h.descr != "<f4")
    fail(path, "dtype '" + h.descr + "' is not little-endian float32 ('<f4'); save with arr.astype('<f4')");
  if (h.fortran_order) fail(path, "array is in Fortran order; save np.ascontiguousarray(arr)");
  if (h.shape.size() != 2) fail(path, "array has " + std::to_string(h.shape.size()) + " dimensions, expected 2");
  const uint64_t r = h.shape[0], c = h.shape[1];
  const uint64_t max_elems = std::numeric_limits<size_t>::max() / sizeof(float);
  if (c != 0 && r > max_elems / c) fail(path, "array shape too large");
  const size_t data_bytes = (size_t)(r * c) * sizeof(float);
  const size_t have = file.size() - prefix - header_len;
  if (have != data_bytes)
    fail(path, "shape (" + std::to_string(r) + ", " + std::to_string(c) + ") needs " + std::to_string(data_bytes) +
                   " data bytes, the file has " + std::to_string(have));
  std::vector<float> out((size_t)(r * c));
  if (data_bytes) std::memcpy(out.data(), file.data() + prefix + header_len, data_bytes);
  *rows = (size_t)r;
  *cols = (size_t)c;
  return out;
}

}  // namespace l2v
