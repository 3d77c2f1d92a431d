// Graceful stop on SIGINT/SIGTERM: the first signal sets a flag that the training loop checks
// after each step (it then checkpoints and returns); a second SIGINT kills the process at once.
#pragma once

namespace condense {

class StopSignal {
 public:
  StopSignal();   // installs the handlers
  ~StopSignal();  // restores the previous handlers
  StopSignal(const StopSignal&) = delete;
  StopSignal& operator=(const StopSignal&) = delete;
  bool requested() const;
  static int last_signal();
};

}  // namespace condense
