// Soft-capping (Gemma 2; Team Gemma 2024, "Gemma 2: Improving Open Language Models at a Practical
// Size", section 2): cap * tanh(x / cap) squashes x smoothly into (-cap, cap) and is x near zero.
// Gemma 2 caps every attention score (LlamaConfig::attn_logit_softcapping, after the scale and before
// the mask) and the logits (final_logit_softcapping). cap 0: x unchanged.
#pragma once
#include <ATen/ATen.h>

namespace condense {

inline at::Tensor softcap(const at::Tensor& x, double cap) { return cap > 0 ? at::tanh(x / cap) * cap : x; }

// In place, for loss tiles that own their logits.
inline at::Tensor& softcap_(at::Tensor& x, double cap) {
  if (cap > 0) x.div_(cap).tanh_().mul_(cap);
  return x;
}

// d softcap(x) / dx from the capped value y = softcap(x), cap > 0: 1 - (y / cap)^2 (callers
// without a cap skip the multiplication).
inline at::Tensor softcap_slope(const at::Tensor& y, double cap) { return 1 - (y / cap).square(); }

}  // namespace condense
