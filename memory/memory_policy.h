// MemoryPolicy: executes a recipe's `memory:` section (memory/memory_config.h) for a Llama
// model: installs the recomputation BlockHook, routes MLP projections through WTA-CRS when
// asked, wraps each forward in the storage hooks (offload or compressed activations), and
// computes the loss with full logits or chunked. The recipes call loss(); backward is the
// caller's.
//
// Contract: construct once per model (it installs hooks on the model and keeps them alive);
// loss() on the training thread. With no memory option set, loss() is bit-identical to
// trainer/lm_loss.h's causal_lm_loss.
#pragma once
#include <memory>
#include <string>

#include "memory/memory_config.h"
#include "model/llama.h"

namespace condense {

class OffloadHooks;
class RecomputePolicy;
class SavedTensorHooks;

// "" when the combination can run, else what is wrong, naming the memory.* keys (the recipe
// parser's validation reports it; MemoryPolicy throws it).
std::string check_memory_config(const MemoryConfig& cfg);

class MemoryPolicy {
 public:
  MemoryPolicy(const MemoryConfig& cfg, LlamaForCausalLM& model);
  ~MemoryPolicy();
  // (Re)installs this policy's hooks on the model (the constructor does it; several policies
  // may take turns on one model, as the benchmark does).
  void attach(LlamaForCausalLM& model) const;
  // The model's final hidden states under this policy's saved-tensor storage (offload or
  // compressed activations), for losses other than cross-entropy (distillation).
  at::Tensor hidden(LlamaForCausalLM& model, const DecoderInput& in);
  // Mean next-token cross-entropy of inputs [B, T] against targets [B, T].
  at::Tensor loss(LlamaForCausalLM& model, const at::Tensor& inputs, const at::Tensor& targets);
  std::string describe() const;
  const RecomputePolicy* recompute() const { return recompute_.get(); }
  const OffloadHooks* offload() const { return offload_.get(); }

 private:
  MemoryConfig cfg_;
  std::shared_ptr<RecomputePolicy> recompute_;
  std::shared_ptr<OffloadHooks> offload_;
  std::shared_ptr<SavedTensorHooks> storage_;  // offload or compression, or null
};

}  // namespace condense
