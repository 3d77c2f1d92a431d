#include "memory/pointwise_rebuild.h"

#include <torch/csrc/autograd/grad_mode.h>

#include <mutex>

#include "core/error.h"

namespace condense {

// One marked tensor: its rebuild function and, once rebuilt, the tensor (shared by all its
// saved variables; freed with the last of them).
class Rebuilt {
 public:
  Rebuilt(RebuildFn fn, const at::Tensor& out)
      : fn_(std::move(fn)), nbytes_(out.storage().nbytes()), dtype_(out.scalar_type()) {}

  at::Tensor get() {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!value_.defined()) {
      at::NoGradGuard no_grad;
      value_ = fn_();
      CONDENSE_CHECK(value_.scalar_type() == dtype_ && value_.storage_offset() == 0 &&
                         value_.storage().nbytes() == nbytes_,
                     "rebuilt activation differs from the marked one ({} bytes of {} expected, "
                     "got {} bytes of {}); the model's rebuild function is wrong",
                     nbytes_, c10::toString(dtype_), value_.storage().nbytes(),
                     c10::toString(value_.scalar_type()));
    }
    return value_;
  }

 private:
  RebuildFn fn_;
  size_t nbytes_;
  at::ScalarType dtype_;
  at::Tensor value_;
  std::mutex mutex_;
};

namespace {

// A dropped saved tensor: the rebuild plus the view geometry of what autograd saved.
struct RebuildPacked {
  std::shared_ptr<Rebuilt> rebuilt;
  std::vector<int64_t> sizes, strides;
  int64_t offset = 0;
};

// Anything else, as packed by the outer hooks (or the detached tensor).
struct OuterPacked {
  std::any value;
};

}  // namespace

void RebuildRegistry::mark(const at::Tensor& out, RebuildFn rebuild) {
  // Only tensors that own their whole storage: the rebuild returns a fresh tensor, and the
  // saved variable's view geometry is replayed on it.
  if (!out.defined() || !out.has_storage() || out.storage_offset() != 0 || !out.is_contiguous() ||
      static_cast<size_t>(out.numel() * out.element_size()) != out.storage().nbytes())
    return;
  c10::StorageImpl* impl = out.storage().unsafeGetStorageImpl();
  entries_.insert_or_assign(impl, Entry{out.storage().getWeakStorageImpl(),
                                        std::make_shared<Rebuilt>(std::move(rebuild), out)});
}

std::shared_ptr<Rebuilt> RebuildRegistry::find(const at::Tensor& t) const {
  if (entries_.empty() || !t.has_storage()) return nullptr;
  const c10::StorageImpl* impl = t.storage().unsafeGetStorageImpl();
  auto it = entries_.find(impl);
  if (it == entries_.end()) return nullptr;
  auto alive = it->second.storage.lock();  // null when the marked tensor was freed
  return alive.get() == impl ? it->second.rebuilt : nullptr;
}

std::any RebuildHooks::pack(const at::Tensor& t) {
  if (auto rebuilt = registry_->find(t)) {
    return std::make_shared<RebuildPacked>(
        RebuildPacked{std::move(rebuilt), t.sizes().vec(), t.strides().vec(), t.storage_offset()});
  }
  return OuterPacked{outer_ ? outer_->pack(t) : std::any(t.detach())};
}

at::Tensor RebuildHooks::unpack(const std::any& packed) {
  if (const auto* r = std::any_cast<std::shared_ptr<RebuildPacked>>(&packed)) {
    const RebuildPacked& p = **r;
    return p.rebuilt->get().as_strided(p.sizes, p.strides, p.offset);
  }
  const auto& o = std::any_cast<const OuterPacked&>(packed);
  return outer_ ? outer_->unpack(o.value) : std::any_cast<const at::Tensor&>(o.value);
}

}  // namespace condense
