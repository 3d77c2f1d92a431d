// RMSNorm as Hugging Face's LlamaRMSNorm computes it: normalize in fp32, cast back, scale.
#pragma once
#include <torch/nn/module.h>
#include <torch/nn/pimpl.h>

namespace condense {

class RMSNormImpl : public torch::nn::Module {
 public:
  RMSNormImpl(int64_t dim, double eps);
  at::Tensor forward(const at::Tensor& x);
  double eps() const { return eps_; }
  at::Tensor weight;

 private:
  double eps_;
};
TORCH_MODULE(RMSNorm);

}  // namespace condense
