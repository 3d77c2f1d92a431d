// Optimizer: what the training loop and checkpoints need from an optimizer. State is a map from
// "<parameter name>/<slot>" to tensors, written to checkpoints under optimizer/ and restored
// exactly; load_state throws naming a missing or mismatched entry (so resuming with another
// optimizer fails clearly instead of training on a blank state).
//
// Implementations: AdamW (trainer/adamw.h, the default) and SGD with momentum (trainer/sgd.h).
// make_optimizer picks one from train.optimizer.
#pragma once
#include <map>
#include <memory>
#include <string>
#include <utility>
#include <vector>

#include <ATen/core/Tensor.h>

#include "trainer/train_config.h"

namespace condense {

class Optimizer {
 public:
  virtual ~Optimizer() = default;
  // One update at learning rate lr. Parameters without a gradient are skipped.
  virtual void step(double lr) = 0;
  void zero_grad();
  virtual std::map<std::string, at::Tensor> state() const = 0;
  virtual void load_state(const std::map<std::string, at::Tensor>& state) = 0;

 protected:
  // Keeps the parameters that require grad, in order; returns their indices by decay group
  // (first: rank >= 2, decayed; second: norms and biases, not decayed).
  std::pair<std::vector<size_t>, std::vector<size_t>> register_params(
      const std::vector<std::pair<std::string, at::Tensor>>& params);
  // Copies state[key] into dst, checking presence and shape.
  static void take(const std::map<std::string, at::Tensor>& state, const std::string& key,
                   at::Tensor& dst);

  std::vector<std::string> names_;
  std::vector<at::Tensor> params_;
};

// params: (name, tensor) in a fixed order; only tensors requiring grad are optimized.
std::unique_ptr<Optimizer> make_optimizer(
    const TrainConfig& tc, const std::vector<std::pair<std::string, at::Tensor>>& params);

}  // namespace condense
