#include "memory/pinned_host_tier.h"

#include <ATen/ATen.h>
#include <ATen/cuda/CUDAEvent.h>
#include <c10/cuda/CUDACachingAllocator.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include <algorithm>

#include "core/error.h"

namespace condense {
namespace {

class HostTensor final : public OffloadedTensor {
 public:
  HostTensor(std::shared_ptr<PinnedHostTier> tier, const at::Tensor& t)
      : tier_(std::move(tier)),
        options_(t.options()),
        sizes_(t.sizes().vec()),
        strides_(t.strides().vec()),
        numel_(t.numel()),
        side_(c10::cuda::getStreamFromPool(/*isHighPriority=*/false, t.device().index())) {
    c10::cuda::CUDAGuard guard(t.device());
    c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(t.device().index());
    int64_t bytes = numel_ * static_cast<int64_t>(t.element_size());
    host_ = tier_->slot(bytes).view(t.scalar_type());
    try {
      at::cuda::CUDAEvent ready;
      ready.record(compute);
      ready.block(side_);
      {
        c10::cuda::CUDAStreamGuard sg(side_);
        host_.copy_(dense_view(t), /*non_blocking=*/true);
      }
      // The caching allocator must not hand t's memory out before the side stream is done.
      c10::cuda::CUDACachingAllocator::recordStream(t.storage().data_ptr(), side_);
      stored_.record(side_);
    } catch (...) {  // no destructor will run: give the slot back (after whatever was queued)
      at::cuda::CUDAEvent queued;
      queued.record(side_);
      tier_->retire(std::move(queued));
      throw;
    }
  }
  ~HostTensor() override {
    // The host slot may be rewritten only after this tensor's copies have finished; both ran on
    // side_, so the later event covers them. The tier waits for it when it next reuses the pool
    // (the next step's first store, long after): waiting here would stall backward's thread
    // once per offloaded tensor.
    tier_->retire(loaded_ ? std::move(loaded_event_) : std::move(stored_));
  }

  // The elements of a non-overlapping dense tensor in memory order.
  static at::Tensor dense_view(const at::Tensor& t) {
    return at::as_strided(t, {t.numel()}, {1}, t.storage_offset());
  }

  void prefetch() override {
    std::lock_guard<std::mutex> lock(mutex_);
    if (loaded_) return;
    c10::cuda::CUDAGuard guard(options_.device());
    c10::cuda::CUDAStreamGuard sg(side_);
    stored_.block(side_);
    at::Tensor out = at::empty_strided(sizes_, strides_, options_);
    at::Tensor flat = at::as_strided(out, {numel_}, {1}, 0);
    flat.copy_(host_, /*non_blocking=*/true);
    loaded_event_.record(side_);
    loaded_ = std::make_unique<at::Tensor>(out);
  }

  at::Tensor get() override {
    prefetch();
    std::lock_guard<std::mutex> lock(mutex_);
    c10::cuda::CUDAStream compute = c10::cuda::getCurrentCUDAStream(options_.device().index());
    loaded_event_.block(compute);
    c10::cuda::CUDACachingAllocator::recordStream(loaded_->storage().data_ptr(), compute);
    return *loaded_;
  }

 private:
  std::shared_ptr<PinnedHostTier> tier_;
  at::TensorOptions options_;
  std::vector<int64_t> sizes_, strides_;
  int64_t numel_;
  c10::cuda::CUDAStream side_;
  at::Tensor host_;
  at::cuda::CUDAEvent stored_, loaded_event_;
  std::unique_ptr<at::Tensor> loaded_;
  std::mutex mutex_;
};

}  // namespace

PinnedHostTier::PinnedHostTier() = default;

std::shared_ptr<OffloadedTensor> PinnedHostTier::store(const at::Tensor& t) {
  CONDENSE_CHECK(t.is_cuda(), "memory.offload=host moves CUDA activations to pinned host memory; "
                 "got a {} tensor (use memory.offload=disk for CPU training)", t.device().str());
  // Non-dense tensors travel in contiguous order and come back contiguous.
  at::Tensor src = t.is_non_overlapping_and_dense() ? t.detach() : t.detach().contiguous();
  return std::make_shared<HostTensor>(shared_from_this(), src);
}

at::Tensor PinnedHostTier::slot(int64_t bytes) {
  std::lock_guard<std::mutex> lock(mutex_);
  if (live_ == 0) {  // a rewound pool: the last step's copies from and to it must be done
    for (auto& e : pending_) e.synchronize();
    pending_.clear();
  }
  ++live_;
  int64_t aligned = (bytes + 511) / 512 * 512;
  if (!pool_.defined() && high_water_ > 0) {
    pool_ = at::empty({high_water_}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
  }
  if (pool_.defined() && end_ + aligned <= pool_.numel()) {
    at::Tensor s = pool_.narrow(0, end_, bytes);
    end_ += aligned;
    high_water_ = std::max(high_water_, end_);
    return s;
  }
  // Overflow: an extra pinned chunk; the pool grows to the high-water mark at the next rewind.
  end_ += aligned;
  high_water_ = std::max(high_water_, end_);
  return at::empty({bytes}, at::TensorOptions().dtype(at::kByte).pinned_memory(true));
}

void PinnedHostTier::retire(at::cuda::CUDAEvent last_copy) {
  std::lock_guard<std::mutex> lock(mutex_);
  // Bounded when the pool never rewinds (an offloaded tensor kept across steps): completed
  // events are dropped whenever the list doubles.
  if (pending_.size() >= prune_at_) {
    pending_.erase(std::remove_if(pending_.begin(), pending_.end(), [](auto& e) { return e.query(); }),
                   pending_.end());
    prune_at_ = std::max<size_t>(1024, 2 * pending_.size());
  }
  pending_.push_back(std::move(last_copy));
  if (--live_ > 0) return;
  end_ = 0;
  if (pool_.defined() && pool_.numel() < high_water_) pool_ = at::Tensor();  // regrow next step
}

int64_t PinnedHostTier::pool_bytes() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return pool_.defined() ? pool_.numel() : 0;
}

}  // namespace condense
