// Mask pruning: zeroes individual weights of the projection matrices and records the masks.
//   magnitude  score |W_ij|, one threshold per matrix (the lowest s of its entries zeroed).
//   wanda      score |W_ij| * ||X_j||_2, the lowest s of every output row zeroed (Sun et al.
//              2023, "A Simple and Effective Pruning Approach for Large Language Models"),
//              with ||X_j|| from a calibration pass; layer-sequential: layer i is scored on
//              the outputs of the already pruned layers 0..i-1, as the paper does.
//   N:M        either score; in every group of M consecutive input columns of a row the N
//              highest are kept and M - N zeroed (2:4 and 4:8 are the hardware patterns).
// The model's weights are pruned in place and the returned masks hold what was kept.
#pragma once
#include <cstdint>
#include <string>
#include <vector>

#include "compressors/masks.h"
#include "model/llama.h"

namespace condense {

struct MaskPruneOptions {
  std::string method = "magnitude";  // magnitude | wanda
  double sparsity = 0.5;             // unstructured: in [0, 1)
  int64_t n = 0, m = 0;              // N:M when m > 0 (keep n of every m); sparsity unused
  // Regexes (full match) over weight names selecting the matrices to prune; empty: every
  // q/k/v/o/gate/up/down projection.
  std::vector<std::string> targets;
  bool sequential = true;            // wanda: layer-sequential calibration
};

const std::vector<std::string>& mask_prune_methods();  // magnitude, wanda

// Validates options against the model (clear errors naming the option and the valid range;
// nothing is changed on error) and returns the selected weight names in model order.
std::vector<std::string> mask_prune_targets(LlamaForCausalLM& model, const MaskPruneOptions& opt);

// Prunes in place. wanda needs calibration windows ([B, T] int64 token ids);
// `calibration_seconds`, when given, receives the time spent in calibration passes (the rest is
// scoring and masking).
WeightMasks prune_masked(LlamaForCausalLM& model, const MaskPruneOptions& opt,
                         const std::vector<at::Tensor>& calibration_windows = {},
                         double* calibration_seconds = nullptr);

// The mask keeping the highest scores: per matrix (rows = false), per row (rows = true), or in
// groups of m consecutive columns keeping n (m > 0). `sparsity` is the pruned share for the
// first two. Ties keep the lower index. Exposed for tests.
at::Tensor score_mask(const at::Tensor& score, double sparsity, bool per_row, int64_t n = 0,
                      int64_t m = 0);

}  // namespace condense
