#include "trainer/adamw.h"

#include <ATen/ATen.h>

namespace condense {

AdamW::AdamW(const std::vector<std::pair<std::string, at::Tensor>>& params, AdamWOptions opt)
    : opt_(opt) {
  auto [decay, no_decay] = register_params(params);
  for (const auto& p : params_) {
    exp_avg_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
    exp_avg_sq_.push_back(at::zeros_like(p, at::MemoryFormat::Contiguous));
    steps_.push_back(at::zeros({}, p.options().dtype(at::kFloat)));
  }
  groups_ = {{opt.weight_decay, decay}, {0.0, no_decay}};
}

void AdamW::step(double lr) {
  for (const Group& g : groups_) {
    std::vector<at::Tensor> p, grad, m, v, s;
    for (size_t i : g.members) {
      if (!params_[i].grad().defined()) continue;
      p.push_back(params_[i]);
      grad.push_back(params_[i].grad());
      m.push_back(exp_avg_[i]);
      v.push_back(exp_avg_sq_[i]);
      s.push_back(steps_[i]);
    }
    if (p.empty()) continue;
    at::NoGradGuard no_grad;
    // The fused kernel reads the step count as already incremented (torch.optim does the
    // increment before calling it); with step 0 the bias correction divides by zero.
    at::_foreach_add_(s, 1.0);
    at::_fused_adamw_(p, grad, m, v, /*max_exp_avg_sqs=*/{}, s, lr, opt_.beta1, opt_.beta2,
                      g.weight_decay, opt_.eps, /*amsgrad=*/false, /*maximize=*/false);
  }
}

std::map<std::string, at::Tensor> AdamW::state() const {
  std::map<std::string, at::Tensor> out;
  for (size_t i = 0; i < params_.size(); ++i) {
    out[names_[i] + "/exp_avg"] = exp_avg_[i];
    out[names_[i] + "/exp_avg_sq"] = exp_avg_sq_[i];
    out[names_[i] + "/step"] = steps_[i];
  }
  return out;
}

void AdamW::load_state(const std::map<std::string, at::Tensor>& state) {
  at::NoGradGuard no_grad;
  for (size_t i = 0; i < params_.size(); ++i) {
    take(state, names_[i] + "/exp_avg", exp_avg_[i]);
    take(state, names_[i] + "/exp_avg_sq", exp_avg_sq_[i]);
    take(state, names_[i] + "/step", steps_[i]);
  }
}

}  // namespace condense
