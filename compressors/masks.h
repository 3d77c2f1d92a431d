// Explicit weight masks for pruned matrices: one bool tensor (true = kept) per weight, by its
// Hugging Face name. A mask is the contract that a pruned weight stays pruned:
//   - apply(): W *= M, after pruning and after every optimizer step;
//   - mask_gradients(): grad *= M before the step, so masked entries get no update and AdamW's
//     moments there stay exactly zero (mask_state() zeroes them outright, e.g. after a resume
//     from a checkpoint written without masks);
//   - checkpoints carry them as "mask/<weight name>" and exports merge nothing into them, so the
//     zeros of an exported safetensors/GGUF matrix are the mask's.
#pragma once
#include <cstdint>
#include <map>
#include <string>

#include <ATen/core/Tensor.h>

#include "model/llama.h"

namespace condense {

class H5File;

class WeightMasks {
 public:
  static constexpr const char* kPrefix = "mask/";

  // mask: bool, the shape of the weight `name` (checked by apply()).
  void set(const std::string& name, at::Tensor mask);
  bool empty() const { return masks_.empty(); }
  const std::map<std::string, at::Tensor>& masks() const { return masks_; }
  const at::Tensor* find(const std::string& name) const;

  void apply(LlamaForCausalLM& model) const;
  // Moves every mask to `device` (the model's, before training on a GPU).
  void to(c10::Device device);
  void mask_gradients(LlamaForCausalLM& model) const;
  // Zeroes masked entries of optimizer state keyed "<weight name>/<slot>" whose slot tensor has
  // the weight's shape (AdamW's exp_avg / exp_avg_sq, SGD's momentum buffer).
  void mask_state(const std::map<std::string, at::Tensor>& state) const;

  // "mask/<name>" -> mask, for checkpoints; from_file reads them back (none: empty masks).
  std::map<std::string, at::Tensor> entries() const;
  static WeightMasks from_file(const H5File& file);

  int64_t masked_weights() const;  // total elements under masks
  int64_t pruned_weights() const;  // of which zero (mask false)
  std::string describe() const;    // "masks on 8 matrices: 50.00% of 0.52M weights pruned"

 private:
  std::map<std::string, at::Tensor> masks_;
};

// Named parameters of a model as a map (the tensors themselves, not copies).
std::map<std::string, at::Tensor> parameter_map(LlamaForCausalLM& model);

}  // namespace condense
