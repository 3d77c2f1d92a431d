// Ranks of KV projections (compressors/kv_project.h) that meet a cache budget, allocated
// greedily from calibration sensitivity: MatryoshkaKV's adaptive compression (Lin et al., ICLR
// 2025), per layer or per KV head.
//
// Units: at layer granularity, a layer's keys and its values (every KV head of the layer at one
// rank); at head granularity, one KV head's keys or values. Sensitivity: for every unit, how
// far the next-token distribution moves, KL(full rank || reduced) averaged over the calibration
// positions, when that unit alone drops to each smaller rank of the nested set {d/4, d/2,
// 3d/4} (everything else at full rank): 3 forwards over the windows per unit, so 6 x layers
// (layer) or 6 x layers x kv_heads (head). KL rather than the change of cross-entropy: it is
// never negative, while a cross-entropy difference on a few windows is noisy enough to make
// dropping a unit look free.
// Allocation: all units start at d; while the cached coordinates exceed budget x full, the
// unit whose next step down costs the least divergence per cached coordinate saved steps down.
// This treats the units' divergences as additive, which the calibration does not check; the
// reported plan names the sum it predicts.
//
// Memory: per-layer ranks shrink the cache's per-layer width; per-head ranks that differ within
// a layer are packed by the projection (kv_project.h), so the cache holds the sum of the ranks.
#pragma once
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "compressors/kv_project.h"
#include "model/llama.h"

namespace condense {

enum class KVBudgetGranularity { kLayer, kHead };

// "layer" | "head"; throws naming `option` and the valid values.
KVBudgetGranularity parse_kv_granularity(const std::string& text, const std::string& option);

struct KVBudgetPlan {
  KVBudgetGranularity granularity = KVBudgetGranularity::kLayer;
  std::vector<std::vector<int64_t>> key_ranks, value_ranks;  // [layer][kv_head]
  double share = 1;              // cached coordinates / full rank's (<= the budget)
  double base_loss = 0;          // calibration loss at full rank
  double predicted_kl = 0; // sum of the chosen units' divergences (nats)
  // increase[u][i]: KL(full || reduced) with unit u alone at nested rank i (ascending; the
  // last, full rank, is 0). Units: layer granularity 2l (keys of layer l), 2l + 1 (its values);
  // head granularity (2l + part) x kv_heads + h.
  std::vector<std::vector<double>> increase;
  std::vector<int64_t> nested;   // the nested ranks, ascending
  std::string describe() const;
};

// The smallest budget the nested set allows: d/4 of head_dim for every unit.
double min_kv_budget(const KVProjection& projection);

// windows: token ids [B, T] (T >= 2). `projection` must be the model's KV hook; it is left at
// the planned ranks. Throws naming --kv-budget when the budget is outside [min, 1].
KVBudgetPlan plan_kv_budget(LlamaForCausalLM& model, KVProjection& projection,
                            const std::vector<at::Tensor>& windows, double budget,
                            KVBudgetGranularity granularity = KVBudgetGranularity::kLayer);

}  // namespace condense
