// Graceful stop on SIGINT/SIGTERM: the first signal sets a flag that the training loop checks
// after each step (it then checkpoints and returns); a second SIGINT kills the process at once.
#pragma once
#include <string>

namespace condense {

class StopSignal {
 public:
  StopSignal();   // installs the handlers
  ~StopSignal();  // restores the previous handlers
  StopSignal(const StopSignal&) = delete;
  StopSignal& operator=(const StopSignal&) = delete;
  bool requested() const;
  static int last_signal();
  // How long a step and its checkpoint took (rank 0, at a periodic checkpoint): warns once when
  // a stop under mpirun could not finish them (mpirun_stop_window_warning).
  void note_time_to_stop(double seconds);

 private:
  bool warned_ = false;
};

// Under Open MPI's mpirun a stop reaches the ranks as SIGTERM and SIGKILL follows
// odls_base_sigkill_timeout seconds later (1 by default in Open MPI 4.1), whether or not the
// step and the checkpoint finished. Given how long one step and its checkpoint took, a warning
// to raise that timeout when they would not fit; "" when they fit, or not under mpirun (a
// timeout set in openmpi-mca-params.conf rather than --mca or the environment is not seen).
std::string mpirun_stop_window_warning(double seconds_to_stop);

}  // namespace condense
