#include "trainer/stop_signal.h"

#include <csignal>
#include <cstdlib>
#include <filesystem>

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

StopSignal::StopSignal(std::string stop_file) : stop_file_(std::move(stop_file)) {
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
  std::error_code ec;
  if (file_seen_) std::filesystem::remove(stop_file_, ec);
}

bool StopSignal::requested() {
  if (!file_seen_ && !stop_file_.empty()) {
    std::error_code ec;
    file_seen_ = std::filesystem::exists(stop_file_, ec);
  }
  return g_signal != 0 || file_seen_;
}
int StopSignal::last_signal() { return g_signal; }

std::string mpirun_stop_window_warning(double seconds_to_stop, const std::string& stop_file) {
  if (!std::getenv("OMPI_COMM_WORLD_SIZE")) return "";
  const char* set = std::getenv("OMPI_MCA_odls_base_sigkill_timeout");
  char* end = nullptr;
  const double window = set ? std::strtod(set, &end) : 1.0;
  if ((set && (end == set || window <= 0)) || seconds_to_stop <= window) return "";
  return fmt::format("a step and its checkpoint took {:.1f} s, but mpirun SIGKILLs the ranks {:g} s "
                     "after it forwards a Ctrl-C or SIGTERM to them (Open MPI's "
                     "odls_base_sigkill_timeout), so a signal to mpirun would lose the steps since "
                     "the last checkpoint: stop this run with `touch {}` (it checkpoints and exits 0), "
                     "or signal the ranks themselves", seconds_to_stop, window, stop_file);
}

void StopSignal::note_time_to_stop(double seconds) {
  if (warned_) return;
  if (std::string w = mpirun_stop_window_warning(seconds, stop_file_); !w.empty()) {
    spdlog::warn("{}", w);
    warned_ = true;
  }
}

}  // namespace condense
