#include "trainer/stop_signal.h"

#include <csignal>

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

}  // namespace condense
