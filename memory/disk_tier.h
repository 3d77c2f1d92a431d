// DiskTier: offloads CPU tensors to a spill file through one background I/O thread (MEMO,
// arXiv 2407.12117, offloads activations to a lower tier and overlaps the transfer with compute;
// here the lower tier of host memory is a file).
//
// The spill file is created with mkstemp in the spill directory and unlinked at once, so it
// disappears with the process even after a crash. Space is bump-allocated and the file is
// truncated whenever no offloaded tensor is alive (once per training step). Writes and reads
// are queued in order on the I/O thread: pwrite/pread of the tensor's dense storage span, so a
// tensor comes back with its strides and bit-identical.
#pragma once
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <thread>

#include "memory/offload_tier.h"

namespace condense {

class DiskTier final : public OffloadTier, public std::enable_shared_from_this<DiskTier> {
 public:
  explicit DiskTier(const std::string& dir);
  ~DiskTier() override;
  std::shared_ptr<OffloadedTensor> store(const at::Tensor& t) override;
  const char* name() const override { return "disk"; }

  // Internal, used by the tier's tensors.
  void submit(std::function<void()> task);
  void retire(int64_t bytes);
  int fd() const { return fd_; }
  int64_t file_bytes() const;  // bytes currently allocated in the spill file
  // Blocks until every write and read submitted so far has finished, so that the tensors the
  // writes hold are released: for measurements of what offload frees (under load the I/O
  // thread lags the forward, and the tensors in flight are still in memory).
  void wait_idle();

 private:
  void worker();

  std::string path_;
  int fd_ = -1;
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::condition_variable idle_cv_;
  std::deque<std::function<void()>> queue_;
  int64_t pending_ = 0;  // submitted tasks not finished yet
  bool stop_ = false;
  int64_t end_ = 0;    // next free offset
  int64_t live_ = 0;   // tensors in the file
  std::thread thread_;
};

}  // namespace condense
