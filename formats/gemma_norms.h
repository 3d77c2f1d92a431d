// Gemma's RMSNorms scale by 1 + w (their weights start at 0); condense's RMSNorm scales by its
// weight, so a Gemma model (LlamaConfig::gemma) holds 1 + w in every norm: the layers' four,
// q_norm / k_norm and the final norm. Hugging Face files hold w (converted here on the way in and
// out, in float32 as transformers computes 1.0 + weight.float()); llama.cpp's GGUF holds 1 + w
// already (its converter adds the 1), so GGUF import and export copy them as they are.
#pragma once
#include <string>

#include <ATen/ATen.h>

#include "model/llama_config.h"

namespace condense {

// Whether the tensor named `hf_name` (a Hugging Face name) is one of a Gemma model's norms.
inline bool is_gemma_norm(const std::string& hf_name, const LlamaConfig& c) {
  static const std::string suffix = "norm.weight";
  return c.is_gemma() && hf_name.size() >= suffix.size() &&
         hf_name.compare(hf_name.size() - suffix.size(), suffix.size(), suffix) == 0;
}

// Hugging Face's w -> condense's 1 + w, and back (float32).
inline at::Tensor gemma_norm_from_hf(const at::Tensor& w) { return w.to(at::kFloat) + 1; }
inline at::Tensor gemma_norm_to_hf(const at::Tensor& w) { return w.to(at::kFloat) - 1; }

}  // namespace condense
