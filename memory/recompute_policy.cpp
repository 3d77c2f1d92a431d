#include "memory/recompute_policy.h"

#include <ATen/ATen.h>
#include <spdlog/spdlog.h>
#include <torch/csrc/autograd/grad_mode.h>

#include <unordered_set>

#include "core/error.h"
#include "memory/keep_rule.h"
#include "memory/offload.h"
#include "memory/pointwise_rebuild.h"
#include "memory/recompute.h"
#include "memory/saved_tensor_hooks.h"

namespace condense {
namespace {

// Sums the bytes of the distinct non-parameter storages saved inside a block, and forwards
// the tensors to the hooks that were active outside it (offload or compression).
class MeasureHooks final : public SavedTensorHooks {
 public:
  MeasureHooks(std::shared_ptr<SavedTensorHooks> outer, std::unordered_set<const void*> params)
      : outer_(std::move(outer)), params_(std::move(params)) {}
  std::any pack(const at::Tensor& t) override {
    if (t.has_storage()) {
      const void* s = t.storage().data();
      if (!params_.count(s) && seen_.insert(s).second) bytes += t.storage().nbytes();
    }
    return outer_ ? outer_->pack(t) : std::any(t.detach());
  }
  at::Tensor unpack(const std::any& p) override {
    return outer_ ? outer_->unpack(p) : std::any_cast<const at::Tensor&>(p);
  }
  int64_t bytes = 0;

 private:
  std::shared_ptr<SavedTensorHooks> outer_;
  std::unordered_set<const void*> params_;
  std::unordered_set<const void*> seen_;
};

}  // namespace

RecomputeMode recompute_mode_from_name(const std::string& name) {
  if (name == "none") return RecomputeMode::kNone;
  if (name == "full") return RecomputeMode::kFull;
  if (name == "every_k") return RecomputeMode::kEveryK;
  if (name == "selective") return RecomputeMode::kSelective;
  if (name == "attention") return RecomputeMode::kAttention;
  if (name == "budget") return RecomputeMode::kBudget;
  fail("unknown recompute policy '{}'; valid: none, full, every_k, selective, attention, budget",
       name);
}

RecomputePolicy::RecomputePolicy(RecomputeMode mode, int64_t num_layers, int64_t every,
                                 double budget_mb, std::shared_ptr<OffloadHooks> offload)
    : mode_(mode), num_layers_(num_layers), every_(every), budget_mb_(budget_mb),
      offload_(std::move(offload)) {
  CONDENSE_CHECK(every_ >= 1, "memory.recompute_every must be >= 1, got {}", every_);
  CONDENSE_CHECK(mode_ != RecomputeMode::kBudget || budget_mb_ > 0,
                 "memory.recompute=budget needs memory.budget_mb > 0");
}

bool RecomputePolicy::recompute_layer(int64_t layer) const {
  switch (mode_) {
    case RecomputeMode::kFull: return true;
    case RecomputeMode::kEveryK: return layer % every_ == 0;
    case RecomputeMode::kBudget:
      return !budget_choice_.empty() && budget_choice_[static_cast<size_t>(layer)];
    default: return false;
  }
}

void RecomputePolicy::set_parameters(const std::vector<at::Tensor>& params) {
  for (const auto& p : params) parameter_storages_.insert(p.storage().data());
}

std::vector<bool> RecomputePolicy::recomputed_layers() const {
  std::vector<bool> out(static_cast<size_t>(num_layers_));
  for (int64_t i = 0; i < num_layers_; ++i) out[static_cast<size_t>(i)] = recompute_layer(i);
  return out;
}

at::Tensor RecomputePolicy::run(int64_t layer, Part part,
                                const std::function<at::Tensor(const at::Tensor&)>& fn,
                                const at::Tensor& x) {
  if (!at::GradMode::is_enabled() || in_recomputation()) return fn(x);
  if (part == Part::kLayer) {
    if (offload_) offload_->set_block(layer);
    if (mode_ == RecomputeMode::kBudget && budget_choice_.empty()) {
      if (layer == 0 && layer_bytes_.size() == static_cast<size_t>(num_layers_)) decide_budget();
      else return measure(layer, fn, x);
    }
    if (recompute_layer(layer)) return recompute_with_rebuild(fn, x);
    if (mode_ == RecomputeMode::kSelective) return with_rebuild(fn, x);
    return fn(x);
  }
  if (part == Part::kAttention && mode_ == RecomputeMode::kAttention)
    return recompute_block(fn, x, nullptr, offload_);
  return fn(x);
}

at::Tensor RecomputePolicy::with_rebuild(const std::function<at::Tensor(const at::Tensor&)>& fn,
                                         const at::Tensor& x) {
  auto registry = std::make_shared<RebuildRegistry>();
  HooksScope hooks(std::make_shared<RebuildHooks>(registry, current_saved_tensor_hooks()));
  RebuildRegion region(registry);
  return fn(x);
}

at::Tensor RecomputePolicy::recompute_with_rebuild(
    const std::function<at::Tensor(const at::Tensor&)>& fn, const at::Tensor& x) {
  // The rerun in backward keeps only what is expensive to recompute; the pointwise outputs are
  // rebuilt when backward reaches them, so the layer's transient peak is about half its
  // activations. The forward itself drops everything, so it needs no marks.
  auto registry = std::make_shared<RebuildRegistry>();
  auto rerun = [fn, registry](const at::Tensor& t) {
    if (!in_recomputation()) return fn(t);
    RebuildRegion region(registry);
    return fn(t);
  };
  // With offload, the layer input (all that a recomputed layer keeps) leaves the device too.
  return recompute_block(rerun, x, std::make_shared<RebuildHooks>(registry, nullptr), offload_);
}

at::Tensor RecomputePolicy::measure(int64_t layer,
                                    const std::function<at::Tensor(const at::Tensor&)>& fn,
                                    const at::Tensor& x) {
  auto hooks = std::make_shared<MeasureHooks>(current_saved_tensor_hooks(), parameter_storages_);
  at::Tensor out;
  {
    HooksScope scope(hooks);
    out = fn(x);
  }
  if (layer_bytes_.size() == static_cast<size_t>(layer)) {
    layer_bytes_.push_back(hooks->bytes);
    input_bytes_.push_back(tensor_bytes(x));
  }
  return out;
}

void RecomputePolicy::decide_budget() {
  double budget = budget_mb_ * 1024 * 1024;
  int64_t kept = 0;
  for (int64_t b : layer_bytes_) kept += b;
  budget_choice_.assign(static_cast<size_t>(num_layers_), false);
  for (int64_t i = 0; i < num_layers_ && kept > budget; ++i) {
    budget_choice_[static_cast<size_t>(i)] = true;
    kept += input_bytes_[static_cast<size_t>(i)] - layer_bytes_[static_cast<size_t>(i)];
  }
  int64_t n = 0;
  for (bool b : budget_choice_) n += b;
  spdlog::info("memory budget {:.1f} MB: recomputing {} of {} layers (kept activations {:.1f} MB{})",
               budget_mb_, n, num_layers_, kept / 1048576.0,
               kept > budget ? ", still above the budget" : "");
}

}  // namespace condense
