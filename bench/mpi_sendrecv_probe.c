// Two-way throughput of one MPI_Sendrecv between two ranks (both send and receive N MB at once,
// the pattern of a ring all-reduce step), 4 iterations. Used to find Open MPI's TCP put-protocol
// slowdown (bench/RESULTS.md, scaling section). Build and run on the simulator:
//   mpicc -O2 -o /tmp/mpi_sendrecv_probe bench/mpi_sendrecv_probe.c
//   CONDENSE_NETSIM_PREFIX=cnprobe launch/netsim.sh up 2 --rate 100mbit --delay 0
//   CONDENSE_NETSIM_PREFIX=cnprobe launch/netsim.sh run -- [--mca btl_tcp_flags send,inplace,need-ack,need-csum] -np 2 /tmp/mpi_sendrecv_probe 16
// argv[1]: MB each way (16); argv[2]: chunk KB (0: one message).
#include <mpi.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
int main(int argc, char** argv) {
  MPI_Init(&argc, &argv);
  int r, n; MPI_Comm_rank(MPI_COMM_WORLD, &r); MPI_Comm_size(MPI_COMM_WORLD, &n);
  size_t mb = argc > 1 ? atoi(argv[1]) : 16; size_t N = mb << 20;
  int chunk_kb = argc > 2 ? atoi(argv[2]) : 0;  /* 0: one message */
  char* s = malloc(N); char* d = malloc(N); memset(s, 1, N);
  int peer = 1 - r;
  for (int it = 0; it < 4; ++it) {
    MPI_Barrier(MPI_COMM_WORLD);
    double t0 = MPI_Wtime();
    if (!chunk_kb) {
      MPI_Sendrecv(s, N, MPI_BYTE, peer, 0, d, N, MPI_BYTE, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    } else {
      size_t c = (size_t)chunk_kb << 10;
      for (size_t o = 0; o < N; o += c)
        MPI_Sendrecv(s + o, c, MPI_BYTE, peer, 0, d + o, c, MPI_BYTE, peer, 0, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
    }
    double dt = MPI_Wtime() - t0;
    if (r == 0) printf("it %d: %zu MB each way (chunk %d KB) %.3f s = %.1f Mbit/s each way\n", it, mb, chunk_kb, dt, mb * 8.0 / dt);
  }
  MPI_Finalize();
}
