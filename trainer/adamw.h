// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) over two
// parameter groups: weights of rank >= 2 are decayed, norms and biases (rank < 2) are not.
// The update is PyTorch's fused AdamW kernel (at::_fused_adamw_), so a run matches
// torch.optim.AdamW(fused=True) step for step. State is addressed by parameter name so it can
// be checkpointed and restored exactly.
#pragma once
#include "trainer/optimizer.h"

namespace condense {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
};

class AdamW final : public Optimizer {
 public:
  // params: (name, tensor) in a fixed order; only tensors requiring grad are optimized.
  AdamW(const std::vector<std::pair<std::string, at::Tensor>>& params, AdamWOptions opt);

  void step(double lr) override;
  // Per-parameter state tensors: "<name>/exp_avg", "<name>/exp_avg_sq", "<name>/step".
  std::map<std::string, at::Tensor> state() const override;
  // Restores state written by state(); every optimized parameter must be present with the
  // right shape (throws naming the missing or mismatched entry).
  void load_state(const std::map<std::string, at::Tensor>& state) override;

 private:
  struct Group {
    double weight_decay;
    std::vector<size_t> members;  // indices into params_
  };
  AdamWOptions opt_;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_, steps_;
  std::vector<Group> groups_;
};

}  // namespace condense
