#include "memory/offload.h"

#include <algorithm>
#include <optional>

#include "core/error.h"
#include "memory/disk_tier.h"
#include "memory/pinned_host_tier.h"

namespace condense {

std::shared_ptr<OffloadTier> make_offload_tier(const std::string& name, const std::string& dir) {
  if (name == "disk") return std::make_shared<DiskTier>(dir);
  if (name == "host") return std::make_shared<PinnedHostTier>();
  fail("unknown offload tier '{}'; valid: host (CUDA to pinned host), disk (spill files)", name);
}

struct OffloadHooks::Entry {
  OffloadHooks* owner;
  Key key;
  int64_t block;
  std::optional<c10::weak_intrusive_ptr<c10::StorageImpl>> storage;
  std::shared_ptr<OffloadedTensor> data;
  ~Entry() { owner->forget(this); }
};

OffloadHooks::OffloadHooks(std::shared_ptr<OffloadTier> tier, KeepRule rule)
    : tier_(std::move(tier)), rule_(std::move(rule)) {}

void OffloadHooks::set_block(int64_t block) {
  std::lock_guard<std::mutex> lock(mutex_);
  block_ = block;
  if (block != 0) return;
  // A new forward: drop bookkeeping of tensors autograd freed without unpacking them.
  for (auto it = by_block_.begin(); it != by_block_.end();) {
    auto& v = it->second;
    v.erase(std::remove_if(v.begin(), v.end(), [](const auto& w) { return w.expired(); }), v.end());
    it = v.empty() ? by_block_.erase(it) : std::next(it);
  }
}

std::any OffloadHooks::pack(const at::Tensor& t) {
  if (rule_.keep(t)) {
    std::lock_guard<std::mutex> lock(mutex_);
    ++stats_.kept_tensors;
    return t.detach();
  }
  Key key{t.storage().unsafeGetStorageImpl(), t.storage_offset(), t.sizes().vec(),
          t.strides().vec(), static_cast<int>(t.scalar_type()), static_cast<int64_t>(t._version())};
  // Declared before the lock: if it holds the last reference to a stale entry, the entry's
  // destructor (which takes mutex_ in forget()) runs after the lock is released.
  std::shared_ptr<Entry> existing;
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = by_key_.find(key);
  if (it != by_key_.end()) {
    existing = it->second.lock();
    if (existing && !existing->storage->expired()) {
      ++stats_.deduplicated;
      return existing;
    }
  }
  // Stored before the entry exists: if the tier throws, no entry is destroyed under the lock.
  std::shared_ptr<OffloadedTensor> data = tier_->store(t);
  auto e = std::make_shared<Entry>();
  e->owner = this;
  e->key = key;
  e->block = block_;
  e->storage = t.storage().getWeakStorageImpl();
  e->data = std::move(data);
  by_key_[key] = e;
  by_block_[block_].push_back(e);
  ++stats_.offloaded_tensors;
  stats_.offloaded_bytes += tensor_bytes(t);
  return e;
}

at::Tensor OffloadHooks::unpack(const std::any& packed) {
  if (const auto* t = std::any_cast<at::Tensor>(&packed)) return *t;
  const auto& e = std::any_cast<const std::shared_ptr<Entry>&>(packed);
  if (e->block >= 0) {
    prefetch_block(e->block);      // this layer (no-op when already requested)
    prefetch_block(e->block - 1);  // and the one backward reaches next
  }
  return e->data->get();
}

void OffloadHooks::prefetch_block(int64_t block) {
  std::vector<std::shared_ptr<Entry>> todo;
  {
    std::lock_guard<std::mutex> lock(mutex_);
    auto it = by_block_.find(block);
    if (it == by_block_.end()) return;
    for (auto& w : it->second) {
      if (auto e = w.lock()) todo.push_back(std::move(e));
    }
    by_block_.erase(it);  // requested once
    stats_.prefetched += static_cast<int64_t>(todo.size());
  }
  for (auto& e : todo) e->data->prefetch();
}

void OffloadHooks::forget(const Entry* e) {
  std::lock_guard<std::mutex> lock(mutex_);
  auto it = by_key_.find(e->key);
  if (it != by_key_.end() && it->second.expired()) by_key_.erase(it);
}

OffloadStats OffloadHooks::stats() const {
  std::lock_guard<std::mutex> lock(mutex_);
  return stats_;
}

}  // namespace condense
