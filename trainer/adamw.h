// AdamW (Loshchilov & Hutter, "Decoupled Weight Decay Regularization", ICLR 2019) over two
// parameter groups: weights of rank >= 2 are decayed, norms and biases (rank < 2) are not.
// The update is PyTorch's fused AdamW kernel (at::_fused_adamw_), so a run matches
// torch.optim.AdamW(fused=True) step for step. State is addressed by parameter name so it can
// be checkpointed and restored exactly.
//
// Second moment on compressed steps (variance_on_exact_steps_only; recipe train.adam_variance:
// exact_steps). Error-feedback compression delivers a coordinate once every T steps carrying
// ~T steps of gradient; fed to v, that inflates v ~T-fold and the coordinate then moves
// ~sqrt(T) times less than under dense training (Adam normalizes the accumulated mass away).
// With this option v is updated only on steps whose gradient is the exact mean over ranks
// (dense warm-up steps and comm.compression.exact_every steps; the trainer says which through
// set_exact_gradient) and held fixed on compressed ones, as in 1-bit Adam (Tang et al., ICML
// 2021: v frozen after a dense warm-up) and 0/1 Adam (Lu et al., ICLR 2023: v refreshed on
// sparse steps). A refresh after a gap of k steps treats the new g^2 as standing for all k:
//   v = beta2^k v + (1 - beta2^k) g^2,  bias correction 1 - beta2^t (t: the refresh step),
// which is the plain Adam update when k = 1; between refreshes the denominator keeps the last
// refresh's bias correction. The first step always updates v (there is nothing to hold yet).
#pragma once
#include "trainer/optimizer.h"

namespace condense {

struct AdamWOptions {
  double beta1 = 0.9;
  double beta2 = 0.95;
  double eps = 1e-8;
  double weight_decay = 0.1;
  bool variance_on_exact_steps_only = false;
};

class AdamW final : public Optimizer {
 public:
  // params: (name, tensor) in a fixed order; only tensors requiring grad are optimized.
  AdamW(const std::vector<std::pair<std::string, at::Tensor>>& params, AdamWOptions opt);

  void step(double lr) override;
  void set_exact_gradient(bool exact) override { exact_ = exact; }
  // Per-parameter state tensors: "<name>/exp_avg", "<name>/exp_avg_sq", "<name>/step", and
  // "<name>/variance_step" (the step of the last update of v; optional on load, where it
  // defaults to step, for checkpoints written before it existed).
  std::map<std::string, at::Tensor> state() const override;
  // Restores state written by state(); every optimized parameter must be present with the
  // right shape (throws naming the missing or mismatched entry).
  void load_state(const std::map<std::string, at::Tensor>& state) override;

 private:
  struct Group {
    double weight_decay;
    std::vector<size_t> members;  // indices into params_
  };
  // A group's parameters that have a gradient, with their gradient, m, v and step tensors.
  struct Slots {
    std::vector<at::Tensor> p, grad, m, v, s;
  };
  Slots slots(const Group& g) const;
  // The update when v is held this step (gap 0) or refreshed after a gap of more than one step
  // (foreach ops; the fused kernel always updates v with weight 1 - beta2).
  void general_step(const Group& g, double lr, int64_t gap);

  AdamWOptions opt_;
  std::vector<at::Tensor> exp_avg_, exp_avg_sq_, steps_, variance_steps_;
  // Host mirrors of steps_ and variance_steps_ (all parameters step together).
  int64_t step_ = 0, variance_step_ = 0;
  bool exact_ = true;  // the coming step's gradient is the exact mean
  std::vector<Group> groups_;
};

}  // namespace condense
