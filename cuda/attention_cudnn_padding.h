// How cuDNN SDPA (cuda/attention_cudnn.cpp) expresses the project's key_mask [B, T] (1 = visible key):
// through cuDNN's padding mask, i.e. per batch row a query length, a key length and ragged offsets (in
// elements) that place the row's queries and keys in the token-major tensors. Plain C++ without cuDNN, so
// that the tests check it on every machine (test/test_cuda_attention_cudnn.cpp, under `make test` too).
//   * A row keeps one contiguous run of visible keys [first, first + len): cuDNN reads len keys from
//     token b*T + first. Every query row still attends (seq_len_q = T, offset b*T), as in the reference,
//     except under the causal mask in a left-padded row: there query row i sees keys first..i and the rows
//     before `first` see none, so cuDNN gets the queries from `first` on (q_start = first, seq_len_q =
//     T - first; its top-left causal mask then matches), and the caller gives the rows before q_start
//     out = 0, lse = -inf and dq = 0.
//   * Refused (std::runtime_error naming the row): holes between visible keys, a row without a visible key,
//     keys padded on both sides under the causal mask, and tensors whose offsets exceed 32 bits.
#pragma once

#include <cstddef>
#include <cstdint>
#include <limits>
#include <stdexcept>
#include <string>
#include <vector>

namespace l2v::cuda {

[[noreturn]] inline void cudnn_attention_fail(const std::string& what) {
  throw std::runtime_error("cuDNN SDPA (--attention_impl cudnn): " + what);
}

struct CudnnPadding {
  int B = 0;
  bool padded = false;       // some key is hidden: the graph needs the padding mask
  bool shifted = false;      // some q_start > 0
  std::vector<int> q_start;  // per batch row: the first query row cuDNN computes
  // The integers cuDNN reads, in one buffer (one upload): seq_len_q [B], seq_len_kv [B], then the ragged
  // offsets of the query-side tensors (q, out, dout, dq) [B+1] and of the key-side ones (k, v, dk, dv) [B+1].
  std::vector<int32_t> ints;
  size_t seq_q() const { return 0; }
  size_t seq_kv() const { return (size_t)B; }
  size_t off_q() const { return 2 * (size_t)B; }
  size_t off_kv() const { return 3 * (size_t)B + 1; }
};

// Fills `p` from a host copy of key_mask for q [B*T, H*D] and k, v [B*T, KV*D] (its vectors are reused).
inline void cudnn_padding_from_mask(const std::vector<int>& mask, int B, int T, int H, int KV, int D, bool causal,
                                    CudnnPadding& p) {
  if ((double)B * T * H * D > (double)std::numeric_limits<int32_t>::max())
    cudnn_attention_fail("B*T*H*D = " + std::to_string((long long)B * T * H * D) +
                         " elements exceed the 32-bit ragged offsets");
  p.B = B;
  p.padded = p.shifted = false;
  p.q_start.assign(B, 0);
  p.ints.assign(4 * (size_t)B + 2, 0);
  long kv_end = 0;
  for (int b = 0; b < B; ++b) {
    const int* row = mask.data() + (size_t)b * T;
    int first = -1, last = -1, visible = 0;
    for (int j = 0; j < T; ++j) {
      if (row[j] == 0) continue;
      if (first < 0) first = j;
      last = j;
      ++visible;
    }
    const std::string where = "key_mask row " + std::to_string(b) + ": ";
    if (visible == 0) cudnn_attention_fail(where + "no visible key (use --attention_impl mma or simt)");
    if (last - first + 1 != visible)
      cudnn_attention_fail(where +
                           "holes between visible keys; cuDNN's padding mask takes one contiguous run per row "
                           "(left or right padding; use --attention_impl mma or simt)");
    if (causal && first > 0 && last < T - 1)
      cudnn_attention_fail(where +
                           "keys padded on both sides under the causal mask (cuDNN takes left or right padding "
                           "there; use --attention_impl mma or simt)");
    if (causal) p.q_start[b] = first;
    p.padded |= visible < T;
    p.shifted |= p.q_start[b] > 0;
    p.ints[p.seq_q() + b] = T - p.q_start[b];
    p.ints[p.seq_kv() + b] = visible;
    p.ints[p.off_q() + b] = (b * T + p.q_start[b]) * H * D;
    p.ints[p.off_kv() + b] = (b * T + first) * KV * D;
    kv_end = ((long)b * T + first + visible) * KV * D;
  }
  p.ints[p.off_q() + B] = B * T * H * D;
  p.ints[p.off_kv() + B] = (int32_t)kv_end;
}

}  // namespace l2v::cuda
