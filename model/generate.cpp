#include "model/generate.h"

#include <cmath>
#include <stdexcept>

namespace l2v {

std::vector<GreedyStep> greedy_decode(Model& m, const std::vector<int>& prompt, int steps) {
  if (prompt.empty()) throw std::runtime_error("greedy_decode: empty prompt");
  std::vector<int> tokens = prompt;
  std::vector<GreedyStep> out;
  ForwardOptions opt;
  opt.causal = true;
  opt.inference = true;
  const int V = m.config.vocab_size;
  for (int s = 0; s < steps; ++s) {
    const int T = (int)tokens.size();
    model_forward(m, tokens.data(), nullptr, 1, T, opt);
    lm_head_forward(m);
    std::vector<float> last = download_tensor(m, tensor_offset(m, m.acts.logits, (size_t)(T - 1) * V), V);
    int best = 0;
    for (int v = 1; v < V; ++v)
      if (last[v] > last[best]) best = v;
    float second = -INFINITY;
    for (int v = 0; v < V; ++v)
      if (v != best && last[v] > second) second = last[v];
    out.push_back({best, last[best] - second});
    tokens.push_back(best);
  }
  return out;
}

}  // namespace l2v
