// A small command-line parser for the llm2vec subcommands: each command declares its options (name,
// whether it takes a value, help text), so --help is generated from the same table that parses.
#pragma once
#include <cstdint>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

namespace l2v {

struct UsageError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct OptionSpec {
  std::string name;  // "--model"
  std::string value;  // placeholder shown in help ("PATH"); empty for a flag
  std::string help;
};

struct ParsedOptions {
  std::map<std::string, std::string> values;  // options given, flags map to ""
  bool help = false;

  bool has(const std::string& name) const { return values.count(name) > 0; }
  const std::string& required(const std::string& name) const;
  std::string get(const std::string& name, const std::string& fallback) const;
  int64_t get_int(const std::string& name, int64_t fallback, int64_t min_value) const;
};

// Parses argv[first..argc) against `spec`; throws UsageError for unknown options, missing values and
// repeated options.
ParsedOptions parse_options(int argc, char** argv, int first, const std::vector<OptionSpec>& spec);
std::string options_help(const std::vector<OptionSpec>& spec);

}  // namespace l2v
