// Global-norm gradient clipping with torch.nn.utils.clip_grad_norm_'s semantics: the norm is
// the 2-norm of all gradients together; they are scaled by min(1, max_norm / (norm + 1e-6)).
#pragma once
#include <vector>

#include <ATen/core/Tensor.h>

namespace condense {

// Returns the norm before clipping; max_norm <= 0 only measures.
double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm);

}  // namespace condense
