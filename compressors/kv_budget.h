// Per-layer ranks of KV projections (compressors/kv_project.h) that meet a cache budget,
// allocated greedily from calibration sensitivity: MatryoshkaKV's adaptive compression (Lin et
// al., ICLR 2025), at layer granularity.
//
// Sensitivity: for every layer and for its keys and its values separately ("units"), how far
// the next-token distribution moves, KL(full rank || reduced) averaged over the calibration
// positions, when that unit alone drops to each smaller rank of the nested set {d/4, d/2,
// 3d/4} (everything else at full rank): 2 x layers x 3 forwards over the windows. KL rather
// than the change of cross-entropy: it is never negative, while a cross-entropy difference on a
// few windows is noisy enough to make dropping a unit look free.
// Allocation: all units start at d; while the cached coordinates exceed budget x full, the
// unit whose next step down costs the least loss increase per coordinate saved steps down.
// This treats the units' divergences as additive, which the calibration does not check; the
// reported plan names the sum it predicts.
//
// Granularity: one rank per layer for keys and one for values, shared by the layer's KV heads,
// because the cache stores a layer's heads at one width (model/kv_cache.h); per-head ranks
// would need ragged storage to save any memory.
#pragma once
#include <string>
#include <vector>

#include <ATen/core/Tensor.h>

#include "compressors/kv_project.h"
#include "model/llama.h"

namespace condense {

struct KVBudgetPlan {
  std::vector<int64_t> key_ranks, value_ranks;  // per layer
  double share = 1;              // cached coordinates / full rank's (<= the budget)
  double base_loss = 0;          // calibration loss at full rank
  double predicted_kl = 0; // sum of the chosen units' divergences (nats)
  // increase[u][i]: KL(full || reduced) with unit u (2l: keys of layer l, 2l + 1: its values)
  // alone at nested rank i (ascending; the last, full rank, is 0).
  std::vector<std::vector<double>> increase;
  std::vector<int64_t> nested;   // the nested ranks, ascending
  std::string describe() const;
};

// The smallest budget the nested set allows: d/4 of head_dim for every unit.
double min_kv_budget(const KVProjection& projection);

// windows: token ids [B, T] (T >= 2). `projection` must be the model's KV hook; it is left at
// the planned ranks. Throws naming --kv-budget when the budget is outside [min, 1].
KVBudgetPlan plan_kv_budget(LlamaForCausalLM& model, KVProjection& projection,
                            const std::vector<at::Tensor>& windows, double budget);

}  // namespace condense
