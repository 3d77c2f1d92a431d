// A lower storage tier for saved activations (memory/offload.h): CUDA device memory to pinned
// host memory (pinned_host_tier.h), or host memory to a spill file (disk_tier.h).
//
// Contract: store() starts moving `t` out and returns at once (the tier keeps `t` alive until
// the copy is done, then drops it); prefetch() starts bringing it back without waiting; get()
// returns it in its original device, dtype, sizes and strides, bit-identical, waiting if
// needed. store() runs on the forward thread; prefetch()/get() may run on an autograd thread.
#pragma once
#include <ATen/core/Tensor.h>

#include <memory>
#include <string>

namespace condense {

class OffloadedTensor {
 public:
  virtual ~OffloadedTensor() = default;
  virtual void prefetch() = 0;
  virtual at::Tensor get() = 0;
};

class OffloadTier {
 public:
  virtual ~OffloadTier() = default;
  virtual std::shared_ptr<OffloadedTensor> store(const at::Tensor& t) = 0;
  virtual const char* name() const = 0;
};

// "disk" (CPU tensors, spill files under `dir`, empty = system temp directory) or "host" (CUDA
// tensors to pinned host memory). Throws for an unknown name.
std::shared_ptr<OffloadTier> make_offload_tier(const std::string& name, const std::string& dir);

}  // namespace condense
