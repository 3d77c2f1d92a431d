// The hook-aware autograd engine and the thread-local hooks stack (see saved_tensor_hooks.h).
#include "memory/saved_tensor_hooks.h"

#include <torch/csrc/autograd/engine.h>
#include <torch/csrc/autograd/saved_variable_hooks.h>

#include <mutex>
#include <vector>

#include "core/error.h"

namespace condense {
namespace {

thread_local std::vector<std::shared_ptr<SavedTensorHooks>> tls_stack;

// One SavedVariable's hook pair: keeps the hooks that packed it and the packed value.
class HookAdapter final : public torch::autograd::SavedVariableHooks {
 public:
  explicit HookAdapter(std::shared_ptr<SavedTensorHooks> hooks) : hooks_(std::move(hooks)) {}
  void call_pack_hook(const at::Tensor& tensor) override { packed_ = hooks_->pack(tensor); }
  at::Tensor call_unpack_hook() override { return hooks_->unpack(packed_); }

 private:
  std::shared_ptr<SavedTensorHooks> hooks_;
  std::any packed_;
};

class HookedEngine final : public torch::autograd::Engine {
 public:
  std::unique_ptr<torch::autograd::SavedVariableHooks> get_default_saved_variable_hooks() override {
    if (tls_stack.empty()) return nullptr;
    return std::make_unique<HookAdapter>(tls_stack.back());
  }
};

// Never destroyed: its worker threads may outlive static destruction order.
HookedEngine* engine_instance = nullptr;

torch::autograd::Engine& hooked_engine() { return *engine_instance; }

}  // namespace

void install_hooked_engine() {
  static std::once_flag once;
  std::call_once(once, [] {
    engine_instance = new HookedEngine();
    torch::autograd::set_default_engine_stub(&hooked_engine);
  });
}

bool hooked_engine_active() {
  return engine_instance && &torch::autograd::Engine::get_default_engine() == engine_instance;
}

HooksScope::HooksScope(std::shared_ptr<SavedTensorHooks> hooks) : hooks_(hooks.get()) {
  CONDENSE_CHECK(hooks_ != nullptr, "HooksScope needs hooks");
  install_hooked_engine();
  CONDENSE_CHECK(hooked_engine_active(),
                 "another autograd engine replaced condense's; saved-tensor hooks cannot run");
  tls_stack.push_back(std::move(hooks));
}

HooksScope::~HooksScope() {
  // LIFO by construction (RAII); a mismatch would be a programming error in a policy.
  if (!tls_stack.empty() && tls_stack.back().get() == hooks_) tls_stack.pop_back();
}

std::shared_ptr<SavedTensorHooks> current_saved_tensor_hooks() {
  return tls_stack.empty() ? nullptr : tls_stack.back();
}

}  // namespace condense
