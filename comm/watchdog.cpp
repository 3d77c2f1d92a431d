#include "comm/watchdog.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <vector>

namespace condense {
namespace {

int64_t now_ns() {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(
             std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

CollectiveWatchdog::CollectiveWatchdog(Settings s) : s_(std::move(s)) {
  thread_ = std::thread([this] { run(); });
}

CollectiveWatchdog::~CollectiveWatchdog() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
}

CollectiveWatchdog::Scope::Scope(CollectiveWatchdog* w, const char* op, int64_t bytes) : w_(w) {
  if (!w_ || w_->depth_.fetch_add(1) > 0) return;
  w_->op_.store(op);
  w_->bytes_.store(bytes);
  w_->seq_.fetch_add(1);
  w_->started_ns_.store(now_ns());
}

CollectiveWatchdog::Scope::~Scope() {
  if (!w_) return;
  if (w_->depth_.fetch_sub(1) == 1) w_->started_ns_.store(0);
}

void CollectiveWatchdog::queued(const char* op, int64_t bytes, std::function<bool()> done) {
  const int64_t seq = seq_.fetch_add(1) + 1;
  std::lock_guard<std::mutex> lock(mu_);
  queue_.push_back({op, bytes, seq, now_ns(), std::move(done)});
}

void CollectiveWatchdog::set_health_check(std::function<std::string()> check) {
  std::lock_guard<std::mutex> lock(mu_);
  health_ = std::move(check);
}

void CollectiveWatchdog::run() {
  // Checks ten times per timeout, at most once a second: a stall is noticed within 10% late.
  const auto period = std::chrono::duration<double>(std::min(1.0, s_.timeout_s / 10));
  std::unique_lock<std::mutex> lock(mu_);
  while (!cv_.wait_for(lock, period, [this] { return stop_; })) check();
}

void CollectiveWatchdog::check() {
  try {
    if (health_) {
      const std::string error = health_();
      if (!error.empty()) fail_now(error);
    }
    // A stream runs its collectives in order: the first unfinished one is the oldest.
    while (!queue_.empty() && queue_.front().done()) queue_.pop_front();
  } catch (const std::exception& e) {  // a probe that cannot answer (a CUDA error): fail loudly
    fail_now(fmt::format("the collective watchdog's probe failed: {}", e.what()));
  }
  if (!queue_.empty()) {
    const Queued& q = queue_.front();
    const double age = (now_ns() - q.queued_ns) * 1e-9;
    if (age > s_.timeout_s) expire(q.op, q.bytes, q.seq, age);
  }
  const int64_t started = started_ns_.load();
  if (started == 0) return;
  const double age = (now_ns() - started) * 1e-9;
  if (age > s_.timeout_s) expire(op_.load(), bytes_.load(), seq_.load(), age);
}

void CollectiveWatchdog::fail_now(const std::string& why) {
  std::fprintf(stderr, "[rank %d] error: %s. Ending the job.\n", s_.rank, why.c_str());
  std::fflush(stderr);
  std::_Exit(1);
}

// What the ranks' reports ("rank R waiting in OP #SEQ (...)") say together. A rank that ended
// (its own watchdog fired first) leaves its last report behind, so reports of different
// collectives mean some ranks went on without it; the same number with different operations
// means the ranks issue collectives in different orders; the same collective everywhere means
// the transport itself is stuck.
std::string compare_watchdog_reports(const std::string& dir_name, uint64_t job, int world) {
  const std::filesystem::path dir(dir_name);
  std::vector<std::pair<std::string, long long>> at(world);
  std::string listing;
  for (int r = 0; r < world; ++r) {
    std::ifstream in(dir / fmt::format("{:016x}.rank{}", job, r));
    std::string line;
    std::getline(in, line);
    const size_t in_pos = line.find(" waiting in "), hash = line.find(" #");
    if (in_pos == std::string::npos || hash == std::string::npos || hash < in_pos)
      return "every rank reports waiting in a collective";
    at[r] = {line.substr(in_pos + 12, hash - in_pos - 12), std::atoll(line.c_str() + hash + 2)};
    listing += fmt::format("{}rank {}: {} #{}", r ? ", " : "", r, at[r].first, at[r].second);
  }
  bool same_seq = true, same_op = true;
  for (int r = 1; r < world; ++r) {
    same_seq &= at[r].second == at[0].second;
    same_op &= at[r].first == at[0].first;
  }
  if (!same_seq)
    return fmt::format("the ranks report different collectives ({}): they issued different "
                       "numbers of collectives, or those at a lower number stopped there (ended, "
                       "or stalled)", listing);
  if (!same_op)
    return fmt::format("the ranks wait at the same collective number in different operations "
                       "({}): they issue collectives in different orders", listing);
  return fmt::format("every rank waits in the same collective ({}): the transport itself is "
                     "stuck (network, MPI or NCCL)", listing);
}

void CollectiveWatchdog::expire(const char* op, int64_t bytes, int64_t seq, double age_s) {
  namespace fs = std::filesystem;
  const std::string what = fmt::format("{} #{} ({} bytes)", op, seq, bytes);
  const fs::path dir = fs::path(s_.report_dir) / "watchdog";
  auto report = [&](int r) { return dir / fmt::format("{:016x}.rank{}", s_.job, r); };
  std::error_code ec;
  fs::create_directories(dir, ec);
  {
    // Written whole under a temporary name, then renamed: a reader sees all of it or nothing.
    const fs::path tmp = report(s_.rank).string() + ".tmp";
    std::ofstream(tmp) << fmt::format("rank {} waiting in {} for {:.1f} s\n", s_.rank, what, age_s);
    fs::rename(tmp, report(s_.rank), ec);
  }
  // The other live ranks time out within about one check period of this one (all wait on the
  // same collective); give them that and a margin to report.
  const double grace = std::min(10.0, std::max(2.0, s_.timeout_s / 4));
  std::vector<int> silent;
  const int64_t deadline = now_ns() + static_cast<int64_t>(grace * 1e9);
  while (true) {
    silent.clear();
    for (int r = 0; r < s_.world; ++r)
      if (!fs::exists(report(r), ec)) silent.push_back(r);
    if (silent.empty() || now_ns() > deadline) break;
    std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
  std::string who = s_.world == 1
      ? "a single rank: its device never finished it"
      : silent.empty()
      ? compare_watchdog_reports(dir.string(), s_.job, s_.world)
      : fmt::format("rank(s) {} did not report within {:.0f} s: stopped, dead, or busy outside "
                    "any collective (or their filesystem is not this one's)",
                    fmt::join(silent, ", "), grace);
  std::fprintf(stderr,
               "[rank %d] error: collective %s has not finished after %.0f s (comm.timeout_s = "
               "%g); %s; the live ranks' reports are in %s. Ending the job.\n",
               s_.rank, what.c_str(), age_s, s_.timeout_s, who.c_str(), dir.string().c_str());
  std::fflush(stderr);
  // No MPI or NCCL call (the collective's thread may be inside MPI): exiting without
  // MPI_Finalize makes mpirun end the other ranks (and NCCL peers see the connection close).
  std::_Exit(1);
}

}  // namespace condense
