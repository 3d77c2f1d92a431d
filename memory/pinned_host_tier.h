// PinnedHostTier: offloads CUDA tensors to a pre-allocated pinned host pool on a side stream
// (MEMO, arXiv 2407.12117: activation offload overlapped with compute through separate CUDA
// streams). A device-to-host copy waits on an event recorded on the compute stream, runs on
// the side stream and records its own event; the device tensor is released once that event
// has completed. prefetch() allocates the device tensor on the side stream and copies back;
// get() makes the current stream wait for that copy and marks the tensor as used by it. No
// call blocks the host thread during a step (unless every offloaded tensor is released before
// the step ends: the next store then waits for the copies of the pool's last use).
//
// The pool is one pinned buffer, bump-allocated and rewound when no offloaded tensor is alive
// (once per step); when a step needs more, the next rewind reallocates it at the high-water
// mark, and overflow in between uses extra pinned chunks. A released tensor leaves the event of
// its last copy; the first slot after a rewind waits for those events (long completed by then)
// before the pool is written again. Compiles everywhere against the CUDA LibTorch; runs only
// where a GPU is.
#pragma once
#include <ATen/cuda/CUDAEvent.h>

#include <mutex>
#include <vector>

#include "memory/offload_tier.h"

namespace condense {

class PinnedHostTier final : public OffloadTier,
                             public std::enable_shared_from_this<PinnedHostTier> {
 public:
  PinnedHostTier();
  std::shared_ptr<OffloadedTensor> store(const at::Tensor& t) override;
  const char* name() const override { return "host"; }

  // Internal: a host slot of `bytes` bytes (pinned uint8 tensor), and its release with the
  // event after which the slot's memory is no longer read or written by a copy.
  at::Tensor slot(int64_t bytes);
  void retire(at::cuda::CUDAEvent last_copy);
  int64_t pool_bytes() const;

 private:
  mutable std::mutex mutex_;
  at::Tensor pool_;                   // pinned uint8
  int64_t end_ = 0, high_water_ = 0;  // bump pointer; most bytes one step needed
  int64_t live_ = 0;
  std::vector<at::cuda::CUDAEvent> pending_;  // last copies of released slots since the rewind
  size_t prune_at_ = 1024;                     // pending_ size at which completed events go
};

}  // namespace condense
