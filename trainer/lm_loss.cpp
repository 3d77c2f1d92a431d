#include "trainer/lm_loss.h"

#include <ATen/ATen.h>

#include "model/fused_ops.h"

namespace condense {

at::Tensor causal_lm_loss(LlamaForCausalLM& model, const Batch& batch) {
  at::Tensor logits = model->forward(batch.inputs);
  return lm_cross_entropy(logits, batch.targets);
}

}  // namespace condense
