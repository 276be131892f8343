// NCCL for the CPU emulator: the subset cuda/comm_nccl.cu calls, served over MPI between processes
// (emulated device memory is host memory, and emulated streams are synchronous, so a collective is
// complete when its call returns). Each process of `mpirun -np N build/emu/llm2vec_cuda ...` is one
// rank with an emulated device of its own; the communicator is MPI_COMM_WORLD, which the caller has
// initialised (make_mpi_comm) — the unique id only has to arrive intact, which is checked.
// Float sums and gathers only: that is all the trainer uses; other types and operations return
// ncclInvalidArgument. Group calls need no batching here: every rank makes the same calls in the same
// order, and each one completes on its own.
#define OMPI_SKIP_MPICXX 1
#include <mpi.h>
#include <nccl.h>

#include <climits>
#include <cstring>

struct ncclComm {
  int rank = 0, nranks = 0;
};

namespace {

constexpr char kIdMagic[] = "l2v-emulated-nccl";

bool mpi_ready() {
  int initialized = 0, finalized = 0;
  MPI_Initialized(&initialized);
  MPI_Finalized(&finalized);
  return initialized && !finalized;
}

}  // namespace

ncclResult_t ncclGetUniqueId(ncclUniqueId* id) {
  if (id == nullptr) return ncclInvalidArgument;
  std::memset(id->internal, 0, sizeof id->internal);
  std::memcpy(id->internal, kIdMagic, sizeof kIdMagic);
  return ncclSuccess;
}

ncclResult_t ncclCommInitRank(ncclComm_t* comm, int nranks, ncclUniqueId id, int rank) {
  if (comm == nullptr || std::memcmp(id.internal, kIdMagic, sizeof kIdMagic) != 0) return ncclInvalidArgument;
  if (!mpi_ready()) return ncclSystemError;
  int size = 0, me = 0;
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Comm_rank(MPI_COMM_WORLD, &me);
  if (size != nranks || me != rank) return ncclInvalidUsage;
  *comm = new ncclComm{rank, nranks};
  return ncclSuccess;
}

ncclResult_t ncclCommDestroy(ncclComm_t comm) {
  delete comm;
  return ncclSuccess;
}

ncclResult_t ncclCommAbort(ncclComm_t comm) { return ncclCommDestroy(comm); }

ncclResult_t ncclAllReduce(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype,
                           ncclRedOp_t op, ncclComm_t comm, cudaStream_t) {
  if (comm == nullptr || datatype != ncclFloat32 || op != ncclSum || count > (size_t)INT_MAX)
    return ncclInvalidArgument;
  const int rc = MPI_Allreduce(sendbuff == recvbuff ? MPI_IN_PLACE : sendbuff, recvbuff, (int)count, MPI_FLOAT,
                               MPI_SUM, MPI_COMM_WORLD);
  return rc == MPI_SUCCESS ? ncclSuccess : ncclSystemError;
}

ncclResult_t ncclAllGather(const void* sendbuff, void* recvbuff, size_t count, ncclDataType_t datatype, ncclComm_t comm,
                           cudaStream_t) {
  if (comm == nullptr || datatype != ncclFloat32 || count > (size_t)INT_MAX) return ncclInvalidArgument;
  const int rc = MPI_Allgather(sendbuff, (int)count, MPI_FLOAT, recvbuff, (int)count, MPI_FLOAT, MPI_COMM_WORLD);
  return rc == MPI_SUCCESS ? ncclSuccess : ncclSystemError;
}

ncclResult_t ncclGroupStart() { return ncclSuccess; }
ncclResult_t ncclGroupEnd() { return ncclSuccess; }

const char* ncclGetErrorString(ncclResult_t result) {
  switch (result) {
    case ncclSuccess: return "no error";
    case ncclInvalidArgument: return "invalid argument (the emulated NCCL sums fp32 only)";
    case ncclInvalidUsage: return "invalid usage (ranks disagree with MPI_COMM_WORLD)";
    case ncclSystemError: return "system error (MPI is not initialised or failed)";
    default: return "unhandled error";
  }
}
