#include "trainer/grad_clip.h"

#include <ATen/ATen.h>

namespace condense {

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  if (grads.empty()) return 0.0;
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> norms = at::_foreach_norm(grads, 2);
  at::Tensor total = at::stack(norms).norm(2);
  if (max_norm > 0) {
    at::Tensor coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
    at::_foreach_mul_(grads, coef);
  }
  return total.item<double>();
}

}  // namespace condense
