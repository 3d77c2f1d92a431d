#include "trainer/stop_signal.h"

#include <cmath>
#include <csignal>
#include <cstdlib>

#include <fmt/format.h>
#include <spdlog/spdlog.h>

namespace condense {
namespace {

volatile std::sig_atomic_t g_signal = 0;
struct sigaction g_old_int, g_old_term;

extern "C" void on_stop_signal(int sig) {
  if (g_signal != 0 && sig == SIGINT) {  // second Ctrl-C: give up gracefully stopping
    std::signal(SIGINT, SIG_DFL);
    std::raise(SIGINT);
    return;
  }
  g_signal = sig;
}

}  // namespace

StopSignal::StopSignal() {
  g_signal = 0;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &g_old_int);
  sigaction(SIGTERM, &sa, &g_old_term);
}

StopSignal::~StopSignal() {
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
}

bool StopSignal::requested() const { return g_signal != 0; }
int StopSignal::last_signal() { return g_signal; }

std::string mpirun_stop_window_warning(double seconds_to_stop) {
  if (!std::getenv("OMPI_COMM_WORLD_SIZE")) return "";
  const char* set = std::getenv("OMPI_MCA_odls_base_sigkill_timeout");
  const double window = set ? std::atof(set) : 1.0;
  if (seconds_to_stop <= window) return "";
  const int suggested = static_cast<int>(std::ceil(3 * seconds_to_stop)) + 10;
  return fmt::format("a step and its checkpoint took {:.1f} s, but mpirun kills the ranks {:g} s after "
                     "it forwards a Ctrl-C or SIGTERM (Open MPI's odls_base_sigkill_timeout), so a "
                     "stop would lose the steps since the last checkpoint; launch with `mpirun --mca "
                     "odls_base_sigkill_timeout {}` (or export OMPI_MCA_odls_base_sigkill_timeout={})",
                     seconds_to_stop, window, suggested, suggested);
}

void StopSignal::note_time_to_stop(double seconds) {
  if (warned_) return;
  if (std::string w = mpirun_stop_window_warning(seconds); !w.empty()) {
    spdlog::warn("{}", w);
    warned_ = true;
  }
}

}  // namespace condense
