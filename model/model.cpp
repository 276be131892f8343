#include "model/model.h"

#include <algorithm>
#include <cmath>
#include <initializer_list>
#include <random>
#include <stdexcept>

#include "host/cpu_ops.h"

namespace l2v {
namespace {

// Dropout sites: every dropout op of one step draws from its own Philox counter range (its site), so no
// two sites share random bits and each one can be regenerated independently (backward, recomputation,
// GPU).
uint32_t attention_site(int layer) { return (uint32_t)layer * 16u; }
uint32_t lora_site(int layer, int linear) { return (uint32_t)layer * 16u + 1u + (uint32_t)linear; }

// Checks that the checkpoint holds `name` with `shape`; returns its element count.
size_t checked_count(const TensorSource& src, const std::string& name, const std::vector<int64_t>& shape) {
  if (!src.has(name)) throw std::runtime_error(src.describe() + ": missing tensor '" + name + "'");
  std::vector<int64_t> actual = src.shape(name);
  if (actual != shape)
    throw std::runtime_error(src.describe() + ": tensor '" + name + "' has shape " + shape_str(actual) +
                             ", expected " + shape_str(shape));
  size_t n = 1;
  for (int64_t d : shape) n *= (size_t)d;
  return n;
}

// Reads a checkpoint tensor into backend tensor memory at dst (linear weights, biases, embeddings).
void read_tensor(Model& m, const TensorSource& src, const std::string& name, const std::vector<int64_t>& shape,
                 Tensor dst) {
  const size_t n = checked_count(src, name, shape);
  if (m.backend->is_host_memory() && m.backend->tensor_element_bytes() == sizeof(float)) {
    // Host fp32 tensors are floats: straight from the (mmap'ed) file into the weights, no staging copy.
    src.read_f32(name, reinterpret_cast<float*>(dst), n);
  } else {
    std::vector<float> host(n);
    src.read_f32(name, host.data(), n);
    m.backend->upload_tensor(dst, host.data(), n);
  }
}

// Loads a checkpoint tensor into a backend tensor of its own.
Tensor load_tensor(Model& m, const TensorSource& src, const std::string& name, const std::vector<int64_t>& shape) {
  Tensor dst = m.alloc_tensor(checked_count(src, name, shape));
  read_tensor(m, src, name, shape, dst);
  return dst;
}

// Loads a checkpoint tensor into an fp32 buffer (norm weights).
float* load_floats(Model& m, const TensorSource& src, const std::string& name, const std::vector<int64_t>& shape) {
  const size_t n = checked_count(src, name, shape);
  float* dst = m.alloc_floats(n);
  if (m.backend->is_host_memory()) {
    src.read_f32(name, dst, n);
  } else {
    std::vector<float> host(n);
    src.read_f32(name, host.data(), n);
    m.backend->upload(dst, host.data(), n * sizeof(float));
  }
  return dst;
}

// A profiler range (NVTX on the CUDA backend) for the rest of the scope.
struct Range {
  Backend& be;
  Range(Backend& b, const char* name) : be(b) { be.range_push(name); }
  ~Range() { be.range_pop(); }
  Range(const Range&) = delete;
  Range& operator=(const Range&) = delete;
};

void check_ready(const Model& m) {
  if (!m.backend) throw std::runtime_error("model used before load_model");
}

}  // namespace

const char* linear_name(int id) {
  static const char* names[kNumLinears] = {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                           "down_proj"};
  return names[id];
}

bool parse_linear_name(const std::string& name, int* id) {
  for (int i = 0; i < kNumLinears; ++i)
    if (name == linear_name(i)) {
      *id = i;
      return true;
    }
  return false;
}

// PEFT's name for a LoRA tensor of a LlamaForCausalLM-style model, e.g.
// base_model.model.model.layers.3.self_attn.q_proj.lora_A.weight
static std::string peft_name(int layer, int id, const char* which) {
  const char* block = id <= kO ? "self_attn" : "mlp";
  return "base_model.model.model.layers." + std::to_string(layer) + "." + block + "." + linear_name(id) + "." +
         which + ".weight";
}

Model::~Model() {
  release_activations();
  for (void* p : weight_memory_) backend->release(p);
}

Tensor Model::alloc_tensor(size_t n, bool activation) {
  void* p = backend->alloc(std::max<size_t>(n, 1) * backend->tensor_element_bytes());
  (activation ? activation_memory_ : weight_memory_).push_back(p);
  return static_cast<Tensor>(p);
}

float* Model::alloc_floats(size_t n, bool activation) {
  void* p = backend->alloc(std::max<size_t>(n, 1) * sizeof(float));
  (activation ? activation_memory_ : weight_memory_).push_back(p);
  return static_cast<float*>(p);
}

int* Model::alloc_ints(size_t n, bool activation) {
  void* p = backend->alloc(std::max<size_t>(n, 1) * sizeof(int));
  (activation ? activation_memory_ : weight_memory_).push_back(p);
  return static_cast<int*>(p);
}

void Model::release_activations() {
  for (void* p : activation_memory_) backend->release(p);
  activation_memory_.clear();
  acts = Activations{};
}

int linear_in_features(const ModelConfig& c, int id) {
  return id == kO ? c.num_attention_heads * c.head_dim : id == kDown ? c.intermediate_size : c.hidden_size;
}

bool linear_has_bias(const ModelConfig& c, int id) { return (id <= kV && c.qkv_bias) || (id == kO && c.o_bias); }

int group_out_features(const ModelConfig& c, const LinearGroup& g) {
  int W = 0;
  for (int i = 0; i < g.count; ++i) W += linear_out_features(c, g.ids[i]);
  return W;
}

int linear_out_features(const ModelConfig& c, int id) {
  switch (id) {
    case kQ: return c.num_attention_heads * c.head_dim;
    case kK:
    case kV: return c.num_key_value_heads * c.head_dim;
    case kGate:
    case kUp: return c.intermediate_size;
    default: return c.hidden_size;  // o_proj, down_proj
  }
}

void load_model(Model& m, const ModelConfig& c, const TensorSource& src, Backend& backend) {
  m.config = c;
  m.backend = &backend;
  const int C = c.hidden_size, V = c.vocab_size;
  m.embed = load_tensor(m, src, "model.embed_tokens.weight", {V, C});
  m.layers.assign(c.num_hidden_layers, LayerWeights{});
  for (int l = 0; l < c.num_hidden_layers; ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    LayerWeights& L = m.layers[l];
    L.attn_norm = load_floats(m, src, p + "input_layernorm.weight", {C});
    L.mlp_norm = load_floats(m, src, p + "post_attention_layernorm.weight", {C});
    for (const LinearGroup& g : kLinearGroups) {
      // The group's weights (and biases) are row blocks of one allocation.
      const int IC = linear_in_features(c, g.ids[0]), W = group_out_features(c, g);
      const bool has_bias = linear_has_bias(c, g.ids[0]);  // alike within a group
      Tensor weights = m.alloc_tensor((size_t)W * IC);
      Tensor biases = has_bias ? m.alloc_tensor(W) : nullptr;
      int row = 0;
      for (int i = 0; i < g.count; ++i) {
        Linear& lin = L.linear[g.ids[i]];
        lin.in = IC;
        lin.out = linear_out_features(c, g.ids[i]);
        const std::string name = p + (g.ids[i] <= kO ? "self_attn." : "mlp.") + linear_name(g.ids[i]);
        const std::vector<int64_t> shape{lin.out, lin.in};
        read_tensor(m, src, name + ".weight", shape, lin.weight = tensor_offset(m, weights, (size_t)row * IC));
        if (has_bias) read_tensor(m, src, name + ".bias", {lin.out}, lin.bias = tensor_offset(m, biases, row));
        row += lin.out;
      }
    }
  }
  m.final_norm = load_floats(m, src, "model.norm.weight", {C});
  // Tied checkpoints may or may not store lm_head.weight; the embedding is the truth then.
  m.lm_head = c.tie_word_embeddings ? m.embed : load_tensor(m, src, "lm_head.weight", {V, C});
}

void add_lora(Model& m, const LoraConfig& lora, uint64_t seed) {
  check_ready(m);
  if (m.lora_merged) throw std::runtime_error("add_lora: unmerge the current adapter first");
  if (lora.r <= 0) throw std::runtime_error("add_lora: LoRA rank must be positive");
  m.lora = lora;
  m.trainable.clear();
  m.release_activations();  // the LoRA intermediates are sized by the rank
  std::mt19937_64 rng(seed);
  for (size_t l = 0; l < m.layers.size(); ++l) {
    for (int id = 0; id < kNumLinears; ++id) {
      Linear& lin = m.layers[l].linear[id];
      lin.lora_A = lin.lora_B = lin.grad_A = lin.grad_B = nullptr;
      if (!lora.targets[id]) continue;
      const size_t na = (size_t)lora.r * lin.in, nb = (size_t)lin.out * lora.r;
      lin.lora_A = m.alloc_floats(na);
      lin.lora_B = m.alloc_floats(nb);  // zero: the adapter starts as the identity
      lin.grad_A = m.alloc_floats(na);
      lin.grad_B = m.alloc_floats(nb);
      std::vector<float> a(na);
      const float bound = 1.0f / std::sqrt((float)lin.in);
      std::uniform_real_distribution<float> U(-bound, bound);
      for (float& x : a) x = U(rng);
      m.backend->upload(lin.lora_A, a.data(), na * sizeof(float));
      m.trainable.push_back({peft_name((int)l, id, "lora_A"), lin.lora_A, lin.grad_A, na, {lora.r, lin.in}, (int)l});
      m.trainable.push_back({peft_name((int)l, id, "lora_B"), lin.lora_B, lin.grad_B, nb, {lin.out, lora.r}, (int)l});
    }
  }
}

std::set<std::string> load_lora_weights(Model& m, const TensorSource& src) {
  const std::string outer = "base_model.model.model.", inner = "base_model.model.";
  std::set<std::string> read;
  for (TrainableParam& p : m.trainable) {
    std::string name = p.name;
    if (!src.has(name)) name = inner + p.name.substr(outer.size());
    if (!src.has(name))
      throw std::runtime_error(src.describe() + ": missing adapter tensor '" + p.name + "' (or '" + name + "')");
    if (src.shape(name) != p.shape)
      throw std::runtime_error(src.describe() + ": adapter tensor '" + name + "' has shape " +
                               shape_str(src.shape(name)) + ", expected " + shape_str(p.shape));
    std::vector<float> host(p.count);
    src.read_f32(name, host.data(), p.count);
    m.backend->upload(p.value, host.data(), p.count * sizeof(float));
    read.insert(name);
  }
  return read;
}

static void merge_sign(Model& m, float sign) {
  for (LayerWeights& L : m.layers)
    for (Linear& lin : L.linear)
      if (lin.lora_A)
        m.backend->lora_merge(lin.weight, lin.lora_A, lin.lora_B, m.lora.scale(), sign, lin.in, lin.out, m.lora.r);
}

void merge_lora(Model& m) {
  if (m.lora_merged || m.lora.r == 0) throw std::runtime_error("merge_lora: no unmerged adapter");
  merge_sign(m, +1.0f);
  m.lora_merged = true;
}

void unmerge_lora(Model& m) {
  if (!m.lora_merged) throw std::runtime_error("unmerge_lora: the adapter is not merged");
  merge_sign(m, -1.0f);
  m.lora_merged = false;
}

void merge_and_unload_lora(Model& m) {
  merge_lora(m);
  for (LayerWeights& L : m.layers)
    for (Linear& lin : L.linear) lin.lora_A = lin.lora_B = lin.grad_A = lin.grad_B = nullptr;
  m.trainable.clear();
  m.lora = LoraConfig{};
  m.lora_merged = false;
  m.release_activations();
}

std::vector<NamedWeight> model_weights(const Model& m) {
  const ModelConfig& c = m.config;
  std::vector<NamedWeight> out;
  out.push_back({"model.embed_tokens.weight", {c.vocab_size, c.hidden_size}, m.embed, nullptr});
  for (size_t l = 0; l < m.layers.size(); ++l) {
    const std::string p = "model.layers." + std::to_string(l) + ".";
    const LayerWeights& L = m.layers[l];
    out.push_back({p + "input_layernorm.weight", {c.hidden_size}, nullptr, L.attn_norm});
    for (int id = 0; id < kNumLinears; ++id) {
      const Linear& lin = L.linear[id];
      const std::string name = p + (id <= kO ? "self_attn." : "mlp.") + linear_name(id);
      out.push_back({name + ".weight", {lin.out, lin.in}, lin.weight, nullptr});
      if (lin.bias) out.push_back({name + ".bias", {lin.out}, lin.bias, nullptr});
    }
    out.push_back({p + "post_attention_layernorm.weight", {c.hidden_size}, nullptr, L.mlp_norm});
  }
  out.push_back({"model.norm.weight", {c.hidden_size}, nullptr, m.final_norm});
  if (!c.tie_word_embeddings) out.push_back({"lm_head.weight", {c.vocab_size, c.hidden_size}, m.lm_head, nullptr});
  return out;
}

std::vector<float> download_weight(const Model& m, const NamedWeight& w) {
  size_t n = 1;
  for (int64_t d : w.shape) n *= (size_t)d;
  return w.tensor ? download_tensor(m, w.tensor, n) : download_floats(m, w.floats, n);
}

void zero_grads(Model& m) {
  for (TrainableParam& p : m.trainable) m.backend->zero(p.grad, p.count * sizeof(float));
}

std::vector<float> download_floats(const Model& m, const float* ptr, size_t n) {
  std::vector<float> out(n);
  m.backend->download(out.data(), ptr, n * sizeof(float));
  return out;
}

std::vector<float> download_tensor(const Model& m, ConstTensor ptr, size_t n) {
  std::vector<float> out(n);
  m.backend->download_tensor(out.data(), ptr, n);
  return out;
}

int activation_slots(int L, int recompute_layers) {
  return recompute_layers > 0 ? L - recompute_layers + 1 : L;
}

int activation_slot(const Activations& a, int layer) {
  if (a.inference) return 0;
  return a.recompute_layers == 0 ? layer : layer < a.recompute_layers ? 0 : layer - a.recompute_layers + 1;
}

size_t residual_index(const Activations& a, int layer) { return a.inference ? (size_t)(layer % 2) : (size_t)layer; }

namespace {

// Sizes activations and scratch for B*T rows. Every buffer is laid out by the current row count, so
// a smaller batch reuses the allocation (greedy decoding grows T by one per step). The sizes are
// model/memory_plan.cpp's too: a buffer added here must be added there (the tests compare them).
void ensure_activations(Model& m, int B, int T, int recompute_layers, bool inference) {
  Activations& a = m.acts;
  const size_t rows = (size_t)B * T;
  recompute_layers = inference ? 0 : std::clamp(recompute_layers, 0, m.config.num_hidden_layers);
  if (rows <= a.capacity_rows && B <= a.capacity_batch && a.recompute_layers == recompute_layers &&
      a.inference == inference) {
    a.B = B;
    a.T = T;
    return;
  }
  m.release_activations();
  const ModelConfig& c = m.config;
  const size_t N = (size_t)B * T, C = c.hidden_size, F = c.intermediate_size;
  const size_t QD = (size_t)c.num_attention_heads * c.head_dim, KVD = (size_t)c.num_key_value_heads * c.head_dim;
  const size_t L = c.num_hidden_layers, R = std::max(m.lora.r, 1);
  auto f = [&](size_t n) { return m.alloc_tensor(n, true); };
  auto f32 = [&](size_t n) { return m.alloc_floats(n, true); };
  a.B = B;
  a.T = T;
  a.recompute_layers = recompute_layers;
  a.inference = inference;
  a.ids = m.alloc_ints(N, true);
  a.key_mask = m.alloc_ints(N, true);
  a.loss_rows = m.alloc_ints(N, true);
  a.targets = m.alloc_ints(N, true);
  a.resid = f((inference ? 2 : L + 1) * N * C);
  a.layers.resize(inference ? 1 : activation_slots(L, recompute_layers));
  for (LayerActivations& la : a.layers) {
    la.x1 = f(N * C);
    la.rstd1 = f32(N);
    la.qkv = f(N * (QD + 2 * KVD));
    la.att = f(N * QD);
    la.lse = f32((size_t)B * c.num_attention_heads * T);
    la.h_mid = f(N * C);
    la.x2 = f(N * C);
    la.rstd2 = f32(N);
    la.gate_up = f(N * 2 * F);
    la.act = f(N * F);
    for (Tensor& xa : la.xa) xa = f(N * R);
  }
  a.final_hidden = f(N * C);
  a.rstd_final = f32(N);
  a.losses = f32(N);
  a.loss = reinterpret_cast<double*>(f32(2));  // backend allocations are aligned for any type
  if (!inference) {
    a.d_resid = f(N * C);
    a.d_x = f(N * C);
    a.d_hidden = f(N * C);
    a.d_qkv = f(N * (QD + 2 * KVD));
    a.d_att = f(N * QD);
    a.d_gate_up = f(N * 2 * F);
    a.d_act = f(N * F);
  }
  a.tmp = f(N * C);  // the o projection's output
  // The dropped LoRA inputs: training only, on backends that store them (model/backend.h).
  if (!inference && m.backend->lora_dropout_needs_scratch()) a.lora_scratch = f(N * std::max({C, F, QD}));
  a.pool_weights = f32(N);
  a.pooled = f32((size_t)B * C);
  // Only now: an allocation that failed above (out of memory, or refused inside a CUDA graph capture)
  // leaves no capacity, so the next call allocates again.
  a.capacity_rows = rows;
  a.capacity_batch = B;
}

void ensure_rope(Model& m, int T) {
  if (m.rope_len >= T) return;
  const int D = m.config.head_dim;
  std::vector<float> inv = rope_inv_freq(m.config), cos((size_t)T * D / 2), sin((size_t)T * D / 2);
  cpu::rope_tables(cos.data(), sin.data(), inv.data(), T, D);  // host tables, uploaded once
  m.rope_cos = m.alloc_floats(cos.size());
  m.rope_sin = m.alloc_floats(sin.size());
  m.backend->upload(m.rope_cos, cos.data(), cos.size() * sizeof(float));
  m.backend->upload(m.rope_sin, sin.data(), sin.size() * sizeof(float));
  m.rope_len = T;
}

bool lora_active(const Model& m, const Linear& lin) { return lin.lora_A && !m.lora_merged; }

float lora_dropout(const Model& m, const ForwardOptions& opt) { return opt.training ? m.lora.dropout : 0.0f; }

// The dropout keys of row0's batch: element-wise sites over [B*T, width] and attention over B*H.
DropoutKey elementwise_key(const Model& m, const ForwardOptions& opt, int width) {
  return {opt.seed, opt.row0 * (uint64_t)m.acts.T * (uint64_t)width};
}
DropoutKey attention_key(const Model& m, const ForwardOptions& opt) {
  return {opt.seed, opt.row0 * (uint64_t)m.config.num_attention_heads};
}

// The LoRA input of a group's layers (they share IC, hence the dropout key) and its active branches' ids.
LoraInput lora_input(const Model& m, const ForwardOptions& opt, const Linear& first, ConstTensor inp, int N) {
  return {inp, N, first.in, m.lora.r, m.lora.scale(), lora_dropout(m, opt), elementwise_key(m, opt, first.in),
          m.acts.lora_scratch};
}
int active_lora_ids(const Model& m, int layer, const LinearGroup& g, LinearId (&ids)[kMaxLoraBranches]) {
  int count = 0;
  for (int i = 0; i < g.count; ++i)
    if (lora_active(m, m.layers[layer].linear[g.ids[i]])) ids[count++] = g.ids[i];
  return count;
}

// Where each layer of group g writes its output (reads its output's gradient): its column block of the
// group's [N, W] tensor `out`, by LinearId. Returns W, the row stride.
template <typename T>
int group_outputs(const Model& m, int layer, const LinearGroup& g, T out, T (&at)[kNumLinears]) {
  int col = 0;
  for (int i = 0; i < g.count; ++i) {
    at[g.ids[i]] = tensor_offset(m, out, col);
    col += m.layers[layer].linear[g.ids[i]].out;
  }
  return col;
}

// out [N, W] = inp W^T + b (the group's weights and biases as one, plus `residual` when given: one GEMM,
// which adds bias and residual with the product), then the active adapters into their column blocks in one
// backend call.
void linears_forward(Model& m, const ForwardOptions& opt, int layer, const LinearGroup& g, Tensor out,
                     const std::array<Tensor, kNumLinears>& xa, ConstTensor inp, int N,
                     ConstTensor residual = nullptr) {
  const LayerWeights& w = m.layers[layer];
  Tensor out_of[kNumLinears] = {};
  const int W = group_outputs(m, layer, g, out, out_of);
  const Linear& first = w.linear[g.ids[0]];
  m.backend->matmul_forward(out, inp, first.weight, first.bias, N, first.in, W, residual);
  LinearId ids[kMaxLoraBranches];
  const int count = active_lora_ids(m, layer, g, ids);
  if (count == 0) return;
  LoraForwardBranch branches[kMaxLoraBranches];
  for (int i = 0; i < count; ++i) {
    const Linear& lin = w.linear[ids[i]];
    branches[i] = {out_of[ids[i]], xa[ids[i]], lin.lora_A, lin.lora_B, lora_site(layer, ids[i]), lin.out, W};
  }
  m.backend->lora_forward(lora_input(m, opt, w.linear[ids[0]], inp, N), branches, count);
}

// dinp = dout [N, W] times the group's weights as one (one GEMM), plus the adapters' input gradients (their
// parameter gradients accumulated) in one backend call, which may read inp and update dinp once for all.
void linears_backward(Model& m, const ForwardOptions& opt, int layer, const LinearGroup& g, ConstTensor dout,
                      Tensor dinp, ConstTensor inp, const std::array<Tensor, kNumLinears>& xa, int N) {
  const LayerWeights& w = m.layers[layer];
  ConstTensor dout_of[kNumLinears] = {};
  const int W = group_outputs(m, layer, g, dout, dout_of);
  const Linear& first = w.linear[g.ids[0]];
  m.backend->matmul_backward_input(dinp, dout, first.weight, N, first.in, W, false);
  LinearId ids[kMaxLoraBranches];
  const int count = active_lora_ids(m, layer, g, ids);
  if (count == 0) return;
  LoraBackwardBranch branches[kMaxLoraBranches];
  for (int i = 0; i < count; ++i) {
    const Linear& lin = w.linear[ids[i]];
    branches[i] = {dout_of[ids[i]], xa[ids[i]], lin.lora_A, lin.lora_B, lin.grad_A, lin.grad_B,
                   lora_site(layer, ids[i]), lin.out, W};
  }
  m.backend->lora_backward(dinp, lora_input(m, opt, w.linear[ids[0]], inp, N), branches, count);
}

float attn_dropout(const ForwardOptions& opt) { return opt.training ? opt.attn_dropout : 0.0f; }

// q, k and v as the column blocks of the fused q|k|v product (or of its gradient) [N, W].
template <typename P>
struct QkvBlocks {
  P q, k, v;
  int W;
  QkvBlocks(const Model& m, P qkv) : W(group_out_features(m.config, kQkvGroup)) {
    const int QD = m.config.num_attention_heads * m.config.head_dim, KVD = m.config.num_key_value_heads * m.config.head_dim;
    q = qkv;
    k = tensor_offset(m, qkv, QD);
    v = tensor_offset(m, qkv, QD + KVD);
  }
};

void layer_forward(Model& m, const ForwardOptions& opt, int l, LayerActivations& s) {
  const ModelConfig& c = m.config;
  Backend& be = *m.backend;
  Activations& a = m.acts;
  const int B = a.B, T = a.T, N = B * T, C = c.hidden_size;
  const int H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim;
  ConstTensor h = tensor_offset(m, a.resid, residual_index(a, l) * N * C);
  Tensor h_next = tensor_offset(m, a.resid, residual_index(a, l + 1) * N * C);
  const LayerWeights& w = m.layers[l];
  Range layer_range(be, "layer forward");
  {
    Range range(be, "attention block");
    be.rmsnorm_forward(s.x1, s.rstd1, h, w.attn_norm, N, C, c.rms_norm_eps);
    linears_forward(m, opt, l, kQkvGroup, s.qkv, s.xa, s.x1, N);
    const QkvBlocks<Tensor> qkv(m, s.qkv);
    be.rope_forward(qkv.q, qkv.q, qkv.W, m.rope_cos, m.rope_sin, N, T, H, D);
    be.rope_forward(qkv.k, qkv.k, qkv.W, m.rope_cos, m.rope_sin, N, T, KV, D);
    be.attention_forward(s.att, s.lse, qkv.q, qkv.k, qkv.v, {qkv.W, qkv.W}, a.key_mask, B, T, H, KV, D, opt.causal,
                         attn_dropout(opt), attention_key(m, opt), attention_site(l));
    linears_forward(m, opt, l, kOGroup, a.tmp, s.xa, s.att, N);
  }
  {
    Range range(be, "mlp block");
    // h_mid = h + o and x2 = norm(h_mid) in one pass over the residual stream.
    be.residual_rmsnorm_forward(s.h_mid, s.x2, s.rstd2, h, a.tmp, w.mlp_norm, N, C, c.rms_norm_eps);
    linears_forward(m, opt, l, kGateUpGroup, s.gate_up, s.xa, s.x2, N);
    be.swiglu_forward(s.act, s.gate_up, N, c.intermediate_size);
    // h_next = h_mid + down(act): the residual added by the product (no pass of its own).
    linears_forward(m, opt, l, kDownGroup, h_next, s.xa, s.act, N, s.h_mid);
  }
}

// On entry a.d_resid holds dL/d(output of layer l); on exit dL/d(input of layer l).
void layer_backward(Model& m, const ForwardOptions& opt, int l, const LayerActivations& s) {
  const ModelConfig& c = m.config;
  Backend& be = *m.backend;
  Activations& a = m.acts;
  const int B = a.B, T = a.T, N = B * T, C = c.hidden_size;
  const int H = c.num_attention_heads, KV = c.num_key_value_heads, D = c.head_dim;
  ConstTensor h = tensor_offset(m, a.resid, (size_t)l * N * C);
  const LayerWeights& w = m.layers[l];
  Range layer_range(be, "layer backward");

  // MLP block: h_next = h_mid + down(swiglu(gate|up(x2))), x2 = norm(h_mid).
  linears_backward(m, opt, l, kDownGroup, a.d_resid, a.d_act, s.act, s.xa, N);
  be.swiglu_backward(a.d_gate_up, a.d_act, s.gate_up, N, c.intermediate_size);
  linears_backward(m, opt, l, kGateUpGroup, a.d_gate_up, a.d_x, s.x2, s.xa, N);
  be.rmsnorm_backward(a.d_resid, a.d_x, s.h_mid, w.mlp_norm, s.rstd2, N, C);

  // Attention block: h_mid = h + o(attention(rope(q(x1)), rope(k(x1)), v(x1))), x1 = norm(h).
  linears_backward(m, opt, l, kOGroup, a.d_resid, a.d_att, s.att, s.xa, N);
  const QkvBlocks<Tensor> qkv(m, s.qkv), d_qkv(m, a.d_qkv);
  be.attention_backward(d_qkv.q, d_qkv.k, d_qkv.v, a.d_att, s.att, s.lse, qkv.q, qkv.k, qkv.v, {qkv.W, qkv.W},
                        a.key_mask, B, T, H, KV, D, opt.causal, attn_dropout(opt), attention_key(m, opt),
                        attention_site(l));
  be.rope_backward(d_qkv.q, d_qkv.q, d_qkv.W, m.rope_cos, m.rope_sin, N, T, H, D);
  be.rope_backward(d_qkv.k, d_qkv.k, d_qkv.W, m.rope_cos, m.rope_sin, N, T, KV, D);
  linears_backward(m, opt, l, kQkvGroup, a.d_qkv, a.d_x, s.x1, s.xa, N);
  be.rmsnorm_backward(a.d_resid, a.d_x, h, w.attn_norm, s.rstd1, N, C);
}

}  // namespace

void model_forward(Model& m, const int* ids, const int* key_mask, int B, int T, const ForwardOptions& opt) {
  check_ready(m);
  const ModelConfig& c = m.config;
  if (B <= 0 || T <= 0) throw std::runtime_error("model_forward: empty batch");
  for (long i = 0; i < (long)B * T; ++i) {
    if (ids[i] < 0 || ids[i] >= c.vocab_size)
      throw std::runtime_error("model_forward: token id " + std::to_string(ids[i]) + " at position " +
                               std::to_string(i) + " is outside the vocabulary [0, " +
                               std::to_string(c.vocab_size) + ")");
    if (key_mask && key_mask[i] != 0 && key_mask[i] != 1)
      throw std::runtime_error("model_forward: attention mask values must be 0 or 1");
  }
  if (opt.attn_dropout < 0.0f || opt.attn_dropout >= 1.0f)
    throw std::runtime_error("model_forward: attention dropout must be in [0, 1)");
  if (opt.inference && opt.training)
    throw std::runtime_error("model_forward: an inference-only forward cannot train (ForwardOptions::inference)");
  ensure_activations(m, B, T, opt.recompute_layers, opt.inference);
  ensure_rope(m, T);
  m.last_forward = opt;
  Activations& a = m.acts;
  const int N = B * T;
  m.backend->upload(a.ids, ids, (size_t)N * sizeof(int));
  if (key_mask) {
    m.backend->upload(a.key_mask, key_mask, (size_t)N * sizeof(int));
  } else {
    std::vector<int> ones(N, 1);
    m.backend->upload(a.key_mask, ones.data(), (size_t)N * sizeof(int));
  }
  m.backend->embedding_forward(a.resid, a.ids, m.embed, N, c.hidden_size);
  for (int l = 0; l < c.num_hidden_layers; ++l) layer_forward(m, opt, l, a.layers[activation_slot(a, l)]);
  m.backend->rmsnorm_forward(a.final_hidden, a.rstd_final,
                             tensor_offset(m, a.resid, residual_index(a, c.num_hidden_layers) * N * c.hidden_size),
                             m.final_norm, N, c.hidden_size, c.rms_norm_eps);
}

void lm_head_forward(Model& m) {
  Activations& a = m.acts;
  Range range(*m.backend, "lm head");
  if (!a.logits) a.logits = m.alloc_tensor(a.capacity_rows * (size_t)m.config.vocab_size, true);
  m.backend->matmul_forward(a.logits, a.final_hidden, m.lm_head, nullptr, a.B * a.T, m.config.hidden_size,
                            m.config.vocab_size, nullptr);
}

void model_backward(Model& m, ConstTensor d_final_hidden, const std::function<void(int layer)>& layer_done) {
  Activations& a = m.acts;
  if (a.B == 0) throw std::runtime_error("model_backward: no forward pass to differentiate");
  if (a.inference)
    throw std::runtime_error("model_backward: the last forward was inference-only (ForwardOptions::inference)");
  const ForwardOptions& opt = m.last_forward;
  const ModelConfig& c = m.config;
  const int N = a.B * a.T, C = c.hidden_size, L = c.num_hidden_layers;
  m.backend->zero(a.d_resid, (size_t)N * C * m.backend->tensor_element_bytes());
  m.backend->rmsnorm_backward(a.d_resid, d_final_hidden, tensor_offset(m, a.resid, (size_t)L * N * C), m.final_norm, a.rstd_final, N,
                              C);
  for (int l = L - 1; l >= 0; --l) {
    LayerActivations& s = a.layers[activation_slot(a, l)];
    // Recomputation regenerates the same activations: the dropout masks are a function of (seed, row0, site).
    if (l < a.recompute_layers) layer_forward(m, opt, l, s);
    layer_backward(m, opt, l, s);
    if (layer_done) layer_done(l);
  }
}

float mntp_loss(Model& m, const int* labels, bool backward, long normalizer,
                const std::function<void(int layer)>& layer_done) {
  if (m.acts.B == 0) throw std::runtime_error("mntp_loss: no forward pass");
  queue_mntp_loss(m, labels, backward, normalizer, m.acts.loss, layer_done);
  double loss = 0.0;
  m.backend->download(&loss, m.acts.loss, sizeof(double));
  return (float)loss;
}

void queue_mntp_loss(Model& m, const int* labels, bool backward, long normalizer, double* loss,
                     const std::function<void(int layer)>& layer_done) {
  Activations& a = m.acts;
  if (a.B == 0) throw std::runtime_error("mntp_loss: no forward pass");
  if (backward && a.inference)
    throw std::runtime_error("mntp_loss: the last forward was inference-only (ForwardOptions::inference)");
  const int B = a.B, T = a.T, N = B * T, V = m.config.vocab_size;
  std::vector<int> rows, targets;
  for (int b = 0; b < B; ++b)
    for (int t = 0; t + 1 < T; ++t) {
      int y = labels[b * T + t + 1];
      if (y == kIgnoreIndex) continue;
      if (y < 0 || y >= V)
        throw std::runtime_error("mntp_loss: label " + std::to_string(y) + " outside the vocabulary");
      rows.push_back(b * T + t);
      targets.push_back(y);
    }
  const int M = (int)rows.size();
  if (M == 0) {
    m.backend->zero(loss, sizeof(double));
    return;
  }
  if (normalizer <= 0) normalizer = M;
  if (normalizer < M)
    throw std::runtime_error("mntp_loss: normalizer " + std::to_string(normalizer) + " below this batch's " +
                             std::to_string(M) + " labels");
  m.backend->upload(a.loss_rows, rows.data(), (size_t)M * sizeof(int));
  m.backend->upload(a.targets, targets.data(), (size_t)M * sizeof(int));
  const float dloss = 1.0f / (float)normalizer;
  Range range(*m.backend, "mntp loss");
  m.backend->lm_head_crossentropy(a.losses, backward ? a.d_hidden : nullptr, a.final_hidden, m.lm_head, a.loss_rows,
                                  a.targets, M, N, m.config.hidden_size, V, dloss);
  m.backend->mean_loss(loss, a.losses, M, (double)normalizer);
  if (backward) model_backward(m, a.d_hidden, layer_done);
}

}  // namespace l2v
