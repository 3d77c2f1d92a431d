// Console progress for the training loop. On a terminal (stderr is a tty) it keeps one
// redrawn status line:
//   [#####.....] 123/300 41% loss 4.123 lr 3.0e-03 2.1k tok/s ETA 1m23s
// Otherwise (logs piped to a file, Slurm, mpirun) it writes plain spdlog lines every
// `log_every` steps and at the last step:
//   step 120/300 loss 4.1234 lr 3.00e-03 tok/s 2100 eta 1m23s
// Construct it on rank 0 only: the bar writes to stderr directly.
#pragma once
#include <chrono>
#include <cstdint>
#include <string>

namespace condense {

// "45s", "1m23s", "2h05m" (rounded to whole seconds; "?" for negative or non-finite input).
std::string format_duration(double seconds);

class Progress {
 public:
  // Steps count completed optimizer steps: update(step) with step == total_steps is the
  // last one. start_step is where this run began (non-zero after a resume); the ETA only
  // uses step times measured in this run. log_every >= 1.
  Progress(int64_t total_steps, int64_t start_step, int64_t log_every);
  ~Progress();  // calls finish() so an exception does not leave the bar unterminated
  Progress(const Progress&) = delete;
  Progress& operator=(const Progress&) = delete;

  void update(int64_t step, double loss, double tokens_per_s, double lr);
  // Prints a line without garbling the bar: clears it, logs the line, redraws it.
  void message(const std::string& line);
  // Ends the bar's line (terminal mode); idempotent.
  void finish();

 private:
  using Clock = std::chrono::steady_clock;
  void draw();
  std::string bar_line() const;

  int64_t total_steps_;
  int64_t log_every_;
  bool terminal_;
  bool bar_shown_ = false;
  Clock::time_point last_time_;
  Clock::time_point last_draw_;
  int64_t last_step_;
  int64_t updates_ = 0;
  double seconds_per_step_ = 0;  // moving average over this run's updates
  double loss_ = 0, tokens_per_s_ = 0, lr_ = 0;
};

}  // namespace condense
