#include "io/run_lock.h"

#include <fcntl.h>
#include <sys/file.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <string>

#include "core/error.h"

namespace condense {

RunLock::RunLock(const std::string& dir) {
  const std::string path = (std::filesystem::path(dir) / ".condense.lock").string();
  fd_ = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  CONDENSE_CHECK(fd_ >= 0, "cannot open the run lock {}: {}", path, std::strerror(errno));
  if (::flock(fd_, LOCK_EX | LOCK_NB) != 0) {
    const int err = errno;
    char holder[32] = {0};
    const ssize_t n = ::pread(fd_, holder, sizeof(holder) - 1, 0);
    ::close(fd_);
    fd_ = -1;
    CONDENSE_CHECK(err != EWOULDBLOCK,
                   "another condense process (pid {}) is training in {}; wait for it to end or "
                   "choose another name= / out_dir= (nothing was changed)",
                   n > 0 ? std::string(holder, static_cast<size_t>(n)) : "unknown", dir);
    fail("cannot lock {}: {}", path, std::strerror(err));
  }
  // The holder's pid, for the message above (informational: the lock is the flock).
  const std::string pid = std::to_string(::getpid());
  if (::ftruncate(fd_, 0) == 0) (void)!::pwrite(fd_, pid.data(), pid.size(), 0);
}

RunLock::~RunLock() {
  if (fd_ >= 0) ::close(fd_);  // releases the flock
}

}  // namespace condense
