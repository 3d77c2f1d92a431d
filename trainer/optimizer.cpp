#include "trainer/optimizer.h"

#include <ATen/ATen.h>

#include "core/error.h"
#include "core/shape.h"
#include "trainer/adamw.h"
#include "trainer/sgd.h"
#include "trainer/sign_descent.h"

namespace condense {

void Optimizer::zero_grad() {
  for (auto& p : params_)
    if (p.grad().defined()) p.mutable_grad() = at::Tensor();
}

std::pair<std::vector<size_t>, std::vector<size_t>> Optimizer::register_params(
    const std::vector<std::pair<std::string, at::Tensor>>& params) {
  std::vector<size_t> decay, no_decay;
  for (const auto& [name, p] : params) {
    if (!p.requires_grad()) continue;
    (p.dim() >= 2 ? decay : no_decay).push_back(params_.size());
    names_.push_back(name);
    params_.push_back(p);
  }
  return {decay, no_decay};
}

void Optimizer::take(const std::map<std::string, at::Tensor>& state, const std::string& key,
                     at::Tensor& dst) {
  auto it = state.find(key);
  CONDENSE_CHECK(it != state.end(), "optimizer state is missing '{}'", key);
  CONDENSE_CHECK(it->second.sizes() == dst.sizes(), "optimizer state '{}' has shape {}, expected {}",
                 key, shape_str(it->second.sizes()), shape_str(dst.sizes()));
  dst.copy_(it->second);
}

std::unique_ptr<Optimizer> make_optimizer(
    const TrainConfig& tc, const std::vector<std::pair<std::string, at::Tensor>>& params) {
  if (tc.optimizer == "adamw")
    return std::make_unique<AdamW>(params, AdamWOptions{tc.beta1, tc.beta2, tc.eps, tc.weight_decay});
  if (tc.optimizer == "sgd")
    return std::make_unique<Sgd>(params, SgdOptions{tc.momentum, tc.weight_decay});
  if (tc.optimizer == "sign") return std::make_unique<SignDescent>(params, tc.weight_decay);
  fail("unknown optimizer '{}'; valid: adamw, sgd, sign", tc.optimizer);
}

}  // namespace condense
