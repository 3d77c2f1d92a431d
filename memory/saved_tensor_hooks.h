// Saved-tensor hooks from C++: every tensor autograd saves for backward while a HooksScope is
// active on this thread goes through that scope's pack/unpack pair.
//
// LibTorch's C++ API has no public way to install default saved-tensor hooks (Python has
// torch.autograd.graph.saved_tensors_hooks). The autograd engine exposes one: SavedVariable asks
// Engine::get_default_engine().get_default_saved_variable_hooks() for hooks when it is built,
// that method is virtual, and set_default_engine_stub() is public. condense installs a subclass
// of the engine (once, on the first HooksScope) whose hooks come from a thread-local stack.
//
// Contracts:
//  - pack() runs on the thread that runs the forward op, under NoGradGuard; it must not modify
//    its input and must not keep the tensor it is given except as `t.detach()` (keeping `t`
//    itself forms a reference cycle through its grad_fn and leaks the graph).
//  - unpack() may run several times (retain_graph) and on an autograd worker thread (CUDA);
//    the packed value is destroyed when autograd frees the saved variable.
//  - Scopes nest; the innermost wins. Tensors saved while no scope is active are untouched.
#pragma once
#include <ATen/core/Tensor.h>

#include <any>
#include <memory>

namespace condense {

class SavedTensorHooks {
 public:
  virtual ~SavedTensorHooks() = default;
  virtual std::any pack(const at::Tensor& t) = 0;
  virtual at::Tensor unpack(const std::any& packed) = 0;
};

// RAII: pushes `hooks` on this thread's stack; pops it on destruction (scopes must be LIFO).
class HooksScope {
 public:
  explicit HooksScope(std::shared_ptr<SavedTensorHooks> hooks);
  ~HooksScope();
  HooksScope(const HooksScope&) = delete;
  HooksScope& operator=(const HooksScope&) = delete;

 private:
  SavedTensorHooks* hooks_;
};

// The innermost active hooks on this thread, or null.
std::shared_ptr<SavedTensorHooks> current_saved_tensor_hooks();

// Installs the hook-aware autograd engine as LibTorch's default (idempotent, thread-safe).
// HooksScope calls it; call it early when backward passes run before the first scope.
void install_hooked_engine();

// True when the engine autograd uses is condense's (a Python host may have replaced it).
bool hooked_engine_active();

}  // namespace condense
