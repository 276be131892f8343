// The NCCL implementation of train/comm.h, for the cuda backend under mpirun: one process per GPU.
//
//   * Device: the node-local rank's GPU (MPI_Comm_split_type shared, train/comm_mpi.cpp), chosen by
//     make_nccl_comm before the backend is created; more ranks on a node than GPUs is refused.
//   * Communicator: ncclCommInitRank from an ncclGetUniqueId that rank 0 broadcasts over MPI.
//   * Gradients (fp32 device memory) are summed by ncclAllReduce on a stream of their own: when the
//     step's last backward pass has finished a layer (layer_grads_ready), an event recorded on the
//     backend's stream makes the communication stream wait for it and that layer's LoRA gradients go
//     out as one group (one bucket per layer), while the backward continues with the layers below;
//     allreduce_sum_grads reduces what remains (the pooling head) and makes the backend's stream wait
//     for the communication stream, so the optimizer and the next step's zeroing see the sums. No host
//     synchronisation.
//   * Everything on the host (the pooled embeddings of the contrastive losses, scalars, the start-up
//     checks, abort) goes through the MPI communicator it wraps.
// Under the CPU emulator (L2V_EMULATE) the NCCL calls are served by host/emu/nccl.cpp over MPI, each
// process with its own emulated device, so this code runs in CI.
#pragma once
#include <memory>

#include "model/backend.h"
#include "train/comm.h"

namespace l2v {

// `host` is an MPI communicator (make_mpi_comm). Selects this rank's GPU and creates the NCCL
// communicator; throws with the reason when either fails.
std::unique_ptr<Comm> make_nccl_comm(std::unique_ptr<Comm> host);

}  // namespace l2v
