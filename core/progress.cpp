// Progress: the ETA is a moving average of seconds per step. The first updates average
// cumulatively (weight 1/n), later ones exponentially (weight 0.1), so the estimate settles
// quickly yet follows changes in speed (evaluation pauses, throttling).
#include "core/progress.h"

#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <spdlog/spdlog.h>

#include "core/error.h"

namespace condense {
namespace {

constexpr int kBarWidth = 20;
constexpr double kMinRedrawSeconds = 0.1;  // fast steps must not turn into terminal I/O

std::string format_rate(double per_s) {  // "850", "2.1k", "1.3M"
  if (!std::isfinite(per_s) || per_s < 0) return "?";
  if (per_s < 1e3) return fmt::format("{:.0f}", per_s);
  if (per_s < 1e6) return fmt::format("{:.1f}k", per_s / 1e3);
  return fmt::format("{:.1f}M", per_s / 1e6);
}

}  // namespace

std::string format_duration(double seconds) {
  if (!std::isfinite(seconds) || seconds < 0) return "?";
  int64_t s = std::llround(seconds);
  if (s < 60) return fmt::format("{}s", s);
  if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
  return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

Progress::Progress(int64_t total_steps, int64_t start_step, int64_t log_every)
    : total_steps_(total_steps),
      log_every_(log_every),
      terminal_(::isatty(2) == 1),
      last_time_(Clock::now()),
      last_draw_(last_time_ - std::chrono::seconds(1)),
      last_step_(start_step) {
  CONDENSE_CHECK(total_steps >= 0 && start_step >= 0 && start_step <= total_steps,
                 "progress: start step {} outside [0, {}]", start_step, total_steps);
  CONDENSE_CHECK(log_every >= 1, "progress: log_every must be >= 1, got {}", log_every);
}

Progress::~Progress() { finish(); }

void Progress::update(int64_t step, double loss, double tokens_per_s, double lr) {
  Clock::time_point now = Clock::now();
  if (step > last_step_) {
    double per_step = std::chrono::duration<double>(now - last_time_).count() /
                      static_cast<double>(step - last_step_);
    ++updates_;
    double weight = std::max(0.1, 1.0 / static_cast<double>(updates_));
    seconds_per_step_ += weight * (per_step - seconds_per_step_);
    last_time_ = now;
  }
  last_step_ = step;
  loss_ = loss;
  tokens_per_s_ = tokens_per_s;
  lr_ = lr;
  bool last = step >= total_steps_;
  double eta = updates_ > 0 ? seconds_per_step_ * static_cast<double>(total_steps_ - step) : -1;
  if (terminal_) {
    if (last || std::chrono::duration<double>(now - last_draw_).count() >= kMinRedrawSeconds) {
      last_draw_ = now;
      draw();
    }
  } else if (step % log_every_ == 0 || last) {
    spdlog::info("step {}/{} loss {:.4f} lr {:.2e} tok/s {:.0f} eta {}", step, total_steps_,
                 loss, lr, tokens_per_s, format_duration(eta));
  }
}

std::string Progress::bar_line() const {
  double frac = total_steps_ > 0 ? static_cast<double>(last_step_) / total_steps_ : 1.0;
  frac = std::clamp(frac, 0.0, 1.0);
  int filled = static_cast<int>(frac * kBarWidth);
  double eta =
      updates_ > 0 ? seconds_per_step_ * static_cast<double>(total_steps_ - last_step_) : -1;
  return fmt::format("[{}{}] {}/{} {:.0f}% loss {:.3f} lr {:.1e} {} tok/s ETA {}",
                     std::string(filled, '#'), std::string(kBarWidth - filled, '.'), last_step_,
                     total_steps_, std::floor(frac * 100), loss_, lr_, format_rate(tokens_per_s_),
                     format_duration(eta));
}

void Progress::draw() {
  // \033[K erases what a longer previous line left to the right of the cursor.
  std::fprintf(stderr, "\r%s\033[K", bar_line().c_str());
  std::fflush(stderr);
  bar_shown_ = true;
}

void Progress::message(const std::string& line) {
  if (!terminal_) {
    spdlog::info("{}", line);
    return;
  }
  if (bar_shown_) {
    std::fputs("\r\033[K", stderr);
    std::fflush(stderr);
  }
  spdlog::info("{}", line);
  spdlog::default_logger()->flush();
  if (bar_shown_) draw();
}

void Progress::finish() {
  if (!terminal_ || !bar_shown_) return;
  draw();
  std::fputc('\n', stderr);
  std::fflush(stderr);
  bar_shown_ = false;
}

}  // namespace condense
