// Pointwise rebuild: saved activations that the model marked as cheap to compute again
// (model/rebuildable.h: norm outputs, SwiGLU's silu and product, the attention output's layout
// copy) are not kept for backward; the first unpack reruns the mark's
// rebuild function and the result is shared by every saved variable of that tensor until the
// last one is freed. This is the op-level selective recomputation of Korthikanti et al. 2022
// ("Reducing Activation Recomputation in Large Transformer Models"): large in memory, almost
// free in FLOPs. Gradients are bitwise equal to keeping the tensors (the rebuild runs the same
// kernels on the same inputs).
//
// A RebuildRegistry collects the marks of one forward region (it is the thread's RebuildSink
// inside a RebuildRegion); RebuildHooks consult it when autograd saves a tensor. Marks are held
// by weak reference to the tensor's storage, so a freed tensor whose address is reused never
// matches; the rebuild functions (and the inputs they capture) are released when the region
// ends, except for the tensors that were actually dropped.
//
// Contract: one region per thread at a time per registry; unpack may run on another thread.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/intrusive_ptr.h>

#include <memory>
#include <unordered_map>

#include "memory/saved_tensor_hooks.h"
#include "model/rebuildable.h"

namespace condense {

class Rebuilt;

class RebuildRegistry final : public RebuildSink {
 public:
  void mark(const at::Tensor& out, RebuildFn rebuild) override;
  // The rebuild of t's storage when t (or a view of it) was marked and is still alive.
  std::shared_ptr<Rebuilt> find(const at::Tensor& t) const;
  void clear() { entries_.clear(); }

 private:
  struct Entry {
    c10::weak_intrusive_ptr<c10::StorageImpl> storage;
    std::shared_ptr<Rebuilt> rebuilt;
  };
  std::unordered_map<const c10::StorageImpl*, Entry> entries_;
};

// RAII: marks made on this thread go to `registry` until the region ends, then it is cleared.
class RebuildRegion {
 public:
  explicit RebuildRegion(std::shared_ptr<RebuildRegistry> registry)
      : registry_(std::move(registry)), sink_(registry_.get()) {}
  ~RebuildRegion() { registry_->clear(); }
  RebuildRegion(const RebuildRegion&) = delete;
  RebuildRegion& operator=(const RebuildRegion&) = delete;

 private:
  std::shared_ptr<RebuildRegistry> registry_;
  RebuildSinkScope sink_;
};

// Saved-tensor hooks: marked tensors become rebuild handles, the others go to `outer` (offload
// or compression hooks) or are kept as t.detach() when outer is null.
class RebuildHooks final : public SavedTensorHooks {
 public:
  RebuildHooks(std::shared_ptr<RebuildRegistry> registry, std::shared_ptr<SavedTensorHooks> outer)
      : registry_(std::move(registry)), outer_(std::move(outer)) {}
  std::any pack(const at::Tensor& t) override;
  at::Tensor unpack(const std::any& packed) override;

 private:
  std::shared_ptr<RebuildRegistry> registry_;
  std::shared_ptr<SavedTensorHooks> outer_;
};

}  // namespace condense
