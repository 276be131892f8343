// Labelled texts, the input of the clustering and classification evaluations (`llm2vec eval clustering`,
// `eval classification`): JSON lines {"text", "label"}, and the labels as dense ids.
#pragma once
#include <map>
#include <string>
#include <vector>

namespace l2v {

struct LabelledText {
  std::string text;
  std::string label;
};

// Reads JSON lines {"text": "...", "label": "..." or an integer} (other keys ignored; blank lines skipped).
// Throws std::runtime_error naming file:line for a line that is not a JSON object, a missing or empty
// text, a label that is neither a string nor an integer; and naming the file when it cannot be read, holds
// no text, or fewer than 2 distinct labels.
std::vector<LabelledText> read_labelled_jsonl(const std::string& path);

// The labels as ids: those already in *ids keep theirs, new ones get the next free id, in order of first
// appearance.
std::vector<int> label_ids(const std::vector<LabelledText>& texts, std::map<std::string, int>* ids);

}  // namespace l2v
