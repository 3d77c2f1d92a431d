// CollectiveWatchdog: ends this process when one collective has been in flight longer than a
// timeout, naming the ranks that are stalled. MPI has no timeouts of its own: a rank that is
// stopped (SIGSTOP, a hung filesystem, a deadlock) leaves the others blocked in MPI calls
// forever. c10d's NCCL watchdog is the model: a thread beside the collectives that checks their
// age.
//
// Naming the stalled rank: a rank blocked in a ring exchange only knows its neighbour is late,
// so when its collective times out each live rank writes what it is waiting in to
// <report_dir>/watchdog/<job>.rank<r> (the run directory, on the filesystem every rank already
// shares for checkpoints), waits a short grace period for the others' reports, and names the
// ranks that wrote none: stopped, dead, or busy outside any collective for that long (a rank
// whose filesystem is not shared is named too: the message says so). Then it prints one
// "[rank r] error: ..." line and exits with status 1, which makes mpirun end the job (a rank
// that exits without MPI_Finalize; tested). It does not call MPI: the collective's thread may
// be inside MPI, and the library runs MPI_THREAD_SERIALIZED.
//
// Collectives are watched by holding a Scope for their duration (MpiCommunicator's methods do).
// At most one collective is in flight per process at a time (callers serialize them), and
// nested scopes count once.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <mutex>
#include <string>
#include <thread>

namespace condense {

class CollectiveWatchdog {
 public:
  struct Settings {
    double timeout_s = 600;  // > 0
    std::string report_dir;  // reports go to report_dir/watchdog/
    int rank = 0, world = 1;
    uint64_t job = 0;        // the same on every rank of one job (report file names)
  };
  explicit CollectiveWatchdog(Settings s);  // starts the thread
  ~CollectiveWatchdog();                    // stops it

  class Scope {
   public:
    Scope(CollectiveWatchdog* w, const char* op, int64_t bytes);  // w may be null: no-op
    ~Scope();
    Scope(const Scope&) = delete;
    Scope& operator=(const Scope&) = delete;

   private:
    CollectiveWatchdog* w_;
  };

 private:
  void run();
  [[noreturn]] void expire(const char* op, int64_t bytes, int64_t seq, double age_s);

  Settings s_;
  std::atomic<int> depth_{0};
  std::atomic<int64_t> started_ns_{0};  // steady clock; 0: no collective in flight
  std::atomic<const char*> op_{""};
  std::atomic<int64_t> bytes_{0};
  std::atomic<int64_t> seq_{0};          // collectives started so far
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::thread thread_;
};

}  // namespace condense
