// What every libFuzzer target in fuzz/ shares (fuzz/README.md: how to run them).
//
// A target feeds one input to one parser and accepts exactly two outcomes: the parser accepts the input,
// or it refuses it with a std::runtime_error whose message names the file (the project's rule for every
// error a user can see). Any other outcome is a finding that aborts the run: another exception type
// (std::bad_alloc and std::length_error mean an allocation sized by the input, nlohmann's exceptions a
// message without the file), a refusal that does not name the file, a crash, undefined behaviour, a leak,
// a timeout or an out-of-memory (the limits are set by fuzz/run.sh).
#pragma once
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>

#include "model/tensor_source.h"

namespace l2v::fuzz {

// Each target defines these two; fuzz_common.cpp owns libFuzzer's entry point, which writes every input
// to a file called kInputName (input_file) and runs fuzz_input(path, data, size) under parse_or_refuse.
extern const char* const kInputName;
void fuzz_input(const std::string& path, const uint8_t* data, size_t size);

// Writes the input to `name` in this process's own temporary directory (created on first use, removed
// at exit) and returns the path; the same path is rewritten for every input. `name` matters to parsers
// that look at the file name or its directory.
std::string input_file(const uint8_t* data, size_t size, const std::string& name);

// Runs `parse`. A std::runtime_error naming `path` is an accepted refusal; one that does not name it
// aborts the run with the message, and every other exception propagates (std::terminate: a finding).
void parse_or_refuse(const std::string& path, const std::function<void()>& parse);

// Aborts the run with `what` when `ok` is false: a property of an accepted input does not hold.
void check(bool ok, const std::string& what);

// Reads every tensor of `source` to fp32 (touching each byte its table claims).
void read_every_tensor(const TensorSource& source);

}  // namespace l2v::fuzz
