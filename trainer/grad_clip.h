// Global-norm gradient clipping with torch.nn.utils.clip_grad_norm_'s semantics: the norm is
// the 2-norm of all gradients together; they are scaled by min(1, max_norm / (norm + 1e-6)).
// The trainer measures first (a non-finite norm decides whether the step is applied at all)
// and clips after; clip_grad_norm does both.
#pragma once
#include <vector>

#include <ATen/core/Tensor.h>

namespace condense {

// The 2-norm of all defined gradients as a 0-dim tensor on their device (0 when none).
at::Tensor total_grad_norm(const std::vector<at::Tensor>& params);

// Scales the gradients by min(1, max_norm / (total + 1e-6)); max_norm <= 0 leaves them alone.
void clip_grads(const std::vector<at::Tensor>& params, const at::Tensor& total, double max_norm);

// Returns the norm before clipping; max_norm <= 0 only measures.
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace condense
