// The MPI implementation of train/comm.h (one process per rank, gradients in host memory).
//
// Gradients are reduced in buckets: the trainable tensors are packed, in order, into a buffer of at most
// kBucketFloats floats, which is summed in place with one MPI_Allreduce, then unpacked — LoRA has seven
// small tensors per layer, and one call per tensor would pay the latency hundreds of times. Every rank
// receives the same sums: MPI_Allreduce with MPI_SUM on floats is required by the standard to give the
// same result on every rank, and Open MPI's algorithms do (for two ranks, a + b = b + a exactly).
// The C API only: the deprecated C++ bindings (libmpi_cxx) stay out.
#define OMPI_SKIP_MPICXX 1
#include <mpi.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "train/comm.h"

namespace l2v {
namespace {

constexpr size_t kBucketFloats = size_t{4} << 20;  // 16 MiB of fp32

void check(int rc, const char* what) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  throw std::runtime_error(std::string("MPI ") + what + " failed: " + std::string(msg, len));
}

class MpiComm : public Comm {
 public:
  MpiComm() {
    int initialized = 0;
    MPI_Initialized(&initialized);
    if (!initialized) {
      int provided = 0;
      check(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_FUNNELED, &provided), "MPI_Init_thread");
      owns_mpi_ = true;
    }
    // Errors come back as return codes (turned into exceptions here), not as MPI's default abort.
    MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
    check(MPI_Comm_rank(MPI_COMM_WORLD, &rank_), "MPI_Comm_rank");
    check(MPI_Comm_size(MPI_COMM_WORLD, &size_), "MPI_Comm_size");
    MPI_Comm node;
    check(MPI_Comm_split_type(MPI_COMM_WORLD, MPI_COMM_TYPE_SHARED, rank_, MPI_INFO_NULL, &node),
          "MPI_Comm_split_type");
    MPI_Comm_rank(node, &local_rank_);
    MPI_Comm_size(node, &local_size_);
    MPI_Comm_free(&node);
  }
  ~MpiComm() override {
    if (owns_mpi_) MPI_Finalize();
  }

  int rank() const override { return rank_; }
  int world_size() const override { return size_; }
  int local_rank() const override { return local_rank_; }
  int local_size() const override { return local_size_; }

  void allreduce_sum_grads(Model& m) override {
    if (!m.backend->is_host_memory())
      throw std::runtime_error("the MPI gradient all-reduce needs host memory; the " +
                               std::string(m.backend->name()) + " backend reduces with NCCL (build/llm2vec_cuda)");
    bucket_.resize(kBucketFloats);
    size_t first = 0;  // the first tensor of the current bucket
    while (first < m.trainable.size()) {
      size_t last = first, used = 0;
      while (last < m.trainable.size() && (last == first || used + m.trainable[last].count <= kBucketFloats))
        used += m.trainable[last++].count;
      if (last == first + 1 && used > kBucketFloats) {  // one tensor larger than a bucket: in place
        check(MPI_Allreduce(MPI_IN_PLACE, m.trainable[first].grad, (int)used, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Allreduce of the gradients");
      } else {
        for (size_t i = first, at = 0; i < last; at += m.trainable[i++].count)
          std::memcpy(&bucket_[at], m.trainable[i].grad, m.trainable[i].count * sizeof(float));
        check(MPI_Allreduce(MPI_IN_PLACE, bucket_.data(), (int)used, MPI_FLOAT, MPI_SUM, MPI_COMM_WORLD),
              "MPI_Allreduce of the gradients");
        for (size_t i = first, at = 0; i < last; at += m.trainable[i++].count)
          std::memcpy(m.trainable[i].grad, &bucket_[at], m.trainable[i].count * sizeof(float));
      }
      first = last;
    }
  }

  std::vector<float> all_gather_rows(const std::vector<float>& rows, int dim, int* offset) override {
    const int mine = (int)(rows.size() / dim);
    std::vector<int> counts(size_), displs(size_);
    check(MPI_Allgather(&mine, 1, MPI_INT, counts.data(), 1, MPI_INT, MPI_COMM_WORLD), "MPI_Allgather of row counts");
    int total = 0;
    for (int r = 0; r < size_; ++r) {
      if (r == rank_) *offset = total;
      displs[r] = total * dim;
      total += counts[r];
      counts[r] *= dim;
    }
    std::vector<float> all((size_t)total * dim);
    check(MPI_Allgatherv(rows.data(), mine * dim, MPI_FLOAT, all.data(), counts.data(), displs.data(), MPI_FLOAT,
                         MPI_COMM_WORLD),
          "MPI_Allgatherv of the pooled embeddings");
    return all;
  }

  double allreduce_sum(double x) override {
    double sum = 0;
    check(MPI_Allreduce(&x, &sum, 1, MPI_DOUBLE, MPI_SUM, MPI_COMM_WORLD), "MPI_Allreduce");
    return sum;
  }

  bool any(bool x) override {
    int in = x ? 1 : 0, out = 0;
    check(MPI_Allreduce(&in, &out, 1, MPI_INT, MPI_MAX, MPI_COMM_WORLD), "MPI_Allreduce");
    return out != 0;
  }

  std::string broadcast(const std::string& s) override {
    unsigned long long n = s.size();
    check(MPI_Bcast(&n, 1, MPI_UNSIGNED_LONG_LONG, 0, MPI_COMM_WORLD), "MPI_Bcast");
    std::string out = rank_ == 0 ? s : std::string(n, '\0');
    check(MPI_Bcast(out.data(), (int)n, MPI_CHAR, 0, MPI_COMM_WORLD), "MPI_Bcast");
    return out;
  }

  std::vector<uint64_t> all_gather(uint64_t x) override {
    std::vector<uint64_t> all(size_);
    check(MPI_Allgather(&x, 1, MPI_UINT64_T, all.data(), 1, MPI_UINT64_T, MPI_COMM_WORLD), "MPI_Allgather");
    return all;
  }

  [[noreturn]] void abort(int code) override {
    MPI_Abort(MPI_COMM_WORLD, code);
    std::_Exit(code);  // not reached
  }

 private:
  int rank_ = 0, size_ = 1, local_rank_ = 0, local_size_ = 1;
  bool owns_mpi_ = false;
  std::vector<float> bucket_;
};

}  // namespace

std::unique_ptr<Comm> make_mpi_comm() { return std::make_unique<MpiComm>(); }

}  // namespace l2v
