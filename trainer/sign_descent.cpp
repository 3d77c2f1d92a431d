#include "trainer/sign_descent.h"

#include <ATen/ATen.h>

namespace condense {

SignDescent::SignDescent(const std::vector<std::pair<std::string, at::Tensor>>& params,
                         double weight_decay)
    : weight_decay_(weight_decay) {
  decay_ = register_params(params).first;
}

void SignDescent::step(double lr) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> p, s, decayed;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().defined()) continue;
    p.push_back(params_[i]);
    s.push_back(params_[i].grad().sign());
  }
  for (size_t i : decay_)
    if (params_[i].grad().defined()) decayed.push_back(params_[i]);
  if (p.empty()) return;
  if (weight_decay_ > 0 && !decayed.empty()) at::_foreach_mul_(decayed, 1.0 - lr * weight_decay_);
  at::_foreach_add_(p, s, -lr);
}

}  // namespace condense
