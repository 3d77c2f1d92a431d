// RecomputePolicy: which decoder-layer blocks are recomputed in backward instead of keeping
// their saved activations (Korthikanti et al. 2022, "Reducing Activation Recomputation in Large
// Transformer Models": full and selective recomputation; MEMO, arXiv 2407.12117, for fitting a
// memory budget). It is the model's BlockHook (model/llama.h).
//
//   none       keep everything
//   full       every layer: only each layer's input is kept
//   every_k    layers 0, k, 2k, ...
//   selective  the attention branch of every layer (norm -> q/k/v -> RoPE -> attention -> o_proj).
//              With fused attention the [T x T] scores are never stored, so Korthikanti's
//              "attention core" is q, k, v (repeated for GQA), the output and its log-sum-exp;
//              recomputing the whole branch frees those and the projections' inputs for about
//              a third of the layer's FLOPs, while the MLP branch keeps its activations.
//   budget     the first forward (with gradients) measures each layer's saved bytes (unique
//              storages, parameters excluded); from then on layers 0, 1, ... are recomputed
//              until the kept bytes, counting each recomputed layer's input, fit budget_mb.
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

enum class RecomputeMode { kNone, kFull, kEveryK, kSelective, kBudget };
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

  RecomputeMode mode_;
  int64_t num_layers_, every_;
  double budget_mb_;
  std::shared_ptr<OffloadHooks> offload_;
  std::vector<int64_t> layer_bytes_, input_bytes_;
  std::vector<bool> budget_choice_;
  std::unordered_set<const void*> parameter_storages_;
};

}  // namespace condense
