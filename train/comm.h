// The data-parallel seam. Training code talks to the other ranks only through this interface: the
// gradient all-reduce of the trainable parameters, and the gathering of pooled embeddings so the
// contrastive losses see every rank's texts as in-batch negatives (llm2vec's
// mismatched_sizes_all_gather). Each rank reads its own data (the loaders take rank and world size).
// Only the single-process implementation exists today; NCCL (GPU) and MPI (CPU) implementations plug in
// here without touching the trainer.
#pragma once
#include <memory>
#include <vector>

#include "model/model.h"

namespace l2v {

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // Sums every trainable parameter's gradient over the ranks, in place (backend memory).
  virtual void allreduce_sum_grads(Model& m) = 0;
  // Every rank's rows [n_r, dim], concatenated in rank order; *offset receives the index of this rank's
  // first row in the result. Ranks may contribute different row counts.
  virtual std::vector<float> all_gather_rows(const std::vector<float>& rows, int dim, int* offset) = 0;
  // The mean of x over the ranks (for logging a global loss).
  virtual double allreduce_mean(double x) = 0;
};

std::unique_ptr<Comm> make_single_process_comm();

}  // namespace l2v
