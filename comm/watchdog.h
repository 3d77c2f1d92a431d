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
// Blocking collectives are watched by holding a Scope for their duration (MpiCommunicator's
// methods do): at most one is in flight per process at a time (callers serialize them), and
// nested scopes count once. Collectives queued on a stream (NCCL's) are registered with
// queued() and a completion probe (a CUDA event's query) instead, polled in queue order; the
// oldest unfinished one is the one timed. A backend that learns of failures asynchronously
// (NCCL: a peer's process died, a connection broke) installs a health check, polled every
// period, which ends the process at once, without waiting for the timeout.
#pragma once
#include <atomic>
#include <condition_variable>
#include <cstdint>
#include <deque>
#include <functional>
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

  // A collective queued on a stream, timed from now until `done` returns true (it may wait
  // behind earlier work on that stream: the timeout covers that too). `done` is called on the
  // watchdog thread, in queue order, and destroyed there once true; it must be cheap and
  // thread-safe (cudaEventQuery is). op: a string literal.
  void queued(const char* op, int64_t bytes, std::function<bool()> done);
  // Polled every period on the watchdog thread: an empty string while healthy, else the error,
  // which ends the process at once.
  void set_health_check(std::function<std::string()> check);

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
  struct Queued {
    const char* op;
    int64_t bytes, seq, queued_ns;
    std::function<bool()> done;
  };
  void run();
  void check();  // one period's checks (under mu_)
  [[noreturn]] void expire(const char* op, int64_t bytes, int64_t seq, double age_s);
  [[noreturn]] void fail_now(const std::string& why);

  Settings s_;
  std::atomic<int> depth_{0};
  std::atomic<int64_t> started_ns_{0};  // steady clock; 0: no collective in flight
  std::atomic<const char*> op_{""};
  std::atomic<int64_t> bytes_{0};
  std::atomic<int64_t> seq_{0};          // collectives started so far
  std::mutex mu_;
  std::condition_variable cv_;
  bool stop_ = false;
  std::deque<Queued> queue_;              // guarded by mu_
  std::function<std::string()> health_;  // guarded by mu_
  std::thread thread_;
};

// The verdict of every rank's report in `dir` ("<job>.rank<r>": "rank R waiting in OP #SEQ ...")
// when none is missing: ranks at different collectives, the same number in different
// operations (an order mismatch), or all in the same one (the transport is stuck).
std::string compare_watchdog_reports(const std::string& dir, uint64_t job, int world);

}  // namespace condense
