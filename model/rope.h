// Rotary position embedding in Hugging Face's rotate-half convention (the first and second
// halves of each head form the rotated pairs). llama.cpp rotates adjacent pairs instead, which
// is why GGUF export permutes q/k rows (see README "Formats").
#pragma once
#include <ATen/core/Tensor.h>

namespace condense {

class Rope {
 public:
  Rope(int64_t head_dim, double theta);
  // cos and sin for positions [offset, offset + length), each [length, head_dim], fp32,
  // on `device`. Computed as HF does: inv_freq = theta^(-2i/d) in fp32, freqs = pos * inv_freq.
  std::pair<at::Tensor, at::Tensor> cos_sin(int64_t offset, int64_t length, c10::Device device) const;

 private:
  int64_t head_dim_;
  double theta_;
};

// x: [B, heads, T, head_dim]; cos/sin: [T, head_dim]. Returns x*cos + rotate_half(x)*sin in
// x's dtype.
at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin);

}  // namespace condense
