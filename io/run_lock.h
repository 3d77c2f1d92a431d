// An exclusive lock on a run directory for as long as one process trains in it: a second
// `condense train` with the same out_dir (two launches of one command, a stale shell) would
// otherwise interleave metrics.jsonl and race on the checkpoint files. flock(2) on
// `<dir>/.condense.lock`: released by the kernel when the process ends, however it ends, so a
// killed run never leaves a lock behind; the file itself stays (empty).
#pragma once
#include <string>

namespace condense {

class RunLock {
 public:
  // Takes the lock or throws condense::Error naming the directory and the holder's pid.
  explicit RunLock(const std::string& dir);
  ~RunLock();
  RunLock(const RunLock&) = delete;
  RunLock& operator=(const RunLock&) = delete;

 private:
  int fd_ = -1;
};

}  // namespace condense
