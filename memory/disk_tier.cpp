#include "memory/disk_tier.h"

#include <ATen/ATen.h>
#include <fcntl.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <future>
#include <vector>

#include "core/error.h"

namespace condense {
namespace {

void write_all(int fd, const char* data, int64_t bytes, int64_t offset) {
  while (bytes > 0) {
    ssize_t n = ::pwrite(fd, data, static_cast<size_t>(bytes), offset);
    if (n < 0 && errno == EINTR) continue;
    CONDENSE_CHECK(n > 0, "writing an activation spill file failed: {}", std::strerror(errno));
    data += n;
    bytes -= n;
    offset += n;
  }
}

void read_all(int fd, char* data, int64_t bytes, int64_t offset) {
  while (bytes > 0) {
    ssize_t n = ::pread(fd, data, static_cast<size_t>(bytes), offset);
    if (n < 0 && errno == EINTR) continue;
    CONDENSE_CHECK(n > 0, "reading an activation spill file failed: {}",
                   n == 0 ? "unexpected end of file" : std::strerror(errno));
    data += n;
    bytes -= n;
    offset += n;
  }
}

class DiskTensor final : public OffloadedTensor {
 public:
  DiskTensor(std::shared_ptr<DiskTier> tier, const at::Tensor& t, int64_t offset)
      : tier_(std::move(tier)),
        options_(t.options()),
        sizes_(t.sizes().vec()),
        strides_(t.strides().vec()),
        offset_(offset),
        bytes_(span_bytes(t)) {
    int fd = tier_->fd();
    auto done = std::make_shared<std::promise<void>>();
    written_ = done->get_future().share();
    at::Tensor keep = t;  // alive until written, then dropped by the I/O thread
    tier_->submit([fd, keep, done, off = offset_, n = bytes_]() mutable {
      try {
        write_all(fd, static_cast<const char*>(keep.data_ptr()), n, off);
        keep = at::Tensor();
        done->set_value();
      } catch (...) {
        done->set_exception(std::current_exception());
      }
    });
  }
  ~DiskTensor() override {
    try {
      if (read_.valid()) read_.wait();
      written_.wait();
    } catch (...) {
    }
    tier_->retire(bytes_);
  }

  static int64_t span_bytes(const at::Tensor& t) {
    int64_t span = 1;  // elements from the first to one past the last
    for (int64_t d = 0; d < t.dim(); ++d) span += (t.size(d) - 1) * t.stride(d);
    if (t.numel() == 0) span = 0;
    return span * static_cast<int64_t>(t.element_size());
  }

  void prefetch() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (read_.valid()) return;
    at::Tensor out = at::empty_strided(sizes_, strides_, options_);
    auto done = std::make_shared<std::promise<at::Tensor>>();
    read_ = done->get_future().share();
    int fd = tier_->fd();
    std::shared_future<void> written = written_;
    tier_->submit([fd, out, done, written, off = offset_, n = bytes_] {
      try {
        written.get();  // the queue is FIFO; this only rethrows a failed write
        read_all(fd, static_cast<char*>(out.data_ptr()), n, off);
        done->set_value(out);
      } catch (...) {
        done->set_exception(std::current_exception());
      }
    });
  }

  at::Tensor get() override {
    prefetch();
    return read_.get();
  }

 private:
  std::shared_ptr<DiskTier> tier_;
  at::TensorOptions options_;
  std::vector<int64_t> sizes_, strides_;
  int64_t offset_;
  int64_t bytes_;
  std::shared_future<void> written_;
  std::shared_future<at::Tensor> read_;
  std::mutex mutex_;
};

}  // namespace

DiskTier::DiskTier(const std::string& dir) {
  namespace fs = std::filesystem;
  fs::path base = dir.empty() ? fs::temp_directory_path() : fs::path(dir);
  std::error_code ec;
  fs::create_directories(base, ec);
  std::string tmpl = (base / "condense-spill-XXXXXX").string();
  std::vector<char> buf(tmpl.begin(), tmpl.end());
  buf.push_back('\0');
  fd_ = ::mkstemp(buf.data());
  CONDENSE_CHECK(fd_ >= 0, "cannot create an activation spill file in '{}' (memory.offload_dir): {}",
                 base.string(), std::strerror(errno));
  path_ = buf.data();
  ::unlink(path_.c_str());  // the file lives until the descriptor is closed
  thread_ = std::thread([this] { worker(); });
}

DiskTier::~DiskTier() {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    stop_ = true;
  }
  cv_.notify_all();
  thread_.join();
  ::close(fd_);
}

std::shared_ptr<OffloadedTensor> DiskTier::store(const at::Tensor& t) {
  CONDENSE_CHECK(t.is_cpu(), "memory.offload=disk spills CPU tensors; got a {} tensor (use "
                 "memory.offload=host on CUDA)", t.device().str());
  at::Tensor src = t.is_non_overlapping_and_dense() ? t.detach() : t.detach().contiguous();
  int64_t bytes = DiskTensor::span_bytes(src);
  int64_t offset;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    offset = end_;
    end_ += (bytes + 4095) / 4096 * 4096;  // page-aligned slots
    ++live_;
  }
  return std::make_shared<DiskTensor>(shared_from_this(), src, offset);
}

void DiskTier::submit(std::function<void()> task) {
  {
    std::lock_guard<std::mutex> lock(mutex_);
    queue_.push_back(std::move(task));
    ++pending_;
  }
  cv_.notify_one();
}

void DiskTier::wait_idle() {
  std::unique_lock<std::mutex> lock(mutex_);
  idle_cv_.wait(lock, [this] { return pending_ == 0; });
}

void DiskTier::retire(int64_t) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (--live_ == 0) {
    end_ = 0;
    if (::ftruncate(fd_, 0) != 0) {
    }  // best effort: frees the page cache and disk blocks of the finished step
  }
}

int64_t DiskTier::file_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return end_;
}

void DiskTier::worker() {
  for (;;) {
    std::function<void()> task;
    {
      std::unique_lock<std::mutex> lock(mutex_);
      cv_.wait(lock, [this] { return stop_ || !queue_.empty(); });
      if (queue_.empty()) return;  // stop_ and drained
      task = std::move(queue_.front());
      queue_.pop_front();
    }
    task();
    task = nullptr;  // the captures (a written tensor) go before the task counts as done
    {
      std::lock_guard<std::mutex> lock(mutex_);
      --pending_;
    }
    idle_cv_.notify_all();
  }
}

}  // namespace condense
