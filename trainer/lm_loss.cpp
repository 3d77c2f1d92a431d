#include "trainer/lm_loss.h"

#include <ATen/ATen.h>

namespace condense {

at::Tensor causal_lm_loss(LlamaForCausalLM& model, const Batch& batch) {
  at::Tensor logits = model->forward(batch.inputs);
  return at::cross_entropy_loss(logits.view({-1, logits.size(-1)}), batch.targets.reshape({-1}));
}

}  // namespace condense
