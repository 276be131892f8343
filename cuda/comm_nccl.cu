#include "cuda/comm_nccl.h"

#include <nccl.h>

#include <cstdlib>
#include <stdexcept>
#include <string>
#include <vector>

#include "cuda/common.cuh"
#include "cuda/launch.h"
#include "cuda/cuda_backend.h"

namespace l2v {
namespace {

void nccl_check(ncclResult_t r, const char* what) {
  if (r != ncclSuccess) throw std::runtime_error(std::string("NCCL ") + what + " failed: " + ncclGetErrorString(r));
}

class NcclComm : public Comm {
 public:
  explicit NcclComm(std::unique_ptr<Comm> host) : host_(std::move(host)) {
    int devices = 0;
    if (cudaGetDeviceCount(&devices) != cudaSuccess || devices == 0)
      throw std::runtime_error("rank " + std::to_string(host_->rank()) + ": no CUDA GPU is available");
#if defined(L2V_EMULATE)
    const int device = 0;  // every emulated process has a device 0 of its own
#else
    if (host_->local_size() > devices)
      throw std::runtime_error("this node runs " + std::to_string(host_->local_size()) + " ranks but has " +
                               std::to_string(devices) + " GPU(s): start one rank per GPU (mpirun -np, --map-by)");
    const int device = host_->local_rank();
#endif
    CUDA_CHECK(cudaSetDevice(device));
    ncclUniqueId id{};
    if (host_->rank() == 0) nccl_check(ncclGetUniqueId(&id), "ncclGetUniqueId");
    const std::string bytes = host_->broadcast(std::string(reinterpret_cast<const char*>(&id), sizeof id));
    std::copy(bytes.begin(), bytes.end(), reinterpret_cast<char*>(&id));
    nccl_check(ncclCommInitRank(&nccl_, host_->world_size(), id, host_->rank()), "ncclCommInitRank");
    CUDA_CHECK(cudaStreamCreateWithFlags(&comm_stream_, cudaStreamNonBlocking));
    CUDA_CHECK(cudaEventCreateWithFlags(&ready_, cudaEventDisableTiming));
    CUDA_CHECK(cudaEventCreateWithFlags(&reduced_, cudaEventDisableTiming));
  }
  ~NcclComm() override {
    cudaStreamSynchronize(comm_stream_);
    cudaEventDestroy(ready_);
    cudaEventDestroy(reduced_);
    cudaStreamDestroy(comm_stream_);
    ncclCommDestroy(nccl_);
  }

  int rank() const override { return host_->rank(); }
  int world_size() const override { return host_->world_size(); }
  int local_rank() const override { return host_->local_rank(); }
  int local_size() const override { return host_->local_size(); }

  void layer_grads_ready(Model& m, int layer) override {
    start(m);
    reduce(m, [layer](const TrainableParam& p) { return p.layer == layer; });
  }

  void allreduce_sum_grads(Model& m) override {
    start(m);
    reduce(m, [](const TrainableParam&) { return true; });
    // The backend's next ops (clipping, AdamW, the next step's zeroing) wait for the sums.
    CUDA_CHECK(cudaEventRecord(reduced_, comm_stream_));
    CUDA_CHECK(cudaStreamWaitEvent(cuda_stream_of(*m.backend), reduced_, 0));
    reduced_of_.clear();
  }

  std::vector<float> all_gather_rows(const std::vector<float>& rows, int dim, int* offset) override {
    return host_->all_gather_rows(rows, dim, offset);
  }
  // On the communication stream after the backend's work so far; the backend's next ops wait for it.
  void all_gather_device(Backend& backend, const float* local, float* gathered, size_t count) override {
    CUDA_CHECK(cudaEventRecord(ready_, cuda_stream_of(backend)));
    CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready_, 0));
    nccl_check(ncclAllGather(local, gathered, count, ncclFloat32, nccl_, comm_stream_), "ncclAllGather");
    CUDA_CHECK(cudaEventRecord(reduced_, comm_stream_));
    CUDA_CHECK(cudaStreamWaitEvent(cuda_stream_of(backend), reduced_, 0));
  }
  double allreduce_sum(double x) override { return host_->allreduce_sum(x); }
  bool any(bool x) override { return host_->any(x); }
  std::string broadcast(const std::string& s) override { return host_->broadcast(s); }
  std::vector<uint64_t> all_gather(uint64_t x) override { return host_->all_gather(x); }
  [[noreturn]] void abort(int code) override {
    ncclCommAbort(nccl_);
    host_->abort(code);
    std::abort();  // not reached (g++ does not carry [[noreturn]] through a virtual call)
  }

 private:
  void start(const Model& m) {
    if (reduced_of_.size() != m.trainable.size()) reduced_of_.assign(m.trainable.size(), false);
  }
  // All-reduces (sum, in place) the gradients of the trainable tensors selected and not yet reduced this
  // step, as one NCCL group, on the communication stream after the backend's work so far.
  template <typename Select>
  void reduce(Model& m, Select select) {
    std::vector<size_t> todo;
    for (size_t i = 0; i < m.trainable.size(); ++i)
      if (!reduced_of_[i] && select(m.trainable[i])) todo.push_back(i);
    if (todo.empty()) return;
    CUDA_CHECK(cudaEventRecord(ready_, cuda_stream_of(*m.backend)));
    CUDA_CHECK(cudaStreamWaitEvent(comm_stream_, ready_, 0));
    nccl_check(ncclGroupStart(), "ncclGroupStart");
    for (size_t i : todo) {
      TrainableParam& p = m.trainable[i];
      nccl_check(ncclAllReduce(p.grad, p.grad, p.count, ncclFloat32, ncclSum, nccl_, comm_stream_),
                 ("ncclAllReduce of " + p.name).c_str());
      reduced_of_[i] = true;
    }
    nccl_check(ncclGroupEnd(), "ncclGroupEnd");
  }

  std::unique_ptr<Comm> host_;
  ncclComm_t nccl_ = nullptr;
  cudaStream_t comm_stream_ = nullptr;
  cudaEvent_t ready_ = nullptr, reduced_ = nullptr;
  std::vector<bool> reduced_of_;  // per trainable tensor: reduced in this step already
};

}  // namespace

std::unique_ptr<Comm> make_nccl_comm(std::unique_ptr<Comm> host) { return std::make_unique<NcclComm>(std::move(host)); }

}  // namespace l2v
