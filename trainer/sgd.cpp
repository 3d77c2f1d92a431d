#include "trainer/sgd.h"

#include <ATen/ATen.h>

namespace condense {

Sgd::Sgd(const std::vector<std::pair<std::string, at::Tensor>>& params, SgdOptions opt)
    : opt_(opt) {
  decay_ = register_params(params).first;
  for (const auto& p : params_) buf_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
}

void Sgd::step(double lr) {
  at::NoGradGuard no_grad;
  std::vector<at::Tensor> p, g, b, decayed;
  for (size_t i = 0; i < params_.size(); ++i) {
    if (!params_[i].grad().defined()) continue;
    p.push_back(params_[i]);
    g.push_back(params_[i].grad());
    b.push_back(buf_[i]);
  }
  for (size_t i : decay_)
    if (params_[i].grad().defined()) decayed.push_back(params_[i]);
  if (p.empty()) return;
  // buf starts at zero, so the first step gives buf = g exactly as torch.optim.SGD's clone.
  if (opt_.momentum > 0) {
    at::_foreach_mul_(b, opt_.momentum);
    at::_foreach_add_(b, g);
  }
  if (opt_.weight_decay > 0 && !decayed.empty())
    at::_foreach_mul_(decayed, 1.0 - lr * opt_.weight_decay);
  at::_foreach_add_(p, opt_.momentum > 0 ? b : g, -lr);
}

std::map<std::string, at::Tensor> Sgd::state() const {
  std::map<std::string, at::Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i) out[names_[i] + "/momentum_buffer"] = buf_[i];
  return out;
}

void Sgd::load_state(const std::map<std::string, at::Tensor>& state) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) take(state, names_[i] + "/momentum_buffer", buf_[i]);
}

}  // namespace condense
