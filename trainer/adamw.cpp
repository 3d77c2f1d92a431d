#include "trainer/adamw.h"

#include <ATen/ATen.h>

#include <cmath>

namespace condense {

AdamW::AdamW(const std::vector<std::pair<std::string, at::Tensor>>& params, AdamWOptions opt)
    : opt_(opt) {
  auto [decay, no_decay] = register_params(params);
  for (const auto& p : params_) {
    exp_avg_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
    exp_avg_sq_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
    steps_.push_back(at::zeros({}, p.options().dtype(at::kFloat)));
    variance_steps_.push_back(at::zeros({}, p.options().dtype(at::kFloat)));
  }
  groups_ = {{opt.weight_decay, decay}, {0.0, no_decay}};
}

AdamW::Slots AdamW::slots(const Group& g) const {
  Slots t;
  for (size_t i : g.members) {
    if (!params_[i].grad().defined()) continue;
    t.p.push_back(params_[i]);
    t.grad.push_back(params_[i].grad());
    t.m.push_back(exp_avg_[i]);
    t.v.push_back(exp_avg_sq_[i]);
    t.s.push_back(steps_[i]);
  }
  return t;
}

void AdamW::step(double lr) {
  ++step_;
  // v has to exist before it can be held: the first step always updates it.
  const bool update_variance = exact_ || !opt_.variance_on_exact_steps_only || variance_step_ == 0;
  const int64_t gap = update_variance ? step_ - variance_step_ : 0;  // 0: v held this step
  if (update_variance) variance_step_ = step_;
  for (const Group& g : groups_) {
    if (gap != 1) {
      general_step(g, lr, gap);
      continue;
    }
    Slots t = slots(g);
    if (t.p.empty()) continue;
    at::NoGradGuard no_grad;
    // The fused kernel reads the step count as already incremented (torch.optim does the
    // increment before calling it); with step 0 the bias correction divides by zero.
    at::_foreach_add_(t.s, 1.0);
    at::_fused_adamw_(t.p, t.grad, t.m, t.v, /*max_exp_avg_sqs=*/{}, t.s, lr, opt_.beta1, opt_.beta2,
                      g.weight_decay, opt_.eps, /*amsgrad=*/false, /*maximize=*/false);
    for (size_t i : g.members) variance_steps_[i].fill_(static_cast<double>(step_));
  }
}

void AdamW::general_step(const Group& g, double lr, int64_t gap) {
  Slots t = slots(g);
  if (t.p.empty()) return;
  at::NoGradGuard no_grad;
  at::_foreach_add_(t.s, 1.0);
  at::_foreach_lerp_(t.m, t.grad, 1.0 - opt_.beta1);
  if (gap > 0) {
    const double keep = std::pow(opt_.beta2, static_cast<double>(gap));
    at::_foreach_mul_(t.v, keep);
    at::_foreach_addcmul_(t.v, t.grad, t.grad, 1.0 - keep);
    for (size_t i : g.members) variance_steps_[i].fill_(static_cast<double>(step_));
  }
  const double bc1 = 1.0 - std::pow(opt_.beta1, static_cast<double>(step_));
  const double bc2 = 1.0 - std::pow(opt_.beta2, static_cast<double>(variance_step_));
  std::vector<at::Tensor> denom = at::_foreach_div(t.v, bc2);
  at::_foreach_sqrt_(denom);
  at::_foreach_add_(denom, opt_.eps);
  if (g.weight_decay != 0.0) at::_foreach_mul_(t.p, 1.0 - lr * g.weight_decay);
  at::_foreach_addcdiv_(t.p, t.m, denom, -lr / bc1);
}

std::map<std::string, at::Tensor> AdamW::state() const {
  std::map<std::string, at::Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out[names_[i] + "/exp_avg"] = exp_avg_[i];
    out[names_[i] + "/exp_avg_sq"] = exp_avg_sq_[i];
    out[names_[i] + "/step"] = steps_[i];
    out[names_[i] + "/variance_step"] = variance_steps_[i];
  }
  return out;
}

void AdamW::load_state(const std::map<std::string, at::Tensor>& state) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    take(state, names_[i] + "/exp_avg", exp_avg_[i]);
    take(state, names_[i] + "/exp_avg_sq", exp_avg_sq_[i]);
    take(state, names_[i] + "/step", steps_[i]);
    if (state.count(names_[i] + "/variance_step"))
      take(state, names_[i] + "/variance_step", variance_steps_[i]);
    else
      variance_steps_[i].copy_(steps_[i]);
  }
  step_ = steps_.empty() ? 0 : static_cast<int64_t>(steps_[0].item<float>());
  variance_step_ = variance_steps_.empty() ? 0 : static_cast<int64_t>(variance_steps_[0].item<float>());
}

}  // namespace condense
