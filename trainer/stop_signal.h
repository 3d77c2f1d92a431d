// Graceful stop on SIGINT/SIGTERM or a STOP file: the first signal sets a flag that the training
// loop checks after each step (it then checkpoints and returns); a second SIGINT kills the
// process at once. The file (`touch <out_dir>/STOP`) asks the same without a signal, which is
// the reliable way under mpirun: Open MPI's mpirun, signalled, waits odls_base_sigkill_timeout
// seconds (1 by default), sends the ranks SIGTERM, and SIGKILLs them as long again later, so a
// step and a checkpoint longer than that never finish. The file is removed once honoured.
#pragma once
#include <string>

namespace condense {

class StopSignal {
 public:
  // Installs the handlers; `stop_file`, when given, is checked by requested() too (the trainer
  // gives it to rank 0 only and spreads the answer with the step's collective).
  explicit StopSignal(std::string stop_file = "");
  ~StopSignal();  // restores the previous handlers; removes the stop file if it was honoured
  StopSignal(const StopSignal&) = delete;
  StopSignal& operator=(const StopSignal&) = delete;
  bool requested();
  static int last_signal();
  // How long a step and its checkpoint took (rank 0, at a periodic checkpoint): warns once when
  // a stop under mpirun could not finish them (mpirun_stop_window_warning).
  void note_time_to_stop(double seconds);

 private:
  std::string stop_file_;
  bool file_seen_ = false;
  bool warned_ = false;
};

// Under Open MPI's mpirun a signalled stop reaches the ranks as SIGTERM, and SIGKILL follows
// odls_base_sigkill_timeout seconds later (1 by default in Open MPI 4.1), whether or not the
// step and the checkpoint finished. Given how long one step and its checkpoint took, a warning
// that names the STOP file when they would not fit; "" when they fit, or not under mpirun (a
// timeout set in openmpi-mca-params.conf rather than --mca or the environment is not seen).
std::string mpirun_stop_window_warning(double seconds_to_stop, const std::string& stop_file);

}  // namespace condense
