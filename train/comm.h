// The data-parallel seam. Training code talks to the other ranks only through this interface: the
// gradient all-reduce of the trainable parameters, the gathering of pooled embeddings so the contrastive
// losses see every rank's texts as in-batch negatives (llm2vec's mismatched_sizes_all_gather), scalar
// reductions (the logged loss, the stop decision) and the start-up checks (configuration and initial
// weights equal on every rank). Each rank reads its own rows of every global batch (data/loader.h).
//
// Implementations:
//   single process     make_single_process_comm(): world size 1, every operation the identity
//   MPI                make_mpi_comm() (train/comm_mpi.cpp): one process per rank under mpirun (or srun);
//                      gradients in host memory (the CPU backend), reduced with MPI_Allreduce in buckets
//   NCCL               make_nccl_comm() (cuda/comm_nccl.h): the MPI one for everything on the host, and
//                      the gradients reduced on the GPU by NCCL on a stream of their own, each layer's
//                      as soon as the backward has produced them (Comm::layer_grads_ready)
//
// Every rank must make the same calls in the same order (they are collective). A rank that fails
// reports its error and calls abort(), which ends every rank (MPI_Abort): no rank waits forever on one
// that is gone.
#pragma once
#include <cstdint>
#include <memory>
#include <stdexcept>
#include <string>
#include <vector>

#include "model/model.h"

namespace l2v {

class Comm {
 public:
  virtual ~Comm() = default;
  virtual int rank() const = 0;
  virtual int world_size() const = 0;
  // The rank among the processes of this node (chooses the GPU), and the number of them.
  virtual int local_rank() const = 0;
  virtual int local_size() const = 0;

  // The backward has finished layer `layer`'s gradients for this step (called from the last backward
  // pass of a step, layers in decreasing order): an implementation may start reducing them while the
  // backward goes on. Optional; allreduce_sum_grads reduces whatever was not started here.
  virtual void layer_grads_ready(Model& m, int layer) {
    (void)m;
    (void)layer;
  }
  // Sums every trainable parameter's gradient over the ranks, in place (backend memory). On return the
  // sums are usable by the backend's next op.
  virtual void allreduce_sum_grads(Model& m) = 0;
  // Every rank's rows [n_r, dim], concatenated in rank order; *offset receives the index of this rank's
  // first row in the result. Ranks may contribute different row counts.
  virtual std::vector<float> all_gather_rows(const std::vector<float>& rows, int dim, int* offset) = 0;
  // Every rank's `count` fp32 values at `local` (backend memory) concatenated in rank order into
  // `gathered` (backend memory, world_size() * count values), every rank passing the same count. NCCL
  // gathers on the device, ordered with the backend's stream (no wait for the host); the default goes
  // through the host: download, all_gather_rows, upload.
  virtual void all_gather_device(Backend& backend, const float* local, float* gathered, size_t count);
  // The sum of x over the ranks (the same double on every rank).
  virtual double allreduce_sum(double x) = 0;
  // True on every rank when x is true on any rank (a stop signal received by one rank stops all).
  virtual bool any(bool x) = 0;
  // Rank 0's string, on every rank.
  virtual std::string broadcast(const std::string& s) = 0;
  // Every rank's value, in rank order.
  virtual std::vector<uint64_t> all_gather(uint64_t x) = 0;
  // Ends every rank's process with `code` (after this rank has printed its error).
  [[noreturn]] virtual void abort(int code) = 0;
};

// An error that every rank meets at once (it follows from values that are equal on every rank, e.g. a
// non-finite gathered loss): rank 0 reports it, the others wait to be ended by its abort.
struct SameOnEveryRank : std::runtime_error {
  using std::runtime_error::runtime_error;
};

std::unique_ptr<Comm> make_single_process_comm();

// How a rank of a data-parallel run ends on an error: it prints "<command>: rank R of N: error: ..."
// once on stderr and ends every rank (Comm::abort). A SameOnEveryRank error is printed by rank 0 only;
// the other ranks wait for its abort (a minute at most, then abort themselves).
[[noreturn]] void fail_rank(Comm& comm, const std::string& command, const std::exception& e);

// Whether this process was started by mpirun or another PMI/PMIx launcher (srun): the environment
// variables they set (OMPI_COMM_WORLD_SIZE, PMIX_RANK, PMI_RANK).
bool launched_by_mpi();
// MPI_Init (MPI_THREAD_FUNNELED) and MPI_COMM_WORLD; MPI_Finalize when destroyed. Gradients must be in
// host memory (Backend::is_host_memory). Throws when MPI cannot start.
std::unique_ptr<Comm> make_mpi_comm();

// Checks that `what` is the same on every rank: its 64-bit hash is gathered and compared. On a mismatch
// every rank throws: a rank whose value differs from rank 0's names `what` and itself ("rank 1: ...
// differs from rank 0's"); `detail`, when given, is appended to that rank's message.
void require_same_on_every_rank(Comm& comm, const std::string& what, uint64_t hash, const std::string& detail = "");

}  // namespace l2v
