// recompute_block (see recompute.h): a Frame per call holds the block input, the RNG states and,
// after the rerun, the recomputed saved tensors keyed by the order autograd saved them.
#include "memory/recompute.h"

#include <ATen/CPUGeneratorImpl.h>
#include <ATen/autocast_mode.h>
#include <ATen/detail/CUDAHooksInterface.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <map>
#include <mutex>
#include <optional>
#include <vector>

#include "core/error.h"
#include "memory/saved_tensor_hooks.h"

namespace condense {
namespace {

thread_local int tls_recompute_depth = 0;

// RNG state of the generator a device's dropout draws from.
struct RngState {
  at::Tensor cpu;
  std::optional<at::Tensor> cuda;  // for the current CUDA device, when x is on CUDA
  c10::DeviceIndex cuda_index = -1;

  static RngState capture(const at::Device& device) {
    RngState s;
    at::Generator cpu_gen = at::detail::getDefaultCPUGenerator();
    {
      std::lock_guard<std::mutex> lock(cpu_gen.mutex());
      s.cpu = cpu_gen.get_state();
    }
    if (device.is_cuda()) {
      s.cuda_index = device.index();
      at::Generator g = at::detail::getCUDAHooks().getDefaultGenerator(device.index());
      std::lock_guard<std::mutex> lock(g.mutex());
      s.cuda = g.get_state();
    }
    return s;
  }

  void restore() const {
    at::Generator cpu_gen = at::detail::getDefaultCPUGenerator();
    {
      std::lock_guard<std::mutex> lock(cpu_gen.mutex());
      cpu_gen.set_state(cpu);
    }
    if (cuda) {
      at::Generator g = at::detail::getCUDAHooks().getDefaultGenerator(cuda_index);
      std::lock_guard<std::mutex> lock(g.mutex());
      g.set_state(*cuda);
    }
  }
};

// Autocast settings of the CPU and of the block's device, captured when the block runs forward and
// re-entered for its rerun. The rerun happens inside backward, where the trainer's autocast scope
// has ended: without this, a bf16 forward's rerun would run in fp32, save tensors of another dtype
// and count (the same reason torch.utils.checkpoint records the autocast state).
struct AutocastState {
  struct One {
    c10::DeviceType type;
    bool enabled;
    at::ScalarType dtype;
  };
  std::vector<One> types;

  static AutocastState capture(const at::Device& device) {
    AutocastState s;
    for (c10::DeviceType t : {c10::DeviceType::CPU, device.type()}) {
      if (!s.types.empty() && t == s.types.front().type) continue;
      s.types.push_back({t, at::autocast::is_autocast_enabled(t), at::autocast::get_autocast_dtype(t)});
    }
    return s;
  }
};

// Sets a captured autocast state for its lifetime and restores the one it found. Nests like
// torch.autocast: autocast's weight-cast cache is dropped when the outermost scope ends.
class AutocastScope {
 public:
  explicit AutocastScope(const AutocastState& want) : before_(AutocastState::capture(at::kCPU)) {
    for (const auto& one : want.types) {
      if (one.type != c10::DeviceType::CPU)
        before_.types.push_back({one.type, at::autocast::is_autocast_enabled(one.type),
                                 at::autocast::get_autocast_dtype(one.type)});
      at::autocast::set_autocast_enabled(one.type, one.enabled);
      at::autocast::set_autocast_dtype(one.type, one.dtype);
    }
    at::autocast::increment_nesting();
  }
  ~AutocastScope() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    for (const auto& one : before_.types) {
      at::autocast::set_autocast_enabled(one.type, one.enabled);
      at::autocast::set_autocast_dtype(one.type, one.dtype);
    }
  }
  AutocastScope(const AutocastScope&) = delete;
  AutocastScope& operator=(const AutocastScope&) = delete;

 private:
  AutocastState before_;
};

class Frame : public std::enable_shared_from_this<Frame> {
 public:
  Frame(std::function<at::Tensor(const at::Tensor&)> fn, const at::Tensor& x,
        std::shared_ptr<SavedTensorHooks> stash_hooks, std::shared_ptr<SavedTensorHooks> input_hooks)
      : fn_(std::move(fn)),
        stash_hooks_(std::move(stash_hooks)),
        input_hooks_(std::move(input_hooks)),
        input_(input_hooks_ ? input_hooks_->pack(x.detach()) : std::any(x.detach())),
        input_requires_grad_(x.requires_grad()),
        device_(x.device()),
        rng_(RngState::capture(x.device())),
        autocast_(AutocastState::capture(x.device())) {}

  int64_t next_index() { return packed_++; }

  at::Tensor get(int64_t index) {
    std::lock_guard<std::mutex> lock(mutex_);
    if (!recomputed_) recompute();
    auto it = stash_.find(index);
    CONDENSE_CHECK(it != stash_.end(),
                   "recomputation saved {} tensors but the forward saved {} (tensor {} missing); "
                   "the recomputed block is not deterministic", stash_.size(), packed_, index);
    return stash_hooks_ ? stash_hooks_->unpack(it->second)
                        : std::any_cast<const at::Tensor&>(it->second);
  }

  void release(int64_t index) {
    std::lock_guard<std::mutex> lock(mutex_);
    stash_.erase(index);
  }

  void collect(const at::Tensor& t) {
    stash_.emplace(collected_++, stash_hooks_ ? stash_hooks_->pack(t) : std::any(t.detach()));
  }

 private:
  void recompute();

  std::function<at::Tensor(const at::Tensor&)> fn_;
  std::shared_ptr<SavedTensorHooks> stash_hooks_;
  std::shared_ptr<SavedTensorHooks> input_hooks_;
  std::any input_;  // the block input as input_hooks_ packed it, or a detached tensor
  bool input_requires_grad_;
  at::Device device_;
  RngState rng_;
  AutocastState autocast_;
  int64_t packed_ = 0;
  int64_t collected_ = 0;
  bool recomputed_ = false;
  std::map<int64_t, std::any> stash_;
  std::mutex mutex_;
};

// Packed value of one dropped tensor: releases the recomputed copy when autograd frees it.
struct Handle {
  std::shared_ptr<Frame> frame;
  int64_t index;
  Handle(std::shared_ptr<Frame> f, int64_t i) : frame(std::move(f)), index(i) {}
  ~Handle() { frame->release(index); }
};

class DropHooks final : public SavedTensorHooks {
 public:
  explicit DropHooks(std::shared_ptr<Frame> frame) : frame_(std::move(frame)) {}
  std::any pack(const at::Tensor&) override {
    return std::make_shared<Handle>(frame_, frame_->next_index());
  }
  at::Tensor unpack(const std::any& packed) override {
    const auto& h = std::any_cast<const std::shared_ptr<Handle>&>(packed);
    return h->frame->get(h->index);
  }

 private:
  std::shared_ptr<Frame> frame_;
};

// Active during the rerun: records what autograd saves, in order, into the frame.
class CollectHooks final : public SavedTensorHooks {
 public:
  explicit CollectHooks(Frame* frame) : frame_(frame) {}
  std::any pack(const at::Tensor& t) override {
    frame_->collect(t);
    return {};
  }
  at::Tensor unpack(const std::any&) override {
    fail("a tensor saved during recomputation was unpacked; recomputed graphs are discarded");
  }

 private:
  Frame* frame_;
};

void Frame::recompute() {
  at::Tensor input = input_hooks_ ? input_hooks_->unpack(input_) : std::any_cast<const at::Tensor&>(input_);
  RngState now = RngState::capture(device_);
  rng_.restore();
  ++tls_recompute_depth;
  try {
    at::AutoGradMode grad(true);
    AutocastScope autocast(autocast_);
    HooksScope scope(std::make_shared<CollectHooks>(this));
    at::Tensor x = input.detach().requires_grad_(input_requires_grad_);
    fn_(x);  // the rerun's graph is discarded; only what it saved is kept
  } catch (...) {
    --tls_recompute_depth;
    now.restore();
    throw;
  }
  --tls_recompute_depth;
  now.restore();
  recomputed_ = true;
  input_.reset();  // the rerun happens once; what it needs of the input, it saved
}

}  // namespace

bool in_recomputation() { return tls_recompute_depth > 0; }

at::Tensor recompute_block(const std::function<at::Tensor(const at::Tensor&)>& fn,
                           const at::Tensor& x, std::shared_ptr<SavedTensorHooks> stash_hooks,
                           std::shared_ptr<SavedTensorHooks> input_hooks) {
  if (!at::GradMode::is_enabled()) return fn(x);
  auto frame = std::make_shared<Frame>(fn, x, std::move(stash_hooks), std::move(input_hooks));
  HooksScope scope(std::make_shared<DropHooks>(frame));
  return fn(x);
}

}  // namespace condense
