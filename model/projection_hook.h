// ProjectionHook: the extension point compressors use on the model's bias-free projections
// (q/k/v/o_proj, gate/up/down_proj of every layer; not the embedding or the LM head).
//
// - weight(): the weight a projection applies, computed from the stored parameter on every
//   forward. LoRA (W + s B A), MaskLoRA (W + s (B A) * M) and ScaleLoRA (W * (B A)) return a
//   function of trainable adapters here, so the stored weight stays frozen and autograd reaches
//   the adapters. Called inside the forward, so recomputation policies rerun it in backward.
// - observe(): sees each projection's input, for calibration statistics (compressors/
//   calibration.h). Only called when observing() is true, so training pays nothing for it.
//
// `name` is the Hugging Face name of the stored weight ("model.layers.3.self_attn.q_proj.weight").
#pragma once
#include <string>

#include <ATen/core/Tensor.h>

namespace condense {

class ProjectionHook {
 public:
  virtual ~ProjectionHook() = default;
  // Returns `w` itself for a projection the hook leaves alone.
  virtual at::Tensor weight(const std::string& name, const at::Tensor& w) { return w; }
  virtual bool observing() const { return false; }
  // x: [..., in_features], the projection's input.
  virtual void observe(const std::string& name, const at::Tensor& x) {}
};

}  // namespace condense
