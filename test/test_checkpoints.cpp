// Checkpoint I/O: safetensors reading/writing (single file, sharded index, error handling, 16-bit float
// conversion) and the llama2.c import of the real stories260K model.
#include <gtest/gtest.h>

#include "test/temp_dir.h"
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <string>
#include <vector>

#include "model/llama2c.h"
#include "model/safetensors.h"

namespace fs = std::filesystem;
using l2v::Llama2cCheckpoint;
using l2v::SafetensorsCheckpoint;
using l2v::SafetensorsEntry;

namespace {

class Checkpoints : public ::testing::Test {
 protected:
  std::string path(const std::string& name) const { return tmp_ / name; }
  l2v::test::TempDir tmp_{"test_checkpoints"};
  const fs::path& dir_ = tmp_.path;
};

void write_bytes(const std::string& path, const std::string& bytes) {
  std::ofstream f(path, std::ios::binary | std::ios::trunc);
  f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
  ASSERT_TRUE(f.good()) << path;
}

std::string read_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
}

// A safetensors file assembled by hand: the 8-byte little-endian length, the header text, the data. Kept
// independent of write_safetensors so the reader is tested against the spec, not against our writer.
std::string raw_safetensors(const std::string& header, const std::string& data) {
  uint64_t n = header.size();
  std::string out(reinterpret_cast<const char*>(&n), 8);
  return out + header + data;
}

std::string u16_bytes(const std::vector<uint16_t>& v) {
  return std::string(reinterpret_cast<const char*>(v.data()), v.size() * 2);
}

// Expects `fn` to throw std::runtime_error whose message contains every string in `parts`.
template <typename Fn>
void expect_error(Fn fn, const std::vector<std::string>& parts) {
  try {
    fn();
    ADD_FAILURE() << "expected std::runtime_error mentioning '" << parts.front() << "'";
  } catch (const std::runtime_error& e) {
    for (const std::string& p : parts) EXPECT_NE(std::string(e.what()).find(p), std::string::npos)
        << "message '" << e.what() << "' does not mention '" << p << "'";
  }
}

}  // namespace

// ------------------------------------------------------------------------------------------------------
// safetensors round trip

TEST_F(Checkpoints, RoundTripF32AndI64) {
  std::vector<float> a = {1.5f, -2.25f, 3.0f, 0.0f, -0.0f, 1e-30f};
  std::vector<int64_t> ids = {0, 1, -7, int64_t(1) << 40, std::numeric_limits<int64_t>::min()};
  float scalar = 42.0f;
  const std::string p = path("rt.safetensors");
  l2v::write_safetensors(p,
                         {{"w.a", "F32", {2, 3}, a.data()},
                          {"ids", "I64", {5}, ids.data()},
                          {"s", "F32", {}, &scalar},
                          {"empty", "F32", {0, 4}, nullptr}},
                         {{"format", "pt"}, {"note", "test"}});
  EXPECT_FALSE(fs::exists(p + ".tmp." + std::to_string(::getpid())));

  // Spec layout: header length a multiple of 8, header padded with spaces, data offsets relative to the
  // data section and in the order given.
  const std::string bytes = read_bytes(p);
  uint64_t hlen;
  std::memcpy(&hlen, bytes.data(), 8);
  EXPECT_EQ(hlen % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + hlen + a.size() * 4 + ids.size() * 8 + 4);
  EXPECT_EQ(bytes[8], '{');
  EXPECT_EQ(std::memcmp(bytes.data() + 8 + hlen, a.data(), a.size() * 4), 0);
  auto header = nlohmann::json::parse(bytes.substr(8, hlen));
  EXPECT_EQ(header["w.a"]["data_offsets"], nlohmann::json({0, 24}));
  EXPECT_EQ(header["ids"]["data_offsets"], nlohmann::json({24, 64}));
  EXPECT_EQ(header["s"]["data_offsets"], nlohmann::json({64, 68}));
  EXPECT_EQ(header["empty"]["data_offsets"], nlohmann::json({68, 68}));

  SafetensorsCheckpoint ck(p);
  EXPECT_EQ(ck.describe(), p);
  EXPECT_EQ(ck.names(), (std::vector<std::string>{"empty", "ids", "s", "w.a"}));
  EXPECT_TRUE(ck.has("w.a"));
  EXPECT_FALSE(ck.has("w.b"));
  EXPECT_EQ(ck.shape("w.a"), (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ck.shape("s"), (std::vector<int64_t>{}));
  EXPECT_EQ(ck.dtype("w.a"), "F32");
  EXPECT_EQ(ck.dtype("ids"), "I64");
  std::vector<float> back(6);
  ck.read_f32("w.a", back.data(), back.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_EQ(back[i], a[i]) << i;
    EXPECT_EQ(std::signbit(back[i]), std::signbit(a[i])) << i;
  }
  float s = 0;
  ck.read_f32("s", &s, 1);
  EXPECT_EQ(s, 42.0f);
  ck.read_f32("empty", nullptr, 0);
  EXPECT_EQ(ck.read_i64("ids"), ids);
  EXPECT_EQ(ck.metadata(), nlohmann::json({{"format", "pt"}, {"note", "test"}}));

  // I64 is not silently converted to floats, and floats are not read as integers.
  expect_error([&] { ck.read_f32("ids", back.data(), 5); }, {"ids", p, "I64"});
  expect_error([&] { ck.read_i64("w.a"); }, {"w.a", p, "F32"});

  // Overwriting an existing checkpoint replaces it whole.
  std::vector<float> b = {7.0f};
  l2v::write_safetensors(p, {{"only", "F32", {1}, b.data()}});
  SafetensorsCheckpoint ck2(p);
  EXPECT_EQ(ck2.names(), (std::vector<std::string>{"only"}));
  EXPECT_TRUE(ck2.metadata().empty());
}

// An F32 tensor above the reader's threshold for copying in pieces on every thread (2^18 elements), whose
// length is not a multiple of a piece and whose data starts after another tensor: every element in place.
TEST_F(Checkpoints, LargeF32TensorIsReadWhole) {
  const int64_t n = (int64_t(1) << 19) + 12345;
  std::vector<float> big(n);
  for (int64_t i = 0; i < n; ++i) big[i] = (float)i * 0.5f - 7.0f;
  const float first = 3.0f;
  const std::string p = path("big.safetensors");
  l2v::write_safetensors(p, {{"a", "F32", {1}, &first}, {"big", "F32", {n}, big.data()}});
  SafetensorsCheckpoint ck(p);
  std::vector<float> back(n + 1, -1.0f);
  ck.read_f32("big", back.data(), n);
  for (int64_t i = 0; i < n; ++i) ASSERT_EQ(back[i], big[i]) << "element " << i;
  EXPECT_EQ(back[n], -1.0f) << "written past the tensor";
}

TEST_F(Checkpoints, ReadsI32AsI64) {
  std::vector<int32_t> v = {3, -1, 2147483647};
  write_bytes(path("i32.safetensors"),
              raw_safetensors(R"({"t":{"dtype":"I32","shape":[3],"data_offsets":[0,12]}})",
                              std::string(reinterpret_cast<const char*>(v.data()), 12)));
  SafetensorsCheckpoint ck(path("i32.safetensors"));
  EXPECT_EQ(ck.read_i64("t"), (std::vector<int64_t>{3, -1, 2147483647}));
}

TEST_F(Checkpoints, WriterRejectsBadInput) {
  float x = 1;
  const std::string p = path("bad.safetensors");
  expect_error([&] { l2v::write_safetensors(p, {{"a", "F32", {1}, &x}, {"a", "F32", {1}, &x}}); }, {"'a'", p});
  expect_error([&] { l2v::write_safetensors(p, {{"a", "F31", {1}, &x}}); }, {"'a'", "F31"});
  expect_error([&] { l2v::write_safetensors(p, {{"a", "F32", {-1}, &x}}); }, {"'a'", "negative"});
  expect_error([&] { l2v::write_safetensors(p, {{"a", "F32", {1}, nullptr}}); }, {"'a'", "null"});
  const std::string nodir = path("no/such/dir/x.safetensors");
  expect_error([&] { l2v::write_safetensors(nodir, {{"a", "F32", {1}, &x}}); }, {nodir});
  EXPECT_FALSE(fs::exists(p));
}

// ------------------------------------------------------------------------------------------------------
// 16-bit float conversion, against values derived by hand from the IEEE layouts

TEST_F(Checkpoints, BF16Conversion) {
  // bf16 = sign(1) exponent(8, bias 127) mantissa(7): the top half of a binary32.
  const std::vector<uint16_t> bits = {0x3F80, 0xC000, 0x0000, 0x8000, 0x4049, 0x7F80,
                                      0xFF80, 0x7FC0, 0x0001, 0x7F7F, 0x3E80};
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> want = {
      1.0f, -2.0f, 0.0f, -0.0f,
      3.140625f,                                // 2^1 * (1 + 0x49/128) = 2 * 201/128
      inf, -inf, std::nanf(""),
      std::ldexp(1.0f, -133),                   // smallest subnormal: 2^-126 * 2^-7
      std::ldexp(255.0f / 128.0f, 127),         // largest finite: (2 - 2^-7) * 2^127
      0.25f};                                   // exponent 0x7D = 125 -> 2^-2
  const std::string p = path("bf16.safetensors");
  write_bytes(p, raw_safetensors(R"({"b":{"dtype":"BF16","shape":[11],"data_offsets":[0,22]}})", u16_bytes(bits)));
  SafetensorsCheckpoint ck(p);
  EXPECT_EQ(ck.dtype("b"), "BF16");
  std::vector<float> got(bits.size());
  ck.read_f32("b", got.data(), got.size());
  for (size_t i = 0; i < bits.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << i;
    } else {
      EXPECT_EQ(got[i], want[i]) << "bits 0x" << std::hex << bits[i];
      EXPECT_EQ(std::signbit(got[i]), std::signbit(want[i])) << i;
      EXPECT_EQ(l2v::bf16_to_f32(bits[i]), want[i]);
    }
  }
}

TEST_F(Checkpoints, F16Conversion) {
  // binary16 = sign(1) exponent(5, bias 15) mantissa(10); exponent 0 = subnormal (mant * 2^-24).
  const std::vector<uint16_t> bits = {0x3C00, 0xC000, 0x0001, 0x03FF, 0x0400, 0x7BFF, 0xFBFF, 0x7C00,
                                      0xFC00, 0x7E00, 0x0000, 0x8000, 0x3555, 0x8200, 0x3800};
  const float inf = std::numeric_limits<float>::infinity();
  const std::vector<float> want = {
      1.0f, -2.0f,
      std::ldexp(1.0f, -24),      // smallest subnormal
      std::ldexp(1023.0f, -24),   // largest subnormal
      std::ldexp(1.0f, -14),      // smallest normal
      65504.0f,                   // (2 - 2^-10) * 2^15
      -65504.0f, inf, -inf, std::nanf(""), 0.0f, -0.0f,
      1365.0f / 4096.0f,          // (1 + 0x155/1024) * 2^-2
      -std::ldexp(512.0f, -24),   // negative subnormal, mantissa 0x200
      0.5f};
  const std::string p = path("f16.safetensors");
  write_bytes(p, raw_safetensors(R"({"h":{"dtype":"F16","shape":[3,5],"data_offsets":[0,30]}})", u16_bytes(bits)));
  SafetensorsCheckpoint ck(p);
  std::vector<float> got(bits.size());
  ck.read_f32("h", got.data(), got.size());
  for (size_t i = 0; i < bits.size(); ++i) {
    if (std::isnan(want[i])) {
      EXPECT_TRUE(std::isnan(got[i])) << i;
    } else {
      EXPECT_EQ(got[i], want[i]) << "bits 0x" << std::hex << bits[i];
      EXPECT_EQ(std::signbit(got[i]), std::signbit(want[i])) << i;
    }
  }
  // Every finite binary16 value widens and narrows back to itself (checked against the compiler's own
  // conversion of the widened value, which must be exact).
  for (uint32_t b = 0; b < 0x10000; ++b) {
    float f = l2v::f16_to_f32(static_cast<uint16_t>(b));
    if ((b & 0x7C00) == 0x7C00) {
      EXPECT_TRUE(std::isinf(f) == ((b & 0x3FF) == 0)) << b;
      continue;
    }
    _Float16 h = static_cast<_Float16>(f);
    uint16_t back;
    std::memcpy(&back, &h, 2);
    ASSERT_EQ(back, b) << "f16 0x" << std::hex << b << " -> " << f;
  }
}

TEST_F(Checkpoints, UnalignedDataSection) {
  // The spec does not require the header to be padded, so tensor data can sit at any byte offset.
  std::vector<float> v = {1.0f, 2.0f, 3.0f};
  std::string data = "x" + std::string(reinterpret_cast<const char*>(v.data()), 12);
  write_bytes(path("u.safetensors"),
              raw_safetensors(R"({"pad":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},)"
                              R"("t":{"dtype":"F32","shape":[3],"data_offsets":[1,13]}})",
                              data));
  SafetensorsCheckpoint ck(path("u.safetensors"));
  std::vector<float> got(3);
  ck.read_f32("t", got.data(), 3);
  EXPECT_EQ(got, v);
  expect_error([&] { ck.read_f32("pad", got.data(), 1); }, {"pad", "U8"});
}

// ------------------------------------------------------------------------------------------------------
// Sharded checkpoints and directories

TEST_F(Checkpoints, ShardedIndex) {
  std::vector<float> a = {1, 2, 3, 4}, b = {5, 6}, c = {7};
  fs::create_directories(dir_ / "m");
  l2v::write_safetensors(path("m/model-00001-of-00002.safetensors"),
                         {{"layers.0.w", "F32", {2, 2}, a.data()}, {"layers.0.b", "F32", {2}, b.data()}},
                         {{"format", "pt"}});
  l2v::write_safetensors(path("m/model-00002-of-00002.safetensors"), {{"norm", "F32", {1}, c.data()}},
                         {{"format", "pt"}});
  write_bytes(path("m/model.safetensors.index.json"), R"({
    "metadata": {"total_size": 28},
    "weight_map": {
      "layers.0.w": "model-00001-of-00002.safetensors",
      "layers.0.b": "model-00001-of-00002.safetensors",
      "norm": "model-00002-of-00002.safetensors"
    }})");

  for (const std::string& open_as : {path("m/model.safetensors.index.json"), path("m")}) {
    SafetensorsCheckpoint ck(open_as);
    EXPECT_EQ(ck.describe(), path("m/model.safetensors.index.json"));
    EXPECT_EQ(ck.names(), (std::vector<std::string>{"layers.0.b", "layers.0.w", "norm"}));
    std::vector<float> got(4);
    ck.read_f32("layers.0.w", got.data(), 4);
    EXPECT_EQ(got, a);
    float n = 0;
    ck.read_f32("norm", &n, 1);
    EXPECT_EQ(n, 7.0f);
    EXPECT_EQ(ck.metadata(), nlohmann::json({{"format", "pt"}}));
    // Errors about a tensor name the shard that holds it.
    expect_error([&] { ck.read_f32("norm", got.data(), 2); }, {"norm", "model-00002-of-00002.safetensors"});
  }

  // A directory with both layouts prefers the single file.
  l2v::write_safetensors(path("m/model.safetensors"), {{"single", "F32", {1}, c.data()}});
  SafetensorsCheckpoint single(path("m"));
  EXPECT_EQ(single.names(), (std::vector<std::string>{"single"}));
  EXPECT_EQ(single.describe(), path("m/model.safetensors"));
}

TEST_F(Checkpoints, ShardedIndexErrors) {
  std::vector<float> a = {1, 2};
  l2v::write_safetensors(path("s1.safetensors"), {{"x", "F32", {2}, a.data()}, {"y", "F32", {1}, a.data()}});
  l2v::write_safetensors(path("s2.safetensors"), {{"y", "F32", {1}, a.data()}});
  l2v::write_safetensors(path("s3.safetensors"), {{"z", "F32", {1}, a.data()}});

  write_bytes(path("missing.index.json"), R"({"weight_map": {"x": "s1.safetensors", "q": "nope.safetensors"}})");
  expect_error([&] { SafetensorsCheckpoint ck(path("missing.index.json")); },
               {"nope.safetensors", path("missing.index.json")});

  // The index claims "x" lives in s3, which does not hold it: both names appear in the message.
  write_bytes(path("wrong.index.json"), R"({"weight_map": {"x": "s3.safetensors", "z": "s3.safetensors"}})");
  expect_error([&] { SafetensorsCheckpoint ck(path("wrong.index.json")); }, {"'x'", "s3.safetensors"});

  write_bytes(path("dup.index.json"), R"({"weight_map": {"x": "s1.safetensors", "y": "s2.safetensors"}})");
  expect_error([&] { SafetensorsCheckpoint ck(path("dup.index.json")); },
               {"'y'", "s1.safetensors", "s2.safetensors"});

  write_bytes(path("nomap.index.json"), R"({"metadata": {}})");
  expect_error([&] { SafetensorsCheckpoint ck(path("nomap.index.json")); }, {"weight_map", "nomap.index.json"});
  write_bytes(path("notjson.index.json"), "{oops");
  expect_error([&] { SafetensorsCheckpoint ck(path("notjson.index.json")); }, {"notjson.index.json", "JSON"});

  fs::create_directories(dir_ / "empty");
  expect_error([&] { SafetensorsCheckpoint ck(path("empty")); }, {path("empty"), "model.safetensors"});
}

// ------------------------------------------------------------------------------------------------------
// Malformed files: each error names the file and, where there is one, the tensor

TEST_F(Checkpoints, MalformedFiles) {
  const std::string f4(16, '\0');  // four zero floats
  auto check = [&](const std::string& name, const std::string& bytes, std::vector<std::string> parts) {
    const std::string p = path(name);
    write_bytes(p, bytes);
    parts.push_back(p);
    expect_error([&] { SafetensorsCheckpoint ck(p); }, parts);
  };
  check("short.safetensors", "abc", {"shorter"});
  check("empty.safetensors", "", {"shorter"});
  auto with_length = [](uint64_t n, const std::string& rest) {
    return std::string(reinterpret_cast<const char*>(&n), 8) + rest;
  };
  // The length field claims 64 header bytes but only 10 follow.
  check("past_eof.safetensors", with_length(64, "{\"a\":1}   "), {"past the end"});
  check("absurd.safetensors", with_length(uint64_t(1) << 40, "{}"), {"100 MB"});
  check("badjson.safetensors", raw_safetensors("{\"t\": {\"dtype\": ", ""), {"not valid JSON"});
  check("array.safetensors", raw_safetensors("[1, 2]", ""), {"not a JSON object"});
  check("nodtype.safetensors", raw_safetensors(R"({"w":{"shape":[4],"data_offsets":[0,16]}})", f4),
        {"'w'", "dtype"});
  check("noshape.safetensors", raw_safetensors(R"({"w":{"dtype":"F32","data_offsets":[0,16]}})", f4),
        {"'w'", "shape"});
  check("nooffsets.safetensors", raw_safetensors(R"({"w":{"dtype":"F32","shape":[4]}})", f4),
        {"'w'", "data_offsets"});
  check("unknown_dtype.safetensors",
        raw_safetensors(R"({"w":{"dtype":"F13","shape":[4],"data_offsets":[0,16]}})", f4), {"'w'", "F13"});
  check("out_of_range.safetensors",
        raw_safetensors(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[4,20]}})", f4), {"'w'", "past"});
  check("reversed.safetensors",
        raw_safetensors(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,4]}})", f4), {"'w'", "before"});
  check("size_mismatch.safetensors",
        raw_safetensors(R"({"w":{"dtype":"F32","shape":[2,3],"data_offsets":[0,16]}})", f4),
        {"'w'", "[2, 3]", "24"});
  check("negative_shape.safetensors",
        raw_safetensors(R"({"w":{"dtype":"F32","shape":[-4],"data_offsets":[0,16]}})", f4), {"'w'", "shape"});
  check("bad_metadata.safetensors", raw_safetensors(R"({"__metadata__":{"n":3}})", ""), {"__metadata__"});
  // Found by fuzz_safetensors: a number JSON can spell but not hold escaped as nlohmann's out_of_range.
  check("overflow.safetensors", raw_safetensors(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,1E99999]}})", f4),
        {"not valid JSON", "number overflow"});
  expect_error([&] { SafetensorsCheckpoint ck(path("does_not_exist.safetensors")); },
               {path("does_not_exist.safetensors")});
}

TEST_F(Checkpoints, LayoutMustTileTheDataSection) {
  // The reference implementation's rule: sorted by offset, the tensors cover the data section exactly,
  // without gaps or overlaps. Every file below passes the per-tensor checks (offsets in range, byte size
  // = product(shape) * dtype size) and used to load as garbage.
  const std::string f4(16, '\0'), f8(32, '\0');
  auto check = [&](const std::string& name, const std::string& bytes, std::vector<std::string> parts) {
    const std::string p = path(name);
    write_bytes(p, bytes);
    parts.push_back(p + ": ");
    expect_error([&] { SafetensorsCheckpoint ck(p); }, parts);
  };
  // A header length one byte short: the header's last (padding) byte becomes the data section's first.
  std::string short_len = raw_safetensors(R"({"w":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}} )", f4);
  short_len[0] -= 1;
  check("short_header.safetensors", short_len, {"cover 16 bytes of the 17-byte data section", "'w'"});
  check("aliased.safetensors",
        raw_safetensors(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                        R"("b":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", f8),
        {"tensor 'b': data_offsets [0, 16] overlap tensor 'a' [0, 16]"});
  check("overlap.safetensors",
        raw_safetensors(R"({"a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]},)"
                        R"("b":{"dtype":"F32","shape":[4],"data_offsets":[8,24]}})", f8),
        {"tensor 'b': data_offsets [8, 24] overlap tensor 'a' [0, 16]"});
  check("gap.safetensors",
        raw_safetensors(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},)"
                        R"("b":{"dtype":"F32","shape":[4],"data_offsets":[16,32]}})", f8),
        {"tensor 'b': data_offsets [16, 32] leave a gap of 8 bytes after tensor 'a' [0, 8]"});
  check("late_start.safetensors",
        raw_safetensors(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[8,16]}})", f4),
        {"tensor 'w': data_offsets [8, 16] leave a gap of 8 bytes at the start"});
  check("trailing.safetensors",
        raw_safetensors(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", f4),
        {"cover 8 bytes of the 16-byte data section, ending with tensor 'w'", "8 bytes after them"});
  check("no_tensors.safetensors", raw_safetensors("{}", f4), {"cover 0 bytes of the 16-byte", "(no tensors)"});
  check("byte_size.safetensors",
        raw_safetensors(R"({"w":{"dtype":"BF16","shape":[4],"data_offsets":[0,16]}})", f4),
        {"tensor 'w'", "16 bytes in the file but shape [4] of BF16 needs 8"});
  // Listed out of order, with an empty tensor between two others: a valid tiling.
  write_bytes(path("ok.safetensors"),
              raw_safetensors(R"({"b":{"dtype":"F32","shape":[4],"data_offsets":[16,32]},)"
                              R"("e":{"dtype":"F32","shape":[0],"data_offsets":[16,16]},)"
                              R"("a":{"dtype":"F32","shape":[4],"data_offsets":[0,16]}})", f8));
  SafetensorsCheckpoint ok(path("ok.safetensors"));
  EXPECT_EQ(ok.names(), (std::vector<std::string>{"a", "b", "e"}));
}

TEST_F(Checkpoints, MissingTensorAndWrongCount) {
  std::vector<float> a = {1, 2, 3, 4, 5, 6};
  const std::string p = path("m.safetensors");
  l2v::write_safetensors(p, {{"w", "F32", {2, 3}, a.data()}});
  SafetensorsCheckpoint ck(p);
  std::vector<float> buf(8);
  expect_error([&] { ck.read_f32("nope", buf.data(), 6); }, {"'nope'", p});
  expect_error([&] { ck.shape("nope"); }, {"'nope'", p});
  expect_error([&] { ck.dtype("nope"); }, {"'nope'", p});
  expect_error([&] { ck.read_i64("nope"); }, {"'nope'", p});
  expect_error([&] { ck.read_f32("w", buf.data(), 8); }, {"'w'", p, "6", "8"});
  expect_error([&] { ck.read_f32("w", buf.data(), 5); }, {"'w'", p});
}

// ------------------------------------------------------------------------------------------------------
// llama2.c import of the real stories260K checkpoint

namespace {

std::string stories_path() {
  for (const char* p : {"assets/stories260K/stories260K.bin", "../shared/data/llama2c/stories260K.bin"})
    if (fs::exists(p)) return p;
  return "";
}

// Reads `count` floats at float index `index` past the 28-byte header, straight from the file.
std::vector<float> raw_floats(const std::string& path, uint64_t index, uint64_t count) {
  std::ifstream f(path, std::ios::binary);
  f.seekg(static_cast<std::streamoff>(28 + 4 * index));
  std::vector<float> v(count);
  f.read(reinterpret_cast<char*>(v.data()), static_cast<std::streamsize>(4 * count));
  EXPECT_TRUE(f.good());
  return v;
}

}  // namespace

class Llama2c : public Checkpoints {
 protected:
  void SetUp() override {
    Checkpoints::SetUp();
    model_ = stories_path();
    ASSERT_FALSE(model_.empty()) << "stories260K.bin not found in assets/stories260K/ or "
                                    "../shared/data/llama2c/ (run the tests from the repo root)";
  }
  std::string model_;
  // stories260K: dim 64, hidden 172, 5 layers, 8 heads, 4 kv heads, head size 8, vocab 512, seq 512.
  static constexpr uint64_t C = 64, F = 172, L = 5, H = 8, KV = 4, D = 8, V = 512, S = 512;
  // Float indices of the arrays, counted independently of the importer.
  static constexpr uint64_t kEmb = 0, kRmsAtt = V * C, kWq = kRmsAtt + L * C, kWk = kWq + L * H * D * C,
                            kWv = kWk + L * KV * D * C, kWo = kWv + L * KV * D * C, kRmsFfn = kWo + L * C * H * D,
                            kW1 = kRmsFfn + L * C, kW2 = kW1 + L * F * C, kW3 = kW2 + L * C * F,
                            kNorm = kW3 + L * F * C, kEnd = kNorm + C + 2 * S * D / 2;
};

TEST_F(Llama2c, ConfigAndNames) {
  Llama2cCheckpoint ck(model_);
  EXPECT_EQ(fs::file_size(model_), 28 + 4 * kEnd);
  const l2v::ModelConfig& c = ck.config;
  EXPECT_EQ(c.model_type, "llama");
  EXPECT_EQ(c.hidden_size, 64);
  EXPECT_EQ(c.intermediate_size, 172);
  EXPECT_EQ(c.num_hidden_layers, 5);
  EXPECT_EQ(c.num_attention_heads, 8);
  EXPECT_EQ(c.num_key_value_heads, 4);
  EXPECT_EQ(c.head_dim, 8);
  EXPECT_EQ(c.vocab_size, 512);
  EXPECT_EQ(c.max_position_embeddings, 512);
  EXPECT_FLOAT_EQ(c.rms_norm_eps, 1e-5f);
  EXPECT_FLOAT_EQ(c.rope_theta, 10000.0f);
  EXPECT_TRUE(c.tie_word_embeddings);
  EXPECT_EQ(c.bos_token_id, 1);
  EXPECT_EQ(c.eos_token_id, 2);
  EXPECT_EQ(ck.describe(), model_);

  EXPECT_EQ(ck.names().size(), 2 + 9 * L);
  EXPECT_FALSE(ck.has("lm_head.weight"));
  EXPECT_EQ(ck.shape("model.embed_tokens.weight"), (std::vector<int64_t>{512, 64}));
  EXPECT_EQ(ck.shape("model.layers.4.self_attn.q_proj.weight"), (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(ck.shape("model.layers.0.self_attn.k_proj.weight"), (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(ck.shape("model.layers.0.self_attn.v_proj.weight"), (std::vector<int64_t>{32, 64}));
  EXPECT_EQ(ck.shape("model.layers.0.self_attn.o_proj.weight"), (std::vector<int64_t>{64, 64}));
  EXPECT_EQ(ck.shape("model.layers.0.mlp.gate_proj.weight"), (std::vector<int64_t>{172, 64}));
  EXPECT_EQ(ck.shape("model.layers.0.mlp.down_proj.weight"), (std::vector<int64_t>{64, 172}));
  EXPECT_EQ(ck.shape("model.layers.0.mlp.up_proj.weight"), (std::vector<int64_t>{172, 64}));
  EXPECT_EQ(ck.shape("model.layers.2.input_layernorm.weight"), (std::vector<int64_t>{64}));
  EXPECT_EQ(ck.shape("model.norm.weight"), (std::vector<int64_t>{64}));

  std::vector<float> buf(10);
  expect_error([&] { ck.read_f32("model.norm.weight", buf.data(), 10); }, {"model.norm.weight", model_});
  expect_error([&] { ck.shape("lm_head.weight"); }, {"lm_head.weight", model_});
}

TEST_F(Llama2c, TensorsMatchRawFile) {
  Llama2cCheckpoint ck(model_);
  auto read = [&](const std::string& name, size_t n) {
    std::vector<float> v(n);
    ck.read_f32(name, v.data(), n);
    return v;
  };
  EXPECT_EQ(read("model.embed_tokens.weight", V * C), raw_floats(model_, kEmb, V * C));
  for (uint64_t l : {uint64_t(0), L - 1}) {
    const std::string pre = "model.layers." + std::to_string(l) + ".";
    EXPECT_EQ(read(pre + "input_layernorm.weight", C), raw_floats(model_, kRmsAtt + l * C, C));
    EXPECT_EQ(read(pre + "self_attn.v_proj.weight", KV * D * C), raw_floats(model_, kWv + l * KV * D * C, KV * D * C));
    EXPECT_EQ(read(pre + "self_attn.o_proj.weight", C * H * D), raw_floats(model_, kWo + l * C * H * D, C * H * D));
    EXPECT_EQ(read(pre + "post_attention_layernorm.weight", C), raw_floats(model_, kRmsFfn + l * C, C));
    EXPECT_EQ(read(pre + "mlp.gate_proj.weight", F * C), raw_floats(model_, kW1 + l * F * C, F * C));
    EXPECT_EQ(read(pre + "mlp.down_proj.weight", C * F), raw_floats(model_, kW2 + l * C * F, C * F));
    EXPECT_EQ(read(pre + "mlp.up_proj.weight", F * C), raw_floats(model_, kW3 + l * F * C, F * C));
  }
  EXPECT_EQ(read("model.norm.weight", C), raw_floats(model_, kNorm, C));
}

TEST_F(Llama2c, RopePermutationOfQK) {
  Llama2cCheckpoint ck(model_);
  struct Proj { const char* name; uint64_t base, heads; };
  for (const Proj& p : {Proj{"q_proj", kWq, H}, Proj{"k_proj", kWk, KV}}) {
    for (uint64_t l = 0; l < L; ++l) {
      const uint64_t n = p.heads * D * C;
      const std::string name = "model.layers." + std::to_string(l) + ".self_attn." + p.name + ".weight";
      std::vector<float> got(n);
      ck.read_f32(name, got.data(), n);
      const std::vector<float> raw = raw_floats(model_, p.base + l * n, n);
      auto row = [&](const std::vector<float>& m, uint64_t r) {
        return std::vector<float>(m.begin() + r * C, m.begin() + (r + 1) * C);
      };
      // New row D/2 is the original row 1 (the second element of the first rotation pair).
      EXPECT_EQ(row(got, D / 2), row(raw, 1)) << name;
      EXPECT_EQ(row(got, 0), row(raw, 0)) << name;
      for (uint64_t h = 0; h < p.heads; ++h) {
        // A permutation within each head: the multiset of the head's rows is unchanged...
        std::vector<std::vector<float>> a, b;
        for (uint64_t r = 0; r < D; ++r) {
          a.push_back(row(got, h * D + r));
          b.push_back(row(raw, h * D + r));
        }
        std::sort(a.begin(), a.end());
        std::sort(b.begin(), b.end());
        EXPECT_EQ(a, b) << name << " head " << h;
        // ...and exactly the de-interleaving one: new i <- old 2i, new D/2 + i <- old 2i + 1.
        for (uint64_t i = 0; i < D / 2; ++i) {
          EXPECT_EQ(row(got, h * D + i), row(raw, h * D + 2 * i)) << name << " head " << h << " i " << i;
          EXPECT_EQ(row(got, h * D + D / 2 + i), row(raw, h * D + 2 * i + 1)) << name << " head " << h;
        }
      }
    }
  }
}

TEST_F(Llama2c, SizeErrors) {
  const std::string orig = read_bytes(model_);
  ASSERT_EQ(orig.size(), 28 + 4 * kEnd);
  const std::string expected = std::to_string(orig.size());

  write_bytes(path("truncated.bin"), orig.substr(0, orig.size() - 4));
  expect_error([&] { Llama2cCheckpoint ck(path("truncated.bin")); },
               {path("truncated.bin"), expected, std::to_string(orig.size() - 4)});
  write_bytes(path("padded.bin"), orig + std::string(4, '\0'));
  expect_error([&] { Llama2cCheckpoint ck(path("padded.bin")); },
               {path("padded.bin"), expected, std::to_string(orig.size() + 4)});
  write_bytes(path("tiny.bin"), orig.substr(0, 10));
  expect_error([&] { Llama2cCheckpoint ck(path("tiny.bin")); }, {path("tiny.bin"), "header"});

  auto with_field = [&](int index, int32_t value) {
    std::string b = orig;
    std::memcpy(&b[4 * index], &value, 4);
    return b;
  };
  write_bytes(path("zero_layers.bin"), with_field(2, 0));
  expect_error([&] { Llama2cCheckpoint ck(path("zero_layers.bin")); }, {path("zero_layers.bin"), "n_layers"});
  write_bytes(path("heads7.bin"), with_field(3, 7));
  expect_error([&] { Llama2cCheckpoint ck(path("heads7.bin")); }, {path("heads7.bin"), "n_heads"});
  write_bytes(path("kv3.bin"), with_field(4, 3));
  expect_error([&] { Llama2cCheckpoint ck(path("kv3.bin")); }, {path("kv3.bin"), "n_kv_heads"});
  // A negative vocab_size promises a separate classifier, which this file lacks.
  write_bytes(path("unshared_missing.bin"), with_field(5, -512));
  expect_error([&] { Llama2cCheckpoint ck(path("unshared_missing.bin")); },
               {path("unshared_missing.bin"), std::to_string(orig.size() + 4 * V * C)});
}

TEST_F(Llama2c, HugeLayerCountIsRefusedBeforeBuildingTheTensorTable) {
  // n_layers = 2^31 - 1 in an otherwise intact file: the sizes it implies do not match the file, and that
  // must be found before a table of 9 * 2^31 tensors is built (which took gigabytes within seconds). The
  // import runs in a child process that an alarm kills after 5 s.
  std::string b = read_bytes(model_);
  const int32_t layers = INT32_MAX;
  std::memcpy(&b[8], &layers, 4);
  const std::string p = path("huge_layers.bin");
  write_bytes(p, b);
  EXPECT_EXIT(
      {
        ::alarm(5);
        try {
          Llama2cCheckpoint ck(p);
        } catch (const std::runtime_error& e) {
          std::fprintf(stderr, "%s\n", e.what());
          std::_Exit(0);
        }
        std::_Exit(1);
      },
      ::testing::ExitedWithCode(0), "huge_layers\\.bin: file has " + std::to_string(b.size()) +
                                        " bytes but .*n_layers 2147483647.* implies expected [0-9]+ bytes");
}

TEST_F(Llama2c, SeparateClassifier) {
  // The same model re-declared with an unshared classifier: wcls (here the negated embedding, so it is
  // distinguishable) follows the RoPE tables and appears as lm_head.weight.
  std::string b = read_bytes(model_);
  int32_t neg = -512;
  std::memcpy(&b[20], &neg, 4);
  std::vector<float> wcls = raw_floats(model_, kEmb, V * C);
  for (float& x : wcls) x = -x;
  b.append(reinterpret_cast<const char*>(wcls.data()), wcls.size() * 4);
  write_bytes(path("unshared.bin"), b);
  Llama2cCheckpoint ck(path("unshared.bin"));
  EXPECT_FALSE(ck.config.tie_word_embeddings);
  EXPECT_EQ(ck.config.vocab_size, 512);
  ASSERT_TRUE(ck.has("lm_head.weight"));
  EXPECT_EQ(ck.shape("lm_head.weight"), (std::vector<int64_t>{512, 64}));
  std::vector<float> got(V * C);
  ck.read_f32("lm_head.weight", got.data(), got.size());
  EXPECT_EQ(got, wcls);
}
