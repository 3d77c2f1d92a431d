/*
 * mpi_probe: a tiny MPI program for the local multi-node simulator (launch/netsim.sh) and for
 * checking a real cluster's MPI setup.
 *
 *   mpirun ... mpi_probe [--seconds S] [--latency-iters N] [--msg-bytes B]
 *
 * Every rank prints one line
 *   PROBE rank=R size=N host=HOSTNAME netns=NAME ips=A,B pid=P
 * (netns is the name under /run/netns whose inode equals this process's network namespace, or
 * "-" when none matches, e.g. the root namespace). Then all ranks check an MPI_Allreduce, and
 * ranks 0 and 1 run a ping-pong; rank 0 prints
 *   ALLREDUCE ok sum=S expected=E
 *   PINGPONG latency_us=L bandwidth_mbit=B bytes=X seconds=T
 * latency_us is half the mean round trip of an 8-byte message; bandwidth_mbit is a one-way stream
 * of --msg-bytes messages for about --seconds seconds (10^6 bit/s, as tc's "mbit"). Exit status 0
 * on success, 1 when the allreduce is wrong or an argument is bad.
 */
#include <arpa/inet.h>
#include <dirent.h>
#include <ifaddrs.h>
#include <mpi.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static void netns_name(char *out, size_t n) {
  struct stat self;
  snprintf(out, n, "-");
  if (stat("/proc/self/ns/net", &self) != 0) return;
  DIR *d = opendir("/run/netns");
  if (!d) return;
  struct dirent *e;
  while ((e = readdir(d)) != NULL) {
    if (e->d_name[0] == '.') continue;
    char path[512];
    struct stat st;
    snprintf(path, sizeof path, "/run/netns/%s", e->d_name);
    if (stat(path, &st) == 0 && st.st_ino == self.st_ino && st.st_dev == self.st_dev) {
      snprintf(out, n, "%s", e->d_name);
      break;
    }
  }
  closedir(d);
}

static void ipv4_addrs(char *out, size_t n) {
  struct ifaddrs *ifs = NULL, *i;
  size_t used = 0;
  out[0] = '\0';
  if (getifaddrs(&ifs) != 0) return;
  for (i = ifs; i; i = i->ifa_next) {
    if (!i->ifa_addr || i->ifa_addr->sa_family != AF_INET) continue;
    char buf[INET_ADDRSTRLEN];
    inet_ntop(AF_INET, &((struct sockaddr_in *)i->ifa_addr)->sin_addr, buf, sizeof buf);
    if (strncmp(buf, "127.", 4) == 0) continue;
    int w = snprintf(out + used, n - used, "%s%s", used ? "," : "", buf);
    if (w < 0 || (size_t)w >= n - used) break;
    used += (size_t)w;
  }
  freeifaddrs(ifs);
  if (!used) snprintf(out, n, "-");
}

int main(int argc, char **argv) {
  double seconds = 1.5;
  int latency_iters = 200;
  long msg_bytes = 1 << 20;
  MPI_Init(&argc, &argv);
  int rank, size;
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  for (int a = 1; a < argc; ++a) {
    if (!strcmp(argv[a], "--seconds") && a + 1 < argc) seconds = atof(argv[++a]);
    else if (!strcmp(argv[a], "--latency-iters") && a + 1 < argc) latency_iters = atoi(argv[++a]);
    else if (!strcmp(argv[a], "--msg-bytes") && a + 1 < argc) msg_bytes = atol(argv[++a]);
    else {
      if (rank == 0) fprintf(stderr, "mpi_probe: unknown argument '%s'\n", argv[a]);
      MPI_Finalize();
      return 1;
    }
  }
  if (seconds <= 0 || latency_iters <= 0 || msg_bytes <= 0) {
    if (rank == 0) fprintf(stderr, "mpi_probe: --seconds, --latency-iters, --msg-bytes must be > 0\n");
    MPI_Finalize();
    return 1;
  }

  char host[256] = "-", ns[256], ips[1024];
  gethostname(host, sizeof host);
  host[sizeof host - 1] = '\0';
  netns_name(ns, sizeof ns);
  ipv4_addrs(ips, sizeof ips);
  /* Gather the lines on rank 0 so the output is ordered by rank. */
  char line[2048];
  snprintf(line, sizeof line, "PROBE rank=%d size=%d host=%s netns=%s ips=%s pid=%d", rank, size,
           host, ns, ips, (int)getpid());
  char *all = rank == 0 ? malloc((size_t)size * sizeof line) : NULL;
  MPI_Gather(line, sizeof line, MPI_CHAR, all, sizeof line, MPI_CHAR, 0, MPI_COMM_WORLD);
  if (rank == 0) {
    for (int r = 0; r < size; ++r) printf("%s\n", all + (size_t)r * sizeof line);
    free(all);
    fflush(stdout);
  }

  long mine = rank + 1, sum = 0, expected = (long)size * (size + 1) / 2;
  MPI_Allreduce(&mine, &sum, 1, MPI_LONG, MPI_SUM, MPI_COMM_WORLD);
  int bad = sum != expected;
  if (rank == 0) printf("ALLREDUCE %s sum=%ld expected=%ld\n", bad ? "WRONG" : "ok", sum, expected);

  if (size >= 2 && rank <= 1) {
    int peer = 1 - rank;
    char small[8] = {0};
    /* Latency: warm up the connection, then time round trips. */
    for (int i = 0; i < 20; ++i) {
      if (rank == 0) {
        MPI_Send(small, 8, MPI_CHAR, peer, 1, MPI_COMM_WORLD);
        MPI_Recv(small, 8, MPI_CHAR, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      } else {
        MPI_Recv(small, 8, MPI_CHAR, peer, 1, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(small, 8, MPI_CHAR, peer, 1, MPI_COMM_WORLD);
      }
    }
    double t0 = MPI_Wtime();
    for (int i = 0; i < latency_iters; ++i) {
      if (rank == 0) {
        MPI_Send(small, 8, MPI_CHAR, peer, 2, MPI_COMM_WORLD);
        MPI_Recv(small, 8, MPI_CHAR, peer, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
      } else {
        MPI_Recv(small, 8, MPI_CHAR, peer, 2, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(small, 8, MPI_CHAR, peer, 2, MPI_COMM_WORLD);
      }
    }
    double latency_us = (MPI_Wtime() - t0) / latency_iters / 2 * 1e6;

    /* Bandwidth: rank 0 streams messages; a short calibration run sizes the timed run so that it
       lasts about `seconds`; rank 1 acknowledges the end of each run. */
    char *buf = malloc((size_t)msg_bytes);
    memset(buf, 1, (size_t)msg_bytes);
    long count = 4;
    double bw_mbit = 0, elapsed = 0;
    long total = 0;
    for (int phase = 0;; ++phase) {
      if (rank == 0) {
        /* Stop once a run lasted at least half the target (or after 8 runs): count 0 ends. */
        if (phase > 0 && (elapsed >= 0.5 * seconds || phase >= 8)) count = 0;
        MPI_Send(&count, 1, MPI_LONG, peer, 3, MPI_COMM_WORLD);
        if (count == 0) break;
        double s = MPI_Wtime();
        for (long i = 0; i < count; ++i) MPI_Send(buf, (int)msg_bytes, MPI_CHAR, peer, 4, MPI_COMM_WORLD);
        MPI_Recv(small, 8, MPI_CHAR, peer, 5, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        elapsed = MPI_Wtime() - s;
        total = count * msg_bytes;
        bw_mbit = total * 8.0 / elapsed / 1e6;
        double next = seconds * (total / elapsed) / (double)msg_bytes + 1;
        if (next > 10.0 * count) next = 10.0 * count; /* short runs overestimate */
        count = next < 2 ? 2 : (long)next;
      } else {
        MPI_Recv(&count, 1, MPI_LONG, peer, 3, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        if (count == 0) break;
        for (long i = 0; i < count; ++i)
          MPI_Recv(buf, (int)msg_bytes, MPI_CHAR, peer, 4, MPI_COMM_WORLD, MPI_STATUS_IGNORE);
        MPI_Send(small, 8, MPI_CHAR, peer, 5, MPI_COMM_WORLD);
      }
    }
    free(buf);
    if (rank == 0)
      printf("PINGPONG latency_us=%.1f bandwidth_mbit=%.1f bytes=%ld seconds=%.3f\n", latency_us, bw_mbit,
             total, elapsed);
  }
  fflush(stdout);
  /* Ranks other than 0 and 1 wait here during the ping-pong: sleep between tests instead of
     spinning in MPI_Barrier, so that on a machine simulating several nodes they leave the cores
     to the two ranks being measured. */
  MPI_Request done;
  int finished = 0;
  MPI_Ibarrier(MPI_COMM_WORLD, &done);
  while (!finished) {
    MPI_Test(&done, &finished, MPI_STATUS_IGNORE);
    if (!finished) usleep(1000);
  }
  MPI_Finalize();
  return bad;
}
