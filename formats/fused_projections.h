// Phi-3's fused projections: Hugging Face's Phi3ForCausalLM (and llama.cpp's phi3 GGUF
// architecture) store q/k/v as one self_attn.qkv_proj (rows: q, then k, then v; GGUF attn_qkv)
// and gate/up as one mlp.gate_up_proj (rows: gate, then up; GGUF ffn_up). condense's model keeps
// them split (Llama's names), so importers read a split weight as rows of the fused tensor and
// exporters write the fused tensors (fuse_projections).
#pragma once
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "model/llama_config.h"

namespace condense {

struct FusedRows {
  std::string fused;       // the fused tensor's Hugging Face name
  int64_t begin = 0;       // this weight's first row in it
  int64_t rows = 0;        // and its row count
  int64_t fused_rows = 0;  // the fused tensor's row count
};

// For `name`, a split Hugging Face weight (model.layers.N.self_attn.{q,k,v}_proj.weight or
// model.layers.N.mlp.{gate,up}_proj.weight): where its rows sit in the fused tensor of a model of
// config `c`; nullopt for any other name.
std::optional<FusedRows> fused_rows(const std::string& name, const LlamaConfig& c);

// `split` (Hugging Face names, condense's split weights) with each layer's q/k/v weights
// replaced by one self_attn.qkv_proj.weight and gate/up by one mlp.gate_up_proj.weight, at the
// place of q and gate; every other tensor as it is, in order. Throws naming a missing part.
std::vector<std::pair<std::string, at::Tensor>> fuse_projections(
    const std::vector<std::pair<std::string, at::Tensor>>& split, const LlamaConfig& c);

}  // namespace condense
