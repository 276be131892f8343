// Greedy decoding with the causal model: a correctness probe for the forward pass (the bundled
// stories260K model has a published greedy sample), not a serving path.
#pragma once
#include <vector>

#include "model/model.h"

namespace l2v {

struct GreedyStep {
  int token;
  float margin;  // top-1 logit minus top-2 logit: how close this step was to a tie
};

// Appends `steps` tokens to `prompt`, each the argmax of the last position's logits of a full causal
// forward pass (no KV cache: every step recomputes the prefix, which is exact and simple).
std::vector<GreedyStep> greedy_decode(Model& m, const std::vector<int>& prompt, int steps);

}  // namespace l2v
