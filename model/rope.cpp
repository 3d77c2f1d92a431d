#include "model/rope.h"

#include <ATen/ATen.h>

#include <cmath>

#include "model/fused_ops.h"

namespace condense {

Rope::Rope(int64_t dim, double theta, RopeScaling scaling)
    : dim_(dim), theta_(theta), scaling_(std::move(scaling)) {}

at::Tensor Rope::inv_freq() const {
  auto f32 = at::TensorOptions().dtype(at::kFloat);
  // As transformers: 1 / base ** (arange(0, d, 2, int64).float() / d).
  at::Tensor exponent = at::arange(0, dim_, 2, at::TensorOptions().dtype(at::kLong))
                            .to(at::kFloat) / static_cast<double>(dim_);
  const RopeScaling& s = scaling_;
  if (s.type == "longrope") {
    // transformers _compute_longrope_parameters, the short factors: 1 / (ext * base ** shape).
    at::Tensor ext = at::tensor(s.short_factor, at::TensorOptions().dtype(at::kDouble)).to(at::kFloat);
    return 1.0 / (ext * at::pow(at::scalar_tensor(theta_, f32), exponent));
  }
  at::Tensor inv_freq = 1.0 / at::pow(at::scalar_tensor(theta_, f32), exponent);
  if (s.type == "linear") return inv_freq / s.factor;
  if (s.type != "llama3") return inv_freq;
  // Llama 3's rule (transformers _compute_llama3_parameters). Python's `c / t` on a tensor is
  // t.reciprocal() * c and `1 - t` is rsub, so those are written that way here.
  const double old_len = static_cast<double>(s.original_max_position_embeddings);
  const double low_freq_wavelen = old_len / s.low_freq_factor;
  const double high_freq_wavelen = old_len / s.high_freq_factor;
  at::Tensor wavelen = inv_freq.reciprocal() * (2 * M_PI);
  at::Tensor llama = at::where(wavelen > low_freq_wavelen, inv_freq / s.factor, inv_freq);
  at::Tensor smooth = (wavelen.reciprocal() * old_len - s.low_freq_factor) /
                      (s.high_freq_factor - s.low_freq_factor);
  at::Tensor smoothed = at::rsub(smooth, 1) * llama / s.factor + smooth * llama;
  at::Tensor medium = at::logical_not(wavelen < high_freq_wavelen)
                          .logical_and(at::logical_not(wavelen > low_freq_wavelen));
  return at::where(medium, smoothed, llama);
}

std::vector<float> Rope::freq_factors() const {
  const at::Tensor ratio = (Rope(dim_, theta_).inv_freq() / inv_freq()).contiguous();
  return std::vector<float>(ratio.data_ptr<float>(), ratio.data_ptr<float>() + ratio.numel());
}

std::pair<at::Tensor, at::Tensor> Rope::cos_sin(int64_t offset, int64_t length,
                                                c10::Device device) const {
  at::Tensor pos = at::arange(offset, offset + length, at::TensorOptions().dtype(at::kLong))
                       .to(at::kFloat);
  at::Tensor freqs = at::outer(pos, inv_freq());
  at::Tensor emb = at::cat({freqs, freqs}, -1);
  at::Tensor cos = emb.cos(), sin = emb.sin();
  if (scaling_.type == "longrope" && scaling_.attention_factor != 1.0) {  // as transformers scales them
    cos = cos * scaling_.attention_factor;
    sin = sin * scaling_.attention_factor;
  }
  return {cos.to(device), sin.to(device)};
}

Rope layer_rope(const LlamaConfig& c, int64_t layer) {
  return c.local_rope(layer) ? Rope(c.rotary_dim(), c.rope_local_theta > 0 ? c.rope_local_theta : c.rope_theta)
                             : Rope(c);
}

at::Tensor apply_rope(const at::Tensor& x, const at::Tensor& cos, const at::Tensor& sin) {
  const int64_t dim = cos.size(-1), head = x.size(-1);
  if (dim < head)  // partial rotary: the rotated channels, then the rest unchanged
    return at::cat({apply_rope(x.narrow(-1, 0, dim), cos, sin), x.narrow(-1, dim, head - dim)}, -1);
  const bool fusable = x.dim() == 4 && x.size(-1) % 2 == 0 && cos.dim() == 2 &&
                       cos.size(0) == x.size(2) && cos.size(1) == x.size(3) &&
                       sin.sizes() == cos.sizes() && cos.scalar_type() == at::kFloat &&
                       sin.scalar_type() == at::kFloat && !cos.requires_grad() && !sin.requires_grad();
  if (fusable && fused_ops_apply(x)) return fused_rope(x, cos, sin);
  int64_t half = x.size(-1) / 2;
  at::Tensor x1 = x.narrow(-1, 0, half);
  at::Tensor x2 = x.narrow(-1, half, half);
  at::Tensor rotated = at::cat({-x2, x1}, -1);
  at::Tensor c = cos.to(x.scalar_type());
  at::Tensor s = sin.to(x.scalar_type());
  return x * c + rotated * s;
}

}  // namespace condense
