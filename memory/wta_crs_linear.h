// WTA-CRS linear (Liu et al. 2023, "Winner-Take-All Column Row Sampling for Memory Efficient
// Adaptation of Language Model"): y = x W^T exactly, but for the weight gradient
// dW = sum_i dy_i^T x_i only k = ceil(ratio * N) of the N input rows are saved. The rows are
// chosen with probabilities p_i proportional to ||x_i|| (dy is unknown at forward time): the
// ceil(k/2) most probable rows are deterministic "winners" kept with weight 1, and the other
// rows are represented by k - ceil(k/2) draws with replacement from the remaining distribution,
// each scaled by 1 / (draws * q_j). The estimator of dW is unbiased; dx = dy W stays exact.
// Saved-activation bytes for the weight gradient shrink by about 1 / ratio. Meant for
// fine-tuning, where the gradient noise is tolerable.
//
// Shapes: x [..., in], weight [out, in] (no bias: Llama's projections have none). Draws use the default CPU
// generator (deterministic under torch::manual_seed).
#pragma once
#include <ATen/core/Tensor.h>

namespace condense {

at::Tensor wta_crs_linear(const at::Tensor& x, const at::Tensor& weight, double ratio);

// The sampled rows for one forward, exposed for tests: indices into the N rows and the scale
// of each kept row (winners 1, draws 1 / (draws * q_j)).
struct WtaCrsSample {
  at::Tensor rows;    // int64 [k]
  at::Tensor scales;  // float [k]
};
WtaCrsSample wta_crs_sample(const at::Tensor& row_norms, int64_t k);

}  // namespace condense
