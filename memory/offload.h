// Activation offload on saved-tensor hooks (MEMO, arXiv 2407.12117): every saved activation
// that KeepRule does not keep (parameters and their views, tensors under memory.offload_min_bytes)
// is moved to a lower tier at pack time (OffloadTier: CUDA -> pinned host, CPU -> spill file)
// and brought back at unpack. Tensors are grouped by the decoder layer that saved them
// (set_block, called by the memory policy as each layer's forward starts); the first unpack of
// layer i during backward prefetches every offloaded tensor of layer i - 1, so its transfer
// overlaps layer i's backward. A tensor saved several times in one forward (one input feeding
// q, k and v projections) is offloaded once. Gradients are bitwise equal to no offload.
//
// Contract: one OffloadHooks per training run; pack() on the forward thread, unpack() on any.
#pragma once
#include <map>
#include <mutex>
#include <tuple>

#include "memory/keep_rule.h"
#include "memory/offload_tier.h"
#include "memory/saved_tensor_hooks.h"

namespace condense {

struct OffloadStats {
  int64_t offloaded_tensors = 0;
  int64_t offloaded_bytes = 0;
  int64_t kept_tensors = 0;
  int64_t deduplicated = 0;
  int64_t prefetched = 0;
};

class OffloadHooks final : public SavedTensorHooks {
 public:
  OffloadHooks(std::shared_ptr<OffloadTier> tier, KeepRule rule);
  std::any pack(const at::Tensor& t) override;
  at::Tensor unpack(const std::any& packed) override;

  void set_block(int64_t block);
  OffloadStats stats() const;
  const std::shared_ptr<OffloadTier>& tier() const { return tier_; }

 private:
  struct Entry;
  void prefetch_block(int64_t block);
  void forget(const Entry* e);

  std::shared_ptr<OffloadTier> tier_;
  KeepRule rule_;
  mutable std::mutex mutex_;
  int64_t block_ = -1;
  // Live offloaded tensors: by identity (storage object, offset, sizes, strides, dtype,
  // version) and by block. Entries hold a weak reference to the storage object, so its address
  // cannot be reused by another storage while the entry exists.
  using Key = std::tuple<const void*, int64_t, std::vector<int64_t>, std::vector<int64_t>, int,
                         int64_t>;
  std::map<Key, std::weak_ptr<Entry>> by_key_;
  std::map<int64_t, std::vector<std::weak_ptr<Entry>>> by_block_;
  OffloadStats stats_;
};

}  // namespace condense
