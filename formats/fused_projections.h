// Phi-3's fused projections: Hugging Face's Phi3ForCausalLM (and llama.cpp's phi3 GGUF
// architecture) store q/k/v as one self_attn.qkv_proj (rows: q, then k, then v; GGUF attn_qkv)
// and gate/up as one mlp.gate_up_proj (rows: gate, then up; GGUF ffn_up). condense's model keeps
// them split (Llama's names), so importers read a split weight as rows of the fused tensor.
#pragma once
#include <cstdint>
#include <optional>
#include <string>

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

}  // namespace condense
