#include "data/labelled_texts.h"

#include <stdexcept>

#include <nlohmann/json.hpp>

#include "data/file_io.h"

namespace l2v {

std::vector<LabelledText> read_labelled_jsonl(const std::string& path) {
  std::vector<LabelledText> out;
  for_each_json_line(path, "a JSON-lines file of {\"text\", \"label\"} objects",
                     [&](const nlohmann::json& j, const std::string& at) {
    if (!j.contains("text") || !j.at("text").is_string() || j.at("text").get<std::string>().empty())
      throw std::runtime_error(at + "missing or empty \"text\" (a string)");
    if (!j.contains("label")) throw std::runtime_error(at + "missing \"label\"");
    const nlohmann::json& label = j.at("label");
    LabelledText t;
    t.text = j.at("text").get<std::string>();
    if (label.is_string())
      t.label = label.get<std::string>();
    else if (label.is_number_integer())
      t.label = std::to_string(label.get<long long>());
    else
      throw std::runtime_error(at + "\"label\" must be a string or an integer");
    out.push_back(std::move(t));
  });
  if (out.empty()) throw std::runtime_error(path + ": no texts");
  std::map<std::string, int> ids;
  label_ids(out, &ids);
  if (ids.size() < 2) throw std::runtime_error(path + ": every text has the same label");
  return out;
}

std::vector<int> label_ids(const std::vector<LabelledText>& texts, std::map<std::string, int>* ids) {
  std::vector<int> out;
  for (const LabelledText& t : texts) out.push_back(ids->emplace(t.label, (int)ids->size()).first->second);
  return out;
}

}  // namespace l2v
