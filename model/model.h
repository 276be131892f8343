// The Llama-family transformer with the LLM2Vec changes (bidirectional attention, LoRA, dropout),
// its forward and backward schedule written once against the Backend interface (model/backend.h).
//
// Gradients flow to the trainable parameters only (LoRA A/B); base weights are frozen and no gradient
// is ever computed for them. The backward pass starts from a gradient w.r.t. the final hidden states,
// so any head (the LM head for MNTP here, a pooling head later) plugs in on top.
#pragma once
#include <array>
#include <cmath>
#include <cstdint>
#include <functional>
#include <set>
#include <string>
#include <vector>

#include "model/backend.h"
#include "model/config.h"
#include "model/tensor_source.h"

namespace l2v {

// The linear layers of a decoder layer, in Hugging Face / PEFT naming order.
enum LinearId : int { kQ = 0, kK, kV, kO, kGate, kUp, kDown, kNumLinears };
const char* linear_name(int id);  // "q_proj", ..., "down_proj"
// The linear layers that read one input (q/k/v the attention norm's output, o the attention's, gate/up the
// MLP norm's, down SwiGLU's), each group one linear layer of the summed width W in memory: its weights are
// row blocks of one allocation [W, IC] (each Linear's weight points at its block; biases likewise), its
// output one tensor [N, W] whose column blocks are the layers' outputs (rows W apart), and its output
// gradient the same. Its base product is one GEMM forward and one backward (no accumulation of dinp over the
// layers), its LoRA branches one backend call (model/backend.h: lora_forward, lora_backward). RoPE and
// attention read and write q, k and v in the fused q|k|v rows (host/qkv_strides.h), SwiGLU the gate|up rows
// (Backend::swiglu_forward). The memory plan sizes the CUDA LoRA workspace by these groups.
struct LinearGroup {
  int count;
  std::array<LinearId, kMaxLoraBranches> ids;
};
inline constexpr LinearGroup kQkvGroup{3, {kQ, kK, kV}}, kOGroup{1, {kO}}, kGateUpGroup{2, {kGate, kUp}},
    kDownGroup{1, {kDown}};
inline constexpr std::array<LinearGroup, 4> kLinearGroups{kQkvGroup, kOGroup, kGateUpGroup, kDownGroup};
bool parse_linear_name(const std::string& name, int* id);

struct LoraConfig {
  int r = 0;  // 0: no adapter
  float alpha = 16.0f;
  float dropout = 0.0f;  // PEFT lora_dropout, on the adapter's input, only in training
  bool use_rslora = false;  // PEFT use_rslora: scale alpha / sqrt(r) instead of alpha / r
  std::array<bool, kNumLinears> targets{true, true, true, true, true, true, true};
  float scale() const {
    if (r <= 0) return 0.0f;
    return use_rslora ? alpha / std::sqrt((float)r) : alpha / (float)r;
  }
};

struct Linear {
  Tensor weight = nullptr;  // [out, in]
  Tensor bias = nullptr;    // [out] or nullptr
  int in = 0, out = 0;
  // LoRA adapter of this layer, or nullptrs when it is not targeted.
  float* lora_A = nullptr;  // [r, in]
  float* lora_B = nullptr;  // [out, r]
  float* grad_A = nullptr;
  float* grad_B = nullptr;
};

struct LayerWeights {
  float* attn_norm = nullptr;  // [C]
  float* mlp_norm = nullptr;   // [C]
  std::array<Linear, kNumLinears> linear;
};

// A trainable tensor (value and gradient in backend memory), named as PEFT names it on disk.
struct TrainableParam {
  std::string name;
  float* value;
  float* grad;
  size_t count;
  std::vector<int64_t> shape;
  int layer = -1;  // the decoder layer whose backward writes `grad` (-1: none, e.g. the pooling head)
};

struct ForwardOptions {
  bool causal = false;        // false: LLM2Vec's bidirectional attention (the key-padding mask stays)
  bool training = false;      // enables attention dropout and LoRA dropout
  float attn_dropout = 0.0f;  // probability, used only when training
  uint64_t seed = 0;          // keys every dropout mask of the step (vary it per step)
  // The index of this batch's row 0 in the batch the dropout masks are defined over (a data-parallel
  // rank's share of the global batch, a chunk of rows): every row draws the masks it would draw there,
  // provided T is that batch's (host/philox.h DropoutKey).
  uint64_t row0 = 0;
  // Selective recomputation: layers [0, recompute_layers) keep only their input (the residual stream)
  // and the backward re-runs their forward in one shared slot of activations; the others keep theirs.
  // 0 stores every layer's activations, >= L recomputes all (gradient checkpointing). The dropout masks
  // are functions of (seed, row0, site), so a recomputed layer is bit-identical to its first forward.
  int recompute_layers = 0;
  // Inference only (embedding, evaluation, generation): every layer runs in one shared slot of
  // activations and the residual stream in two buffers (layer l reads one and writes the other), and no
  // backward buffers are allocated, so memory grows with B·T·width and not with the layers. No backward
  // can follow; training (dropout) is refused.
  bool inference = false;
};

// Per-layer saved activations of one forward pass (backend memory).
struct LayerActivations {
  // qkv [N, H*D + 2 KV*D]: q, k, v as column blocks (RoPE applied in place); gate_up [N, 2F]: gate, up.
  Tensor x1, qkv, att, h_mid, x2, gate_up, act;
  float *rstd1, *rstd2, *lse;
  std::array<Tensor, kNumLinears> xa;  // LoRA intermediates dropout(x) A^T [N, r]
};

struct Activations {
  int B = 0, T = 0;
  size_t capacity_rows = 0;  // B*T the buffers were allocated for
  int capacity_batch = 0;    // and B (the pooled rows)
  int recompute_layers = 0;  // as ForwardOptions's, clamped to [0, L]
  bool inference = false;    // as ForwardOptions's: one slot, two residual buffers, no backward buffers
  int* ids = nullptr;        // [N]
  int* key_mask = nullptr;   // [N]
  Tensor resid = nullptr;    // [L+1, N, C]: input of layer l at l, last layer's output at L (residual_index)
  // One slot per stored layer (layers recompute_layers .. L-1 at indices 1 .. L-recompute_layers when some
  // are recomputed, else 0 .. L-1), plus slot 0 shared by the recomputed layers (activation_slot).
  std::vector<LayerActivations> layers;
  Tensor final_hidden = nullptr;  // [N, C] after the final norm
  float* rstd_final = nullptr;
  Tensor logits = nullptr;        // [N, V], allocated by the first lm_head_forward only
  int* loss_rows = nullptr;       // [N] MNTP: the rows whose logits predict a label
  int* targets = nullptr;         // [N] MNTP: the label each of those rows predicts
  float* losses = nullptr;        // [N]
  double* loss = nullptr;         // one double: the MNTP loss of mntp_loss
  // backward scratch, shared by all layers; tmp [N, C] holds the o projection's output in the forward
  Tensor d_resid, d_x, d_hidden, d_qkv, d_att, d_gate_up, d_act, tmp;
  Tensor lora_scratch = nullptr;  // [N, max in-features] dropped LoRA inputs
  float* pool_weights = nullptr;  // [N] fp32: the pooling weights of each position (model/pooling.h)
  float* pooled = nullptr;        // [B, C] fp32: pooled rows, or their gradient in the backward
};

struct Model {
  ModelConfig config;
  Backend* backend = nullptr;
  Tensor embed = nullptr;       // [V, C]
  std::vector<LayerWeights> layers;
  float* final_norm = nullptr;  // [C]
  Tensor lm_head = nullptr;     // [V, C]; == embed when tied
  LoraConfig lora;
  bool lora_merged = false;
  std::vector<TrainableParam> trainable;  // LoRA A/B (and, later, head parameters)
  float *rope_cos = nullptr, *rope_sin = nullptr;
  int rope_len = 0;
  Activations acts;
  ForwardOptions last_forward;  // the options of the forward pass the backward differentiates

  Model() = default;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;
  ~Model();

  // Zeroed backend memory released with the model; `activation` memory is released on re-allocation.
  // alloc_tensor holds n elements in the backend's tensor precision, alloc_floats n fp32 values (see
  // model/backend.h for which buffers are which).
  Tensor alloc_tensor(size_t n, bool activation = false);
  float* alloc_floats(size_t n, bool activation = false);
  int* alloc_ints(size_t n, bool activation = false);
  void release_activations();

 private:
  std::vector<void*> weight_memory_;
  std::vector<void*> activation_memory_;
};

// In- and out-features of decoder linear `id` (q_proj .. down_proj) for config `c`, and the summed
// out-features of a group (a fused group's width W).
int linear_in_features(const ModelConfig& c, int id);
int linear_out_features(const ModelConfig& c, int id);
int group_out_features(const ModelConfig& c, const LinearGroup& g);
// Whether decoder linear `id` has a bias (Qwen2's q/k/v; o when the config says so).
bool linear_has_bias(const ModelConfig& c, int id);

// The number of LayerActivations slots for L layers with the first `recompute_layers` recomputed, and
// the slot layer `layer` uses (Activations::layers).
int activation_slots(int L, int recompute_layers);
int activation_slot(const Activations& a, int layer);
// Where the input of layer `layer` (the output of layer - 1; layer L: the last output) is in a.resid:
// at `layer`, or at layer % 2 after an inference forward.
size_t residual_index(const Activations& a, int layer);

// Loads base weights (Hugging Face names) from `src` into backend memory. Every missing tensor or
// wrong shape is a std::runtime_error naming the tensor and src.describe().
void load_model(Model& m, const ModelConfig& config, const TensorSource& src, Backend& backend);

// Adds a fresh adapter as PEFT initialises it: A ~ kaiming_uniform(a=sqrt(5)) = U(-1/sqrt(in), 1/sqrt(in)),
// B = 0 (so the adapted model starts equal to the base model). Replaces any previous adapter.
void add_lora(Model& m, const LoraConfig& lora, uint64_t seed);
// Overwrites the adapter's A/B from tensors named as in PEFT's adapter_model.safetensors. Both layouts
// in use are accepted: PEFT wrapping the whole causal LM (base_model.model.model.layers.…, what
// TrainableParam::name holds and what we write) and llm2vec's, which wraps the inner decoder
// (base_model.model.layers.…, the published LLM2Vec adapters).
// Returns the names it read (the adapter layout each factor was found under).
std::set<std::string> load_lora_weights(Model& m, const TensorSource& src);
// W += scale*B*A for every adapted layer (and the inverse). After merging, the forward skips the branch.
void merge_lora(Model& m);
void unmerge_lora(Model& m);
// PEFT's merge_and_unload: merges the adapter into the base weights and drops it (no LoRA, nothing
// trainable left), so a new adapter can be added on top — how llm2vec chains its stages.
void merge_and_unload_lora(Model& m);

// A base weight of the model under its Hugging Face name: a tensor in the backend's precision (linear
// weights and biases, embeddings) or an fp32 buffer (norms); one of the two is set.
struct NamedWeight {
  std::string name;
  std::vector<int64_t> shape;
  ConstTensor tensor = nullptr;
  const float* floats = nullptr;
};
// Every base weight in checkpoint order (the LM head only when untied): what a saved model must hold.
std::vector<NamedWeight> model_weights(const Model& m);
// Its values in fp32 on the host.
std::vector<float> download_weight(const Model& m, const NamedWeight& w);

void zero_grads(Model& m);

// Forward pass over a batch of token ids [B, T] with key_mask [B, T] (1 = token, 0 = padding), both host
// arrays; ids are validated against the vocabulary. Result: m.acts.final_hidden [B*T, C].
void model_forward(Model& m, const int* ids, const int* key_mask, int B, int T, const ForwardOptions& opt);
// logits [B*T, V] = final_hidden * lm_head^T into m.acts.logits.
void lm_head_forward(Model& m);
// Accumulates the trainable parameters' gradients given d_final_hidden [B*T, C] (backend memory) for
// the last model_forward.
// `layer_done`, when given, is called after each layer's backward (layers L-1 down to 0), when that
// layer's trainable gradients are complete in the backend's order of work (data parallelism starts
// reducing them there).
void model_backward(Model& m, ConstTensor d_final_hidden, const std::function<void(int layer)>& layer_done = {});

// The label of a position the MNTP loss does not score (torch cross_entropy's ignore_index).
constexpr int kIgnoreIndex = -100;

// MNTP loss: the logits at position t predict labels[t+1] (Hugging Face's causal-LM shift; LLM2Vec's
// masked next-token prediction), cross-entropy averaged over labels != -100. labels is a host [B, T]
// array. Runs the LM head of the last forward on the labelled rows only (the backend's fused
// lm_head_crossentropy). With backward=true also accumulates gradients.
// `normalizer` > 0 divides the summed cross-entropy (and its gradient) by that count instead of this
// batch's labels: a data-parallel rank passes the global batch's (MntpBatch::global_labels), so the
// ranks' losses and gradients sum to those of one process holding the global batch.
// A batch without any label returns 0 and leaves the gradients untouched. `layer_done`: as model_backward's.
// Reads the loss back (a wait for the device).
float mntp_loss(Model& m, const int* labels, bool backward, long normalizer = 0,
                const std::function<void(int layer)>& layer_done = {});
// The same without waiting: *loss (one double in backend memory) receives the summed cross-entropy divided
// by the normalizer (0 without labels) when the queued work has run. mntp_loss returns it rounded to fp32.
void queue_mntp_loss(Model& m, const int* labels, bool backward, long normalizer, double* loss,
                     const std::function<void(int layer)>& layer_done = {});

// The tensor `elements` elements past `base` (the model's backend's precision).
inline Tensor tensor_offset(const Model& m, Tensor base, size_t elements) {
  return tensor_offset(*m.backend, base, elements);
}
inline ConstTensor tensor_offset(const Model& m, ConstTensor base, size_t elements) {
  return tensor_offset(*m.backend, base, elements);
}

std::vector<float> download_floats(const Model& m, const float* ptr, size_t n);
std::vector<float> download_tensor(const Model& m, ConstTensor ptr, size_t n);

}  // namespace l2v
