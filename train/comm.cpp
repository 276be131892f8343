#include "train/comm.h"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <stdexcept>
#include <thread>

namespace l2v {
namespace {

class SingleProcessComm : public Comm {
 public:
  int rank() const override { return 0; }
  int world_size() const override { return 1; }
  int local_rank() const override { return 0; }
  int local_size() const override { return 1; }
  void allreduce_sum_grads(Model&) override {}
  std::vector<float> all_gather_rows(const std::vector<float>& rows, int, int* offset) override {
    *offset = 0;
    return rows;
  }
  double allreduce_sum(double x) override { return x; }
  bool any(bool x) override { return x; }
  std::string broadcast(const std::string& s) override { return s; }
  std::vector<uint64_t> all_gather(uint64_t x) override { return {x}; }
  [[noreturn]] void abort(int code) override { std::exit(code); }
};

}  // namespace

void Comm::all_gather_device(Backend& backend, const float* local, float* gathered, size_t count) {
  std::vector<float> mine(count);
  backend.download(mine.data(), local, count * sizeof(float));
  int offset = 0;
  const std::vector<float> all = all_gather_rows(mine, 1, &offset);
  if (all.size() != count * (size_t)world_size())
    throw std::runtime_error("all_gather_device: the ranks passed different counts");
  backend.upload(gathered, all.data(), all.size() * sizeof(float));
}

std::unique_ptr<Comm> make_single_process_comm() { return std::make_unique<SingleProcessComm>(); }

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK"})
    if (std::getenv(v)) return true;
  return false;
}

void fail_rank(Comm& comm, const std::string& command, const std::exception& e) {
  if (comm.rank() != 0 && dynamic_cast<const SameOnEveryRank*>(&e)) {
    std::this_thread::sleep_for(std::chrono::minutes(1));
    comm.abort(1);
  }
  std::fprintf(stderr, "%s: rank %d of %d: error: %s\n", command.c_str(), comm.rank(), comm.world_size(), e.what());
  std::fflush(stderr);
  comm.abort(1);
  std::abort();  // not reached (g++ does not carry [[noreturn]] through a virtual call)
}

void require_same_on_every_rank(Comm& comm, const std::string& what, uint64_t hash, const std::string& detail) {
  const std::vector<uint64_t> all = comm.all_gather(hash);
  if (all[comm.rank()] != all[0])
    throw std::runtime_error("rank " + std::to_string(comm.rank()) + ": " + what + " differs from rank 0's" +
                             (detail.empty() ? std::string() : ": " + detail));
  // The ranks that agree with rank 0 go on and are ended by the differing ranks' abort.
}

}  // namespace l2v
