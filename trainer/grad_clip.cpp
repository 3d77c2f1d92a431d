#include "trainer/grad_clip.h"

#include <ATen/ATen.h>

namespace condense {
namespace {

std::vector<at::Tensor> defined_grads(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> grads;
  for (const auto& p : params)
    if (p.grad().defined()) grads.push_back(p.grad());
  return grads;
}

}  // namespace

at::Tensor total_grad_norm(const std::vector<at::Tensor>& params) {
  std::vector<at::Tensor> grads = defined_grads(params);
  if (grads.empty()) return at::zeros({});
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> norms = at::_foreach_norm(grads, 2);
  return at::stack(norms).norm(2);
}

void clip_grads(const std::vector<at::Tensor>& params, const at::Tensor& total, double max_norm) {
  std::vector<at::Tensor> grads = defined_grads(params);
  if (grads.empty() || max_norm <= 0) return;
  at::NoGradGuard no_grad;
  at::Tensor coef = (max_norm / (total + 1e-6)).clamp_max(1.0);
  at::_foreach_mul_(grads, coef);
}

double clip_grad_norm(const std::vector<at::Tensor>& params, double max_norm) {
  at::Tensor total = total_grad_norm(params);
  clip_grads(params, total, max_norm);
  return total.item<double>();
}

}  // namespace condense
