// Sign descent with decoupled weight decay: p = p (1 - lr wd) - lr sign(g) (weights of rank >= 2
// decayed, norms and biases not, as in AdamW). The update of DeMo (Peng, Quesnelle, Kingma,
// "DeMo: Decoupled Momentum Optimization", 2024), whose momentum lives in the exchange instead:
// comm.compression with error_control ef and decay beta keeps m = beta m + g per rank, sends its
// chunked Top-K and subtracts what was sent (comm/error_control.h), so the gradient this optimizer
// receives is the mean over ranks of the sent parts. No state of its own. DeMo's reference code
// adds lr g to m; the buffer here gets g: the same steps under a constant lr (sign() drops the
// scale), a different weighting of past gradients under a schedule (README says so).
#pragma once
#include "trainer/optimizer.h"

namespace condense {

class SignDescent final : public Optimizer {
 public:
  SignDescent(const std::vector<std::pair<std::string, at::Tensor>>& params, double weight_decay);
  void step(double lr) override;
  std::map<std::string, at::Tensor> state() const override { return {}; }
  void load_state(const std::map<std::string, at::Tensor>&) override {}

 private:
  double weight_decay_;
  std::vector<size_t> decay_;  // rank >= 2 weights
};

}  // namespace condense
