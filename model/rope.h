// Rotary position embedding in Hugging Face's rotate-half convention (the first and second
// halves of the rotated channels form the pairs). llama.cpp rotates adjacent pairs instead, which
// is why GGUF export permutes q/k rows (see README "Formats"). The rotated channels are the
// first `dim` of each head: all of it, or LlamaConfig::rotary_dim() with a partial_rotary_factor
// (the rest pass through, as transformers' Phi-3 and llama.cpp's NEOX RoPE with n_rot < head).
#pragma once
#include <ATen/core/Tensor.h>

#include <vector>

#include "model/llama_config.h"

namespace condense {

class Rope {
 public:
  // dim: the rotated channels per head (even).
  Rope(int64_t dim, double theta, RopeScaling scaling = {});
  explicit Rope(const LlamaConfig& c) : Rope(c.rotary_dim(), c.rope_theta, c.rope_scaling) {}
  // cos and sin for positions [offset, offset + length), each [length, dim], fp32,
  // on `device`. Computed as HF does: freqs = pos * inv_freq in fp32 (inv_freq() below), and for
  // LongRoPE both multiplied by its attention factor.
  std::pair<at::Tensor, at::Tensor> cos_sin(int64_t offset, int64_t length, c10::Device device) const;
  // [dim / 2] fp32: theta^(-2i/d), then rescaled as transformers' rope init functions do
  // for the scaling type (modeling_rope_utils: _compute_linear_scaling_rope_parameters,
  // _compute_llama3_parameters, _compute_longrope_parameters with the short factors), op for op
  // so the float32 results are the same.
  at::Tensor inv_freq() const;
  // What llama.cpp's rope_freqs.weight holds for this scaling: per frequency, the unscaled
  // inverse frequency over the scaled one (llama.cpp divides each angle by it); all 1 without
  // scaling. In float32 from inv_freq(), as llama.cpp's converter computes them from float32
  // frequencies.
  std::vector<float> freq_factors() const;

 private:
  int64_t dim_;
  double theta_;
  RopeScaling scaling_;
};

// The RoPE of `layer`: plain RoPE on rope_local_theta in Gemma 3's windowed layers
// (LlamaConfig::local_rope), the config's rope_theta and rope_scaling everywhere else.
Rope layer_rope(const LlamaConfig& c, int64_t layer);

// x: [B, heads, T, head_dim]; cos/sin: [T, dim] with dim <= head_dim. Returns, in x's dtype,
// x*cos + rotate_half(x)*sin over the first dim channels and the others as they are.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace condense
