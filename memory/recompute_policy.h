// RecomputePolicy: which decoder-layer blocks are recomputed in backward instead of keeping
// their saved activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
// Transformer Models": full and selective recomputation; MEMO, arXiv 2407.12117, for fitting a
// memory budget). It is the model's BlockHook (model/llama.h).
//
//   none       keep everything
//   full       every layer: only each layer's input is kept
//   every_k    layers 0, k, 2k, ...
//   selective  Korthikanti's criterion (recompute what is large in memory and cheap in FLOPs)
//              at op level: every layer keeps its matmul and attention results and drops the
//              outputs the model marks as pointwise-rebuildable (model/rebuildable.h: RMSNorm
//              outputs, silu(gate) and the SwiGLU product, the attention output's layout
//              copy), rebuilt at first use in backward
//              (memory/pointwise_rebuild.h). With fused attention the [T x T] scores that the
//              paper's "attention core" recomputation targets are never stored, so this is
//              where the cheap memory is.
//   attention  the whole attention branch of every layer (norm -> q/k/v -> RoPE -> attention
//              -> o_proj) recomputed: the literal "attention core" policy, about a third of
//              the layer's FLOPs for the branch's activations (kept for comparison).
//   budget     the first forward (with gradients) measures each layer's saved bytes (unique
//              storages, parameters excluded); from then on layers 0, 1, ... are recomputed
//              until the kept bytes, counting each recomputed layer's input, fit budget_mb.
//
// A recomputed layer's rerun in backward also drops the pointwise outputs and rebuilds them
// at use, so the transient peak while backward runs through that layer is about half of the
// layer's activations instead of all of them.
//
// It also tells the offload hooks which layer is running (prefetch grouping).
// Contract: one instance per model; forward passes on one thread at a time.
#pragma once
#include <memory>
#include <string>
#include <unordered_set>
#include <vector>

#include "model/llama.h"

namespace condense {

class OffloadHooks;

enum class RecomputeMode { kNone, kFull, kEveryK, kSelective, kAttention, kBudget };
RecomputeMode recompute_mode_from_name(const std::string& name);

class RecomputePolicy final : public BlockHook {
 public:
  RecomputePolicy(RecomputeMode mode, int64_t num_layers, int64_t every = 2,
                  double budget_mb = 0, std::shared_ptr<OffloadHooks> offload = nullptr);
  at::Tensor run(int64_t layer, Part part, const std::function<at::Tensor(const at::Tensor&)>& fn,
                 const at::Tensor& x) override;

  // Budget mode: parameters are excluded from the measured bytes (by storage).
  void set_parameters(const std::vector<at::Tensor>& params);
  // Budget mode: per-layer saved bytes and input bytes once measured (empty before).
  const std::vector<int64_t>& measured_layer_bytes() const { return layer_bytes_; }
  // Layers recomputed as a whole (budget: after measurement).
  std::vector<bool> recomputed_layers() const;

 private:
  bool recompute_layer(int64_t layer) const;
  at::Tensor measure(int64_t layer, const std::function<at::Tensor(const at::Tensor&)>& fn,
                     const at::Tensor& x);
  void decide_budget();
  at::Tensor with_rebuild(const std::function<at::Tensor(const at::Tensor&)>& fn,
                          const at::Tensor& x);
  at::Tensor recompute_with_rebuild(const std::function<at::Tensor(const at::Tensor&)>& fn,
                                    const at::Tensor& x);

  RecomputeMode mode_;
  int64_t num_layers_, every_;
  double budget_mb_;
  std::shared_ptr<OffloadHooks> offload_;
  std::vector<int64_t> layer_bytes_, input_bytes_;
  std::vector<bool> budget_choice_;
  std::unordered_set<const void*> parameter_storages_;
};

}  // namespace condense
