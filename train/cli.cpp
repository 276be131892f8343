#include "train/cli.h"

namespace l2v {

const std::string& ParsedOptions::required(const std::string& name) const {
  auto it = values.find(name);
  if (it == values.end()) throw UsageError(name + " is required");
  return it->second;
}

std::string ParsedOptions::get(const std::string& name, const std::string& fallback) const {
  auto it = values.find(name);
  return it == values.end() ? fallback : it->second;
}

int64_t ParsedOptions::get_int(const std::string& name, int64_t fallback, int64_t min_value) const {
  auto it = values.find(name);
  if (it == values.end()) return fallback;
  size_t used = 0;
  int64_t v = 0;
  try {
    v = std::stoll(it->second, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used == 0 || used != it->second.size()) throw UsageError(name + " needs an integer, got '" + it->second + "'");
  if (v < min_value) throw UsageError(name + " must be at least " + std::to_string(min_value));
  return v;
}

ParsedOptions parse_options(int argc, char** argv, int first, const std::vector<OptionSpec>& spec) {
  ParsedOptions out;
  for (int i = first; i < argc; ++i) {
    const std::string key = argv[i];
    if (key == "-h" || key == "--help") {
      out.help = true;
      continue;
    }
    const OptionSpec* s = nullptr;
    for (const OptionSpec& o : spec)
      if (o.name == key) s = &o;
    if (!s) throw UsageError("unknown option " + key);
    if (out.values.count(key)) throw UsageError("option " + key + " given twice");
    if (s->value.empty()) {
      out.values[key] = "";
    } else {
      if (i + 1 >= argc) throw UsageError("option " + key + " needs a value (" + s->value + ")");
      out.values[key] = argv[++i];
    }
  }
  return out;
}

std::string options_help(const std::vector<OptionSpec>& spec) {
  std::string out;
  for (const OptionSpec& o : spec) {
    std::string left = "  " + o.name + (o.value.empty() ? "" : " " + o.value);
    if (left.size() < 26) left.resize(26, ' ');
    else left += "\n" + std::string(26, ' ');
    std::string help = o.help;
    // Indent continuation lines of multi-line help texts.
    for (size_t p = help.find('\n'); p != std::string::npos; p = help.find('\n', p + 1))
      help.insert(p + 1, std::string(26, ' '));
    out += left + help + "\n";
  }
  return out;
}

}  // namespace l2v
