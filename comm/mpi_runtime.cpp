#include "comm/mpi_runtime.h"

#include <mpi.h>

#include <cstdlib>

#include "core/error.h"

namespace condense {

bool launched_by_mpi() {
  for (const char* v : {"OMPI_COMM_WORLD_SIZE", "PMIX_RANK", "PMI_RANK", "PMI_SIZE"})
    if (std::getenv(v)) return true;
  return false;
}

bool mpi_initialized() {
  int init = 0, fin = 0;
  MPI_Initialized(&init);
  MPI_Finalized(&fin);
  return init && !fin;
}

namespace {
void finalize_at_exit() {
  if (mpi_initialized()) MPI_Finalize();
}
}  // namespace

void ensure_mpi_initialized() {
  if (mpi_initialized()) return;
  // Open MPI TCP transport defaults tuned for gradient exchange (bench/RESULTS.md, "Open MPI
  // TCP settings"), set before MPI reads its parameters; a user's own setting (mpirun --mca
  // ..., or OMPI_MCA_* in the environment) wins, and other transports ignore them:
  //  - no emulated RDMA put: once the registration cache is warm, large messages switch to it,
  //    and it halves the throughput of simultaneous transfers in both directions (the pattern
  //    of every ring all-reduce): MPI_Sendrecv of 16 MB between two simulated nodes at
  //    100 Mbit/s ran at 90 Mbit/s each way for two iterations and 48 from the third on; with
  //    send/receive semantics only it stays at 88-90.
  //  - eager messages up to 1 MiB: ring chunks of 1 MB buckets go without the rendezvous
  //    round trip, which waits behind queued data on a busy link (2 ranks at 1 Gbit/s, 1 MB
  //    buckets: 280 -> 250 ms per step). The receive is always posted with the send, so the
  //    unexpected-message buffering this could cost does not arise in condense's collectives.
  setenv("OMPI_MCA_btl_tcp_flags", "send,inplace,need-ack,need-csum", /*overwrite=*/0);
  setenv("OMPI_MCA_btl_tcp_eager_limit", "1048576", /*overwrite=*/0);
  setenv("OMPI_MCA_btl_tcp_max_send_size", "1048576", /*overwrite=*/0);
  int provided = 0;
  check_mpi(MPI_Init_thread(nullptr, nullptr, MPI_THREAD_SERIALIZED, &provided), "MPI_Init_thread");
  CONDENSE_CHECK(provided >= MPI_THREAD_SERIALIZED,
                 "MPI provides thread level {} but condense needs MPI_THREAD_SERIALIZED ({})",
                 provided, static_cast<int>(MPI_THREAD_SERIALIZED));
  // Errors come back as return codes (turned into exceptions) instead of aborting silently.
  MPI_Comm_set_errhandler(MPI_COMM_WORLD, MPI_ERRORS_RETURN);
  std::atexit(finalize_at_exit);
}

int mpi_world_rank() {
  if (!mpi_initialized()) return 0;
  int r = 0;
  MPI_Comm_rank(MPI_COMM_WORLD, &r);
  return r;
}

int mpi_world_size() {
  if (!mpi_initialized()) return 1;
  int s = 1;
  MPI_Comm_size(MPI_COMM_WORLD, &s);
  return s;
}

void abort_world(int code) {
  if (mpi_initialized() && mpi_world_size() > 1) MPI_Abort(MPI_COMM_WORLD, code);
}

void barrier_world() {
  if (!launched_by_mpi()) return;
  ensure_mpi_initialized();
  if (mpi_world_size() > 1) check_mpi(MPI_Barrier(MPI_COMM_WORLD), "MPI_Barrier");
}

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail("{} failed on rank {}: {}", call, mpi_world_rank(), std::string(msg, len));
}

}  // namespace condense
