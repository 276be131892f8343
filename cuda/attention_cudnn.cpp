// cuDNN SDPA behind cuda::CudnnAttention (contract in cuda/attention_cudnn.h). Host code only, compiled by
// g++ against cuDNN and the cuDNN frontend's headers (cuda/cuda.mk, only where both exist); no kernel of
// ours. Layout: the project's q [B*T, H*D] is cuDNN's Q of dims [B, H, T, D] with strides
// [T*H*D, D, H*D, 1] (k, v, out and the gradients alike), lse [B, H, T] its Stats [B, H, T, 1].
// A key_mask becomes cuDNN's padding mask, per-row lengths and ragged offsets (cuda/attention_cudnn_padding.h;
// cuDNN takes ragged tensors with the padding mask only as a whole, so every query- and key-side tensor
// carries them). Keys outside a row's run are never read, and their dk/dv are zeroed here (cuDNN does not
// write them); so are out and dq of the query rows cuDNN does not get (before q_start), whose lse is set
// to -inf, and cuDNN's Stats rows (counted from q_start) are then copied to and from lse's by 2-D copies.
#include "cuda/attention_cudnn.h"

#include <cudnn.h>
#include <cudnn_frontend.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <tuple>
#include <unordered_map>
#include <vector>

#include "cuda/attention_cudnn_padding.h"
#include "cuda/device_scratch.h"
#include "cuda/launch.h"
#include "host/philox.h"

static_assert(CUDNN_MAJOR >= 9, "--attention_impl cudnn needs cuDNN 9 (the graph API's SDPA forward and backward)");

namespace l2v::cuda {
namespace {

namespace fe = cudnn_frontend;
using TensorPtr = std::shared_ptr<fe::graph::Tensor_attributes>;

// The uids under which the graphs' tensors meet their device pointers at execution.
enum Uid : int64_t { kQ = 1, kK, kV, kO, kStats, kDO, kDQ, kDK, kDV, kSeqQ, kSeqKV, kOffQ, kOffKV, kSeed, kOffset };

void check(fe::error_t err, const char* step) {
  if (err.is_bad()) cudnn_attention_fail(std::string(step) + " failed: " + err.get_message());
}

// One cached graph: everything that shapes it.
struct GraphKey {
  int B, T, H, KV, D;
  bool causal, padded;
  float dropout_p;
  bool backward;
  bool operator<(const GraphKey& o) const {
    return std::tie(B, T, H, KV, D, causal, padded, dropout_p, backward) <
           std::tie(o.B, o.T, o.H, o.KV, o.D, o.causal, o.padded, o.dropout_p, o.backward);
  }
};

// A [B, heads, T, D] view of a [B*T, heads*D] token-major tensor.
fe::graph::Tensor_attributes& token_layout(fe::graph::Tensor_attributes& t, int B, int heads, int T, int D) {
  return t.set_dim({B, heads, T, D}).set_stride({(int64_t)T * heads * D, D, (int64_t)heads * D, 1});
}

fe::graph::Tensor_attributes token_tensor(const char* name, int64_t uid, int B, int heads, int T, int D) {
  fe::graph::Tensor_attributes t;
  token_layout(t.set_name(name).set_uid(uid), B, heads, T, D);
  return t;
}

// lse [B, H, T] fp32 as cuDNN's Stats [B, H, T, 1].
fe::graph::Tensor_attributes& stats_layout(fe::graph::Tensor_attributes& t, const GraphKey& key) {
  return t.set_uid(kStats)
      .set_data_type(fe::DataType_t::FLOAT)
      .set_dim({key.B, key.H, key.T, 1})
      .set_stride({(int64_t)key.H * key.T, key.T, 1, 1});
}

fe::graph::Tensor_attributes int_tensor(const char* name, int64_t uid, int64_t n, fe::DataType_t type) {
  return fe::graph::Tensor_attributes()
      .set_name(name)
      .set_uid(uid)
      .set_dim({n, 1, 1, 1})
      .set_stride({1, 1, 1, 1})
      .set_data_type(type);
}

// The graph inputs the forward and the backward share, with the masks and dropout they configure.
struct Inputs {
  TensorPtr q, k, v, off_q, off_kv, seq_q, seq_kv, seed, offset;
};

Inputs add_inputs(fe::graph::Graph& g, const GraphKey& key) {
  Inputs in;
  in.q = g.tensor(token_tensor("Q", kQ, key.B, key.H, key.T, key.D));
  in.k = g.tensor(token_tensor("K", kK, key.B, key.KV, key.T, key.D));
  in.v = g.tensor(token_tensor("V", kV, key.B, key.KV, key.T, key.D));
  if (key.padded) {
    in.seq_q = g.tensor(int_tensor("seq_len_q", kSeqQ, key.B, fe::DataType_t::INT32));
    in.seq_kv = g.tensor(int_tensor("seq_len_kv", kSeqKV, key.B, fe::DataType_t::INT32));
    in.off_q = g.tensor(int_tensor("ragged_offset_q", kOffQ, key.B + 1, fe::DataType_t::INT32));
    in.off_kv = g.tensor(int_tensor("ragged_offset_kv", kOffKV, key.B + 1, fe::DataType_t::INT32));
    in.q->set_ragged_offset(in.off_q);
    in.k->set_ragged_offset(in.off_kv);
    in.v->set_ragged_offset(in.off_kv);
  }
  if (key.dropout_p > 0.0f) {
    in.seed = g.tensor(int_tensor("dropout_seed", kSeed, 1, fe::DataType_t::INT64));
    in.offset = g.tensor(int_tensor("dropout_offset", kOffset, 1, fe::DataType_t::INT64));
  }
  return in;
}

// Scale, causal mask, padding mask and dropout: the same calls on SDPA_attributes and
// SDPA_backward_attributes.
template <typename Attributes>
void configure(Attributes& a, const GraphKey& key, const Inputs& in) {
  a.set_attn_scale(1.0f / std::sqrt((float)key.D));
  if (key.causal) a.set_diagonal_alignment(fe::DiagonalAlignment_t::TOP_LEFT).set_diagonal_band_right_bound(0);
  if (key.padded) a.set_padding_mask(true).set_seq_len_q(in.seq_q).set_seq_len_kv(in.seq_kv);
  if (key.dropout_p > 0.0f) a.set_dropout(key.dropout_p, in.seed, in.offset);
}

// Marks a graph output with its uid, token-major layout and (padded graphs) ragged offsets.
void set_token_output(const TensorPtr& t, int64_t uid, int B, int heads, int T, int D, const TensorPtr& ragged) {
  token_layout(t->set_output(true).set_uid(uid), B, heads, T, D);
  if (ragged) t->set_ragged_offset(ragged);
}

std::shared_ptr<fe::graph::Graph> build_graph(cudnnHandle_t handle, const GraphKey& key) {
  auto g = std::make_shared<fe::graph::Graph>();
  g->set_io_data_type(fe::DataType_t::BFLOAT16)
      .set_intermediate_data_type(fe::DataType_t::FLOAT)
      .set_compute_data_type(fe::DataType_t::FLOAT);
  const Inputs in = add_inputs(*g, key);
  if (!key.backward) {
    fe::graph::SDPA_attributes a;
    a.set_name("sdpa_forward").set_generate_stats(true);
    configure(a, key, in);
    auto [o, stats] = g->sdpa(in.q, in.k, in.v, a);
    set_token_output(o, kO, key.B, key.H, key.T, key.D, in.off_q);
    stats_layout(stats->set_output(true), key);
  } else {
    TensorPtr o = g->tensor(token_tensor("O", kO, key.B, key.H, key.T, key.D));
    TensorPtr dout = g->tensor(token_tensor("dO", kDO, key.B, key.H, key.T, key.D));
    if (key.padded) {
      o->set_ragged_offset(in.off_q);
      dout->set_ragged_offset(in.off_q);
    }
    fe::graph::Tensor_attributes stats_attributes;
    TensorPtr stats = g->tensor(stats_layout(stats_attributes.set_name("Stats"), key));
    fe::graph::SDPA_backward_attributes a;
    a.set_name("sdpa_backward");
    configure(a, key, in);
    auto [dq, dk, dv] = g->sdpa_backward(in.q, in.k, in.v, o, dout, stats, a);
    set_token_output(dq, kDQ, key.B, key.H, key.T, key.D, in.off_q);
    set_token_output(dk, kDK, key.B, key.KV, key.T, key.D, in.off_kv);
    set_token_output(dv, kDV, key.B, key.KV, key.T, key.D, in.off_kv);
  }
  check(g->validate(), "validate");
  check(g->build_operation_graph(handle), "build_operation_graph");
  check(g->create_execution_plans({fe::HeurMode_t::A}), "create_execution_plans");
  check(g->check_support(), "check_support");
  check(g->build_plans(), "build_plans");
  return g;
}

}  // namespace

struct CudnnAttention::Impl {
  cudaStream_t stream;
  cudnnHandle_t handle = nullptr;
  std::map<GraphKey, std::shared_ptr<fe::graph::Graph>> graphs;
  std::vector<int> mask;     // the host copy of the last key_mask
  CudnnPadding padding;      // its lengths and offsets
  int64_t rng[2] = {0, 0};   // dropout seed and offset
  size_t neg_inf_count = 0;  // floats of -inf in neg_inf_dev
  DeviceScratch padding_dev, rng_dev, workspace, stats_dev, neg_inf_dev;

  // The cached graph for `key` (built on first use).
  fe::graph::Graph& graph(const GraphKey& key) {
    auto it = graphs.find(key);
    if (it == graphs.end()) it = graphs.emplace(key, build_graph(handle, key)).first;
    return *it->second;
  }

  // Reads key_mask back, derives the padding integers and uploads them: whether any key is hidden.
  bool upload_padding(const int* key_mask, int B, int T, int H, int KV, int D, bool causal,
                      std::unordered_map<int64_t, void*>& pack) {
    padding.shifted = false;
    if (!key_mask) return false;
    mask.resize((size_t)B * T);
    CUDA_CHECK(cudaMemcpyAsync(mask.data(), key_mask, mask.size() * sizeof(int), cudaMemcpyDeviceToHost, stream));
    CUDA_CHECK(cudaStreamSynchronize(stream));
    cudnn_padding_from_mask(mask, B, T, H, KV, D, causal, padding);
    if (!padding.padded) return false;
    const std::vector<int32_t>& ints = padding.ints;
    auto* dev = static_cast<int32_t*>(padding_dev.get(ints.size() * sizeof(int32_t)));
    CUDA_CHECK(cudaMemcpyAsync(dev, ints.data(), ints.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream));
    pack[kSeqQ] = dev + padding.seq_q();
    pack[kSeqKV] = dev + padding.seq_kv();
    pack[kOffQ] = dev + padding.off_q();
    pack[kOffKV] = dev + padding.off_kv();
    return true;
  }

  // cuDNN's Philox seed for (key, site): 64 bits of our Philox at a counter of its own, offset 0.
  void upload_rng(float dropout_p, DropoutKey key, uint32_t site, std::unordered_map<int64_t, void*>& pack) {
    if (dropout_p <= 0.0f) return;
    const Philox4 r = philox4x32_10(0xC0D1u, (uint32_t)key.offset, (uint32_t)(key.offset >> 32), site, key.seed);
    rng[0] = (int64_t)(((uint64_t)r.v[0] << 32) | r.v[1]);
    rng[1] = 0;
    auto* dev = static_cast<int64_t*>(rng_dev.get(sizeof rng));
    CUDA_CHECK(cudaMemcpyAsync(dev, rng, sizeof rng, cudaMemcpyHostToDevice, stream));
    pack[kSeed] = dev;
    pack[kOffset] = dev + 1;
  }

  // Where cuDNN's Stats go: lse itself, or (shifted) a scratch whose row i of batch row b is lse's row
  // q_start[b] + i.
  float* stats(float* lse, int B, int H, int T) {
    return padding.shifted ? static_cast<float*>(stats_dev.get((size_t)B * H * T * sizeof(float))) : lse;
  }
  // lse[b, h, i] = i < q_start[b] ? -inf : stats[b, h, i - q_start[b]] (2-D copies over the H rows).
  void stats_to_lse(float* lse, const float* st, int B, int H, int T) {
    if (neg_inf_count < (size_t)H * T) {
      const std::vector<float> host((size_t)H * T, -std::numeric_limits<float>::infinity());
      CUDA_CHECK(cudaMemcpyAsync(neg_inf_dev.get(host.size() * sizeof(float)), host.data(), host.size() * sizeof(float),
                                 cudaMemcpyHostToDevice, stream));
      neg_inf_count = host.size();
    }
    const size_t pitch = (size_t)T * sizeof(float);
    for (int b = 0; b < B; ++b) {
      float* dst = lse + (size_t)b * H * T;
      const int s = padding.q_start[b];
      if (s > 0)
        CUDA_CHECK(cudaMemcpy2DAsync(dst, pitch, neg_inf_dev.get(0), pitch, s * sizeof(float), H,
                                     cudaMemcpyDeviceToDevice, stream));
      CUDA_CHECK(cudaMemcpy2DAsync(dst + s, pitch, st + (size_t)b * H * T, pitch, (T - s) * sizeof(float), H,
                                   cudaMemcpyDeviceToDevice, stream));
    }
  }
  // The inverse for the backward: stats[b, h, i] = lse[b, h, q_start[b] + i] for the rows cuDNN reads.
  void lse_to_stats(float* st, const float* lse, int B, int H, int T) {
    const size_t pitch = (size_t)T * sizeof(float);
    for (int b = 0; b < B; ++b)
      CUDA_CHECK(cudaMemcpy2DAsync(st + (size_t)b * H * T, pitch, lse + (size_t)b * H * T + padding.q_start[b], pitch,
                                   (T - padding.q_start[b]) * sizeof(float), H, cudaMemcpyDeviceToDevice, stream));
  }

  void execute(fe::graph::Graph& g, std::unordered_map<int64_t, void*>& pack) {
    void* ws = workspace.get((size_t)std::max<int64_t>(g.get_workspace_size(), 1));
    check(g.execute(handle, pack, ws), "execute");
  }
};

CudnnAttention::CudnnAttention(cudaStream_t stream) : impl_(std::make_unique<Impl>()) {
  impl_->stream = stream;
  cudnnStatus_t s = cudnnCreate(&impl_->handle);
  if (s != CUDNN_STATUS_SUCCESS) cudnn_attention_fail(std::string("cudnnCreate: ") + cudnnGetErrorString(s));
  s = cudnnSetStream(impl_->handle, stream);
  if (s != CUDNN_STATUS_SUCCESS) {
    cudnnDestroy(impl_->handle);
    cudnn_attention_fail(std::string("cudnnSetStream: ") + cudnnGetErrorString(s));
  }
}

CudnnAttention::~CudnnAttention() {
  impl_->graphs.clear();
  cudnnDestroy(impl_->handle);
}

bool CudnnAttention::supports_head_dim(int D) { return D > 0 && D % 8 == 0 && D <= 128; }

void CudnnAttention::forward(__nv_bfloat16* out, float* lse, const __nv_bfloat16* q, const __nv_bfloat16* k,
                             const __nv_bfloat16* v, const int* key_mask, int B, int T, int H, int KV, int D,
                             bool causal, float dropout_p, DropoutKey key, uint32_t site) {
  std::unordered_map<int64_t, void*> pack = {{kQ, const_cast<__nv_bfloat16*>(q)},
                                             {kK, const_cast<__nv_bfloat16*>(k)},
                                             {kV, const_cast<__nv_bfloat16*>(v)},
                                             {kO, out},
                                             {kStats, lse}};
  const bool padded = impl_->upload_padding(key_mask, B, T, H, KV, D, causal, pack);
  impl_->upload_rng(dropout_p, key, site, pack);
  float* stats = impl_->stats(lse, B, H, T);
  pack[kStats] = stats;
  if (impl_->padding.shifted)  // the query rows before q_start: out = 0 (cuDNN writes the others)
    CUDA_CHECK(cudaMemsetAsync(out, 0, (size_t)B * T * H * D * sizeof(__nv_bfloat16), impl_->stream));
  impl_->execute(impl_->graph({B, T, H, KV, D, causal, padded, dropout_p, false}), pack);
  if (impl_->padding.shifted) impl_->stats_to_lse(lse, stats, B, H, T);
}

void CudnnAttention::backward(__nv_bfloat16* dq, __nv_bfloat16* dk, __nv_bfloat16* dv, const __nv_bfloat16* dout,
                              const __nv_bfloat16* out, const float* lse, const __nv_bfloat16* q,
                              const __nv_bfloat16* k, const __nv_bfloat16* v, const int* key_mask, int B, int T, int H,
                              int KV, int D, bool causal, float dropout_p, DropoutKey key, uint32_t site) {
  std::unordered_map<int64_t, void*> pack = {{kQ, const_cast<__nv_bfloat16*>(q)},
                                             {kK, const_cast<__nv_bfloat16*>(k)},
                                             {kV, const_cast<__nv_bfloat16*>(v)},
                                             {kO, const_cast<__nv_bfloat16*>(out)},
                                             {kDO, const_cast<__nv_bfloat16*>(dout)},
                                             {kStats, const_cast<float*>(lse)},
                                             {kDQ, dq},
                                             {kDK, dk},
                                             {kDV, dv}};
  const bool padded = impl_->upload_padding(key_mask, B, T, H, KV, D, causal, pack);
  if (padded) {  // the hidden keys' gradients are 0; cuDNN writes only the visible ones
    const size_t bytes = (size_t)B * T * KV * D * sizeof(__nv_bfloat16);
    CUDA_CHECK(cudaMemsetAsync(dk, 0, bytes, impl_->stream));
    CUDA_CHECK(cudaMemsetAsync(dv, 0, bytes, impl_->stream));
  }
  if (impl_->padding.shifted) {  // dq of the query rows before q_start is 0; cuDNN reads its Stats rows from 0
    CUDA_CHECK(cudaMemsetAsync(dq, 0, (size_t)B * T * H * D * sizeof(__nv_bfloat16), impl_->stream));
    float* stats = impl_->stats(const_cast<float*>(lse), B, H, T);
    impl_->lse_to_stats(stats, lse, B, H, T);
    pack[kStats] = stats;
  }
  impl_->upload_rng(dropout_p, key, site, pack);
  impl_->execute(impl_->graph({B, T, H, KV, D, causal, padded, dropout_p, true}), pack);
}

}  // namespace l2v::cuda
