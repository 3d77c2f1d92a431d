// MPI process runtime: initialization (with the thread level the gradient-sync thread needs),
// detection of an MPI launch, and the abort that brings the whole job down when one rank fails.
#pragma once
#include <string>

namespace condense {

// True when this process was started by mpirun/srun (Open MPI, PMIx or PMI environment).
bool launched_by_mpi();
// Initializes MPI once (MPI_THREAD_SERIALIZED: collectives may come from the sync thread or the
// main thread, never both at once) and registers MPI_Finalize at exit. Safe to call repeatedly.
void ensure_mpi_initialized();
bool mpi_initialized();
// World rank and size if MPI is initialized, else 0 and 1.
int mpi_world_rank();
int mpi_world_size();
// Terminates every rank of the job (MPI_Abort) if MPI runs with more than one rank; returns
// otherwise.
void abort_world(int code);
// MPI_Barrier over the world when this process was launched by mpirun with more than one rank
// (initializing MPI if needed); a no-op otherwise. For steps before any Communicator exists.
void barrier_world();
// Turns an MPI return code into an exception naming the call and MPI's message.
void check_mpi(int rc, const char* call);

}  // namespace condense
