// The NCCL backend for CUDA tensors: bootstrapped over MPI (rank 0 creates the unique id with
// ncclGetUniqueId and broadcasts it with MPI_Bcast; every rank calls ncclCommInitRank), one GPU
// per process picked by local rank, collectives on the communicator's own CUDA stream (see the
// contract in communicator.h). A process not started by mpirun/srun (launched_by_mpi() false)
// gets a world of one rank on GPU 0 without initializing MPI (ncclCommInitRank with nranks 1).
// In a build without NCCL the factory throws "built without NCCL".
#pragma once
#include <memory>

#include "comm/communicator.h"

namespace condense {

std::unique_ptr<Communicator> make_nccl_communicator();
bool built_with_nccl();

}  // namespace condense
