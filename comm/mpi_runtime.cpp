#include "comm/mpi_runtime.h"

#include <mpi.h>

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

void check_mpi(int rc, const char* call) {
  if (rc == MPI_SUCCESS) return;
  char msg[MPI_MAX_ERROR_STRING];
  int len = 0;
  MPI_Error_string(rc, msg, &len);
  fail("{} failed on rank {}: {}", call, mpi_world_rank(), std::string(msg, len));
}

}  // namespace condense
