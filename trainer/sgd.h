// SGD with heavy-ball momentum and decoupled weight decay, PyTorch's torch.optim.SGD update
// (dampening 0, no Nesterov): buf = momentum * buf + g; p -= lr * buf, with weights of rank >= 2
// first shrunk by (1 - lr * weight_decay) as in AdamW (norms and biases are not decayed).
// Error-feedback compression is analysed for SGD (Karimireddy et al. 2019; Gao, Islamov, Stich
// 2024), which is why condense offers it next to AdamW.
#pragma once
#include "trainer/optimizer.h"

namespace condense {

struct SgdOptions {
  double momentum = 0.9;
  double weight_decay = 0.0;
};

class Sgd final : public Optimizer {
 public:
  Sgd(const std::vector<std::pair<std::string, at::Tensor>>& params, SgdOptions opt);
  void step(double lr) override;
  // "<name>/momentum_buffer" per parameter.
  std::map<std::string, at::Tensor> state() const override;
  void load_state(const std::map<std::string, at::Tensor>& state) override;

 private:
  SgdOptions opt_;
  std::vector<at::Tensor> buf_;
  std::vector<size_t> decay_;  // rank >= 2 weights (the others are not decayed)
};

}  // namespace condense
