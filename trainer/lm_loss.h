// The causal language-modeling loss: mean next-token cross-entropy over all positions.
#pragma once
#include <ATen/core/Tensor.h>

#include "data/loader.h"
#include "model/llama.h"

namespace condense {

at::Tensor causal_lm_loss(LlamaForCausalLM& model, const Batch& batch);

}  // namespace condense
